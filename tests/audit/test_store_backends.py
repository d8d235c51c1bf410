"""One suite, every backend: SQLite and PostgreSQL keep the same log with the same guarantees."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from audit.checkpoint import NoteSigner
from audit.merkle import (
    Frontier,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from,
    verify_consistency,
    verify_inclusion,
)
from audit.postgres_store import PostgresAuditStore
from audit.record import KIND_ERASURE, KIND_RETENTION, parse
from audit.store import AuditStore, PendingRecord, StoredCheckpoint, StoreError
from audit.verify import LogDamaged, verify_store
from tests.audit.conftest import Backend, RawDb, append_request, make_backend, make_log

BATCHES = [1, 2, 3, 5, 8, 13, 1, 64, 31, 4, 1, 17]


def pending(n: int) -> PendingRecord:
    payload = b'{"n":%d,"v":1}' % n
    return PendingRecord(payload, leaf_hash(payload), f"req-{n}", 1_000 + n)


def fill(store: AuditStore, batches: list[int]) -> MemoryTree:
    """Append `batches` to the store, and the same leaves to a MemoryTree oracle."""
    tree = MemoryTree()
    for size in batches:
        records = [pending(tree.size + i) for i in range(size)]
        assert store.append_batch(records) == tree.size
        for record in records:
            tree.append_leaf_hash(record.leaf_hash)
    return tree


def test_batches_get_consecutive_indices(store: AuditStore) -> None:
    tree = fill(store, BATCHES)
    assert store.size() == tree.size == sum(BATCHES)
    leaves = list(store.iter_leaves())
    assert [leaf.index for leaf in leaves] == list(range(tree.size))
    for leaf in leaves:
        assert leaf.payload == pending(leaf.index).payload
        assert leaf.request_id == f"req-{leaf.index}"
        assert leaf.ts_ms == 1_000 + leaf.index
    assert [leaf.index for leaf in store.iter_leaves(10, 20)] == list(range(10, 20))
    assert store.leaf(42) == leaves[42]
    assert store.index_of("req-77") == 77
    assert store.index_of("nope") is None
    assert [leaf.index for leaf in store.leaves_between(1_005, 1_009)] == [5, 6, 7, 8]


def test_empty_batch_is_refused(store: AuditStore) -> None:
    with pytest.raises(StoreError):
        store.append_batch([])
    assert store.size() == 0


def test_proofs_from_the_store_match_the_reference_tree(store: AuditStore) -> None:
    rng = random.Random(6962)  # noqa: S311 - a fixed, reproducible shape
    tree = fill(store, [rng.randint(1, 40) for _ in range(12)])
    n = tree.size
    size, hashes = store.frontier_hashes()
    assert (size, hashes) == (n, Frontier.from_nodes(n, tree.get).hashes())
    assert Frontier(size, hashes).root() == tree.root()
    for m in [1, 2, 3, 7, 8, 9, 64, 100, n - 1, n]:
        root = root_from(m, store.node)
        assert root == tree.root(m)
        for index in {0, m // 2, m - 1}:
            proof = inclusion_proof(index, m, store.node)
            assert proof == tree.inclusion_proof(index, m)
            verify_inclusion(store.leaf(index).leaf_hash, index, m, proof, root)
        for old in {1, m // 3, m - 1}:
            if 0 < old < m:
                proof = consistency_proof(old, m, store.node)
                assert proof == tree.consistency_proof(old, m)
                verify_consistency(old, m, tree.root(old), root, proof)
    # Every complete node is stored once, and nothing else.
    nodes = list(store.iter_nodes())
    assert len(nodes) == sum(n >> level for level in range(n.bit_length()))
    for level, index, digest in nodes:
        assert tree.get(level, index) == digest
    with pytest.raises(StoreError):
        store.node(1, n)


def test_a_second_store_over_the_same_database_shares_the_log(backend: Backend) -> None:
    first = backend.open_store()
    second = backend.open_store()  # schema already there: created idempotently
    try:
        fill(first, [3])
        assert second.append_batch([pending(3), pending(4)]) == 3
        assert first.size() == second.size() == 5
        assert [leaf.index for leaf in first.iter_leaves()] == list(range(5))
    finally:
        first.close()
        second.close()
    with pytest.raises(StoreError):
        first.size()


# -- the database itself refuses to rewrite history -------------------------------------

REWRITES = [
    ("UPDATE audit_leaves SET ts_ms = 0 WHERE idx = 5", "append-only"),
    ("UPDATE audit_leaves SET leaf_hash = ? WHERE idx = 5", "append-only"),
    ("DELETE FROM audit_leaves WHERE idx = 5", "append-only"),
    ("UPDATE audit_nodes SET hash = ? WHERE level = 1 AND idx = 2", "append-only"),
    ("DELETE FROM audit_nodes WHERE level = 0", "append-only"),
    ("UPDATE audit_payloads SET record = ? WHERE idx = 5", "append-only"),
    ("DELETE FROM audit_payloads WHERE idx = 5", "only by retention"),
    ("DELETE FROM audit_payloads WHERE idx >= 4", "only by retention"),
    ("UPDATE audit_checkpoints SET root = ? WHERE size = 8", "append-only"),
    ("DELETE FROM audit_checkpoints", "append-only"),
    ("UPDATE audit_head SET size = 3 WHERE id = 1", "never shrinks"),
    ("DELETE FROM audit_head", "never deleted"),
    ("UPDATE audit_retention SET purged_below = 0 WHERE id = 1", "only moves forward"),
    # Without its row, "below the watermark" would no longer guard anything.
    ("DELETE FROM audit_retention", "never deleted"),
]


def _snapshot(raw: RawDb) -> list[object]:
    return [
        raw.query(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 - fixed table names
        for table in [
            "audit_leaves",
            "audit_payloads",
            "audit_nodes",
            "audit_head",
            "audit_checkpoints",
            "audit_retention",
        ]
    ]


def _history(store: AuditStore) -> None:
    fill(store, [10, 6])
    store.add_checkpoint(StoredCheckpoint(8, b"r" * 32, b"note", 1))
    assert store.purge_payloads_before(4) == 4


@pytest.mark.parametrize(("statement", "message"), REWRITES)
def test_the_database_rejects_rewrites(
    store: AuditStore, raw: RawDb, statement: str, message: str
) -> None:
    _history(store)
    before = _snapshot(raw)
    args: tuple[object, ...] = (b"x" * 32,) if "?" in statement else ()
    with pytest.raises(raw.rejected, match=message) as caught:
        raw.execute(statement, args)
    if isinstance(caught.value, psycopg.Error):
        assert caught.value.sqlstate == "23001"  # raised by our trigger, not a typo
    assert _snapshot(raw) == before
    assert store.size() == 16


@pytest.mark.parametrize(
    "table",
    [
        "audit_leaves",
        "audit_payloads",
        "audit_nodes",
        "audit_head",
        "audit_checkpoints",
        "audit_retention",
    ],
)
def test_postgres_rejects_truncate(
    tmp_path: Path, request: pytest.FixtureRequest, table: str
) -> None:
    pg = make_backend("postgres", tmp_path, request)
    store = pg.open_store()
    raw = pg.open_raw()
    try:
        _history(store)
        before = _snapshot(raw)
        with pytest.raises(psycopg.Error, match=r"append-only|never|retention") as caught:
            raw.execute(f"TRUNCATE {table}")
        assert caught.value.sqlstate == "23001"
        assert _snapshot(raw) == before
    finally:
        raw.close()
        store.close()


def test_postgres_guards_the_watermark_row_itself(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Deleting the watermark row must not turn "below the watermark" into "anything".
    pg = make_backend("postgres", tmp_path, request)
    store = pg.open_store()
    raw = pg.open_raw()
    try:
        _history(store)
        with pytest.raises(psycopg.Error, match="never deleted"):
            raw.execute("DELETE FROM audit_retention")
        assert store.purged_below() == 4
    finally:
        raw.close()
        store.close()


def test_postgres_reinstalls_dropped_guards_on_start(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = make_backend("postgres", tmp_path, request)
    store = pg.open_store()
    raw = pg.open_raw()
    try:
        _history(store)
        raw.drop_triggers()
        pg.open_store().close()
        with pytest.raises(psycopg.Error, match="append-only"):
            raw.execute("DELETE FROM audit_leaves WHERE idx = 1")
    finally:
        raw.close()
        store.close()


# -- retention, subject keys, checkpoints ---------------------------------------------


def test_purge_below_the_watermark_keeps_the_proof_material(store: AuditStore) -> None:
    tree = fill(store, [20])
    assert store.purged_below() == 0
    assert store.purge_payloads_before(8) == 8
    assert store.purged_below() == 8
    assert store.leaf(7).payload is None
    assert store.leaf(8).payload == pending(8).payload
    assert store.leaf(7).leaf_hash == tree.get(0, 7)  # the proof material stays
    # The watermark never moves back, and purging again deletes nothing new.
    assert store.purge_payloads_before(3) == 0
    assert store.purged_below() == 8
    # The store alone moves a watermark no signed purge record set: that is damage.
    # Only `AuditLog.purge` calls this, after logging the purge (tests/audit/test_retention.py).
    with pytest.raises(LogDamaged, match="missing record at index 0"):
        verify_store(store, NoteSigner.generate("unused").verifier())


def test_subject_keys_round_trip(store: AuditStore) -> None:
    handle, other = b"h" * 32, b"o" * 32
    assert store.subject_key(handle) is None
    assert store.get_or_create_subject_key(handle, "pseudo-1", "kek-1", b"wrapped-1") == (
        "kek-1",
        b"wrapped-1",
    )
    # A second writer's fresh key loses to the stored one.
    assert store.get_or_create_subject_key(handle, "pseudo-2", "kek-1", b"wrapped-2") == (
        "kek-1",
        b"wrapped-1",
    )
    store.get_or_create_subject_key(other, "pseudo-3", "kek-1", b"wrapped-3")
    assert store.subject_key(handle) == ("kek-1", b"wrapped-1")
    assert store.subject_key_by_pseudonym("pseudo-1") == (handle, "kek-1", b"wrapped-1")
    assert store.subject_key_by_pseudonym("pseudo-2") is None
    assert store.delete_subject_key(handle) is True
    assert store.delete_subject_key(handle) is False
    assert store.subject_key(handle) is None
    assert store.subject_key_by_pseudonym("pseudo-1") is None
    assert store.subject_key(other) == ("kek-1", b"wrapped-3")


def test_checkpoints_are_added_and_listed(store: AuditStore) -> None:
    assert store.checkpoints() == []
    assert store.latest_checkpoint() is None
    later = StoredCheckpoint(10, b"b" * 32, b"note-10", 2_000)
    earlier = StoredCheckpoint(4, b"a" * 32, b"note-4", 1_000)
    store.add_checkpoint(later)
    store.add_checkpoint(earlier)
    assert store.checkpoints() == [earlier, later]
    assert store.latest_checkpoint() == later
    # One checkpoint per size: a second one at the same size is refused, not replaced.
    with pytest.raises(StoreError):
        store.add_checkpoint(StoredCheckpoint(10, b"c" * 32, b"other", 3_000))
    assert store.latest_checkpoint() == later


# -- PostgreSQL specifics -----------------------------------------------------------------


@pytest.mark.parametrize("schema", ["", "Audit", "1abc", "a-b", 'x"; DROP TABLE y; --', "a" * 64])
def test_postgres_schema_name_is_an_identifier(pg_dsn: str, schema: str) -> None:
    with pytest.raises(StoreError, match="schema name"):
        PostgresAuditStore(pg_dsn, schema=schema)


def test_postgres_unreachable_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open"):
        PostgresAuditStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreError, match="DSN"):
        PostgresAuditStore("host=127.0.0.1 port")


def test_postgres_commits_synchronously(pg_dsn: str, pg_schema: str) -> None:
    # Even when the connection asks for asynchronous commit, appends are flushed.
    store = PostgresAuditStore(f"{pg_dsn}?options=-c%20synchronous_commit%3Doff", schema=pg_schema)
    try:
        row = store._write.execute("SHOW synchronous_commit").fetchone()
        assert row == ("on",)
    finally:
        store.close()


def test_postgres_store_survives_dropped_connections(pg_dsn: str, pg_schema: str) -> None:
    app = f"audit-test-{pg_schema}"
    store = PostgresAuditStore(f"{pg_dsn}?application_name={app}", schema=pg_schema)
    try:
        fill(store, [3])
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed == (2,)
        # The call that finds the connection dead fails (fail closed); the next reconnects.
        with pytest.raises(StoreError):
            store.size()
        with pytest.raises(StoreError):
            store.append_batch([pending(3)])
        assert store.size() == 3
        assert store.append_batch([pending(3)]) == 3
        assert store.size() == 4
    finally:
        store.close()


# -- the whole audit log over each backend ------------------------------------------------


@pytest.mark.asyncio
async def test_audit_log_over_each_backend(store: AuditStore) -> None:
    now = [1_700_000_000.0]
    audit_log = make_log(store, clock=lambda: now[0])
    try:
        alice, bob = [], []
        for n in range(6):
            alice.append(await append_request(audit_log, "alice", f"a-{n}"))
            bob.append(await append_request(audit_log, "bob", f"b-{n}"))
            now[0] += 1
        first = audit_log.publish_checkpoint()
        for n in range(6, 9):
            bob.append(await append_request(audit_log, "bob", f"b-{n}"))
        second = audit_log.publish_checkpoint()
        assert await audit_log.erase_subject("t1", "alice") is True
        assert await audit_log.erase_subject("t1", "nobody") is False
        now[0] += 100
        assert await audit_log.purge_before(int((1_700_000_000.0 + 2) * 1000)) == 4
        third = audit_log.publish_checkpoint()
        assert [cp.size for cp in store.checkpoints()] == [12, 15, 18]
        assert store.checkpoints() == [first, second, third]

        report = verify_store(store, audit_log.verifier)
        assert (report.size, report.checkpoints, report.purged_payloads) == (18, 3, 4)

        events = [parse(leaf.payload or b"") for leaf in store.iter_leaves(15)]
        assert [event["kind"] for event in events] == [KIND_ERASURE, KIND_ERASURE, KIND_RETENTION]
        assert [event["key_existed"] for event in events[:2]] == [True, False]
        for index in alice[2:]:
            payload = store.leaf(index).payload
            assert payload is not None
            assert audit_log.open_record(payload, unseal=True)["personal"] == "erased"
        for index in bob[2:]:
            payload = store.leaf(index).payload
            assert payload is not None
            assert audit_log.open_record(payload, unseal=True)["personal"] == {"user_id": "bob"}
        # Purged and erased records alike still prove their place under the checkpoint.
        for index in [alice[0], bob[-1]]:
            inclusion = audit_log.inclusion(index, third)
            verify_inclusion(inclusion.leaf_hash, index, third.size, inclusion.proof, third.root)
        assert store.index_of("b-8") == bob[-1]
    finally:
        await audit_log.close()


def test_a_corrupt_head_fails_appends_with_a_store_error(store: AuditStore, raw: RawDb) -> None:
    # The appender fails a batch on StoreError only; anything else would hang its requests.
    fill(store, [3])
    raw.drop_triggers()
    raw.execute("UPDATE audit_head SET frontier = ? WHERE id = 1", (b"short",))
    with pytest.raises(StoreError, match="frontier"):
        store.append_batch([pending(3)])
