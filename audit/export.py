"""Compliance export: the records of a time range as one zip an auditor verifies offline.

The zip is produced as a stream of chunks (zipfile writes data descriptors when
its output cannot seek), so `GET /v1/audit/export` sends it as it is built and
no temporary file ever holds the opened personal fields. Memory stays bounded:
records are read, written and dropped one at a time; only the selected leaf
indices (8 bytes each) are kept, because proofs.jsonl follows records.jsonl.

Everything is proved against one checkpoint, published first if the latest one
does not cover the range yet; records appended after it are not in the bundle.
Members and their formats are described in `audit.bundle`, which verifies them.

`iter_bundle` checks its input and picks the checkpoint before it returns, so a
caller learns about a bad request (`ExportError`) before the first byte is sent.
Damage found while streaming (`StoreError`, or `ExportError` for a record that no
longer matches its leaf) ends the stream, and the verifier rejects the truncated
zip. A log that cannot be checkpointed raises `CheckpointRefused` up front.
Both `iter_bundle` and the generator it returns block on the store: call them
off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zipfile
from array import array
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
    PREVIOUS,
    PROOFS,
    PUBKEY,
    RECORDS,
    SUMMARY_JSON,
    SUMMARY_TXT,
    Summary,
    record_matches,
    render_summary,
)
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.log import AuditLog
from audit.merkle import ProofError, inclusion_proof, leaf_hash, verify_consistency
from audit.record import RecordError, parse
from audit.store import StoredCheckpoint, StoredLeaf
from audit.subjects import SubjectKeyError
from gateway.files import write_private

__all__ = [
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


class ExportError(Exception):
    """The export request cannot be served as asked (bad range, foreign checkpoint, file exists)."""


@dataclass(frozen=True)
class ExportFilter:
    """Records with from_ms <= ts_ms < to_ms, then of one client and/or one subject pseudonym."""

    from_ms: int
    to_ms: int
    client_id: str | None = None
    subject_pseudonym: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.from_ms <= self.to_ms:
            raise ExportError(f"time range [{self.from_ms}, {self.to_ms}) is empty or negative")
        if self.client_id == "" or self.subject_pseudonym == "":
            raise ExportError("an empty client or subject filter selects nothing; omit it")

    def matches(self, record: dict[str, Any]) -> bool:
        return record_matches(
            record, self.from_ms, self.to_ms, self.client_id, self.subject_pseudonym
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "client_id": self.client_id,
            "subject": self.subject_pseudonym,
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
    """Validate, pick the checkpoint, then return the zip's bytes as a chunk generator.

    Close the generator if you stop early (a client hung up): that ends the store reads.
    """
    checkpoint = _checkpoint_for(audit_log, flt)
    previous: tuple[bytes, int, list[bytes]] | None = None
    if previous_checkpoint is not None:
        previous = _previous(audit_log, previous_checkpoint, checkpoint)
    return _stream(audit_log, flt, checkpoint, previous)


def _checkpoint_for(audit_log: AuditLog, flt: ExportFilter) -> StoredCheckpoint:
    """The latest checkpoint if it covers every record in range so far; else a new one."""
    store = audit_log.store
    latest = store.latest_checkpoint()
    if latest is not None and not any(
        flt.from_ms <= leaf.ts_ms < flt.to_ms for leaf in store.iter_leaves(latest.size, None)
    ):
        return latest
    return audit_log.publish_checkpoint()


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
    checkpoint: StoredCheckpoint,
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
    selected = array("q")

    def whole(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
        member = _Member(archive, name, stamp)
        member.write(data)
        digests[name] = member.close()

    # The with-blocks also run when the consumer stops early (a client hangs up):
    # zipfile then finishes into the sink, which is dropped with the generator.
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        whole(archive, CHECKPOINT, checkpoint.note)
        whole(archive, PUBKEY, audit_log.verifier.verifier_key().encode() + b"\n")
        if previous is not None:
            note, old_size, proof = previous
            whole(archive, PREVIOUS, note)
            consistency = {
                "old_size": old_size,
                "new_size": checkpoint.size,
                "proof": [_b64(p) for p in proof],
            }
            whole(archive, CONSISTENCY, json.dumps(consistency, indent=2).encode() + b"\n")
        yield sink.drain()

        records = _Member(archive, RECORDS, stamp)
        for leaf in _selected(audit_log, flt, checkpoint.size):
            records.write(_record_line(audit_log, leaf, summary))
            selected.append(leaf.index)
            if sink.pending >= _CHUNK:
                yield sink.drain()
        digests[RECORDS] = records.close()
        yield sink.drain()

        proofs = _Member(archive, PROOFS, stamp)
        for index in selected:
            path = inclusion_proof(index, checkpoint.size, audit_log.store.node)
            proofs.write(_line({"index": index, "proof": [_b64(p) for p in path]}))
            if sink.pending >= _CHUNK:
                yield sink.drain()
        digests[PROOFS] = proofs.close()
        yield sink.drain()

        counts = summary.as_json()
        whole(archive, SUMMARY_JSON, json.dumps(counts, indent=2).encode() + b"\n")
        text = render_summary(
            counts,
            origin=audit_log.origin,
            checkpoint_size=checkpoint.size,
            filter_=flt.as_json(),
        )
        whole(archive, SUMMARY_TXT, text.encode())
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "origin": audit_log.origin,
            "created_ms": created_ms,
            "filter": flt.as_json(),
            "checkpoint_size": checkpoint.size,
            "records": len(selected),
            "previous_size": None if previous is None else previous[1],
            "members": digests,
        }
        whole(archive, MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
    yield sink.drain()


def _selected(audit_log: AuditLog, flt: ExportFilter, size: int) -> Iterator[StoredLeaf]:
    """Leaves in range under the checkpoint, filtered by client and subject.

    A purged leaf is kept whatever the client or subject filter: its content is
    gone, so it may have matched, and leaving it out would hide that retention
    deleted records in the range. It carries nothing but its hash.
    """
    for leaf in audit_log.store.leaves_between(flt.from_ms, flt.to_ms):
        if leaf.index >= size:
            break
        if leaf.payload is None:
            yield leaf
            continue
        if flt.client_id is None and flt.subject_pseudonym is None:
            yield leaf
            continue
        record = orjson.loads(leaf.payload)
        if isinstance(record, dict) and flt.matches(record):
            yield leaf


def _record_line(audit_log: AuditLog, leaf: StoredLeaf, summary: Summary) -> bytes:
    if leaf.payload is None:
        summary.add_purged()
        return _line({"index": leaf.index, "leaf_hash": _b64(leaf.leaf_hash), "purged": True})
    if leaf_hash(leaf.payload) != leaf.leaf_hash:
        raise ExportError(
            f"record {leaf.index} does not match its leaf hash; run `gateway audit verify`"
        )
    try:
        record = audit_log.open_record(leaf.payload, unseal=True)
    except RecordError as exc:
        raise ExportError(f"record {leaf.index} is not a valid audit record: {exc}") from exc
    except SubjectKeyError:
        # The subject's key exists but this KEK cannot unwrap it.
        record = parse(leaf.payload)
        personal: object = "unreadable"
    else:
        # open_record adds "personal" to sealed records only: dict, "erased" or "unreadable".
        personal = record.pop("personal", None) if isinstance(record.get("sealed"), dict) else None
    summary.add(record, personal)
    return _line(
        {
            "index": leaf.index,
            "leaf_hash": _b64(leaf.leaf_hash),
            "record": leaf.payload.decode("utf-8"),
            "personal": personal,
        }
    )
