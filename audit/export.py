"""Compliance export: every leaf of an index range of one signed checkpoint, as one zip.

A bundle covers the leaves [a, b) of a checkpoint of size N and carries EVERY
leaf of that range, in order. The time range [from, to) picks the range: a is
the first leaf stamped at or after `from`, b the first leaf past a stamped at or
after `to` (N if none), so bundles of consecutive periods tile the log. Records
the filters select (client, subject pseudonym, tenant; every record when none is
given) are opened in full; every other leaf travels as its leaf hash only, and
a leaf whose payload retention deleted as its hash marked purged, next to the
signed purge record (with its inclusion proof) that made the deletion lawful.
With the compact ranges either side (the stored subtree hashes over [0, a) and
[b, N)), the leaves rebuild the checkpoint's root, so the verifier
(`audit.bundle`) finds any missing, extra, reordered or altered leaf, by index.
The leaves at a-1 and b travel opened with inclusion proofs: the bundle proves
that its range starts after a record older than `from` and ends at one at or
after `to`. A filtered bundle never opens a record its filter does not select,
not even as a boundary: its range grows to the nearest records it does select
(or to 0 and N), the leaves in between travelling as hashes. A purged leaf at a-1
is before `from` only if a signed purge with a cutoff no later than `from` covers
it; otherwise the range reaches back to where one does (or to 0).

`iter_bundle` checks everything it will send against the stored log before it
returns (a first pass: every leaf of the range and its payload, the retention
that deleted any, the stored nodes the proofs use, and the signed root they must
rebuild), so a damaged log is refused with `AuditDamaged` naming the first
damaged index and its kind: `GET /v1/audit/export` can answer with an error,
never with a 200 that breaks off. Where the range's leaves are fine one by one
but do not rebuild the signed root, the stored tree and the earlier signed
checkpoints narrow the damage down (a moved record, an altered node, or the
records between two checkpoints after a rebuilt tree). Only then does the
returned generator stream the zip (a second pass), in chunks (zipfile writes
data descriptors when its output cannot seek), so no temporary file ever holds
the opened personal fields. A failure while streaming (the store goes away) ends
the stream before the zip's central directory: what was sent is no zip at all.

Memory stays bounded: leaves are read, written and dropped a page at a time;
what is kept is O(log N) hashes, the log's signed purges, and at most 64
checkpoints of the range as milestones. Members and their formats are described
in `audit.bundle`, which verifies them. Both `iter_bundle` and the generator it
returns block on the store: call them off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zipfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson

from audit.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CHECKPOINT,
    CONSISTENCY,
    MANIFEST,
    MAX_MILESTONES,
    PREVIOUS,
    PUBKEY,
    PURGES,
    RANGE,
    RECORDS,
    RUN_LEAVES,
    SUMMARY_JSON,
    SUMMARY_TXT,
    Summary,
    render_summary,
)
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.log import AuditLog, CheckpointRefused
from audit.merkle import (
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    range_nodes,
    verify_consistency,
    verify_inclusion,
)
from audit.record import RECORD_VERSION, canonical
from audit.retention import (
    Purge,
    PurgeLedger,
    PurgeRejected,
    purge_of,
    retention_problem,
    verify_purge,
)
from audit.store import StoredCheckpoint, StoredLeaf, StoreError
from audit.subjects import SubjectKey, SubjectKeyError, SubjectKeys
from gateway.files import write_private

__all__ = [
    "AuditDamaged",
    "ExportError",
    "ExportFilter",
    "iter_bundle",
    "subject_pseudonym",
    "write_bundle",
]

# Chunks handed to the HTTP response: large enough to amortise a send, small
# enough that a slow client never makes the server hold much.
_CHUNK = 64 * 1024

_Stamp = tuple[int, int, int, int, int, int]

# Retention records are rare; their canonical bytes always hold this, so the search
# for them parses a handful of records instead of the whole log.
_RETENTION_MARK = b'"kind":"retention"'
# How far back a filtered export reads at a time, looking for a boundary it may show.
_BACK_PAGE = 5_000


class ExportError(Exception):
    """The export request cannot be served as asked (bad range, foreign checkpoint, file exists)."""


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


class _NewerCheckpointNeeded(Exception):  # noqa: N818 - control flow inside this module
    """A purged leaf's signed purge was logged after the checkpoint: sign a newer one."""


