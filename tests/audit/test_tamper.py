"""An attacker with the database: every kind of damage is found, at the right index.

The triggers stop the gateway's own role from rewriting history; they do not
stop someone holding the SQLite file or a superuser login, who drops them
first. What stops that attacker is `verify_store`: each test below builds a
real log (40 records, checkpoints at 10, 25 and 40), damages it once through a
raw connection, and expects one `LogDamaged(index, kind)` naming the damage.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from audit.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from audit.log import AuditLog
from audit.merkle import Frontier, leaf_hash
from audit.store import AuditStore
from audit.verify import LogDamaged, verify_store
from tests.audit.conftest import Backend, RawDb, append_request, make_log

SIZE = 40
CHECKPOINTS = (10, 25, 40)
USERS = ["ana", "ben", "chloe", "dev", "eve"]


@dataclass
class Scene:
    store: AuditStore
    log: AuditLog
    raw: RawDb

    def payload(self, index: int) -> bytes:
        (row,) = self.raw.query("SELECT record FROM audit_payloads WHERE idx = ?", (index,))
        return bytes(row[0])


async def _build(audit_log: AuditLog) -> None:
    try:
        for n in range(SIZE):
            await append_request(audit_log, USERS[n % len(USERS)], f"req-{n}")
            if n + 1 in CHECKPOINTS:
                audit_log.publish_checkpoint()
    finally:
        await audit_log.close()


@pytest.fixture
def scene(backend: Backend, store: AuditStore, raw: RawDb) -> Scene:
    audit_log = make_log(store)
    asyncio.run(_build(audit_log))
    assert [cp.size for cp in store.checkpoints()] == list(CHECKPOINTS)
    verify_store(store, audit_log.verifier)  # undamaged: passes
    raw.drop_triggers()
    return Scene(store, audit_log, raw)


# -- the damages: each changes the database and returns the (index, kind) it must cause ----

Damage = Callable[[Scene], tuple[int | None, str]]


def flip_payload_byte(s: Scene) -> tuple[int | None, str]:
    record = bytearray(s.payload(17))
    record[len(record) // 2] ^= 0x01
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 17", (bytes(record),))
    return 17, "altered record"


def delete_leaf_row(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("DELETE FROM audit_leaves WHERE idx = 12")
    return 12, "missing record"


def delete_payload_above_watermark(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("DELETE FROM audit_payloads WHERE idx = 21")
    return 21, "missing record"


def swap_payloads(s: Scene) -> tuple[int | None, str]:
    first, second = s.payload(5), s.payload(30)
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 5", (second,))
    s.raw.execute("UPDATE audit_payloads SET record = ? WHERE idx = 30", (first,))
    return 5, "altered record"


def swap_whole_rows(s: Scene) -> tuple[int | None, str]:
    # Leaf hashes move with their payloads, so each row is self-consistent;
    # the stored tree still commits to the original order.
    rows = {
        index: s.raw.query(
            "SELECT leaf_hash, request_id, ts_ms FROM audit_leaves WHERE idx = ?", (index,)
        )[0]
        for index in (5, 30)
    }
    payloads = {5: s.payload(5), 30: s.payload(30)}
    for index, other in ((5, 30), (30, 5)):
        s.raw.execute(
            "UPDATE audit_leaves SET leaf_hash = ?, request_id = ?, ts_ms = ? WHERE idx = ?",
            (*rows[other], index),
        )
        s.raw.execute(
            "UPDATE audit_payloads SET record = ? WHERE idx = ?", (payloads[other], index)
        )
    return 5, "altered node"


def _truncate_rows(s: Scene, keep: int) -> None:
    s.raw.execute("DELETE FROM audit_leaves WHERE idx >= ?", (keep,))
    s.raw.execute("DELETE FROM audit_payloads WHERE idx >= ?", (keep,))
    # Every node whose subtree reaches past `keep`.
    nodes = s.raw.query("SELECT level, idx FROM audit_nodes")
    for level, index in nodes:
        if (index + 1) << level > keep:
            s.raw.execute("DELETE FROM audit_nodes WHERE level = ? AND idx = ?", (level, index))


def truncate_and_rewind_head(s: Scene) -> tuple[int | None, str]:
    # A careful attacker leaves a log that is whole at 34; the signed checkpoint at 40 is not.
    frontier = Frontier.from_nodes(34, s.store.node)
    _truncate_rows(s, 34)
    s.raw.execute(
        "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1",
        (34, b"".join(frontier.hashes())),
    )
    return 34, "truncated log"


def truncate_rows_only(s: Scene) -> tuple[int | None, str]:
    _truncate_rows(s, 34)
    return 34, "truncated log"


def insert_row_beyond_head(s: Scene) -> tuple[int | None, str]:
    payload = b'{"kind":"request","request_id":"forged","v":1}'
    s.raw.execute(
        "INSERT INTO audit_leaves (idx, leaf_hash, request_id, ts_ms) VALUES (?, ?, ?, ?)",
        (SIZE, leaf_hash(payload), "forged", 1),
    )
    s.raw.execute("INSERT INTO audit_payloads (idx, record) VALUES (?, ?)", (SIZE, payload))
    return SIZE, "inserted record"


def alter_interior_node(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("UPDATE audit_nodes SET hash = ? WHERE level = 2 AND idx = 3", (b"\x07" * 32,))
    return 12, "altered node"


def delete_interior_node(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("DELETE FROM audit_nodes WHERE level = 3 AND idx = 2")
    return 16, "missing node"


def alter_head_frontier(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("UPDATE audit_head SET frontier = ? WHERE id = 1", (b"\x09" * 64,))
    return None, "altered head"


def checkpoint_signed_by_another_key(s: Scene) -> tuple[int | None, str]:
    (stored,) = [cp for cp in s.store.checkpoints() if cp.size == 25]
    impostor = NoteSigner.generate(s.log.origin)  # same name, different key
    note = sign_checkpoint(Checkpoint(s.log.origin, 25, stored.root), impostor)
    s.raw.execute("UPDATE audit_checkpoints SET note = ? WHERE size = 25", (note,))
    return 25, "forged checkpoint"


def checkpoint_body_edited(s: Scene) -> tuple[int | None, str]:
    (stored,) = [cp for cp in s.store.checkpoints() if cp.size == 25]
    fake_root = os.urandom(32)
    body = Checkpoint(s.log.origin, 25, stored.root).body()
    forged = Checkpoint(s.log.origin, 25, fake_root).body()
    note = stored.note.replace(body, forged)
    assert note != stored.note
    s.raw.execute(
        "UPDATE audit_checkpoints SET note = ?, root = ? WHERE size = 25", (note, fake_root)
    )
    return 25, "forged checkpoint"


def checkpoint_row_disagrees_with_note(s: Scene) -> tuple[int | None, str]:
    s.raw.execute("UPDATE audit_checkpoints SET root = ? WHERE size = 10", (b"\x05" * 32,))
    return 10, "forged checkpoint"


def checkpoint_validly_signed_for_a_fork(s: Scene) -> tuple[int | None, str]:
    # The real key signs a root this log never had (a stolen key, or a forked writer).
    root = os.urandom(32)
    note = sign_checkpoint(Checkpoint(s.log.origin, 30, root), s.log.signer)
    s.raw.execute(
        "INSERT INTO audit_checkpoints (size, root, note, created_ms) VALUES (?, ?, ?, ?)",
        (30, root, note, 1),
    )
    return 30, "inconsistent checkpoint"


def move_watermark_and_delete(s: Scene) -> tuple[int | None, str]:
    # The guards would allow this much; no signed purge record exists.
    s.raw.execute("UPDATE audit_retention SET purged_below = 20 WHERE id = 1")
    s.raw.execute("DELETE FROM audit_payloads WHERE idx < 20")
    return 0, "missing record"


def rewrite_without(s: Scene, deleted: int) -> None:
    """Delete one record and rebuild everything after it: rows, nodes and head agree again."""
    rows = s.raw.query(
        "SELECT l.idx, l.leaf_hash, l.request_id, l.ts_ms, p.record FROM audit_leaves l "
        "JOIN audit_payloads p ON p.idx = l.idx ORDER BY l.idx"
    )
    kept = [row for row in rows if row[0] != deleted]
    for table in ("audit_leaves", "audit_payloads", "audit_nodes"):
        s.raw.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    tree = Frontier()
    for index, (_, digest, request_id, ts_ms, record) in enumerate(kept):
        s.raw.execute(
            "INSERT INTO audit_leaves (idx, leaf_hash, request_id, ts_ms) VALUES (?, ?, ?, ?)",
            (index, bytes(digest), request_id, ts_ms),
        )
        s.raw.execute(
            "INSERT INTO audit_payloads (idx, record) VALUES (?, ?)", (index, bytes(record))
        )
        for level, position, node in tree.append(bytes(digest)):
            s.raw.execute(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
                (level, position, node),
            )
    s.raw.execute(
        "UPDATE audit_head SET size = ?, frontier = ? WHERE id = 1",
        (tree.size, b"".join(tree.hashes())),
    )


def rewrite_whole_tree(s: Scene) -> tuple[int | None, str]:
    # Record 17 goes; checkpoint 10 still agrees, 25 and 40 do not. No signed root
    # lies between 10 and 25, so 10 is the first record that can differ.
    rewrite_without(s, 17)
    return 10, "rewritten record"


DAMAGES: list[Damage] = [
    flip_payload_byte,
    delete_leaf_row,
    delete_payload_above_watermark,
    swap_payloads,
    swap_whole_rows,
    truncate_and_rewind_head,
    truncate_rows_only,
    insert_row_beyond_head,
    alter_interior_node,
    delete_interior_node,
    alter_head_frontier,
    checkpoint_signed_by_another_key,
    checkpoint_body_edited,
    checkpoint_row_disagrees_with_note,
    checkpoint_validly_signed_for_a_fork,
    move_watermark_and_delete,
    rewrite_whole_tree,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__ for d in DAMAGES])
def test_verify_names_the_damage(scene: Scene, damage: Damage) -> None:
    index, kind = damage(scene)
    with pytest.raises(LogDamaged) as caught:
        verify_store(scene.store, scene.log.verifier)
    assert (caught.value.kind, caught.value.index) == (kind, index), str(caught.value)


def test_a_rewritten_tree_names_the_range_no_signed_root_vouches_for(scene: Scene) -> None:
    rewrite_without(scene, 17)
    with pytest.raises(LogDamaged) as caught:
        verify_store(scene.store, scene.log.verifier)
    assert caught.value.step == 5
    assert str(caught.value) == (
        "rewritten record at index 10: signed checkpoint 25 committed to other records "
        "10..24 (records below 10 match signed checkpoint 10)"
    )


@pytest.mark.parametrize("deleted", [0, 17, 38])
def test_a_rewritten_tree_names_the_deleted_record_under_dense_checkpoints(
    store: AuditStore, raw: RawDb, deleted: int
) -> None:
    # A gateway at low load publishes a checkpoint after nearly every record.
    audit_log = make_log(store)

    async def build() -> None:
        try:
            for n in range(SIZE):
                await append_request(audit_log, USERS[n % len(USERS)], f"req-{n}")
                audit_log.publish_checkpoint()
        finally:
            await audit_log.close()

    asyncio.run(build())
    raw.drop_triggers()
    scene = Scene(store, audit_log, raw)
    rewrite_without(scene, deleted)
    with pytest.raises(LogDamaged) as caught:
        verify_store(store, audit_log.verifier)
    assert (caught.value.index, caught.value.kind) == (deleted, "rewritten record"), str(
        caught.value
    )
    assert f"other record {deleted} (" in str(caught.value)


def test_a_rewrite_past_the_last_agreeing_checkpoint_bounds_the_damage(scene: Scene) -> None:
    # Record 30 goes: the only later signed root (40) now lies past the log's end.
    rewrite_without(scene, 30)
    with pytest.raises(LogDamaged) as caught:
        verify_store(scene.store, scene.log.verifier)
    assert str(caught.value) == (
        "truncated log at index 39: checkpoint at 40 beyond 39 records "
        "(records below 25 match signed checkpoint 25)"
    )
