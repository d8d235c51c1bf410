"""Complete ranges: an export carries every leaf, and every kind of damage is named by index.

Each test builds a real log (40 records stamped one second apart, checkpoints at
10, 25 and 40) on SQLite and on PostgreSQL. The attacker has the database: the
triggers are dropped (or, where the attack needs none, kept), the log damaged
through raw SQL, and `export` must refuse, naming the first damaged index and its
kind. The attacker may also hold the exporter: a bundle edited as the damaged log
would have produced it (lines dropped, truncated, marked purged, swapped, flipped,
renumbered, added past the end) must fail `verify_bundle`, naming the index.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from audit.bundle import STEPS, BundleInvalid, BundleReport, verify_bundle
from audit.checkpoint import NoteSigner
from audit.export import AuditDamaged, ExportFilter, iter_bundle, subject_pseudonym, write_bundle
from audit.log import AuditLog
from audit.merkle import Frontier, leaf_hash
from audit.record import request_record
from audit.store import AuditStore
from audit.subjects import SubjectKeys
from tests.audit.conftest import RawDb

T0 = 1_800_000_000_000  # ms; record i is stamped T0 + i seconds
SIZE = 40
CHECKPOINTS = (10, 25, 40)
CLIENTS = ("svc-a", "svc-b", "svc-c")
TENANTS = ("t1", "t2", None, "t1")
USERS = ("ana", "ben", "chloe", "dev", "eve")
ALL = ExportFilter(T0, T0 + 10_000_000)


@dataclass
class Scene:
    store: AuditStore
    raw: RawDb
    signer: NoteSigner
    kek: bytes
    handle_key: bytes
    clock: list[float]  # seconds
    tmp: Path

    def log(self) -> AuditLog:
        """The log as a gateway process opens it: same store, same keys."""
        keys = SubjectKeys(self.store, kek=self.kek, handle_key=self.handle_key)
        return AuditLog(self.store, signer=self.signer, subject_keys=keys, clock=self.now)

    def now(self) -> float:
        return self.clock[0]

    @property
    def pubkey(self) -> str:
        return self.signer.verifier_key()

    def export(self, flt: ExportFilter = ALL, name: str = "bundle.zip") -> Path:
        path = self.tmp / name
        write_bundle(self.log(), flt, path)
        return path

    def payload(self, index: int) -> bytes:
        (row,) = self.raw.query("SELECT record FROM audit_payloads WHERE idx = ?", (index,))
        return bytes(row[0])


def _record(audit_log: AuditLog, i: int) -> dict[str, Any]:
    tenant, user = TENANTS[i % len(TENANTS)], USERS[i % len(USERS)]
    key = audit_log.subjects.get_or_create(audit_log.subjects.handle(tenant, user))
    request_id = f"req-{i:03d}"
    return request_record(
        ts_ms=T0 + i * 1000,
        request_id=request_id,
        route="/v1/rank",
        action="rank",
        client_id=CLIENTS[i % len(CLIENTS)],
        issuer="https://issuer.test",
        subject=key.pseudonym,
        status=200,
        outcome="ok",
        policy_ids=["default.permit"],
        model={"name": "ranker", "version": "1"},
        latency_us=100 + i,
        sealed=SubjectKeys.seal(key, request_id, {"user_id": user}),
        tenant=tenant,
    )


async def _fill(scene: Scene) -> None:
    audit_log = scene.log()
    try:
        for i in range(SIZE):
            scene.clock[0] = (T0 + i * 1000) / 1000
            await audit_log.append(_record(audit_log, i))
            if i + 1 in CHECKPOINTS:
                audit_log.publish_checkpoint()
    finally:
        await audit_log.close()
    scene.clock[0] = (T0 + 100_000) / 1000


@pytest.fixture
def scene(store: AuditStore, raw: RawDb, tmp_path: Path) -> Scene:
    built = Scene(
        store,
        raw,
        NoteSigner.generate("test.example/audit"),
        os.urandom(32),
        os.urandom(32),
        [T0 / 1000],
        tmp_path,
    )
    asyncio.run(_fill(built))
    assert [cp.size for cp in store.checkpoints()] == list(CHECKPOINTS)
    return built


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in members(path)["records.jsonl"].splitlines()]


def opened(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line["record"]) for line in lines(path) if "record" in line]


def forge(path: Path, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Path:
    """records.jsonl rewritten by `edit`, every digest in the manifest recomputed: only
    the content checks stand in the way, as for an attacker who holds the exporter."""
    content = members(path)
    rows = edit([json.loads(line) for line in content["records.jsonl"].splitlines()])
    content["records.jsonl"] = b"".join(
        json.dumps(row, sort_keys=True).encode() + b"\n" for row in rows
    )
    manifest = json.loads(content["manifest.json"])
    manifest["members"] = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in content.items()
        if name != "manifest.json"
    }
    content["manifest.json"] = json.dumps(manifest).encode()
    out = path.with_name("forged-" + path.name)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return out


def refused(scene: Scene, flt: ExportFilter = ALL) -> AuditDamaged:
    with pytest.raises(AuditDamaged) as caught:
        scene.export(flt, name="refused.zip")
    assert not (scene.tmp / "refused.zip").exists()
    return caught.value


def invalid(scene: Scene, path: Path) -> BundleInvalid:
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(path, pubkey=scene.pubkey)
    return caught.value


# --- the undamaged log ----------------------------------------------------------------


def test_an_unfiltered_bundle_opens_every_leaf_and_says_it_is_complete(scene: Scene) -> None:
    path = scene.export()
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.start, report.end, report.checkpoint_size) == (0, SIZE, SIZE)
    assert (report.records, report.unopened, report.purged) == (SIZE, 0, 0)
    assert report.complete == f"complete: records 0..{SIZE - 1} of checkpoint {SIZE}"
    assert [row["index"] for row in lines(path)] == list(range(SIZE))
    assert [n for n, _ in STEPS] == list(range(1, 10))


@pytest.mark.parametrize(
    ("flt", "keep"),
    [
        pytest.param(
            ExportFilter(T0, T0 + 10_000_000, client_id="svc-b"),
            lambda i: CLIENTS[i % 3] == "svc-b",
            id="client",
        ),
        pytest.param(
            ExportFilter(T0, T0 + 10_000_000, tenant="t1"),
            lambda i: TENANTS[i % 4] == "t1",
            id="tenant",
        ),
        pytest.param(
            ExportFilter(T0, T0 + 10_000_000, tenant=None, tenant_scoped=True),
            lambda i: TENANTS[i % 4] is None,
            id="no-tenant",
        ),
    ],
)
def test_a_filtered_bundle_opens_its_records_and_proves_the_rest_are_there(
    scene: Scene, flt: ExportFilter, keep: Callable[[int], bool]
) -> None:
    path = scene.export(flt)
    report = verify_bundle(path, pubkey=scene.pubkey)
    want = [i for i in range(SIZE) if keep(i)]
    assert [int(r["request_id"][4:]) for r in opened(path)] == want
    assert (report.start, report.end, report.unopened) == (0, SIZE, SIZE - len(want))
    assert report.records == len(want)
    # Every leaf is there: a dropped run of hashes is a missing index, named.
    runs = [row for row in lines(path) if "hashes" in row]
    assert runs
    gone = runs[len(runs) // 2]["index"]
    error = invalid(scene, forge(path, lambda rows: [r for r in rows if r["index"] != gone]))
    assert (error.step, error.index) == (6, gone), error
    # Opening nothing else: unopened leaves carry no record text and no personal data.
    text = members(path)["records.jsonl"]
    for i in range(SIZE):
        if not keep(i):
            assert f"req-{i:03d}".encode() not in text


def test_a_subject_bundle_opens_that_subjects_records_only(scene: Scene) -> None:
    audit_log = scene.log()
    pseudonym = subject_pseudonym(audit_log, "t1", "ana")
    assert pseudonym is not None
    path = scene.export(ExportFilter(T0, T0 + 10_000_000, subject_pseudonym=pseudonym))
    report = verify_bundle(path, pubkey=scene.pubkey)
    mine = [i for i in range(SIZE) if (TENANTS[i % 4], USERS[i % 5]) == ("t1", "ana")]
    assert [int(r["request_id"][4:]) for r in opened(path)] == mine
    assert report.unopened == SIZE - len(mine)
    personal = {row["personal"]["user_id"] for row in lines(path) if "record" in row}
    assert personal == {"ana"}


def test_an_unfiltered_bundle_may_not_hide_a_record_as_a_hash(scene: Scene) -> None:
    path = scene.export()

    def hide(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        row = rows[7]
        rows[7] = {"index": 7, "hashes": row["leaf_hash"]}
        return rows

    error = invalid(scene, forge(path, hide))
    assert (error.step, error.index) == (6, 7), error
    assert "unfiltered" in str(error)


# --- boundaries ------------------------------------------------------------------------


def test_a_time_range_maps_to_an_index_range_with_its_boundaries_opened(scene: Scene) -> None:
    path = scene.export(ExportFilter(T0 + 10_000, T0 + 20_000))
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.start, report.end) == (10, 20)
    assert report.complete == f"complete: records 10..19 of checkpoint {SIZE}"
    span = json.loads(members(path)["range.json"])
    assert (span["before"]["index"], span["after"]["index"]) == (9, 20)
    assert json.loads(span["before"]["record"])["ts_ms"] == T0 + 9_000
    assert json.loads(span["after"]["record"])["ts_ms"] == T0 + 20_000
    assert "personal" not in span["before"]  # a boundary is proved, never unsealed
    # The signed checkpoint at 10 lies at the range's start, not inside it.
    assert span["milestones"] == []
    # A range that ends mid-log and starts at 0: only the boundary after it.
    head = scene.export(ExportFilter(0, T0 + 5_000), name="head.zip")
    assert verify_bundle(head, pubkey=scene.pubkey).complete.startswith("complete: records 0..4")
    assert json.loads(members(head)["range.json"])["before"] is None


def test_a_filtered_bundle_never_opens_anothers_record_even_as_a_boundary(scene: Scene) -> None:
    """Records 9 and 20 bound the time range but are other clients': the range grows to
    the nearest records of the client exported (7 and 22), the leaves between travel as
    hashes, and nothing of the other clients is opened."""
    path = scene.export(ExportFilter(T0 + 10_000, T0 + 20_000, client_id="svc-b"))
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.start, report.end) == (8, 22)
    assert [int(r["request_id"][4:]) for r in opened(path)] == [10, 13, 16, 19]
    span = json.loads(members(path)["range.json"])
    boundaries = [json.loads(span[side]["record"]) for side in ("before", "after")]
    assert [(b["request_id"], b["client_id"]) for b in boundaries] == [
        ("req-007", "svc-b"),
        ("req-022", "svc-b"),
    ]
    assert b"svc-a" not in members(path)["range.json"]
    assert b"svc-a" not in members(path)["records.jsonl"]


def _claim(filter_key: str, value: int) -> Callable[[dict[str, bytes]], None]:
    def edit(content: dict[str, bytes]) -> None:
        manifest = json.loads(content["manifest.json"])
        manifest["filter"][filter_key] = value
        content["manifest.json"] = json.dumps(manifest).encode()

    return edit


@pytest.mark.parametrize(
    ("exported", "claimed", "index"),
    [
        # Exported from 10.5 s (so record 10 is the boundary), claimed to start at 10 s.
        ((T0 + 10_500, T0 + 20_000), ("from_ms", T0 + 10_000), 10),
        # Exported up to 19.5 s (record 20 is the boundary), claimed to reach 20.5 s.
        ((T0 + 10_000, T0 + 19_500), ("to_ms", T0 + 20_500), 20),
    ],
)
def test_a_bundle_that_claims_more_time_than_its_range_fails_at_the_boundary(
    scene: Scene, exported: tuple[int, int], claimed: tuple[str, int], index: int
) -> None:
    path = scene.export(ExportFilter(*exported))
    content = members(path)
    _claim(*claimed)(content)
    forged = path.with_name("claimed.zip")
    with zipfile.ZipFile(forged, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    error = invalid(scene, forge(forged, lambda rows: rows))
    assert (error.step, error.index) == (5, index), error


# --- damage in the database: export refuses, naming the index --------------------------

Damage = Callable[[Scene], tuple[int, str]]


def delete_leaf_row(s: Scene) -> tuple[int, str]:
    s.raw.drop_triggers()
    s.raw.execute("DELETE FROM audit_leaves WHERE idx = 12")
    s.raw.execute("DELETE FROM audit_payloads WHERE idx = 12")
    return 12, "missing record"


def truncate_tail(s: Scene) -> tuple[int, str]:
    # A careful attacker leaves a log that is whole at 34; the checkpoint at 40 is not.
    s.raw.drop_triggers()
    frontier = Frontier.from_nodes(34, s.store.node)
    s.raw.execute("DELETE FROM audit_leaves WHERE idx >= 34")
    s.raw.execute("DELETE FROM audit_payloads WHERE idx >= 34")
    for level, index in s.raw.query("SELECT level, idx FROM audit_nodes"):
        if (index + 1) << level > 34:
            s.raw.execute("DELETE FROM audit_nodes WHERE level = ? AND idx = ?", (level, index))
    s.raw.execute(
        "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1",
        (34, b"".join(frontier.hashes())),
    )
    return 34, "truncated log"


def delete_payload(s: Scene) -> tuple[int, str]:
    s.raw.drop_triggers()
    s.raw.execute("DELETE FROM audit_payloads WHERE idx = 21")
    return 21, "missing record"


def move_watermark(s: Scene) -> tuple[int, str]:
    # Every trigger in place: the guards allow exactly this, and no purge was ever logged.
    s.raw.execute("UPDATE audit_retention SET purged_below = 20 WHERE id = 1")
    s.raw.execute("DELETE FROM audit_payloads WHERE idx < 20")
    return 0, "missing record"


def swap_records(s: Scene) -> tuple[int, str]:
    s.raw.drop_triggers()
    first, second = s.payload(5), s.payload(30)
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 5", (second,))
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 30", (first,))
    return 5, "altered record"


def swap_whole_rows(s: Scene) -> tuple[int, str]:
    # Leaf hashes, times and payloads move together: each row is self-consistent.
    s.raw.drop_triggers()
    rows = {
        i: s.raw.query("SELECT leaf_hash, request_id, ts_ms FROM audit_leaves WHERE idx = ?", (i,))[
            0
        ]
        for i in (5, 30)
    }
    payloads = {5: s.payload(5), 30: s.payload(30)}
    for index, other in ((5, 30), (30, 5)):
        s.raw.execute(
            "UPDATE audit_leaves SET leaf_hash = ?, request_id = ?, ts_ms = ? WHERE idx = ?",
            (bytes(rows[other][0]), rows[other][1], rows[other][2], index),
        )
        s.raw.execute(
            "UPDATE audit_payloads SET record = ? WHERE idx = ?", (payloads[other], index)
        )
    return 5, "altered record"


def flip_byte(s: Scene) -> tuple[int, str]:
    s.raw.drop_triggers()
    record = bytearray(s.payload(17))
    record[len(record) // 2] ^= 0x01
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 17", (bytes(record),))
    return 17, "altered record"


def rebuild_tree_without_a_record(s: Scene) -> tuple[int, str]:
    """Record 12 deleted, the later ones renumbered, every node and the head recomputed:
    the stored log is whole and consistent; only the signed checkpoints remember."""
    s.raw.drop_triggers()
    rows = s.raw.query(
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM audit_leaves l "
        "JOIN audit_payloads p ON p.idx = l.idx ORDER BY l.idx"
    )
    for table in ("audit_payloads", "audit_leaves", "audit_nodes"):
        s.raw.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    tree = Frontier()
    for index, (_, digest, request_id, ts_ms, record) in enumerate(r for r in rows if r[0] != 12):
        s.raw.execute(
            "INSERT INTO audit_leaves (idx, leaf_hash, request_id, ts_ms) VALUES (?, ?, ?, ?)",
            (index, bytes(digest), request_id, ts_ms),
        )
        s.raw.execute(
            "INSERT INTO audit_payloads (idx, record) VALUES (?, ?)", (index, bytes(record))
        )
        for level, node, value in tree.append(bytes(digest)):
            s.raw.execute(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", (level, node, value)
            )
    s.raw.execute(
        "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1",
        (tree.size, b"".join(tree.hashes())),
    )
    # The last signed checkpoint that still matches is 10; the damage is after it.
    return 10, "rewritten log"


def forge_row_past_the_head(s: Scene) -> tuple[int, str]:
    s.raw.drop_triggers()
    payload = b'{"kind":"request","request_id":"forged","ts_ms":1,"v":1}'
    s.raw.execute(
        "INSERT INTO audit_leaves (idx, leaf_hash, request_id, ts_ms) VALUES (?, ?, ?, ?)",
        (SIZE, leaf_hash(payload), "forged", 1),
    )
    s.raw.execute("INSERT INTO audit_payloads (idx, record) VALUES (?, ?)", (SIZE, payload))
    return SIZE, "inserted record"


DAMAGES: list[Damage] = [
    delete_leaf_row,
    truncate_tail,
    delete_payload,
    move_watermark,
    swap_records,
    swap_whole_rows,
    flip_byte,
    rebuild_tree_without_a_record,
    forge_row_past_the_head,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_export_of_a_damaged_log_is_refused_naming_the_index(scene: Scene, damage: Damage) -> None:
    index, kind = damage(scene)
    found = refused(scene)
    assert (found.index, found.kind) == (index, kind), str(found)
    assert str(found).startswith(f"record {index}: {kind}: ")
    if kind == "rewritten log":
        assert "records 10..24" in str(found)  # record 12 lies between checkpoints 10 and 25


def test_export_of_a_range_before_the_damage_is_served(scene: Scene) -> None:
    """The bundle proves its own range against the signed root: damage past it (a
    record flipped at 17) does not change that proof, and `verify` reports it."""
    flip_byte(scene)
    path = scene.export(ExportFilter(T0, T0 + 10_000))
    assert verify_bundle(path, pubkey=scene.pubkey).complete.startswith("complete: records 0..9")


# --- the same damage in the bundle: verify-bundle names the index -----------------------

Forgery = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _drop(index: int) -> Forgery:
    return lambda rows: [r for r in rows if r["index"] != index]


def _truncate(at: int) -> Forgery:
    return lambda rows: [r for r in rows if r["index"] < at]


def _purge(first: int, last: int) -> Forgery:
    """Leaves first..last-1 passed off as purged by retention: hashes only."""

    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        hashes = b"".join(base64.b64decode(r["leaf_hash"]) for r in rows[first:last])
        run = {"index": first, "purged": base64.b64encode(hashes).decode()}
        return [*rows[:first], run, *rows[last:]]

    return edit


def _swap(fields: tuple[str, ...]) -> Forgery:
    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for name in fields:
            rows[5][name], rows[30][name] = rows[30][name], rows[5][name]
        return rows

    return edit


def _flip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = rows[17]["record"]
    at = text.index('"route":"/v1/rank"') + 10
    rows[17]["record"] = text[:at] + ("X" if text[at] != "X" else "Y") + text[at + 1 :]
    return rows


def _renumber(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Record 12 removed and the rest renumbered, one more record at the end to keep count."""
    kept = [r for r in rows if r["index"] != 12]
    for number, row in enumerate(kept):
        row["index"] = number
    return [*kept, {**kept[-1], "index": SIZE - 1}]


