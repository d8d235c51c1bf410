"""Retention is a logged, signed event: a purge is evidence, a moved watermark is not.

Every test builds a real log on each backend (SQLite file, PostgreSQL schema):
30 records made ten days ago, then 10 made now, with a checkpoint. Retention is
seven days, so a lawful purge covers exactly the first 30. The attacker here
keeps every database guard in place unless the test says otherwise: the guards
allow raising the watermark and then deleting below it, so they cannot tell a
purge from an attack; `verify_store` must.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from audit.appender import AppendFailed
from audit.checkpoint import NoteSigner
from audit.log import AuditLog
from audit.merkle import Frontier
from audit.record import KIND_RETENTION, event_record, parse
from audit.retention import (
    DAY_MS,
    PurgeLedger,
    PurgeRejected,
    purge_of,
    purge_record,
    retention_problem,
    verify_purge,
)
from audit.store import AuditStore
from audit.verify import LogDamaged, verify_store
from tests.audit.conftest import RawDb, append_request, make_log

T0 = 1_700_000_000.0
OLD, NEW = 30, 10
SIZE = OLD + NEW


def tree_now(store: AuditStore) -> dict[str, Any]:
    """The tree a purge decided now names: the log's size and root."""
    size, hashes = store.frontier_hashes()
    return {"tree_size": size, "tree_root": Frontier(size, hashes).root()}


@dataclass
class Scene:
    store: AuditStore
    log: AuditLog
    raw: RawDb
    now: list[float]

    def run(self, work: Callable[[AuditLog], Any]) -> Any:
        """Run `work(log)` on a fresh event loop, as a fresh process of the same log would."""
        log = AuditLog(
            self.store,
            signer=self.log.signer,
            subject_keys=self.log.subjects,
            clock=lambda: self.now[0],
        )

        async def go() -> Any:
            try:
                return await work(log)
            finally:
                await log.close()

        return asyncio.run(go())

    def payloads_present(self) -> int:
        ((count,),) = self.raw.query("SELECT count(*) FROM audit_payloads")
        return int(count)

    def damage(self) -> LogDamaged:
        with pytest.raises(LogDamaged) as caught:
            verify_store(self.store, self.log.verifier)
        return caught.value


@pytest.fixture
def scene(store: AuditStore, raw: RawDb) -> Scene:
    now = [T0]
    audit_log = make_log(store, clock=lambda: now[0])

    async def build(log: AuditLog) -> None:
        for n in range(OLD):
            await append_request(log, "ana", f"old-{n}")
        now[0] += 10 * 86_400
        for n in range(NEW):
            await append_request(log, "ben", f"new-{n}")
        log.publish_checkpoint()

    built = Scene(store, audit_log, raw, now)
    built.run(build)
    assert store.size() == SIZE
    return built


# -- the lawful purge ----------------------------------------------------------------


def test_a_logged_purge_is_appended_first_and_verifies(scene: Scene) -> None:
    done = scene.run(lambda log: log.purge(7, trigger="cli"))
    assert (done.record_index, done.purged_below, done.deleted) == (SIZE, OLD, OLD)
    assert scene.store.purged_below() == OLD
    assert scene.payloads_present() == SIZE + 1 - OLD
    # The record names the purge, and the log's key signed it.
    payload = scene.store.leaf(SIZE).payload
    assert payload is not None
    record = parse(payload)
    assert record["kind"] == KIND_RETENTION
    assert record["purged_below"] == OLD
    assert record["retention_days"] == 7
    assert record["trigger"] == "cli"
    assert record["cutoff_ms"] == record["ts_ms"] - 7 * DAY_MS
    purge = purge_of(SIZE, record)
    assert purge is not None
    assert verify_purge(purge, scene.log.verifier).verified
    report = verify_store(scene.store, scene.log.verifier)
    assert (report.size, report.purged_payloads, report.purges, report.watermark) == (
        SIZE + 1,
        OLD,
        1,
        OLD,
    )
    # Purging again finds nothing, and logs nothing.
    again = scene.run(lambda log: log.purge(7, trigger="cli"))
    assert (again.record_index, again.deleted) == (None, 0)
    assert scene.store.size() == SIZE + 1