@dataclass(frozen=True)
class ExportFilter:
    """Records with from_ms <= ts_ms < to_ms (the range), opened when they are of the
    client, subject pseudonym and tenant given (each optional).

    `tenant` scopes to one tenant's records; `tenant_scoped=True` with `tenant=None`
    scopes to the records of no tenant (a caller without one). Neither: every tenant.
    """

    from_ms: int
    to_ms: int
    client_id: str | None = None
    subject_pseudonym: str | None = None
    tenant: str | None = None
    tenant_scoped: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.from_ms <= self.to_ms:
            raise ExportError(f"time range [{self.from_ms}, {self.to_ms}) is empty or negative")
        if "" in (self.client_id, self.subject_pseudonym, self.tenant):
            raise ExportError("an empty client, subject or tenant filter selects nothing; omit it")
        if self.tenant is not None:
            object.__setattr__(self, "tenant_scoped", True)

    @property
    def narrows(self) -> bool:
        """Some leaves of the range stay unopened (hash only)."""
        return self.tenant_scoped or (self.client_id, self.subject_pseudonym) != (None, None)

    def opens(self, record: dict[str, Any]) -> bool:
        """Whether a record inside the range is opened (`audit.bundle.opens`)."""
        if self.client_id is not None and record.get("client_id") != self.client_id:
            return False
        if self.subject_pseudonym is not None and record.get("subject") != self.subject_pseudonym:
            return False
        return not self.tenant_scoped or record.get("tenant") == self.tenant

    def matches(self, record: dict[str, Any]) -> bool:
        """Inside the time range and opened."""
        ts = record.get("ts_ms")
        return isinstance(ts, int) and self.from_ms <= ts < self.to_ms and self.opens(record)

    def as_json(self) -> dict[str, Any]:
        return {
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "client_id": self.client_id,
            "subject": self.subject_pseudonym,
            "tenant": self.tenant,
            "tenant_scoped": self.tenant_scoped,
        }