def _past_end(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*rows, {**rows[-1], "index": SIZE}]


@pytest.mark.parametrize(
    ("forgery", "step", "index"),
    [
        pytest.param(_drop(12), 6, 12, id="delete-leaf"),
        pytest.param(_truncate(34), 6, 34, id="truncate-tail"),
        pytest.param(_purge(21, 22), 6, 21, id="payload-as-purged"),
        pytest.param(_purge(0, 20), 6, 0, id="watermark-moved"),
        pytest.param(_swap(("record", "personal")), 6, 5, id="swap-records"),
        pytest.param(_flip, 6, 17, id="flip-byte"),
        pytest.param(_past_end, 6, SIZE, id="leaf-past-the-range"),
        # Self-consistent lines: only the signed roots tell; the milestones narrow it down.
        pytest.param(_swap(("record", "personal", "leaf_hash")), 7, 0, id="swap-whole-leaves"),
        pytest.param(_renumber, 7, 10, id="rebuilt-without-a-record"),
    ],
)
def test_a_bundle_of_a_damaged_log_fails_naming_the_index(
    scene: Scene, forgery: Forgery, step: int, index: int
) -> None:
    path = scene.export()
    error = invalid(scene, forge(path, forgery))
    assert (error.step, error.index) == (step, index), str(error)
    assert f"index {index}" in str(error) or f"indices {index}.." in str(error)
    if step == 7:
        # Between the last signed checkpoint that the leaves still rebuild and the next.
        assert ("0..9" if index == 0 else "10..24") in error.where