def test_a_purge_whose_record_cannot_be_appended_deletes_nothing(scene: Scene) -> None:
    # The disk is full, as far as the audit log is concerned: every append fails.
    if scene.raw.kind == "sqlite":
        scene.raw.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON audit_leaves "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        scene.raw.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        scene.raw.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON audit_leaves "
            "FOR EACH ROW EXECUTE FUNCTION disk_full()"
        )
    with pytest.raises(AppendFailed, match="disk full"):
        scene.run(lambda log: log.purge(7, trigger="schedule"))
    assert scene.store.purged_below() == 0
    assert scene.payloads_present() == SIZE
    assert scene.store.size() == SIZE
    assert verify_store(scene.store, scene.log.verifier).purged_payloads == 0


def test_a_purge_logged_but_never_carried_out_verifies(scene: Scene) -> None:
    # A crash between the append and the delete: a record without its effect is lawful.
    def logged_only(log: AuditLog) -> Any:
        now = log.now_ms()
        record = purge_record(
            log.signer,
            purged_below=OLD,
            cutoff_ms=now - 7 * DAY_MS,
            retention_days=7,
            trigger="schedule",
            ts_ms=now,
            **tree_now(log.store),
        )
        return log.append(record)

    assert scene.run(logged_only) == SIZE
    report = verify_store(scene.store, scene.log.verifier)
    assert (report.purges, report.purged_payloads) == (1, 0)
    # The next purge finishes the job under its own record.
    done = scene.run(lambda log: log.purge(7, trigger="schedule"))
    assert (done.record_index, done.deleted) == (SIZE + 1, OLD)
    assert verify_store(scene.store, scene.log.verifier).purges == 2


def test_the_retention_task_logs_its_purges_as_scheduled(scene: Scene) -> None:
    async def scheduled(log: AuditLog) -> None:
        log.start_retention(lambda: 7, interval_s=3600)
        for _ in range(500):
            if scene.store.purged_below():
                return
            await asyncio.sleep(0.01)

    scene.run(scheduled)
    assert scene.store.purged_below() == OLD
    payload = scene.store.leaf(SIZE).payload
    assert payload is not None
    assert parse(payload)["trigger"] == "schedule"
    assert verify_store(scene.store, scene.log.verifier).purged_payloads == OLD


# -- the watermark attacks, every guard in place ----------------------------------------


def test_moving_the_watermark_and_deleting_is_named(scene: Scene) -> None:
    # The attack, verbatim but for the numbers.
    scene.raw.execute("UPDATE audit_retention SET purged_below = 25 WHERE id = 1")
    assert scene.raw.execute("DELETE FROM audit_payloads WHERE idx < 25") == 25
    damage = scene.damage()
    assert (damage.step, damage.index, damage.kind) == (2, 0, "missing record")
    assert "no signed purge record" in str(damage)
    assert "watermark is 25" in str(damage)


def test_raising_a_lawful_watermark_further_is_named_where_the_purge_ends(
    scene: Scene,
) -> None:
    # A lawful purge at 30 (retention 7 days); the attacker extends it over 5 records
    # made today, all of them younger than any retention.
    scene.run(lambda log: log.purge(7, trigger="cli"))
    scene.raw.execute("UPDATE audit_retention SET purged_below = 35 WHERE id = 1")
    assert scene.raw.execute("DELETE FROM audit_payloads WHERE idx < 35") == 5
    damage = scene.damage()
    assert (damage.index, damage.kind) == (OLD, "missing record")


def test_a_watermark_moved_without_deleting_is_named(scene: Scene) -> None:
    # Nothing is gone yet, but the guards now let anyone delete below 25.
    scene.raw.execute("UPDATE audit_retention SET purged_below = 25 WHERE id = 1")
    damage = scene.damage()
    assert (damage.index, damage.kind) == (0, "unlogged purge")
    assert "watermark is 25" in str(damage)


def test_a_purge_signed_by_another_key_is_named(scene: Scene) -> None:
    # Anyone who can write the database can append records; they run the gateway's
    # own purge with a key of their own (same name) and every guard in place.
    impostor = make_log(
        scene.store, signer=NoteSigner.generate(scene.log.origin), clock=lambda: scene.now[0]
    )

    async def purge(_: AuditLog) -> int:
        try:
            return await impostor.purge_before(impostor.now_ms(), retention_days=0)
        finally:
            await impostor.close()

    assert scene.run(purge) == OLD
    damage = scene.damage()
    assert (damage.index, damage.kind) == (SIZE, "forged purge")
    assert "not signed by the log's key" in str(damage)