def parse_time_ms(value: str, name: str) -> int:
    """An export bound: epoch milliseconds, or ISO 8601 (a date is midnight; no zone is UTC)."""
    if value.isdigit() and len(value) <= 15:
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ExportError(f"{name}: epoch milliseconds or ISO 8601, not {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def subject_pseudonym(audit_log: AuditLog, tenant: str | None, subject_id: str) -> str | None:
    """The pseudonym the subject's records carry; None if the subject is unknown or erased.

    Erasure destroys the only link from a subject id to its pseudonym (that is the
    point of crypto-shredding), so an erased subject's records cannot be found by
    id any more: callers should report "unknown or erased subject" rather than
    export an empty bundle. Whoever kept the pseudonym itself (an earlier bundle)
    can still select those records with `ExportFilter(subject_pseudonym=...)`;
    they export with personal fields "erased". Blocking: call off the event loop.
    """
    key = audit_log.subjects.lookup(audit_log.subjects.handle(tenant, subject_id))
    return None if key is None else key.pseudonym


def write_bundle(
    audit_log: AuditLog,
    flt: ExportFilter,
    path: Path,
    *,
    previous_checkpoint: bytes | None = None,
) -> None:
    """Write the bundle to a new file, mode 0600; never overwrite, never leave a partial file."""
    chunks = iter_bundle(audit_log, flt, previous_checkpoint=previous_checkpoint)

    def write(out: BinaryIO) -> None:
        for chunk in chunks:
            out.write(chunk)

    try:
        # O_EXCL refuses an existing file and a symlink planted at `path`; a failed
        # write removes the file it created.
        write_private(path, write)
    except FileExistsError:
        raise ExportError(f"{path} exists; a bundle never overwrites a file") from None
    finally:
        chunks.close()  # ends the store reads if writing stopped early; else a no-op


def iter_bundle(
    audit_log: AuditLog, flt: ExportFilter, *, previous_checkpoint: bytes | None = None
) -> Generator[bytes, None, None]:
    """Validate, pick the checkpoint, check the range, then return the zip as chunks.

    Raises `ExportError` for a bad request, `AuditDamaged` for a damaged log and
    `StoreError` for a store that does not answer, all before the first byte.
    Close the generator if you stop early (a client hung up): that ends the store reads.
    """
    plan = _plan(audit_log, flt)
    previous: tuple[bytes, int, list[bytes]] | None = None
    if previous_checkpoint is not None:
        previous = _previous(audit_log, previous_checkpoint, plan.checkpoint)
    return _stream(audit_log, flt, plan, previous)


def _checkpoint_for(audit_log: AuditLog, flt: ExportFilter) -> StoredCheckpoint:
    """The latest checkpoint if it covers every record in range so far; else a new one."""
    store = audit_log.store
    latest = store.latest_checkpoint()
    if latest is not None and not any(
        flt.from_ms <= leaf.ts_ms < flt.to_ms for leaf in store.iter_leaves(latest.size, None)
    ):
        return latest
    return _publish(audit_log)


def _publish(audit_log: AuditLog) -> StoredCheckpoint:
    try:
        return audit_log.publish_checkpoint()
    except CheckpointRefused as exc:
        # The stored tree no longer extends the last signed checkpoint: find where.
        found = AuditDamaged(None, "inconsistent log", f"no checkpoint can be signed: {exc}")
        raise _diagnose(audit_log, found, audit_log.store.size()) from exc


def _plan(audit_log: AuditLog, flt: ExportFilter) -> _Plan:
    checkpoint = _checkpoint_for(audit_log, flt)
    try:
        return _Survey(audit_log, flt, checkpoint, may_renew=True).run()
    except _NewerCheckpointNeeded:
        return _Survey(audit_log, flt, _publish(audit_log), may_renew=False).run()


def _previous(
    audit_log: AuditLog, note: bytes, checkpoint: StoredCheckpoint
) -> tuple[bytes, int, list[bytes]]:
    """Check an earlier export's checkpoint and prove the new one extends it."""
    try:
        old = verify_checkpoint(note, audit_log.verifier, origin=audit_log.origin)
    except CheckpointError as exc:
        raise ExportError(f"previous checkpoint is not this log's: {exc}") from exc
    if old.size > checkpoint.size:
        raise ExportError(
            f"previous checkpoint (size {old.size}) is newer than this export's ({checkpoint.size})"
        )
    proof = audit_log.consistency(old.size, checkpoint.size)
    try:
        verify_consistency(old.size, checkpoint.size, old.root, checkpoint.root, proof)
    except ProofError as exc:
        # Same key, same origin, different history: evidence of a fork, not a typo.
        raise ExportError(f"previous checkpoint is inconsistent with this log: {exc}") from exc
    return note, old.size, proof


# --- the first pass: find the range, check everything it will carry -------------------


@dataclass(frozen=True)
class _Carried:
    """A leaf the bundle carries outside the range (a boundary, a purge record), with its proof."""

    index: int
    leaf_hash: bytes
    payload: bytes | None  # None: purged (only the leaf before the range may be)
    proof: list[bytes]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "leaf_hash": _b64(self.leaf_hash),
            "proof": [_b64(p) for p in self.proof],
        }
        if self.payload is None:
            out["purged"] = True
        else:
            out["record"] = self.payload.decode("utf-8")
        return out


@dataclass(frozen=True)
class _Plan:
    checkpoint: StoredCheckpoint
    start: int
    end: int
    left: list[bytes]
    right: list[bytes]
    before: _Carried | None
    after: _Carried | None
    purges: list[_Carried]
    milestones: list[bytes]

    def range_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "size": self.checkpoint.size,
            "left": [_b64(h) for h in self.left],
            "right": [_b64(h) for h in self.right],
            "before": None if self.before is None else self.before.as_json(),
            "after": None if self.after is None else self.after.as_json(),
            "milestones": [note.decode("utf-8") for note in self.milestones],
        }