# --- retention -------------------------------------------------------------------------


async def _purge_before(scene: Scene, cutoff_ms: int) -> int:
    audit_log = scene.log()
    try:
        return await audit_log.purge_before(cutoff_ms)
    finally:
        await audit_log.close()


def test_a_bundle_after_a_logged_purge_verifies_and_carries_the_signed_purge(scene: Scene) -> None:
    assert asyncio.run(_purge_before(scene, T0 + 10_000)) == 10
    path = scene.export()
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.purged, report.end, report.checkpoint_size) == (10, SIZE + 1, SIZE + 1)
    (purge,) = [json.loads(line) for line in members(path)["purges.jsonl"].splitlines()]
    assert purge["index"] == SIZE
    assert json.loads(purge["record"])["purged_below"] == 10
    # Without the purge record, the purged leaves are damage, named by index.
    content = members(path)
    content["purges.jsonl"] = b""
    stripped = path.with_name("stripped.zip")
    with zipfile.ZipFile(stripped, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    error = invalid(scene, forge(stripped, lambda rows: rows))
    assert (error.step, error.index) == (6, 0), error


def test_a_range_starting_after_purged_leaves_proves_its_start_by_the_purge(scene: Scene) -> None:
    asyncio.run(_purge_before(scene, T0 + 10_000))
    # Leaf 9 is purged; the purge's signed cutoff (10 s) is no later than `from`.
    path = scene.export(ExportFilter(T0 + 10_000, T0 + 20_000))
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.start, report.end, report.purged) == (10, 20, 0)
    assert json.loads(members(path)["range.json"])["before"]["purged"] is True
    # A range starting inside the purged leaves cannot prove that leaf 4 is older than
    # 5 s (the purge only says older than 10 s): it reaches back to 0.
    inside = scene.export(ExportFilter(T0 + 5_000, T0 + 20_000), name="inside.zip")
    report = verify_bundle(inside, pubkey=scene.pubkey)
    assert (report.start, report.end, report.purged) == (0, 20, 10)