def test_an_unsigned_retention_record_vouches_for_nothing(scene: Scene) -> None:
    # The shape retention records had before they were signed: anyone can write it.
    legacy = event_record(KIND_RETENTION, int(T0 * 1000), purged_below=OLD, purged=OLD)
    assert scene.run(lambda log: log.append(legacy)) == SIZE
    scene.store.purge_payloads_before(OLD)
    damage = scene.damage()
    assert (damage.index, damage.kind) == (0, "missing record")


def _signed_purge_over_young_records(log: AuditLog) -> Any:
    # The log's own key signs a purge whose watermark reaches past its cutoff: a
    # gateway bug, a bad clock, or a stolen key. Records 30..34 are younger.
    now = log.now_ms()
    record = purge_record(
        log.signer,
        purged_below=OLD + 5,
        cutoff_ms=now - 7 * DAY_MS,
        retention_days=7,
        trigger="cli",
        ts_ms=now,
        **tree_now(log.store),
    )
    return log.append(record)


def test_a_watermark_covering_younger_records_is_named(scene: Scene) -> None:
    assert scene.run(_signed_purge_over_young_records) == SIZE
    scene.store.purge_payloads_before(OLD + 5)
    # The payloads are gone: the index times (unchanged under the guards) still tell.
    damage = scene.damage()
    assert (damage.index, damage.kind) == (OLD, "premature purge")
    assert "younger than its cutoff" in str(damage)


def test_a_logged_purge_over_younger_records_is_named_before_it_deletes(scene: Scene) -> None:
    assert scene.run(_signed_purge_over_young_records) == SIZE
    # Not carried out: the records' own (hashed) times show it was never lawful.
    damage = scene.damage()
    assert (damage.index, damage.kind) == (OLD, "premature purge")


def test_a_signed_purge_from_another_tree_is_named(scene: Scene) -> None:
    # Validly signed by the log's key, but for another log under the same key (a
    # staging copy, say): the tree it names is not this one.
    def replayed(log: AuditLog) -> Any:
        now = log.now_ms()
        size = log.store.size()
        record = purge_record(
            log.signer,
            purged_below=OLD,
            cutoff_ms=now - 7 * DAY_MS,
            retention_days=7,
            trigger="schedule",
            ts_ms=now,
            tree_size=size,
            tree_root=bytes(32),
        )
        return log.append(record)

    assert scene.run(replayed) == SIZE
    scene.store.purge_payloads_before(OLD)
    damage = scene.damage()
    assert (damage.index, damage.kind) == (SIZE, "forged purge")
    assert f"never had at size {SIZE}" in str(damage)


def test_deleting_one_payload_without_guards_is_named(scene: Scene) -> None:
    scene.run(lambda log: log.purge(7, trigger="cli"))
    scene.raw.drop_triggers()
    scene.raw.execute("DELETE FROM audit_payloads WHERE idx = 33")
    damage = scene.damage()
    assert (damage.index, damage.kind) == (33, "missing record")
    assert "outside retention" in str(damage)


def test_backdating_an_index_time_does_not_stretch_a_purge(scene: Scene) -> None:
    # Without guards, the index time of a young record is set ten days back; the
    # purge's watermark still ends at 30, so record 31 stays outside it.
    scene.run(lambda log: log.purge(7, trigger="cli"))
    scene.raw.drop_triggers()
    scene.raw.execute("UPDATE audit_leaves SET ts_ms = 0 WHERE idx = 31")
    scene.raw.execute("DELETE FROM audit_payloads WHERE idx = 31")
    damage = scene.damage()
    assert (damage.index, damage.kind) == (31, "missing record")


# -- the rule itself ---------------------------------------------------------------------


def test_the_statement_binds_every_field() -> None:
    signer = NoteSigner.generate("test.example/audit")
    fields: dict[str, Any] = {
        "purged_below": 5,
        "cutoff_ms": 1_000,
        "retention_days": 1,
        "trigger": "cli",
        "ts_ms": 1_000 + DAY_MS,
        "tree_size": 7,
        "tree_root": bytes(32),
    }
    record = purge_record(signer, **fields)
    purge = purge_of(9, record)
    assert purge is not None
    assert verify_purge(purge, signer.verifier()).verified
    for name, value in [
        ("purged_below", 6),
        ("cutoff_ms", 999),
        ("retention_days", 0),
        ("trigger", "schedule"),
        ("ts_ms", 2_000 + DAY_MS),
        ("tree_size", 8),
        ("tree_root", base64.b64encode(b"\x01" * 32).decode()),
    ]:
        changed = purge_of(9, {**record, name: value})
        assert changed is not None
        with pytest.raises(PurgeRejected, match="not signed"):
            verify_purge(changed, signer.verifier())
    # Signed, but the cutoff is later than the retention it names allows.
    early = purge_of(9, purge_record(signer, **{**fields, "retention_days": 2}))
    assert early is not None
    with pytest.raises(PurgeRejected, match="later than its retention"):
        verify_purge(early, signer.verifier())
    # Signed, but naming a tree that reaches the purge record itself.
    covering_itself = purge_of(6, record)
    assert covering_itself is not None
    with pytest.raises(PurgeRejected, match="past the purge record"):
        verify_purge(covering_itself, signer.verifier())
    # Signed, but a watermark beyond the tree it names.
    beyond = purge_of(9, purge_record(signer, **{**fields, "tree_size": 4}))
    assert beyond is not None
    with pytest.raises(PurgeRejected, match="past the tree of size 4"):
        verify_purge(beyond, signer.verifier())
    # An unverified purge never enters a ledger.
    with pytest.raises(ValueError, match="not verified"):
        PurgeLedger([purge])


