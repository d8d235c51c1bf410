"""The stored tree under one signed checkpoint, as the exporter reads it: damage named.

Nodes, leaves and compact ranges read from the store (a missing one is damage,
unless the store is down), leaves carried outside the range with an inclusion
proof checked here, and the earlier signed checkpoints inside the range that
travel as milestones, each proved consistent with the checkpoint first.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from audit.bundle_format import MAX_MILESTONES, b64_text
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.export_damage import AuditDamaged
from audit.log import AuditLog
from audit.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_nodes,
    verify_consistency,
    verify_inclusion,
)
from audit.store import StoredCheckpoint, StoredLeaf, StoreError

__all__ = ["Carried", "StoredTree"]


@dataclass(frozen=True)
class Carried:
    """A leaf the bundle carries outside the range (a boundary, a purge record), with its proof."""

    index: int
    leaf_hash: bytes
    payload: bytes | None  # None: purged (only the leaf before the range may be)
    proof: list[bytes]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "leaf_hash": b64_text(self.leaf_hash),
            "proof": [b64_text(p) for p in self.proof],
        }
        if self.payload is None:
            out["purged"] = True
        else:
            out["record"] = self.payload.decode("utf-8")
        return out


class StoredTree:
    """The log's stored tree, read for one checkpoint; every read names the damage it finds."""

    def __init__(self, audit_log: AuditLog, checkpoint: StoredCheckpoint) -> None:
        self._log = audit_log
        self._store = audit_log.store
        self._cp = checkpoint
        self._size = checkpoint.size

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._store.node(level, index)
        except StoreError as exc:
            # A store that answers other questions has lost the node; one that answers
            # none is down, which is not the log's fault.
            self._store.size()
            first = index << level
            raise AuditDamaged(
                first, "missing node", f"node ({level}, {index}) over records {first}.. is gone"
            ) from exc

    def leaf(self, index: int) -> StoredLeaf:
        try:
            return self._store.leaf(index)
        except StoreError as exc:
            self._store.size()
            raise AuditDamaged(index, "missing record", "the leaf row is gone") from exc

    def compact(self, start: int, end: int) -> list[bytes]:
        return [self.node(level, index) for level, index in range_nodes(start, end)]

    # -- what travels with proofs -----------------------------------------------

    def carry(self, leaf: StoredLeaf) -> Carried:
        """A leaf outside the range's stream, with an inclusion proof checked here."""
        if leaf.payload is not None and not hmac.compare_digest(
            leaf_hash(leaf.payload), leaf.leaf_hash
        ):
            raise AuditDamaged(leaf.index, "altered record", "payload does not match its leaf hash")
        proof = inclusion_proof(leaf.index, self._size, self.node)
        try:
            verify_inclusion(leaf.leaf_hash, leaf.index, self._size, proof, self._cp.root)
        except ProofError as exc:
            detail = "the stored tree's inclusion proof of it does not reach the signed root"
            raise AuditDamaged(leaf.index, "altered node", detail) from exc
        return Carried(leaf.index, leaf.leaf_hash, leaf.payload, proof)

    def milestones(self, start: int, end: int) -> list[bytes]:
        """Up to 64 stored checkpoints inside the range (start < size <= end, before the
        checkpoint itself), spread evenly: a bundle whose leaves do not rebuild the root
        is then narrowed down to the records between two of them. Each is proved
        consistent with the checkpoint first (a signed fork is damage, not a milestone)."""
        last = min(end, self._size - 1)
        notes: list[bytes] = []
        taken = start
        for k in range(1, MAX_MILESTONES + 1):
            target = start + -(-(last - start) * k // MAX_MILESTONES)  # ceiling division
            if target <= taken:
                continue
            stored = self._store.checkpoint_at_or_after(target)
            if stored is None or stored.size > last:
                break
            if stored.size <= taken:
                continue
            taken = stored.size
            try:
                signed = verify_checkpoint(stored.note, self._log.verifier, origin=self._log.origin)
            except CheckpointError as exc:
                raise AuditDamaged(stored.size, "forged checkpoint", str(exc)) from exc
            proof = consistency_proof(signed.size, self._size, self.node)
            try:
                verify_consistency(signed.size, self._size, signed.root, self._cp.root, proof)
            except ProofError as exc:
                detail = f"signed checkpoint {signed.size} is not a prefix of {self._size}: {exc}"
                raise AuditDamaged(signed.size, "inconsistent checkpoint", detail) from exc
            notes.append(stored.note)
        return notes