class _Survey:
    """The first pass over the range: where it starts and ends, and is every leaf sound."""

    def __init__(
        self,
        audit_log: AuditLog,
        flt: ExportFilter,
        checkpoint: StoredCheckpoint,
        *,
        may_renew: bool,
    ) -> None:
        self._log = audit_log
        self._store = audit_log.store
        self._flt = flt
        self._cp = checkpoint
        self._size = checkpoint.size
        self._may_renew = may_renew
        self._ledger: PurgeLedger | None = None
        self._ledger_from = 0  # the ledger holds the purges logged at this index or later
        self._purged: list[list[int]] = []  # runs [first, last + 1) of purged leaves in range

    def run(self) -> _Plan:
        try:
            return self._run()
        except AuditDamaged as found:
            raise _diagnose(self._log, found, found.index) from None

    def _run(self) -> _Plan:
        self._check_head()
        start = self._start()
        left = self._compact(0, start)
        tree = Frontier(start, left)
        before, end, after = self._scan(start, tree)
        right = self._compact(end, self._size)
        for (level, _), subtree in zip(range_nodes(end, self._size), right, strict=True):
            tree.append_subtree(level, subtree)
        if tree.root() != self._cp.root:
            raise self._localize(start, end, left, right)
        purges = self._retention(start, end, before)
        return _Plan(
            checkpoint=self._cp,
            start=start,
            end=end,
            left=left,
            right=right,
            before=None if before is None else self._carry(before),
            after=None if after is None else self._carry(after),
            purges=[self._carry(self._leaf(p.index)) for p in purges],
            milestones=self._milestones(start, end),
        )

    # -- reading, with damage named --------------------------------------------

    def _node(self, level: int, index: int) -> bytes:
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

    def _leaf(self, index: int) -> StoredLeaf:
        try:
            return self._store.leaf(index)
        except StoreError as exc:
            self._store.size()
            raise AuditDamaged(index, "missing record", "the leaf row is gone") from exc

    def _compact(self, start: int, end: int) -> list[bytes]:
        return [self._node(level, index) for level, index in range_nodes(start, end)]

    def _record(self, leaf: StoredLeaf, payload: bytes) -> dict[str, Any]:
        """The record of a leaf whose payload hashed right; its time must be the row's."""
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("ts_ms"), int):
            raise AuditDamaged(leaf.index, "altered record", "not a valid audit record")
        if record["ts_ms"] != leaf.ts_ms:
            # The row's time is what finds ranges; the record's is what is signed.
            raise AuditDamaged(
                leaf.index, "altered record", f"the row's time {leaf.ts_ms} is not the record's"
            )
        return record

    # -- the head, and where the range starts ------------------------------------

    def _check_head(self) -> None:
        head = self._store.size()
        if head < self._size:
            detail = f"the head says {head} records, checkpoint {self._size} signed {self._size}"
            raise AuditDamaged(head, "truncated log", detail)
        highest = self._store.max_index()
        if highest is not None and highest >= head:
            detail = f"records lie past the head ({head}), up to {highest}"
            raise AuditDamaged(head, "inserted record", detail)

    def _start(self) -> int:
        """a: the first leaf stamped at or after `from`, moved earlier while the leaf
        before it cannot be shown: a record the filter does not open (a bundle never
        opens another client's, subject's or tenant's record, not even as a boundary),
        or a purged leaf no signed purge puts before `from`."""
        start = self._size
        for leaf in self._store.leaves_between(self._flt.from_ms, 2**62):
            start = min(leaf.index, self._size)
            break
        while start > 0:
            leaf = self._leaf(start - 1)
            if leaf.payload is not None:
                if not self._flt.narrows or self._opens(leaf):
                    return start
                start = self._shown_before(start)
                continue
            if self._justifying(start) is not None:
                return start
            # Back to the watermark of a purge whose cutoff is no later than `from`: the
            # leaf before it is covered by that purge, so it is older than `from`.
            start = max(
                (
                    p.purged_below
                    for p in self.ledger(start - 1).purges
                    if p.cutoff_ms <= self._flt.from_ms and p.purged_below < start
                ),
                default=0,
            )
        return start

    def _opens(self, leaf: StoredLeaf) -> bool:
        """The filter opens this leaf's record (one the scan has not checked yet: damage
        it hides shows when the scan reaches it, as part of the range)."""
        try:
            record = orjson.loads(leaf.payload or b"")
        except orjson.JSONDecodeError:
            return False
        return isinstance(record, dict) and self._flt.opens(record)

    def _shown_before(self, start: int) -> int:
        """One past the last leaf below `start` that may bound the range (purged, or a
        record the filter opens); 0 if none. Reads back a page at a time."""
        high = start - 1
        while high > 0:
            low = max(0, high - _BACK_PAGE)
            shown = [
                leaf.index
                for leaf in self._store.iter_leaves(low, high)
                if leaf.payload is None or self._opens(leaf)
            ]
            if shown:
                return shown[-1] + 1
            high = low
        return 0

    def _justifying(self, start: int) -> Purge | None:
        """A signed purge that covers leaf start-1 with a cutoff no later than `from`."""
        for purge in self.ledger(start - 1).purges:
            if purge.purged_below >= start and purge.cutoff_ms <= self._flt.from_ms:
                return purge
        return None

    # -- the scan ---------------------------------------------------------------

    def _scan(self, start: int, tree: Frontier) -> tuple[StoredLeaf | None, int, StoredLeaf | None]:
        """Every leaf from start-1 to b, in order: returns (before, b, after)."""
        flt, size = self._flt, self._size
        low = max(start - 1, 0)
        expected = low
        before: StoredLeaf | None = None
        for leaf in self._store.iter_leaves(low, size):
            index = leaf.index
            if index != expected:
                raise AuditDamaged(expected, "missing record", f"found index {index} next")
            expected += 1
            payload = leaf.payload
            if payload is None:
                if index < start:
                    before = leaf
                    continue
                self._note_purged(index)
            else:
                if not hmac.compare_digest(leaf_hash(payload), leaf.leaf_hash):
                    detail = "payload does not match its leaf hash"
                    raise AuditDamaged(index, "altered record", detail)
                record = self._record(leaf, payload)
                if index < start:
                    if record["ts_ms"] >= flt.from_ms:
                        # Only a range moved back to a purge's watermark gets here.
                        detail = "below a signed purge's watermark, but younger than its cutoff"
                        raise AuditDamaged(index, "retention", detail)
                    before = leaf
                    continue
                if record["ts_ms"] >= flt.to_ms and (not flt.narrows or flt.opens(record)):
                    return before, index, leaf
                if flt.opens(record) and (
                    record.get("v") != RECORD_VERSION or canonical(record) != payload
                ):
                    # What the stream opens must be a record the gateway wrote.
                    detail = "not a canonical audit record of a supported version"
                    raise AuditDamaged(index, "altered record", detail)
            tree.extend((leaf.leaf_hash,))
        if expected < size:
            detail = f"the leaves end at {expected - 1}; checkpoint {size} signed {size}"
            raise AuditDamaged(expected, "missing record", detail)
        return before, size, None

    def _note_purged(self, index: int) -> None:
        if self._purged and self._purged[-1][1] == index:
            self._purged[-1][1] = index + 1
        else:
            self._purged.append([index, index + 1])

    # -- retention ----------------------------------------------------------------

    def ledger(self, low: int) -> PurgeLedger:
        """The log's signed purges logged at `low` or later, under the checkpoint (one
        pass over [low, N), parsing only purge records).

        Enough for every leaf from `low` on: the purge that covers a leaf is logged
        after it. A purge logged before `low` could only move a purged boundary further
        back than needed, never make a lawful deletion look unlawful: whatever covers the
        leaf at `low` covers every leaf below it too.
        """
        if self._ledger is None or low < self._ledger_from:
            purges = []
            for leaf in self._store.iter_leaves(low, self._size):
                payload = leaf.payload
                if payload is None or _RETENTION_MARK not in payload:
                    continue
                if not hmac.compare_digest(leaf_hash(payload), leaf.leaf_hash):
                    continue  # not evidence of anything; named if the range reaches it
                try:
                    record = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    continue
                purge = purge_of(leaf.index, record) if isinstance(record, dict) else None
                if purge is None:
                    continue
                try:
                    purges.append(verify_purge(purge, self._log.verifier))
                except PurgeRejected:
                    continue  # a purge the key did not sign vouches for nothing
            self._ledger, self._ledger_from = PurgeLedger(purges), low
        return self._ledger

    def _retention(self, start: int, end: int, before: StoredLeaf | None) -> list[Purge]:
        """The signed purges the bundle must carry; damage where retention was not lawful."""
        low = max(start - 1, 0)
        purged_before = before is not None and before.payload is None
        if not (self._purged or purged_before or low < self._store.purged_below()):
            return []
        ledger = self.ledger(low)
        uncovered = [
            max(first, ledger.watermark) for first, last in self._purged if last > ledger.watermark
        ]
        if uncovered:
            if self._may_renew and self._store.size() > self._size:
                raise _NewerCheckpointNeeded
            problem = retention_problem(ledger, uncovered[0], payload_present=False, ts_ms=None)
            raise AuditDamaged(uncovered[0], "missing record", str(problem))
        # The age rules: every leaf a purge covers is older than its cutoff (by the
        # record's own time, or for a purged one by the row's, a cross-check).
        for leaf in self._store.iter_leaves(low, min(end, ledger.watermark)):
            problem = retention_problem(
                ledger, leaf.index, payload_present=leaf.payload is not None, ts_ms=leaf.ts_ms
            )
            if problem is not None:
                raise AuditDamaged(leaf.index, "retention", problem)
        carried: dict[int, Purge] = {}
        for first, last in self._purged:
            index = first
            while index < last:
                purge = ledger.covering(index)
                if purge is None:  # cannot be: every purged run is below the watermark
                    raise AuditDamaged(index, "missing record", "no signed purge covers it")
                carried[purge.index] = purge
                index = purge.purged_below
        if purged_before:
            justifying = self._justifying(start)
            if justifying is None:
                detail = "purged, and no signed purge puts it before the range's start"
                raise AuditDamaged(start - 1, "retention", detail)
            carried[justifying.index] = justifying
        return [carried[index] for index in sorted(carried)]

    # -- what travels with proofs -----------------------------------------------

    def _carry(self, leaf: StoredLeaf) -> _Carried:
        """A leaf outside the range's stream, with an inclusion proof checked here."""
        if leaf.payload is not None and not hmac.compare_digest(
            leaf_hash(leaf.payload), leaf.leaf_hash
        ):
            raise AuditDamaged(leaf.index, "altered record", "payload does not match its leaf hash")
        proof = inclusion_proof(leaf.index, self._size, self._node)
        try:
            verify_inclusion(leaf.leaf_hash, leaf.index, self._size, proof, self._cp.root)
        except ProofError as exc:
            detail = "the stored tree's inclusion proof of it does not reach the signed root"
            raise AuditDamaged(leaf.index, "altered node", detail) from exc
        return _Carried(leaf.index, leaf.leaf_hash, leaf.payload, proof)

    def _milestones(self, start: int, end: int) -> list[bytes]:
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
            proof = consistency_proof(signed.size, self._size, self._node)
            try:
                verify_consistency(signed.size, self._size, signed.root, self._cp.root, proof)
            except ProofError as exc:
                detail = f"signed checkpoint {signed.size} is not a prefix of {self._size}: {exc}"
                raise AuditDamaged(signed.size, "inconsistent checkpoint", detail) from exc
            notes.append(stored.note)
        return notes

    # -- naming the damage when the root does not rebuild ----------------------

    def _localize(
        self, start: int, end: int, left: list[bytes], right: list[bytes]
    ) -> AuditDamaged:
        """The leaves of [start, end) hash right one by one, yet do not rebuild the signed
        root: compare them with the stored tree's leaf nodes (a moved record), the stored
        nodes either side with their leaves (an altered node), then the leaves with the
        earlier signed checkpoints (a tree rebuilt after a record was removed)."""
        moved = self._against_leaf_nodes(start, end)
        if moved is not None:
            return moved
        stale = self._against_compact(start, end, left, right)
        if stale is not None:
            return stale
        detail = (
            f"records {start}..{end - 1}, with the stored nodes either side, no longer "
            f"rebuild checkpoint {self._size}"
        )
        return _diagnose(self._log, AuditDamaged(start, "rewritten log", detail), self._size)

    def _against_leaf_nodes(self, start: int, end: int) -> AuditDamaged | None:
        """A leaf row whose hash is not the tree's leaf node: a moved or replaced record."""
        nodes = self._store.iter_nodes()  # level 0 first, in index order
        node = next(nodes, None)
        for leaf in self._store.iter_leaves(start, end):
            while node is not None and node[0] == 0 and node[1] < leaf.index:
                node = next(nodes, None)
            if node is None or node[:2] != (0, leaf.index):
                return AuditDamaged(leaf.index, "missing node", "the tree has no leaf node for it")
            if not hmac.compare_digest(node[2], leaf.leaf_hash):
                detail = "its leaf hash is not the tree's: the record was moved or replaced"
                return AuditDamaged(leaf.index, "altered record", detail)
        return None

    def _against_compact(
        self, start: int, end: int, left: list[bytes], right: list[bytes]
    ) -> AuditDamaged | None:
        """A stored node of the compact ranges that is not the hash of its leaves."""
        nodes = range_nodes(0, start) + range_nodes(end, self._size)
        stored = left + right
        for (level, index), want in zip(nodes, stored, strict=True):
            first = index << level
            sub = Frontier()
            for leaf in self._store.iter_leaves(first, first + (1 << level)):
                sub.extend((leaf.leaf_hash,))
            if sub.size != 1 << level or sub.root() != want:
                last = first + (1 << level) - 1
                detail = f"node ({level}, {index}) is not the hash of records {first}..{last}"
                return AuditDamaged(first, "altered node", detail)
        return None


