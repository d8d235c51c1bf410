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
in `audit.bundle`, which verifies them (their names and bounds are
`audit.bundle_format`, shared by both). Both `iter_bundle` and the generator it
returns block on the store: call them off the event loop.

This module is the entry point; the request is `audit.export_filter`, the first
pass `audit.export_plan` (reading the stored tree through `audit.export_tree`,
the purges through `audit.export_purges`, naming damage with
`audit.export_damage`), the second pass `audit.export_zip` (records.jsonl from
`audit.export_records`).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO

from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.export_damage import AuditDamaged, diagnose
from audit.export_filter import ExportError, ExportFilter, parse_time_ms
from audit.export_plan import Plan, Survey
from audit.export_purges import NewerCheckpointNeeded
from audit.export_zip import Previous, stream
from audit.log import AuditLog, CheckpointRefused
from audit.merkle import ProofError, verify_consistency
from audit.store import StoredCheckpoint
from gateway.files import write_private

__all__ = [
    "AuditDamaged",
    "ExportError",
    "ExportFilter",
    "iter_bundle",
    "parse_time_ms",
    "subject_pseudonym",
    "write_bundle",
]


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
    previous: Previous | None = None
    if previous_checkpoint is not None:
        previous = _previous(audit_log, previous_checkpoint, plan.checkpoint)
    return stream(audit_log, flt, plan, previous)


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
        raise diagnose(audit_log, found, audit_log.store.size()) from exc


def _plan(audit_log: AuditLog, flt: ExportFilter) -> Plan:
    checkpoint = _checkpoint_for(audit_log, flt)
    try:
        return Survey(audit_log, flt, checkpoint, may_renew=True).run()
    except NewerCheckpointNeeded:
        return Survey(audit_log, flt, _publish(audit_log), may_renew=False).run()


def _previous(audit_log: AuditLog, note: bytes, checkpoint: StoredCheckpoint) -> Previous:
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