def test_a_purge_logged_after_the_checkpoint_gets_a_newer_checkpoint(scene: Scene) -> None:
    asyncio.run(_purge_before(scene, T0 + 10_000))
    # Only the range before the purge: the latest checkpoint (40) does not hold the purge.
    path = scene.export(ExportFilter(T0, T0 + 20_000))
    report = verify_bundle(path, pubkey=scene.pubkey)
    assert (report.checkpoint_size, report.purged) == (SIZE + 1, 10)


# --- format and stream ----------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 3])
def test_another_bundle_version_is_refused_clearly(scene: Scene, version: int) -> None:
    path = scene.export()
    content = members(path)
    manifest = json.loads(content["manifest.json"])
    manifest["version"] = version
    content["manifest.json"] = json.dumps(manifest).encode()
    other = path.with_name(f"v{version}.zip")
    with zipfile.ZipFile(other, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    error = invalid(scene, other)
    assert error.step == 2
    assert f"version {version}" in error.detail
    assert "version 2 only" in error.detail


def test_a_version_1_bundle_is_refused_by_its_version_not_its_members(scene: Scene) -> None:
    """Version 1 had proofs.jsonl and no range.json: say "version 1", not "unexpected member"."""
    content = members(scene.export())
    del content["range.json"], content["purges.jsonl"]
    content["proofs.jsonl"] = b""
    manifest = json.loads(content["manifest.json"])
    manifest["version"] = 1
    content["manifest.json"] = json.dumps(manifest).encode()
    old = scene.tmp / "v1.zip"
    with zipfile.ZipFile(old, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    error = invalid(scene, old)
    assert (error.step, error.where) == (2, "manifest.json")
    assert "version 1; this verifier reads version 2 only" in error.detail


def test_damage_between_the_check_and_the_stream_never_yields_a_zip(scene: Scene) -> None:
    chunks = iter_bundle(scene.log(), ALL)  # the check passed
    scene.raw.drop_triggers()
    scene.raw.execute("DELETE FROM audit_leaves WHERE idx = 30")
    sent = [next(chunks)]
    with pytest.raises(AuditDamaged) as caught:
        sent.extend(chunks)
    assert caught.value.index == 30
    body = scene.tmp / "sent.zip"
    body.write_bytes(b"".join(sent))
    assert not zipfile.is_zipfile(body)  # no central directory: never a short bundle


def test_the_report_carries_the_counts_for_a_reader(scene: Scene) -> None:
    report: BundleReport = verify_bundle(scene.export(), pubkey=scene.pubkey)
    assert report.summary["by_route"] == {"/v1/rank": SIZE}
    assert report.summary["by_client"] == {"svc-a": 14, "svc-b": 13, "svc-c": 13}