def _diagnose(audit_log: AuditLog, found: AuditDamaged, limit: int | None) -> AuditDamaged:
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


# --- the second pass: the zip, streamed ---------------------------------------------


class _Sink:
    """The zip's unseekable output: collects what zipfile writes until it is yielded."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes, /) -> int:
        chunk = bytes(data)  # zipfile may pass a memoryview it reuses
        self._chunks.append(chunk)
        self.pending += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return out


class _Member:
    """One zip member being written, with the digest and size the manifest records."""

    def __init__(self, archive: zipfile.ZipFile, name: str, date_time: _Stamp) -> None:
        info = zipfile.ZipInfo(name, date_time=date_time)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        self.name = name
        self._sha = hashlib.sha256()
        self.size = 0
        # ZIP64 up front: with no seeking back, the header cannot be fixed later.
        self._out: IO[bytes] = archive.open(info, "w", force_zip64=True)

    def write(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)
        self._out.write(data)

    def close(self) -> dict[str, Any]:
        self._out.close()
        return {"sha256": self._sha.hexdigest(), "size": self.size}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) + b"\n"


def _stream(
    audit_log: AuditLog,
    flt: ExportFilter,
    plan: _Plan,
    previous: tuple[bytes, int, list[bytes]] | None,
) -> Generator[bytes, None, None]:
    created_ms = audit_log.now_ms()
    t = time.gmtime(created_ms / 1000)
    # zip timestamps cannot predate 1980.
    stamp = (
        (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
        if t.tm_year >= 1980
        else (1980, 1, 1, 0, 0, 0)
    )
    sink = _Sink()
    digests: dict[str, dict[str, Any]] = {}
    summary = Summary()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED)
    member: _Member | None = None

    def begin(name: str) -> _Member:
        nonlocal member
        member = _Member(archive, name, stamp)
        return member

    def end(current: _Member) -> None:
        nonlocal member
        digests[current.name] = current.close()
        member = None

    def whole(name: str, data: bytes) -> None:
        current = begin(name)
        current.write(data)
        end(current)

    try:
        whole(CHECKPOINT, plan.checkpoint.note)
        whole(PUBKEY, audit_log.verifier.verifier_key().encode() + b"\n")
        if previous is not None:
            note, old_size, proof = previous
            whole(PREVIOUS, note)
            consistency = {
                "old_size": old_size,
                "new_size": plan.checkpoint.size,
                "proof": [_b64(p) for p in proof],
            }
            whole(CONSISTENCY, json.dumps(consistency, indent=2).encode() + b"\n")
        whole(RANGE, json.dumps(plan.range_json(), indent=1).encode() + b"\n")
        purges = begin(PURGES)
        for carried in plan.purges:
            body = carried.as_json()
            purges.write(_line(body))
        end(purges)
        yield sink.drain()

        records = begin(RECORDS)
        batch: list[bytes] = []
        batched = 0
        for line in _leaf_lines(audit_log, flt, plan, summary):
            # Lines go to the compressor in batches: one call per line costs more than
            # compressing them.
            batch.append(line)
            batched += len(line)
            if batched >= _CHUNK:
                records.write(b"".join(batch))
                batch.clear()
                batched = 0
                if sink.pending >= _CHUNK:
                    yield sink.drain()
        records.write(b"".join(batch))
        end(records)
        yield sink.drain()

        counts = summary.as_json()
        whole(SUMMARY_JSON, json.dumps(counts, indent=2).encode() + b"\n")
        text = render_summary(
            counts,
            origin=audit_log.origin,
            checkpoint_size=plan.checkpoint.size,
            filter_=flt.as_json(),
            start=plan.start,
            end=plan.end,
        )
        whole(SUMMARY_TXT, text.encode())
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "origin": audit_log.origin,
            "created_ms": created_ms,
            "filter": flt.as_json(),
            "checkpoint_size": plan.checkpoint.size,
            "range": {"start": plan.start, "end": plan.end},
            "records": summary.records,
            "previous_size": None if previous is None else previous[1],
            "members": digests,
        }
        whole(MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    except BaseException:
        # Close what is open (so nothing complains later) but never send the rest: the
        # zip's central directory is its last bytes, and without them what the client
        # got so far is no zip at all, never a bundle that merely looks short.
        if member is not None:
            member.close()
        archive.close()
        sink.drain()
        raise
    archive.close()
    yield sink.drain()


def _leaf_lines(
    audit_log: AuditLog, flt: ExportFilter, plan: _Plan, summary: Summary
) -> Iterator[bytes]:
    """records.jsonl: every leaf of [start, end) in order; consecutive leaves not opened
    (or purged) as runs of at most RUN_LEAVES hashes, one line each."""
    run: list[bytes] = []
    run_key = ""
    run_start = 0

    def flush() -> bytes:
        if run_key == "purged":
            summary.add_purged(len(run))
        else:
            summary.add_unopened(len(run))
        line = _line({"index": run_start, run_key: _b64(b"".join(run))})
        run.clear()
        return line

    opener = _Opener(audit_log.subjects)
    expected = plan.start
    for leaf in audit_log.store.iter_leaves(plan.start, plan.end):
        if leaf.index != expected:
            # The first pass saw it: the log changed while it was being exported.
            raise AuditDamaged(expected, "missing record", "it vanished during the export")
        expected += 1
        payload = leaf.payload
        key = "purged"
        if payload is not None:
            record: dict[str, Any] = orjson.loads(payload)
            if not flt.narrows or flt.opens(record):
                if run:
                    yield flush()
                personal = opener.personal(record)
                summary.add(record, personal)
                yield _line(
                    {
                        "index": leaf.index,
                        "leaf_hash": _b64(leaf.leaf_hash),
                        "record": payload.decode("utf-8"),
                        "personal": personal,
                    }
                )
                continue
            key = "hashes"
        if run and (key != run_key or len(run) == RUN_LEAVES):
            yield flush()
        if not run:
            run_key, run_start = key, leaf.index
        run.append(leaf.leaf_hash)
    if run:
        yield flush()
    if expected != plan.end:
        raise AuditDamaged(expected, "missing record", "it vanished during the export")


class _Opener:
    """The personal fields of sealed records, as `AuditLog.open_record` opens them, with
    each subject's key looked up once per export instead of once per record.

    The export is a snapshot at its checkpoint: an erasure logged while it streams is
    after that checkpoint, and shows in the next export.
    """

    _MAX_KEYS = 4096  # bounded: a log of many subjects only costs a look-up per record

    def __init__(self, subjects: SubjectKeys) -> None:
        self._subjects = subjects
        self._keys: dict[str, SubjectKey | None] = {}

    def personal(self, record: dict[str, Any]) -> object:
        """None (nothing sealed), the opened fields, "erased" or "unreadable"."""
        sealed = record.get("sealed")
        if not isinstance(sealed, dict):
            return None
        pseudonym = str(record.get("subject"))
        if pseudonym in self._keys:
            key = self._keys[pseudonym]
        else:
            try:
                key = self._subjects.by_pseudonym(pseudonym)
            except SubjectKeyError:
                return "unreadable"  # the key exists, but this KEK cannot unwrap it
            if len(self._keys) >= self._MAX_KEYS:
                self._keys.clear()
            self._keys[pseudonym] = key
        if key is None:
            return "erased"
        try:
            return SubjectKeys.unseal(key, str(record.get("request_id")), sealed)
        except SubjectKeyError:
            return "unreadable"
