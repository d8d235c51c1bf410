"""Compliance export bundles: built from a real SQLite log, verified offline, tampered with."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import struct
import warnings
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from audit.bundle import BundleInvalid, verify_bundle
from audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from audit.export import (
    ExportError,
    ExportFilter,
    iter_bundle,
    subject_pseudonym,
    write_bundle,
)
from audit.log import AuditLog
from audit.merkle import EMPTY_ROOT
from audit.record import request_record
from audit.sqlite_store import SqliteAuditStore
from audit.subjects import SubjectKeys

T0 = 1_700_000_000_000  # ms; record i is stamped T0 + i seconds
N = 50
ALL = ExportFilter(T0, T0 + 1_000_000)
CLIENTS = ("svc-a", "svc-b", "svc-c")
STATUSES = ((200, "ok"), (200, "ok"), (403, "forbidden"), (429, "rate-limited"), (500, "error"))


@dataclass
class Env:
    log: AuditLog
    store: SqliteAuditStore
    db: Path
    tmp: Path
    records: list[dict[str, Any]]
    clock: list[float]  # seconds; the log's clock reads clock[0]

    @property
    def pubkey(self) -> str:
        return self.log.verifier.verifier_key()


def _record(audit_log: AuditLog, i: int) -> dict[str, Any]:
    status, outcome = STATUSES[i % len(STATUSES)]
    subject = sealed = None
    request_id = f"req-{i:03d}"
    user = "u1" if i % 5 == 0 else "u2" if i % 7 == 0 else None
    if user is not None:
        key = audit_log.subjects.get_or_create(audit_log.subjects.handle(None, user))
        subject = key.pseudonym
        sealed = SubjectKeys.seal(key, request_id, {"user_id": user})
    return request_record(
        ts_ms=T0 + i * 1000,
        request_id=request_id,
        route="/v1/rank",
        action="rank",
        client_id=CLIENTS[i % 3],
        issuer="https://issuer.test",
        subject=subject,
        status=status,
        outcome=outcome,
        policy_ids=["default.permit"] if status == 200 else [],
        model={"name": "ranker", "version": str(1 + i % 2), "digest": "sha256:00", "variant": None}
        if status == 200
        else None,
        latency_us=100 + i,
        sealed=sealed,
    )


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = tmp_path / "audit.sqlite3"
    store = SqliteAuditStore(db)
    clock = [(T0 + 60_000) / 1000]  # erasure and retention events land inside ALL
    subjects = SubjectKeys(store, kek=os.urandom(32), handle_key=os.urandom(32))
    audit_log = AuditLog(
        store,
        signer=NoteSigner.generate("test-log"),
        subject_keys=subjects,
        clock=lambda: clock[0],
    )
    records = [_record(audit_log, i) for i in range(N)]
    # Scheduled in order, so leaf i holds record i.
    indices = await asyncio.gather(*(audit_log.append(r) for r in records))
    assert indices == list(range(N))
    yield Env(audit_log, store, db, tmp_path, records, clock)
    await audit_log.close()
    store.close()


def export(env: Env, flt: ExportFilter = ALL, name: str = "bundle.zip", **kw: Any) -> Path:
    path = env.tmp / name
    write_bundle(env.log, flt, path, **kw)
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def lines(path: Path, name: str = "records.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in members(path)[name].splitlines()]


def request_ids(path: Path) -> list[str]:
    return [
        json.loads(line["record"])["request_id"]
        for line in lines(path)
        if "record" in line and json.loads(line["record"])["kind"] == "request"
    ]


def expected(env: Env, keep: Callable[[dict[str, Any]], bool]) -> list[str]:
    return [r["request_id"] for r in env.records if keep(r)]


# --- round trip ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bundle_verifies_offline_with_the_database_gone(env: Env) -> None:
    path = export(env)
    await env.log.close()
    env.store.close()
    for leftover in env.tmp.glob("audit.sqlite3*"):
        leftover.unlink()

    report = verify_bundle(path, pubkey=env.pubkey)

    assert (report.origin, report.checkpoint_size, report.records) == ("test-log", N, N)
    assert (report.erased, report.purged, report.previous_size) == (0, 0, None)
    assert report.key_source == "argument"
    assert verify_bundle(path).key_source == "bundle"
    assert request_ids(path) == [r["request_id"] for r in env.records]
    sealed = [line for line in lines(path) if line["personal"] is not None]
    assert [line["personal"] for line in sealed] == [
        {"user_id": "u1" if line["index"] % 5 == 0 else "u2"} for line in sealed
    ]
    summary = json.loads(members(path)["summary.json"])
    assert summary["by_decision"] == {"allow": 20, "deny": 10, "refuse": 10, "error": 10}
    assert summary["by_refusal"] == {"forbidden": 10, "rate-limited": 10, "error": 10}
    assert summary["by_model"] == {"ranker@1": 10, "ranker@2": 10, "(none)": 30}
    assert summary["by_client"] == {"svc-a": 17, "svc-b": 17, "svc-c": 16}
    assert summary["by_pii_type"] == {}  # no redaction stage yet: the section stays, empty
    assert summary["time_range"] == {"first_ts_ms": T0, "last_ts_ms": T0 + (N - 1) * 1000}
    assert "Requests by decision:" in members(path)["summary.txt"].decode()


@pytest.mark.asyncio
async def test_an_empty_range_gives_an_empty_bundle_that_verifies(env: Env) -> None:
    path = export(env, ExportFilter(T0 - 10_000, T0))
    assert verify_bundle(path, pubkey=env.pubkey).records == 0


@pytest.mark.asyncio
async def test_the_bundle_streams_and_a_consumer_may_hang_up(env: Env) -> None:
    more = 3000  # enough that records.jsonl alone spans several chunks
    await asyncio.gather(*(env.log.append(_record(env.log, N + i)) for i in range(more)))
    chunks = list(iter_bundle(env.log, ExportFilter(T0, T0 + 10_000_000)))
    assert len(chunks) > 4  # header members, records in pieces, the rest
    assert max(len(chunk) for chunk in chunks) < 256 * 1024
    (env.tmp / "streamed.zip").write_bytes(b"".join(chunks))
    assert verify_bundle(env.tmp / "streamed.zip", pubkey=env.pubkey).records == N + more

    stream = iter_bundle(env.log, ALL)
    next(stream)
    stream.close()  # a client that hangs up: nothing raised, nothing left open


@pytest.mark.asyncio
async def test_a_checkpoint_is_published_only_when_the_range_needs_one(env: Env) -> None:
    export(env, name="one.zip")
    export(env, name="two.zip")
    assert [cp.size for cp in env.store.checkpoints()] == [N]
    await env.log.append(_record(env.log, N))
    export(env, ExportFilter(T0, T0 + 10_000), name="three.zip")  # the new record is later
    assert [cp.size for cp in env.store.checkpoints()] == [N]
    path = export(env, name="four.zip")
    assert [cp.size for cp in env.store.checkpoints()] == [N, N + 1]
    assert verify_bundle(path, pubkey=env.pubkey).records == N + 1


# --- filters -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_filter_by_time(env: Env) -> None:
    path = export(env, ExportFilter(T0 + 10_000, T0 + 20_000))
    want = expected(env, lambda r: T0 + 10_000 <= r["ts_ms"] < T0 + 20_000)
    assert request_ids(path) == want
    assert len(want) == 10
    assert [line["index"] for line in lines(path)] == list(range(10, 20))
    assert verify_bundle(path, pubkey=env.pubkey).records == 10


@pytest.mark.asyncio
async def test_filter_by_client(env: Env) -> None:
    path = export(env, ExportFilter(T0, T0 + 1_000_000, client_id="svc-b"))
    assert request_ids(path) == expected(env, lambda r: r["client_id"] == "svc-b")
    verify_bundle(path, pubkey=env.pubkey)


@pytest.mark.asyncio
async def test_filter_by_subject(env: Env) -> None:
    pseudonym = subject_pseudonym(env.log, None, "u1")
    assert pseudonym is not None
    assert subject_pseudonym(env.log, None, "nobody") is None
    assert subject_pseudonym(env.log, "other-tenant", "u1") is None
    path = export(env, ExportFilter(T0, T0 + 1_000_000, subject_pseudonym=pseudonym))
    assert request_ids(path) == expected(env, lambda r: r["subject"] == pseudonym)
    opened = [line for line in lines(path) if "record" in line]  # the rest: hashes only
    assert {line["personal"]["user_id"] for line in opened} == {"u1"}
    assert verify_bundle(path, pubkey=env.pubkey).records == 10


def test_a_filter_must_be_a_range() -> None:
    with pytest.raises(ExportError):
        ExportFilter(T0 + 1, T0)
    with pytest.raises(ExportError):
        ExportFilter(T0, T0 + 1, client_id="")


# --- tampering -----------------------------------------------------------------------


def _data_offset(blob: bytes, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    return int(info.header_offset + 30 + name_len + extra_len)


@pytest.mark.parametrize(
    ("member", "where"),
    [
        ("records.jsonl", 0.5),
        ("records.jsonl", 0.05),
        ("range.json", 0.5),
        ("checkpoint.note", 0.9),
        ("pubkey.txt", 0.5),
        ("summary.json", 0.5),
        ("summary.txt", 0.5),
        ("manifest.json", 0.5),
        ("records.jsonl", "name"),  # the local header's file name
        ("records.jsonl", "crc"),  # the central directory's CRC
    ],
)
@pytest.mark.asyncio
async def test_one_altered_byte_in_the_file_fails(
    env: Env, member: str, where: float | str
) -> None:
    path = export(env)
    blob = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if where == "name":
        offset = info.header_offset + 30
    elif where == "crc":
        offset = blob.find(b"PK\x01\x02")
        while blob[offset + 46 : offset + 46 + len(member)] != member.encode():
            offset = blob.find(b"PK\x01\x02", offset + 4)
            assert offset > 0
        offset += 16
    else:
        assert isinstance(where, float)
        offset = _data_offset(bytes(blob), info) + int(info.compress_size * where)
    blob[offset] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(BundleInvalid):
        verify_bundle(path, pubkey=env.pubkey)


def rewrite(path: Path, edit: Callable[[dict[str, bytes]], None], *, fix: bool = True) -> Path:
    """Re-pack the bundle after `edit`, as a forger would: CRCs valid, and the manifest's
    digests recomputed when `fix`, so that only the content checks stand in the way."""
    content = members(path)
    edit(content)
    if fix:
        manifest = json.loads(content["manifest.json"])
        manifest["members"] = {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in content.items()
            if name != "manifest.json"
        }
        content["manifest.json"] = json.dumps(manifest).encode()
    out = path.with_name("forged.zip")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return out


def _edit_line(name: str, number: int, change: Callable[[dict[str, Any]], None]) -> Any:
    def edit(content: dict[str, bytes]) -> None:
        rows = content[name].splitlines()
        row = json.loads(rows[number])
        change(row)
        rows[number] = json.dumps(row).encode()
        content[name] = b"\n".join(rows) + b"\n"

    return edit


def _flip_decision(row: dict[str, Any]) -> None:
    row["record"] = row["record"].replace('"decision":"deny"', '"decision":"allow"')


def _flip_decision_and_rehash(row: dict[str, Any]) -> None:
    """A forger who also fixes the leaf hash: only the signed root stands in the way."""
    _flip_decision(row)
    digest = hashlib.sha256(b"\x00" + row["record"].encode()).digest()
    row["leaf_hash"] = base64.b64encode(digest).decode()


def _add_personal(row: dict[str, Any]) -> None:
    row["personal"] = {"user_id": "someone"}


def _claim_index(row: dict[str, Any]) -> None:
    row["index"] = 2  # line 3 claims the index of line 2


def _forge_signature(content: dict[str, bytes]) -> None:
    note = content["checkpoint.note"]
    head, sig = note.rsplit(b" ", 1)
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 1
    content["checkpoint.note"] = head + b" " + base64.b64encode(bytes(raw)) + b"\n"


def _forge_summary(content: dict[str, bytes]) -> None:
    summary = json.loads(content["summary.json"])
    summary["by_decision"]["allow"] -= 1
    summary["by_decision"]["deny"] += 1
    content["summary.json"] = json.dumps(summary).encode()


def _forge_summary_text(content: dict[str, bytes]) -> None:
    text = content["summary.txt"]
    content["summary.txt"] = text.replace(b"Requests by decision:", b"Requests by verdict:")
    assert content["summary.txt"] != text


def _narrow_filter(content: dict[str, bytes]) -> None:
    manifest = json.loads(content["manifest.json"])
    manifest["filter"]["client_id"] = "svc-a"
    content["manifest.json"] = json.dumps(manifest).encode()


def _drop(name: str) -> Callable[[dict[str, bytes]], None]:
    def edit(content: dict[str, bytes]) -> None:
        del content[name]

    return edit


def _add(name: str, data: bytes = b"x") -> Callable[[dict[str, bytes]], None]:
    def edit(content: dict[str, bytes]) -> None:
        content[name] = data

    return edit


@pytest.mark.parametrize(
    ("edit", "step"),
    [
        pytest.param(_edit_line("records.jsonl", 2, _flip_decision), 6, id="record-line"),
        pytest.param(_edit_line("records.jsonl", 3, _add_personal), 6, id="personal-on-unsealed"),
        pytest.param(_edit_line("records.jsonl", 3, _claim_index), 6, id="record-reindexed"),
        pytest.param(
            _edit_line("records.jsonl", 2, _flip_decision_and_rehash), 7, id="record-rehashed"
        ),
        pytest.param(_forge_signature, 3, id="checkpoint-signature"),
        pytest.param(_forge_summary, 9, id="summary-json"),
        pytest.param(_forge_summary_text, 9, id="summary-txt"),
        pytest.param(_narrow_filter, 6, id="filter-claimed-narrower"),
        pytest.param(_drop("range.json"), 1, id="missing-member"),
        pytest.param(_add("../evil.txt"), 1, id="path-traversal"),
        pytest.param(_add("extra.txt"), 1, id="unexpected-member"),
        pytest.param(_add("pubkey.txt", b"k" * 5000), 1, id="oversize-member"),
    ],
)
@pytest.mark.asyncio
async def test_a_forged_bundle_fails_at_its_step(
    env: Env, edit: Callable[[dict[str, bytes]], None], step: int
) -> None:
    forged = rewrite(export(env), edit)
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(forged, pubkey=env.pubkey)
    assert caught.value.step == step, caught.value


@pytest.mark.asyncio
async def test_a_member_changed_without_the_manifest_fails_its_digest(env: Env) -> None:
    forged = rewrite(export(env), _forge_summary, fix=False)
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(forged, pubkey=env.pubkey)
    assert caught.value.step == 2
    assert caught.value.where == "summary.json"


@pytest.mark.asyncio
async def test_a_duplicate_member_is_rejected(env: Env) -> None:
    path = export(env)
    forged = env.tmp / "dup.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
            out.writestr("summary.json", src.read("summary.json"))
    with pytest.raises(BundleInvalid, match="duplicate") as caught:
        verify_bundle(forged, pubkey=env.pubkey)
    assert caught.value.step == 1


@pytest.mark.asyncio
async def test_not_a_zip_is_rejected(env: Env) -> None:
    path = env.tmp / "junk.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(path)
    assert caught.value.step == 1


@pytest.mark.asyncio
async def test_a_wrong_pubkey_fails(env: Env) -> None:
    path = export(env)
    impostor = NoteSigner.generate("test-log").verifier_key()
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(path, pubkey=impostor)
    assert caught.value.step == 3


@pytest.mark.asyncio
async def test_a_bundle_resigned_by_another_key_fails_with_the_auditors_key(env: Env) -> None:
    """Swapping checkpoint and pubkey.txt together fools only a verifier that trusts the bundle."""
    path = export(env)
    forger = NoteSigner.generate("test-log")
    cp = Checkpoint("test-log", N, hashlib.sha256(b"other tree").digest())

    def resign(content: dict[str, bytes]) -> None:
        content["checkpoint.note"] = sign_checkpoint(cp, forger)
        content["pubkey.txt"] = forger.verifier_key().encode() + b"\n"

    forged = rewrite(path, resign)
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(forged, pubkey=env.pubkey)
    assert caught.value.step == 3
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(forged)  # the forger's key verifies the note, but the leaves rebuild ours
    assert caught.value.step == 7


# --- consistency with an earlier export ------------------------------------------------


@pytest.mark.asyncio
async def test_a_previous_exports_checkpoint_gets_a_consistency_proof(env: Env) -> None:
    first = export(env, name="first.zip")
    old_note = members(first)["checkpoint.note"]
    for i in range(N, N + 13):
        await env.log.append(_record(env.log, i))
    second = export(env, name="second.zip", previous_checkpoint=old_note)

    report = verify_bundle(second, pubkey=env.pubkey)
    assert (report.previous_size, report.checkpoint_size) == (N, N + 13)
    assert report.previous_source == "bundle"
    mine = verify_bundle(second, pubkey=env.pubkey, previous_checkpoint=old_note)
    assert mine.previous_source == "argument"
    # The auditor's kept checkpoint works even against a bundle exported without one,
    # as long as nothing needs proving (same tree).
    assert verify_bundle(first, previous_checkpoint=old_note).previous_size == N

    new_note = members(second)["checkpoint.note"]
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(first, pubkey=env.pubkey, previous_checkpoint=new_note)
    assert caught.value.step == 8
    consistency = json.loads(members(second)["consistency.json"])
    assert (consistency["old_size"], consistency["new_size"]) == (N, N + 13)


@pytest.mark.asyncio
async def test_a_bundle_from_another_previous_checkpoint_fails(env: Env) -> None:
    first = export(env, ExportFilter(T0, T0 + 5_000), name="first.zip")
    small = members(first)["checkpoint.note"]
    for i in range(N, N + 3):
        await env.log.append(_record(env.log, i))
    middle = members(export(env, name="middle.zip"))["checkpoint.note"]
    for i in range(N + 3, N + 6):
        await env.log.append(_record(env.log, i))
    last = export(env, name="last.zip", previous_checkpoint=middle)
    assert verify_bundle(last, pubkey=env.pubkey).previous_size == N + 3
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(last, pubkey=env.pubkey, previous_checkpoint=small)
    assert caught.value.step == 8


@pytest.mark.asyncio
async def test_a_previous_checkpoint_of_another_log_is_refused(env: Env) -> None:
    other = NoteSigner.generate("other-log")
    foreign = sign_checkpoint(Checkpoint("other-log", 3, EMPTY_ROOT), other)
    with pytest.raises(ExportError, match="not this log's"):
        export(env, previous_checkpoint=foreign)
    same_name = NoteSigner.generate("test-log")
    forged = sign_checkpoint(Checkpoint("test-log", 3, EMPTY_ROOT), same_name)
    with pytest.raises(ExportError, match="not this log's"):
        export(env, previous_checkpoint=forged)
    assert not (env.tmp / "bundle.zip").exists()


@pytest.mark.asyncio
async def test_a_previous_checkpoint_larger_or_forked_is_refused(env: Env) -> None:
    ahead = sign_checkpoint(Checkpoint("test-log", N + 10, EMPTY_ROOT), env.log.signer)
    with pytest.raises(ExportError, match="newer"):
        export(env, previous_checkpoint=ahead)
    fork = sign_checkpoint(
        Checkpoint("test-log", 10, hashlib.sha256(b"fork").digest()), env.log.signer
    )
    with pytest.raises(ExportError, match="inconsistent"):
        export(env, previous_checkpoint=fork)


# --- erasure and retention -------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_erased_subject_shows_erased_and_the_bundle_still_verifies(env: Env) -> None:
    pseudonym = subject_pseudonym(env.log, None, "u1")
    assert pseudonym is not None
    assert await env.log.erase_subject(None, "u1")
    assert subject_pseudonym(env.log, None, "u1") is None  # the id no longer finds them

    path = export(env)
    report = verify_bundle(path, pubkey=env.pubkey)
    u1 = [i for i, r in enumerate(env.records) if r["subject"] == pseudonym]
    assert report.erased == len(u1) == 10
    by_index = {line["index"]: line for line in lines(path)}
    assert all(by_index[i]["personal"] == "erased" for i in u1)
    u2 = [line for line in by_index.values() if line["personal"] not in (None, "erased")]
    assert u2
    assert {line["personal"]["user_id"] for line in u2} == {"u2"}
    assert b'"user_id":"u1"' not in members(path)["records.jsonl"]
    assert json.loads(members(path)["summary.json"])["by_kind"]["erasure"] == 1

    # Whoever kept the pseudonym still finds the records, and the erasure event.
    mine = export(env, ExportFilter(T0, T0 + 1_000_000, subject_pseudonym=pseudonym), "s.zip")
    kinds = [json.loads(line["record"])["kind"] for line in lines(mine) if "record" in line]
    assert kinds == ["request"] * 10 + ["erasure"]
    assert verify_bundle(mine, pubkey=env.pubkey).erased == 10


@pytest.mark.asyncio
async def test_purged_records_appear_as_hashes_and_still_verify(env: Env) -> None:
    assert await env.log.purge_before(T0 + 10_000) == 10
    path = export(env)
    report = verify_bundle(path, pubkey=env.pubkey)
    assert report.purged == 10
    assert report.records == N + 1  # plus the retention event
    rows = lines(path)
    # One run line: the ten purged leaves' hashes, nothing else.
    assert set(rows[0]) == {"index", "purged"}
    assert (rows[0]["index"], len(base64.b64decode(rows[0]["purged"]))) == (0, 10 * 32)
    assert all("record" in row for row in rows[1:])
    summary = json.loads(members(path)["summary.json"])
    assert (summary["purged"], summary["records"]) == (10, N + 1)
    # Purged leaves may have matched any client: they stay in a filtered export.
    by_client = export(env, ExportFilter(T0, T0 + 1_000_000, client_id="svc-a"), "a.zip")
    assert verify_bundle(by_client, pubkey=env.pubkey).purged == 10


# --- the output file -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_file_is_private_and_never_overwritten(env: Env) -> None:
    path = export(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    existing = env.tmp / "existing.zip"
    existing.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="exists"):
        write_bundle(env.log, ALL, existing)
    assert existing.read_bytes() == b"keep me"
    link = env.tmp / "link.zip"
    link.symlink_to(env.tmp / "target.zip")
    with pytest.raises(ExportError, match="exists"):
        write_bundle(env.log, ALL, link)
    assert not (env.tmp / "target.zip").exists()