def test_the_first_purge_over_a_leaf_judges_it() -> None:
    signer = NoteSigner.generate("test.example/audit")

    def purge_at(index: int, below: int, cutoff: int) -> Any:
        record = purge_record(
            signer,
            purged_below=below,
            cutoff_ms=cutoff,
            retention_days=0,
            trigger="schedule",
            ts_ms=cutoff,
            tree_size=index,
            tree_root=bytes(32),
        )
        purge = purge_of(index, record)
        assert purge is not None
        return verify_purge(purge, signer.verifier())

    ledger = PurgeLedger([purge_at(20, 10, 100), purge_at(40, 30, 300)])
    covering = [ledger.covering(i) for i in (0, 9, 10, 29)]
    assert [purge.index if purge else None for purge in covering] == [20, 20, 40, 40]
    assert ledger.covering(30) is None
    assert ledger.watermark == 30
    assert retention_problem(ledger, 9, payload_present=False, ts_ms=99) is None
    assert retention_problem(ledger, 9, payload_present=False, ts_ms=None) is None
    assert "younger" in (retention_problem(ledger, 9, payload_present=False, ts_ms=100) or "")
    assert "younger" in (retention_problem(ledger, 9, payload_present=True, ts_ms=150) or "")
    assert "no signed purge" in (
        retention_problem(ledger, 30, payload_present=False, ts_ms=1) or ""
    )
    assert retention_problem(ledger, 30, payload_present=True, ts_ms=10**12) is None


# -- the CLI, on a real data directory ------------------------------------------------------


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_cli_purge_is_logged_and_the_watermark_attack_fails_verify(tmp_path: Path) -> None:
    import sqlite3

    from audit.factory import open_audit_log
    from gateway.settings import load_settings

    data = tmp_path / "gw"
    assert _gateway("init", "--data-dir", str(data)).returncode == 0
    settings = load_settings(data_dir=data, config_file=data / "gateway.toml")
    # Records made 400 days ago, by the data directory's own log and key.
    audit_log = open_audit_log(settings, clock=lambda: T0)

    async def old_records() -> None:
        try:
            for n in range(5):
                await audit_log.append(event_record("test", audit_log.now_ms(), n=n))
        finally:
            await audit_log.close()
            audit_log.store.close()

    asyncio.run(old_records())

    purged = _gateway("audit", "purge", "--older-than-days", "30", "--data-dir", str(data))
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == (
        "purged 5 record payloads older than 30 days; purge logged at index 5"
    )
    verified = _gateway("audit", "verify", "--quiet", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stderr
    assert "5 payloads purged by retention (1 signed purges)" in verified.stdout

    # Three records made now; then the attack, with every trigger in place.
    for subject in ("alice", "bob", "carol"):
        assert (
            _gateway("audit", "erase", "--subject", subject, "--data-dir", str(data)).returncode
            == 0
        )
    with sqlite3.connect(data / "audit" / "audit.db") as conn:
        conn.execute("UPDATE audit_retention SET purged_below = 9")
        conn.execute("DELETE FROM audit_payloads WHERE idx < 9")
    tampered = _gateway("audit", "verify", "--quiet", "--data-dir", str(data))
    assert tampered.returncode == 1
    lines = tampered.stderr.strip().splitlines()
    assert len(lines) == 1, tampered.stderr
    # The purge record at 5 went with the rest, so nothing vouches even for 0..4.
    assert lines[0].startswith("error: audit log damaged: missing record at index 0:")
    assert "watermark is 9" in lines[0]
