"""Damage in the stored log, as the exporter finds and names it before sending anything.

`AuditDamaged` names the first damaged index and what is wrong there. Where a
range's leaves are fine one by one but do not rebuild the signed root,
`localize` compares them with the stored tree (a moved record, an altered node)
and `diagnose` with the earlier signed checkpoints (a tree rebuilt after a
record was removed).
"""

from __future__ import annotations

import hmac

from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.log import AuditLog
from audit.merkle import Frontier, range_nodes
from audit.store import AuditStore

__all__ = ["AuditDamaged", "diagnose", "localize"]


class AuditDamaged(Exception):  # noqa: N818 - the finding, like LogDamaged and BundleInvalid
    """The log is damaged where the export reads it: nothing is sent.

    `index` is the first damaged leaf (None: the log as a whole), `kind` what is
    wrong there ("missing record", "altered record", "rewritten log", ...).
    """

    def __init__(self, index: int | None, kind: str, detail: str) -> None:
        where = f"record {index}" if index is not None else "log"
        super().__init__(f"{where}: {kind}: {detail}; run `gateway audit verify`")
        self.index = index
        self.kind = kind
        self.detail = detail


def localize(
    audit_log: AuditLog, size: int, start: int, end: int, left: list[bytes], right: list[bytes]
) -> AuditDamaged:
    """The leaves of [start, end) hash right one by one, yet do not rebuild the signed
    root: compare them with the stored tree's leaf nodes (a moved record), the stored
    nodes either side with their leaves (an altered node), then the leaves with the
    earlier signed checkpoints (a tree rebuilt after a record was removed)."""
    moved = _against_leaf_nodes(audit_log.store, start, end)
    if moved is not None:
        return moved
    stale = _against_compact(audit_log.store, size, start, end, left, right)
    if stale is not None:
        return stale
    detail = (
        f"records {start}..{end - 1}, with the stored nodes either side, no longer "
        f"rebuild checkpoint {size}"
    )
    return diagnose(audit_log, AuditDamaged(start, "rewritten log", detail), size)


def _against_leaf_nodes(store: AuditStore, start: int, end: int) -> AuditDamaged | None:
    """A leaf row whose hash is not the tree's leaf node: a moved or replaced record."""
    nodes = store.iter_nodes()  # level 0 first, in index order
    node = next(nodes, None)
    for leaf in store.iter_leaves(start, end):
        while node is not None and node[0] == 0 and node[1] < leaf.index:
            node = next(nodes, None)
        if node is None or node[:2] != (0, leaf.index):
            return AuditDamaged(leaf.index, "missing node", "the tree has no leaf node for it")
        if not hmac.compare_digest(node[2], leaf.leaf_hash):
            detail = "its leaf hash is not the tree's: the record was moved or replaced"
            return AuditDamaged(leaf.index, "altered record", detail)
    return None


def _against_compact(
    store: AuditStore, size: int, start: int, end: int, left: list[bytes], right: list[bytes]
) -> AuditDamaged | None:
    """A stored node of the compact ranges that is not the hash of its leaves."""
    nodes = range_nodes(0, start) + range_nodes(end, size)
    stored = left + right
    for (level, index), want in zip(nodes, stored, strict=True):
        first = index << level
        sub = Frontier()
        for leaf in store.iter_leaves(first, first + (1 << level)):
            sub.extend((leaf.leaf_hash,))
        if sub.size != 1 << level or sub.root() != want:
            last = first + (1 << level) - 1
            detail = f"node ({level}, {index}) is not the hash of records {first}..{last}"
            return AuditDamaged(first, "altered node", detail)
    return None


def diagnose(audit_log: AuditLog, found: AuditDamaged, limit: int | None) -> AuditDamaged:
    """An earlier signed checkpoint the leaves no longer rebuild, if any, else `found`.

    A tree rebuilt after a record was removed shows only late symptoms (a short log,
    an inconsistent head); the first stored checkpoint (of at most `limit` leaves)
    whose root the leaf rows no longer give narrows it down to the records since the
    one before it. Reads the leaves from 0 once, and the checkpoints one at a time.
    """
    store = audit_log.store
    limit = store.size() if limit is None else limit
    target = store.checkpoint_at_or_after(1)
    if target is None or target.size > limit:
        return found
    tree = Frontier()
    good = 0
    for leaf in store.iter_leaves(0, limit):
        if leaf.index != tree.size:
            return found  # a gap: what was found names it, or names what comes first
        tree.extend((leaf.leaf_hash,))
        if tree.size < target.size:
            continue
        if tree.root() != target.root:
            try:
                verify_checkpoint(target.note, audit_log.verifier, origin=audit_log.origin)
            except CheckpointError as exc:
                return AuditDamaged(target.size, "forged checkpoint", str(exc))
            detail = (
                f"records {good}..{target.size - 1} no longer rebuild signed checkpoint "
                f"{target.size} (checkpoint {good} still matches): a record there was "
                "removed, changed or inserted, and the tree recomputed"
            )
            return AuditDamaged(good, "rewritten log", detail)
        good = target.size
        following = store.checkpoint_at_or_after(good + 1)
        if following is None or following.size > limit:
            break
        target = following
    return found
