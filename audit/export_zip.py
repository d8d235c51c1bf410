"""The export's second pass: the bundle's zip, streamed in chunks.

zipfile writes data descriptors when its output cannot seek, so the zip goes
out as it is made and no temporary file ever holds the opened personal fields.
A failure while streaming (the store goes away) ends the stream before the
zip's central directory: what was sent is no zip at all.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Generator
from typing import IO, Any

from audit.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CHECKPOINT,
    CONSISTENCY,
    MANIFEST,
    PREVIOUS,
    PUBKEY,
    PURGES,
    RANGE,
    RECORDS,
    SUMMARY_JSON,
    SUMMARY_TXT,
    b64_text,
    json_line,
)
from audit.bundle_summary import Summary, render_summary
from audit.export_filter import ExportFilter
from audit.export_plan import Plan
from audit.export_records import leaf_lines
from audit.log import AuditLog

__all__ = ["Previous", "stream"]

# Chunks handed to the HTTP response: large enough to amortise a send, small
# enough that a slow client never makes the server hold much.
_CHUNK = 64 * 1024

_Stamp = tuple[int, int, int, int, int, int]

Previous = tuple[bytes, int, list[bytes]]
"""An earlier checkpoint's note, its size, and the consistency proof to the new one."""


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


class _Zip:
    """The zip being streamed: members written one at a time, their digests kept for
    the manifest, what zipfile wrote so far drained as chunks."""

    def __init__(self, created_ms: int) -> None:
        t = time.gmtime(created_ms / 1000)
        # zip timestamps cannot predate 1980.
        self._stamp: _Stamp = (
            (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
            if t.tm_year >= 1980
            else (1980, 1, 1, 0, 0, 0)
        )
        self._sink = _Sink()
        self.digests: dict[str, dict[str, Any]] = {}
        self._archive = zipfile.ZipFile(self._sink, "w", compression=zipfile.ZIP_DEFLATED)
        self._member: _Member | None = None

    @property
    def pending(self) -> int:
        return self._sink.pending

    def drain(self) -> bytes:
        return self._sink.drain()

    def begin(self, name: str) -> _Member:
        self._member = _Member(self._archive, name, self._stamp)
        return self._member

    def end(self, current: _Member) -> None:
        self.digests[current.name] = current.close()
        self._member = None

    def whole(self, name: str, data: bytes) -> None:
        current = self.begin(name)
        current.write(data)
        self.end(current)

    def abandon(self) -> None:
        """Close what is open (so nothing complains later) but keep what is pending."""
        if self._member is not None:
            self._member.close()
        self._archive.close()
        self._sink.drain()

    def finish(self) -> bytes:
        """The central directory, and whatever was still pending before it."""
        self._archive.close()
        return self._sink.drain()


def stream(
    audit_log: AuditLog,
    flt: ExportFilter,
    plan: Plan,
    previous: Previous | None,
) -> Generator[bytes, None, None]:
    """The bundle of `plan`, as chunks; blocks on the store."""
    created_ms = audit_log.now_ms()
    out = _Zip(created_ms)
    summary = Summary()
    try:
        _head(out, audit_log, plan, previous)
        yield out.drain()
        yield from _records(out, audit_log, flt, plan, summary)
        _tail(out, audit_log, flt, plan, previous, summary, created_ms)
    except BaseException:
        # Never send the rest: the zip's central directory is its last bytes, and
        # without them what the client got so far is no zip at all, never a bundle
        # that merely looks short.
        out.abandon()
        raise
    yield out.finish()


def _head(out: _Zip, audit_log: AuditLog, plan: Plan, previous: Previous | None) -> None:
    """The members before records.jsonl: checkpoint, key, previous, range, purges."""
    out.whole(CHECKPOINT, plan.checkpoint.note)
    out.whole(PUBKEY, audit_log.verifier.verifier_key().encode() + b"\n")
    if previous is not None:
        note, old_size, proof = previous
        out.whole(PREVIOUS, note)
        consistency = {
            "old_size": old_size,
            "new_size": plan.checkpoint.size,
            "proof": [b64_text(p) for p in proof],
        }
        out.whole(CONSISTENCY, json.dumps(consistency, indent=2).encode() + b"\n")
    out.whole(RANGE, json.dumps(plan.range_json(), indent=1).encode() + b"\n")
    purges = out.begin(PURGES)
    for carried in plan.purges:
        body = carried.as_json()
        purges.write(json_line(body))
    out.end(purges)


def _records(
    out: _Zip, audit_log: AuditLog, flt: ExportFilter, plan: Plan, summary: Summary
) -> Generator[bytes, None, None]:
    """records.jsonl, yielding a chunk whenever enough is pending."""
    records = out.begin(RECORDS)
    batch: list[bytes] = []
    batched = 0
    for line in leaf_lines(audit_log, flt, plan, summary):
        # Lines go to the compressor in batches: one call per line costs more than
        # compressing them.
        batch.append(line)
        batched += len(line)
        if batched >= _CHUNK:
            records.write(b"".join(batch))
            batch.clear()
            batched = 0
            if out.pending >= _CHUNK:
                yield out.drain()
    records.write(b"".join(batch))
    out.end(records)
    yield out.drain()


def _tail(
    out: _Zip,
    audit_log: AuditLog,
    flt: ExportFilter,
    plan: Plan,
    previous: Previous | None,
    summary: Summary,
    created_ms: int,
) -> None:
    """The members after records.jsonl: the summary, then the manifest of them all."""
    counts = summary.as_json()
    out.whole(SUMMARY_JSON, json.dumps(counts, indent=2).encode() + b"\n")
    text = render_summary(
        counts,
        origin=audit_log.origin,
        checkpoint_size=plan.checkpoint.size,
        filter_=flt.as_json(),
        start=plan.start,
        end=plan.end,
    )
    out.whole(SUMMARY_TXT, text.encode())
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
        "members": out.digests,
    }
    out.whole(MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")
