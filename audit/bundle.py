"""`gateway audit verify-bundle`: check an export bundle offline, naming the first damage.

Needs no database and no network: the standard library, orjson, `cryptography`
(through `audit.checkpoint`), the Merkle math and the retention rules. A bundle
covers the leaves [a, b) of one signed checkpoint of size N and carries EVERY
leaf of that range, in order (`audit.export` describes how it is made). The
steps (`STEPS`), each failing with one `BundleInvalid(step, where, detail)` whose
`where` names the member, the line and, wherever there is one, `index N`:
  1. the file is a zip of exactly the expected members, each once, flat names,
     not encrypted, stored or deflated, within a size bound (memory stays bounded:
     small members are read whole, the line files one bounded line at a time);
  2. the manifest is well formed and the SHA-256 and size of every member match
     it (the small members here, the two line files as steps 4 and 6 read them;
     the manifest is not signed, so authenticity comes from the steps below);
  3. the checkpoint note verifies with the trusted key (the caller's own copy when
     given, else the bundle's pubkey.txt, which then only proves self-consistency),
     for the manifest's origin and size;
  4. every purge record carried (purges.jsonl) is included in the checkpoint, and
     is a purge the log's key signed whose statement holds (`audit.retention`);
  5. the range's boundaries: the leaf before the range (a-1) and the one after it
     (b) are included in the checkpoint; the first is older than the filter's
     `from` (or purged by a signed purge whose cutoff is no later than `from`), the
     second at or after its `to`; none where the range starts at 0 or ends at N;
  6. every leaf of [a, b), in order, exactly once: an opened record re-hashes to
     its leaf hash, is a JSON object the filter selects and carries personal fields
     exactly when it sealed some; leaves carried as hashes only are allowed only
     when the filter narrows (an unfiltered bundle opens every leaf it can); a
     purged leaf must be covered by a carried signed purge, and an opened record
     a purge covers must be older than its cutoff;
  7. completeness: the compact range of [0, a), the leaves of [a, b) and the
     compact range of [b, N) rebuild the checkpoint's root; the signed checkpoints
     the bundle carries from inside the range (milestones) are rebuilt on the way,
     so a mismatch is narrowed to the records between two of them;
  8. the previous checkpoint (the caller's, else previous.note) verifies with the
     same key and origin, and the consistency proof old -> new verifies;
  9. summary.json and summary.txt equal the summary recomputed from the records.
Steps 6 and 7 run in one pass over records.jsonl.

What a bundle cannot prove: that a leaf it carries as a hash only (a filtered
bundle's other clients, subjects or tenants) does not match the filter: the
leaf is there and unchanged, but unopened; an unfiltered bundle has no such
leaves. That no record stamped inside [from, to) lies outside [a, b): the log is
ordered by append, the gateway stamps a request when it starts, so a request
that outlives the first record at or after `to` lands after the boundary (the
next period's bundle, which starts where this one ends, holds it). The age of a
purged record: only the signed purge statement vouches for it. And the opened
personal fields: they are not in the leaves (the sealed ciphertext is). The
summary code lives here so that the exporter and this verifier count with one
definition.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zipfile
import zlib
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import (
    HASH_SIZE,
    Frontier,
    ProofError,
    leaf_hash,
    range_nodes,
    verify_consistency,
    verify_inclusion,
)
from audit.retention import PurgeLedger, PurgeRejected, purge_of, retention_problem, verify_purge

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MEMBERS",
    "RUN_LEAVES",
    "STEPS",
    "BundleInvalid",
    "BundleReport",
    "Summary",
    "opens",
    "render_summary",
    "verify_bundle",
]

BUNDLE_FORMAT = "gateway-audit-bundle"
# 2: complete ranges (every leaf of [a, b), compact ranges, boundaries, signed purges);
# version 1 carried the selected records with one inclusion proof each.
BUNDLE_VERSION = 2

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
RANGE = "range.json"
PURGES = "purges.jsonl"
CHECKPOINT = "checkpoint.note"
PUBKEY = "pubkey.txt"
PREVIOUS = "previous.note"
CONSISTENCY = "consistency.json"
SUMMARY_JSON = "summary.json"
SUMMARY_TXT = "summary.txt"

_KIB = 1024
_MIB = 1024 * _KIB
# Upper bounds on each member's uncompressed size. zipfile never inflates past
# the size the central directory declares, so checking that size bounds memory
# (and zip bombs) before anything is read.
MEMBERS: dict[str, int] = {
    MANIFEST: 64 * _KIB,
    CHECKPOINT: 64 * _KIB,
    PUBKEY: 4 * _KIB,
    PREVIOUS: 64 * _KIB,
    CONSISTENCY: 64 * _KIB,
    RANGE: 4 * _MIB,
    RECORDS: 1 << 40,  # streamed line by line, never held whole
    PURGES: 256 * _MIB,  # streamed too; the purges it holds are kept (~1 KiB each)
    SUMMARY_JSON: 16 * _MIB,
    SUMMARY_TXT: 16 * _MIB,
}
_OPTIONAL = frozenset({PREVIOUS, CONSISTENCY})
_REQUIRED = frozenset(MEMBERS) - _OPTIONAL
_STREAMED = frozenset({RECORDS, PURGES})
_MAX_LINE = 4 * _MIB
_MAX_PROOF = 64  # a tree of at most 2**64 leaves has paths of at most 64 hashes
# Leaves carried as hashes only (or purged) travel as runs: one line per run of at
# most this many consecutive leaves, their hashes concatenated in base64.
RUN_LEAVES = 4096
MAX_MILESTONES = 64

STEPS: tuple[tuple[int, str], ...] = (
    (1, "The file is a zip of exactly the expected members, each bounded in size"),
    (2, "The manifest is well formed and every member matches its SHA-256 and size"),
    (3, "The checkpoint is signed by the log's key, for this log and tree size"),
    (4, "Every carried purge record is in the checkpoint and signed by the log's key"),
    (5, "The leaves just outside the range are in the checkpoint and outside the time range"),
    (6, "Every leaf of the range is present once, in order; opened records match their hashes"),
    (7, "The range's leaves, with the hashes either side, rebuild the checkpoint's root"),
    (8, "The checkpoint is consistent with the previous checkpoint (when one is given)"),
    (9, "The summary's counts equal those recomputed from the records"),
)
_STEPS = dict(STEPS)  # the titles by number (audit.report reads them this way too)
_NAMES = {
    1: "archive",
    2: "manifest",
    3: "checkpoint",
    4: "retention",
    5: "boundaries",
    6: "records",
    7: "completeness",
    8: "consistency",
    9: "summary",
}

# zipfile and zlib report a damaged archive through all of these.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)

_FILTER_KEYS = frozenset({"from_ms", "to_ms", "client_id", "subject", "tenant", "tenant_scoped"})
_OPENED = frozenset({"index", "leaf_hash", "record", "personal"})
_HASHES = frozenset({"index", "hashes"})
_PURGED = frozenset({"index", "purged"})


class BundleInvalid(Exception):  # noqa: N818 - the finding, like LogDamaged
    """The bundle fails verification at `step`; `where` names the member, line and index.

    `index` is the leaf the damage is at, when one is named.
    """

    def __init__(self, step: int, where: str, detail: str, *, index: int | None = None) -> None:
        super().__init__(f"step {step} ({_NAMES[step]}): {where}: {detail}")
        self.step = step
        self.where = where
        self.detail = detail
        self.index = index


@dataclass(frozen=True)
class BundleReport:
    origin: str
    checkpoint_size: int
    records: int
    erased: int
    purged: int
    previous_size: int | None
    key: str
    key_source: str  # "argument" (the auditor's own copy) or "bundle" (pubkey.txt)
    previous_source: str | None  # "argument", "bundle" or None
    # The range [start, end) of the checkpoint the bundle holds every leaf of.
    start: int = 0
    end: int = 0
    unopened: int = 0  # leaves carried as hashes only (the filter did not select them)
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json, as recomputed

    @property
    def complete(self) -> str:
        """The completeness claim in words: `complete: records a..b-1 of checkpoint N`."""
        size = self.checkpoint_size
        if self.end > self.start:
            return f"complete: records {self.start}..{self.end - 1} of checkpoint {size}"
        return f"complete: no records (empty range at {self.start}) of checkpoint {size}"


# --- what exporter and verifier share ------------------------------------------------


def opens(record: dict[str, Any], filter_: dict[str, Any]) -> bool:
    """Whether a record inside the range is opened: it is of the filter's client,
    subject pseudonym and tenant, each where given (tenant_scoped with tenant null:
    the records of no tenant). Time picks the range, not this."""
    client, subject = filter_["client_id"], filter_["subject"]
    if client is not None and record.get("client_id") != client:
        return False
    if subject is not None and record.get("subject") != subject:
        return False
    return not filter_["tenant_scoped"] or record.get("tenant") == filter_["tenant"]


def narrows(filter_: dict[str, Any]) -> bool:
    """A filter that leaves some leaves unopened: a client, a subject or a tenant scope."""
    return bool(filter_["tenant_scoped"]) or any(
        filter_[key] is not None for key in ("client_id", "subject")
    )


_NONE = "(none)"


class Summary:
    """Counts over a bundle's records; the exporter writes them, the verifier recomputes them."""

    def __init__(self) -> None:
        self.records = 0
        self.purged = 0
        self.erased = 0
        self.unopened = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self.by_kind: Counter[str] = Counter()
        self.by_decision: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.by_refusal: Counter[str] = Counter()
        self.by_pii_type: Counter[str] = Counter()

    def add_purged(self, count: int = 1) -> None:
        self.records += count
        self.purged += count

    def add_unopened(self, count: int) -> None:
        self.unopened += count

    def add(self, record: dict[str, Any], personal: object) -> None:
        # Called once per opened record by exporter and verifier alike: kept lean.
        self.records += 1
        if personal == "erased":
            self.erased += 1
        ts = record.get("ts_ms")
        if type(ts) is int:
            if self.first_ts_ms is None or ts < self.first_ts_ms:
                self.first_ts_ms = ts
            if self.last_ts_ms is None or ts > self.last_ts_ms:
                self.last_ts_ms = ts
        kind = str(record.get("kind"))
        self.by_kind[kind] += 1
        if kind != "request":
            return
        decision = str(record.get("decision"))
        self.by_decision[decision] += 1
        self.by_route[_name(record.get("route"))] += 1
        self.by_client[_name(record.get("client_id"))] += 1
        model = record.get("model")
        if type(model) is dict:
            self.by_model[f"{model.get('name')}@{model.get('version')}"] += 1
        else:
            self.by_model[_NONE] += 1
        if decision != "allow":
            self.by_refusal[_name(record.get("outcome"))] += 1
        # "pii" stays null until the redaction stage fills it with counts per
        # entity type; a list of entity names counts one each.
        pii = record.get("pii")
        if isinstance(pii, dict):
            for entity, count in pii.items():
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    self.by_pii_type[str(entity)] += count
        elif isinstance(pii, list):
            for entity in pii:
                self.by_pii_type[str(entity)] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "purged": self.purged,
            "erased": self.erased,
            "unopened": self.unopened,
            "time_range": {"first_ts_ms": self.first_ts_ms, "last_ts_ms": self.last_ts_ms},
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_decision": dict(sorted(self.by_decision.items())),
            "by_route": dict(sorted(self.by_route.items())),
            "by_model": dict(sorted(self.by_model.items())),
            "by_client": dict(sorted(self.by_client.items())),
            "by_refusal": dict(sorted(self.by_refusal.items())),
            "by_pii_type": dict(sorted(self.by_pii_type.items())),
        }


def _name(value: object) -> str:
    if type(value) is str:
        return value
    return _NONE if value is None else str(value)


_SECTIONS = (
    ("by_kind", "Records by kind"),
    ("by_decision", "Requests by decision"),
    ("by_route", "Requests by route"),
    ("by_model", "Requests by model"),
    ("by_client", "Requests by client"),
    ("by_refusal", "Refused requests by reason"),
    ("by_pii_type", "Personal data by entity type"),
)


def render_summary(
    summary: dict[str, Any],
    *,
    origin: str,
    checkpoint_size: int,
    filter_: dict[str, Any],
    start: int,
    end: int,
) -> str:
    """summary.txt: the same counts for a human; deterministic, so the verifier compares bytes."""
    span = f"records {start}..{end - 1}" if end > start else f"none (empty range at {start})"
    tenant = filter_["tenant"] or ("(none)" if filter_["tenant_scoped"] else "any")
    lines = [
        "Audit export summary",
        f"Log origin:        {origin}",
        f"Checkpoint size:   {checkpoint_size}",
        f"Range (complete):  {span}; every leaf of it is in this bundle",
        f"Filter:            ts_ms in [{filter_['from_ms']}, {filter_['to_ms']})"
        f", client {filter_['client_id'] or 'any'}, subject {filter_['subject'] or 'any'}"
        f", tenant {tenant}",
        f"Records:           {summary['records']}",
        f"  purged (hash only, payload deleted by retention): {summary['purged']}",
        f"  erased subject (personal fields destroyed):        {summary['erased']}",
        f"Not selected by the filter (hash only):              {summary['unopened']}",
        f"First record ts_ms: {summary['time_range']['first_ts_ms']}",
        f"Last record ts_ms:  {summary['time_range']['last_ts_ms']}",
    ]
    for key, title in _SECTIONS:
        lines.append("")
        lines.append(f"{title}:")
        counts: dict[str, int] = summary[key]
        if not counts:
            lines.append("  (none)")
        width = max((len(name) for name in counts), default=0)
        lines.extend(f"  {name.ljust(width)}  {count}" for name, count in counts.items())
    return "\n".join(lines) + "\n"


# --- the verifier ----------------------------------------------------------------------


def verify_bundle(
    path: Path, *, pubkey: str | None = None, previous_checkpoint: bytes | None = None
) -> BundleReport:
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise BundleInvalid(1, path.name, f"not a readable zip file: {exc}") from exc
    with archive:
        return _Verifier(archive, pubkey, previous_checkpoint).run()


def _json(text: bytes | str, step: int, where: str, index: int | None = None) -> Any:
    # orjson is strict RFC 8259: no NaN or Infinity, no invalid UTF-8, no lone surrogates.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BundleInvalid(step, where, f"not valid JSON: {exc}", index=index) from exc


def _b64(value: object, step: int, where: str, index: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise BundleInvalid(step, where, "hash is not a base64 string", index=index)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleInvalid(step, where, "hash is not valid base64", index=index) from exc


def _b64_hash(value: object, step: int, where: str, index: int | None = None) -> bytes:
    raw = _b64(value, step, where, index)
    if len(raw) != HASH_SIZE:
        raise BundleInvalid(step, where, f"hash is {len(raw)} bytes, not {HASH_SIZE}", index=index)
    return raw


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_optional_str(value: object) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _proof(value: object, step: int, where: str, index: int) -> list[bytes]:
    if not isinstance(value, list) or len(value) > _MAX_PROOF:
        raise BundleInvalid(step, where, "proof is not a list of at most 64 hashes", index=index)
    return [_b64_hash(p, step, where, index) for p in value]


def _record_text(entry: dict[str, Any], leaf: bytes, step: int, where: str, index: int) -> str:
    """The record's text, after checking it hashes to `leaf`."""
    text = entry["record"]
    if not isinstance(text, str):
        raise BundleInvalid(step, where, "record is not a string", index=index)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BundleInvalid(step, where, "record is not encodable as UTF-8", index=index) from exc
    if not hmac.compare_digest(leaf_hash(data), leaf):
        raise BundleInvalid(step, where, "record does not hash to its leaf hash", index=index)
    return text


class _Digest:
    """SHA-256 and size of a streamed member, compared with the manifest once it is read."""

    def __init__(self, name: str, expected: dict[str, Any]) -> None:
        self.name = name
        self._expected = expected
        self._sha = hashlib.sha256()
        self._size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self._size += len(data)

    def check(self) -> None:
        if self._size != self._expected.get("size") or not hmac.compare_digest(
            self._sha.hexdigest(), self._expected["sha256"]
        ):
            raise BundleInvalid(2, self.name, "SHA-256 or size differs from the manifest")


@dataclass
class _Range:
    """range.json, checked for shape against the manifest and the checkpoint."""

    start: int
    end: int
    left: list[bytes]
    right: list[bytes]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    milestones: list[Checkpoint]


class _Verifier:
    def __init__(self, archive: zipfile.ZipFile, pubkey: str | None, previous: bytes | None):
        self._zip = archive
        self._pubkey = pubkey
        self._previous = previous
        self._names: set[str] = set()
        self._members: dict[str, Any] = {}

    def run(self) -> BundleReport:
        self._step1_archive()
        manifest = self._step2_manifest()
        verifier, key_source, checkpoint = self._step3_checkpoint(manifest)
        ledger = self._step4_purges(checkpoint, verifier)
        span = self._read_range(manifest, checkpoint, verifier)
        self._step5_boundaries(manifest["filter"], span, checkpoint, ledger)
        summary = self._steps6_7_leaves(manifest, span, checkpoint, ledger)
        previous_size, previous_source = self._step8_consistency(manifest, verifier, checkpoint)
        counts = self._step9_summary(manifest, span, summary)
        return BundleReport(
            origin=checkpoint.origin,
            checkpoint_size=checkpoint.size,
            records=summary.records,
            erased=summary.erased,
            purged=summary.purged,
            previous_size=previous_size,
            key=verifier.verifier_key(),
            key_source=key_source,
            previous_source=previous_source,
            start=span.start,
            end=span.end,
            unopened=summary.unopened,
            summary=counts,
        )

    # -- reading members ------------------------------------------------------

    def _read(self, step: int, name: str) -> bytes:
        """A small member, whole (its size was bounded in step 1)."""
        try:
            return self._zip.read(name)
        except _ZIP_ERRORS as exc:
            raise BundleInvalid(step, name, f"unreadable: {exc}") from exc

    def _text(self, step: int, name: str) -> str:
        try:
            return self._read(step, name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleInvalid(step, name, "not UTF-8") from exc

    def _lines(self, step: int, name: str) -> Generator[tuple[int, bytes], None, None]:
        """(line number, line) of a line member, one bounded line at a time; the member's
        digest is checked against the manifest once the last line is read."""
        digest = _Digest(name, self._members[name])
        number = 0
        tail = b""
        # Large reads split here: zipfile's own readline peeks a few bytes at a time,
        # which costs more than everything else a line needs.
        for chunk in self._chunks(step, name):
            digest.update(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                number += 1
                if len(line) >= _MAX_LINE:
                    raise BundleInvalid(step, f"{name} line {number}", "line too long")
                yield number, line
            if len(tail) >= _MAX_LINE:
                raise BundleInvalid(step, f"{name} line {number + 1}", "line too long")
        if tail:
            raise BundleInvalid(step, f"{name} line {number + 1}", "unterminated line")
        digest.check()

    def _chunks(self, step: int, name: str) -> Generator[bytes, None, None]:
        try:
            with self._zip.open(name) as handle:
                while chunk := handle.read(_MIB):
                    yield chunk
        except _ZIP_ERRORS as exc:
            raise BundleInvalid(step, name, f"unreadable: {exc}") from exc

    # -- 1. the archive -------------------------------------------------------

    def _step1_archive(self) -> None:
        infos = self._zip.infolist()
        self._refuse_other_versions(infos)
        for info in infos:
            name = info.filename
            if name.startswith("/") or "\\" in name or ".." in name.split("/") or "/" in name:
                raise BundleInvalid(1, repr(name), "member name is a path, not a flat name")
            if name not in MEMBERS:
                raise BundleInvalid(1, repr(name), "unexpected member")
            if name in self._names:
                raise BundleInvalid(1, name, "duplicate member")
            self._names.add(name)
            if info.flag_bits & 0x1:
                raise BundleInvalid(1, name, "member is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleInvalid(1, name, f"unsupported compression {info.compress_type}")
            if info.file_size > MEMBERS[name]:
                raise BundleInvalid(1, name, f"{info.file_size} bytes, over {MEMBERS[name]}")
        missing = sorted(_REQUIRED - self._names)
        if missing:
            raise BundleInvalid(1, ", ".join(missing), "required member missing")
        optional = self._names & _OPTIONAL
        if optional and optional != _OPTIONAL:
            raise BundleInvalid(
                1, ", ".join(sorted(optional)), "previous.note and consistency.json come together"
            )

    def _refuse_other_versions(self, infos: list[zipfile.ZipInfo]) -> None:
        """A bundle of another format version has other members: say that, rather than
        that its members are unexpected (the manifest is read again, fully, in step 2)."""
        manifests = [info for info in infos if info.filename == MANIFEST]
        if len(manifests) != 1 or manifests[0].file_size > MEMBERS[MANIFEST]:
            return
        try:
            manifest = orjson.loads(self._zip.read(manifests[0]))
        except (orjson.JSONDecodeError, *_ZIP_ERRORS):
            return
        if isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT:
            self._check_version(manifest.get("version"))

    @staticmethod
    def _check_version(version: object) -> None:
        if version != BUNDLE_VERSION:
            raise BundleInvalid(
                2,
                MANIFEST,
                f"bundle format version {version!r}; this verifier reads version "
                f"{BUNDLE_VERSION} only (use the gateway release that wrote the bundle)",
            )

    # -- 2. manifest and digests ----------------------------------------------

    def _step2_manifest(self) -> dict[str, Any]:
        manifest = _json(self._read(2, MANIFEST), 2, MANIFEST)
        if not isinstance(manifest, dict):
            raise BundleInvalid(2, MANIFEST, "not a JSON object")
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleInvalid(2, MANIFEST, "not an audit bundle")
        self._check_version(manifest.get("version"))
        flt = manifest.get("filter")
        span = manifest.get("range")
        if (
            not isinstance(manifest.get("origin"), str)
            or not _is_int(manifest.get("checkpoint_size"))
            or not _is_int(manifest.get("records"))
            or not (manifest.get("previous_size") is None or _is_int(manifest["previous_size"]))
            or not isinstance(flt, dict)
            or set(flt) != _FILTER_KEYS
            or not _is_int(flt["from_ms"])
            or not _is_int(flt["to_ms"])
            or not _is_optional_str(flt["client_id"])
            or not _is_optional_str(flt["subject"])
            or not _is_optional_str(flt["tenant"])
            or not isinstance(flt["tenant_scoped"], bool)
            or (flt["tenant"] is not None and not flt["tenant_scoped"])
            or not isinstance(span, dict)
            or set(span) != {"start", "end"}
            or not _is_int(span["start"])
            or not _is_int(span["end"])
        ):
            raise BundleInvalid(2, MANIFEST, "missing or mistyped fields")
        if not span["start"] <= span["end"] <= manifest["checkpoint_size"]:
            raise BundleInvalid(2, MANIFEST, "range is not inside the checkpoint")
        if flt["from_ms"] > flt["to_ms"]:
            raise BundleInvalid(2, MANIFEST, "time range is empty or negative")
        if (manifest["previous_size"] is None) != (PREVIOUS not in self._names):
            raise BundleInvalid(2, MANIFEST, "previous_size disagrees with previous.note")
        members = manifest.get("members")
        if not isinstance(members, dict) or set(members) != self._names - {MANIFEST}:
            raise BundleInvalid(2, MANIFEST, "member list differs from the archive's members")
        for name in sorted(members):
            entry = members[name]
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise BundleInvalid(2, MANIFEST, f"no digest for {name}")
            self._members[name] = entry
            if name in _STREAMED:
                continue  # checked as steps 4 and 6 read it, without a second pass
            digest, size = self._digest(name)
            if size != entry.get("size") or not hmac.compare_digest(digest, entry["sha256"]):
                raise BundleInvalid(2, name, "SHA-256 or size differs from the manifest")
        return manifest

    def _digest(self, name: str) -> tuple[str, int]:
        sha = hashlib.sha256()
        size = 0
        try:
            with self._zip.open(name) as handle:
                while chunk := handle.read(_MIB):
                    sha.update(chunk)
                    size += len(chunk)
        except _ZIP_ERRORS as exc:
            raise BundleInvalid(2, name, f"unreadable: {exc}") from exc
        return sha.hexdigest(), size

    # -- 3. the checkpoint ----------------------------------------------------

    def _step3_checkpoint(self, manifest: dict[str, Any]) -> tuple[NoteVerifier, str, Checkpoint]:
        bundled = self._text(3, PUBKEY).strip()
        if self._pubkey is not None:
            trusted, source = self._pubkey.strip(), "argument"
            if bundled != trusted:
                raise BundleInvalid(3, PUBKEY, "differs from the trusted key given")
        else:
            trusted, source = bundled, "bundle"
        try:
            verifier = NoteVerifier.from_verifier_key(trusted)
        except CheckpointError as exc:
            raise BundleInvalid(3, f"{source} key", str(exc)) from exc
        try:
            checkpoint = verify_checkpoint(
                self._read(3, CHECKPOINT), verifier, origin=manifest["origin"]
            )
        except CheckpointError as exc:
            raise BundleInvalid(3, CHECKPOINT, str(exc)) from exc
        if checkpoint.size != manifest["checkpoint_size"]:
            raise BundleInvalid(3, CHECKPOINT, "size differs from the manifest's")
        return verifier, source, checkpoint

    # -- 4. the signed purges -------------------------------------------------

    def _step4_purges(self, checkpoint: Checkpoint, verifier: NoteVerifier) -> PurgeLedger:
        purges = []
        last = -1
        for number, line in self._lines(4, PURGES):
            where = f"{PURGES} line {number}"
            entry = _json(line, 4, where)
            if not isinstance(entry, dict) or set(entry) != {
                "index",
                "leaf_hash",
                "record",
                "proof",
            }:
                raise BundleInvalid(4, where, "fields are not index, leaf_hash, record, proof")
            index = entry["index"]
            if not _is_int(index) or index <= last:
                raise BundleInvalid(4, where, "indices are not unique and increasing")
            last = index
            where = f"{where} (index {index})"
            leaf = _b64_hash(entry["leaf_hash"], 4, where, index)
            self._included(4, where, index, leaf, entry["proof"], checkpoint)
            record = _json(_record_text(entry, leaf, 4, where, index), 4, where, index)
            purge = purge_of(index, record) if isinstance(record, dict) else None
            if purge is None:
                raise BundleInvalid(4, where, "not a signed retention record", index=index)
            try:
                purges.append(verify_purge(purge, verifier))
            except PurgeRejected as exc:
                raise BundleInvalid(4, where, str(exc), index=index) from exc
        return PurgeLedger(purges)

    def _included(
        self,
        step: int,
        where: str,
        index: int,
        leaf: bytes,
        proof: object,
        checkpoint: Checkpoint,
    ) -> None:
        hashes = _proof(proof, step, where, index)
        try:
            verify_inclusion(leaf, index, checkpoint.size, hashes, checkpoint.root)
        except ProofError as exc:
            raise BundleInvalid(step, where, f"not in the checkpoint: {exc}", index=index) from exc

    # -- range.json (read for step 5, used by 7) ------------------------------

    def _read_range(
        self, manifest: dict[str, Any], checkpoint: Checkpoint, verifier: NoteVerifier
    ) -> _Range:
        body = _json(self._read(5, RANGE), 5, RANGE)
        keys = {"start", "end", "size", "left", "right", "before", "after", "milestones"}
        if not isinstance(body, dict) or set(body) != keys:
            raise BundleInvalid(5, RANGE, f"fields are not {', '.join(sorted(keys))}")
        start, end = manifest["range"]["start"], manifest["range"]["end"]
        if (body["start"], body["end"], body["size"]) != (start, end, checkpoint.size):
            raise BundleInvalid(5, RANGE, "range or size differs from the manifest's")
        left, right = body["left"], body["right"]
        if not isinstance(left, list) or len(left) != len(range_nodes(0, start)):
            raise BundleInvalid(5, RANGE, f"left: not the compact range of [0, {start})")
        if not isinstance(right, list) or len(right) != len(range_nodes(end, checkpoint.size)):
            raise BundleInvalid(
                5, RANGE, f"right: not the compact range of [{end}, {checkpoint.size})"
            )
        notes = body["milestones"]
        if not isinstance(notes, list) or len(notes) > MAX_MILESTONES:
            raise BundleInvalid(5, RANGE, f"milestones: not a list of at most {MAX_MILESTONES}")
        milestones: list[Checkpoint] = []
        for note in notes:
            if not isinstance(note, str):
                raise BundleInvalid(5, RANGE, "milestone is not a signed note")
            try:
                milestone = verify_checkpoint(note.encode(), verifier, origin=checkpoint.origin)
            except CheckpointError as exc:
                raise BundleInvalid(5, f"{RANGE} milestones", str(exc)) from exc
            previous = milestones[-1].size if milestones else start
            if not previous < milestone.size <= min(end, checkpoint.size - 1):
                raise BundleInvalid(
                    5, f"{RANGE} milestones", "sizes not increasing inside the range"
                )
            milestones.append(milestone)
        return _Range(
            start=start,
            end=end,
            left=[_b64_hash(h, 5, f"{RANGE} left") for h in left],
            right=[_b64_hash(h, 5, f"{RANGE} right") for h in right],
            before=body["before"],
            after=body["after"],
            milestones=milestones,
        )

    # -- 5. the boundaries ----------------------------------------------------

    def _step5_boundaries(
        self, flt: dict[str, Any], span: _Range, checkpoint: Checkpoint, ledger: PurgeLedger
    ) -> None:
        for side, index, needed in (
            ("before", span.start - 1, span.start > 0),
            ("after", span.end, span.end < checkpoint.size),
        ):
            entry = getattr(span, side)
            where = f"{RANGE} {side} (index {index})"
            if not needed:
                if entry is not None:
                    raise BundleInvalid(5, where, "no leaf lies there", index=index)
                continue
            if not isinstance(entry, dict) or entry.get("index") != index:
                raise BundleInvalid(5, where, "the boundary leaf is missing", index=index)
            leaf = _b64_hash(entry.get("leaf_hash"), 5, where, index)
            if side == "before" and entry.get("purged") is True:
                if set(entry) != {"index", "leaf_hash", "purged", "proof"}:
                    raise BundleInvalid(5, where, "fields are not index, leaf_hash, purged, proof")
                self._included(5, where, index, leaf, entry["proof"], checkpoint)
                # The signed statement vouches that every leaf below its watermark is older
                # than its cutoff: a cutoff no later than `from` puts this leaf before it.
                if not any(
                    p.purged_below > index and p.cutoff_ms <= flt["from_ms"] for p in ledger.purges
                ):
                    raise BundleInvalid(
                        5,
                        where,
                        "purged, and no carried signed purge puts it before the range's start",
                        index=index,
                    )
                continue
            if set(entry) != {"index", "leaf_hash", "record", "proof"}:
                raise BundleInvalid(5, where, "fields are not index, leaf_hash, record, proof")
            self._included(5, where, index, leaf, entry["proof"], checkpoint)
            record = _json(_record_text(entry, leaf, 5, where, index), 5, where, index)
            ts = record.get("ts_ms") if isinstance(record, dict) else None
            if not _is_int(ts):
                raise BundleInvalid(5, where, "record has no time", index=index)
            if side == "before" and ts >= flt["from_ms"]:
                raise BundleInvalid(
                    5,
                    where,
                    f"stamped {ts}, not before the range's start {flt['from_ms']}",
                    index=index,
                )
            if side == "after" and ts < flt["to_ms"]:
                raise BundleInvalid(
                    5, where, f"stamped {ts}, before the range's end {flt['to_ms']}", index=index
                )

    # -- 6. and 7. every leaf of the range, and the root they rebuild ---------

    def _steps6_7_leaves(
        self, manifest: dict[str, Any], span: _Range, checkpoint: Checkpoint, ledger: PurgeLedger
    ) -> Summary:
        flt = manifest["filter"]
        walk = _Walk(span, ledger)
        hashed_only = narrows(flt)
        for number, line in self._lines(6, RECORDS):
            entry = _json(line, 6, f"{RECORDS} line {number}")
            index = entry.get("index") if isinstance(entry, dict) else None
            if not _is_int(index):
                raise BundleInvalid(6, f"{RECORDS} line {number}", "not an object with an index")
            where = f"{RECORDS} line {number} (index {index})"
            walk.at(index, where)
            keys = entry.keys()
            if keys == _OPENED:
                walk.opened(entry, flt, where)
            elif keys == _HASHES:
                if not hashed_only:
                    raise BundleInvalid(
                        6,
                        where,
                        "an unfiltered bundle opens every leaf, but this one is a hash only",
                        index=index,
                    )
                walk.run(entry["hashes"], where, purged=False)
            elif keys == _PURGED:
                walk.run(entry["purged"], where, purged=True)
            else:
                raise BundleInvalid(
                    6, where, "not an opened record, a hash run or a purged run", index=index
                )
        walk.finish(checkpoint)
        if walk.summary.records != manifest["records"]:
            raise BundleInvalid(6, RECORDS, "record count differs from the manifest's")
        return walk.summary

    # -- 8. consistency with a previous checkpoint ----------------------------

    def _step8_consistency(
        self, manifest: dict[str, Any], verifier: NoteVerifier, checkpoint: Checkpoint
    ) -> tuple[int | None, str | None]:
        bundled = self._read(8, PREVIOUS) if PREVIOUS in self._names else None
        if self._previous is not None:
            note, source, where = self._previous, "argument", "previous checkpoint given"
        elif bundled is not None:
            note, source, where = bundled, "bundle", PREVIOUS
        else:
            return None, None
        try:
            old = verify_checkpoint(note, verifier, origin=checkpoint.origin)
        except CheckpointError as exc:
            raise BundleInvalid(8, where, str(exc)) from exc
        if bundled is not None and source == "argument":
            try:
                in_bundle = Checkpoint.parse_body(verifier.verify(bundled))
            except CheckpointError as exc:
                raise BundleInvalid(8, PREVIOUS, str(exc)) from exc
            if in_bundle != old:
                raise BundleInvalid(8, PREVIOUS, "differs from the previous checkpoint given")
        proof: list[bytes] = []
        if CONSISTENCY in self._names:
            proof = self._consistency_proof(old, checkpoint)
        if source == "bundle" and manifest["previous_size"] != old.size:
            raise BundleInvalid(8, MANIFEST, "previous_size differs from previous.note")
        try:
            verify_consistency(old.size, checkpoint.size, old.root, checkpoint.root, proof)
        except ProofError as exc:
            raise BundleInvalid(8, CONSISTENCY, f"{old.size} -> {checkpoint.size}: {exc}") from exc
        return old.size, source

    def _consistency_proof(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        body = _json(self._read(8, CONSISTENCY), 8, CONSISTENCY)
        if not isinstance(body, dict) or set(body) != {"old_size", "new_size", "proof"}:
            raise BundleInvalid(8, CONSISTENCY, "fields are not old_size, new_size, proof")
        if body["old_size"] != old.size or body["new_size"] != new.size:
            raise BundleInvalid(8, CONSISTENCY, "sizes differ from the two checkpoints")
        path = body["proof"]
        if not isinstance(path, list) or len(path) > 2 * _MAX_PROOF:
            raise BundleInvalid(8, CONSISTENCY, "proof is not a list of hashes")
        return [_b64_hash(p, 8, CONSISTENCY) for p in path]

    # -- 9. the summary -------------------------------------------------------

    def _step9_summary(
        self, manifest: dict[str, Any], span: _Range, summary: Summary
    ) -> dict[str, Any]:
        recomputed = summary.as_json()
        if _json(self._read(9, SUMMARY_JSON), 9, SUMMARY_JSON) != recomputed:
            raise BundleInvalid(9, SUMMARY_JSON, "counts differ from the records")
        text = render_summary(
            recomputed,
            origin=manifest["origin"],
            checkpoint_size=manifest["checkpoint_size"],
            filter_=manifest["filter"],
            start=span.start,
            end=span.end,
        )
        if self._text(9, SUMMARY_TXT) != text:
            raise BundleInvalid(9, SUMMARY_TXT, "differs from the records' summary")
        return recomputed


class _Walk:
    """Steps 6 and 7 over the leaves of [start, end), in order: each leaf is checked
    (6) and appended to the tree that must rebuild the checkpoint's root (7)."""

    def __init__(self, span: _Range, ledger: PurgeLedger) -> None:
        self._span = span
        self._ledger = ledger
        # The compact range of [0, start) is exactly a frontier of size `start`.
        self._tree = Frontier(span.start, span.left)
        self._milestones = list(reversed(span.milestones))  # next one last
        self._good = span.start  # the last size the tree is known to be right at
        self.summary = Summary()

    def at(self, index: int, where: str) -> None:
        """The line names the next leaf, no later and no earlier, inside the range."""
        expected = self._tree.size
        if index > expected:
            raise BundleInvalid(
                6,
                where,
                f"index {expected} missing: the lines jump from {expected - 1} to {index}",
                index=expected,
            )
        if index < expected:
            raise BundleInvalid(
                6, where, f"index {index} again or out of order (expected {expected})", index=index
            )
        if index >= self._span.end:
            raise BundleInvalid(
                6, where, f"past the range's end {self._span.end}: an extra leaf", index=index
            )

    def opened(self, entry: dict[str, Any], flt: dict[str, Any], where: str) -> None:
        index: int = entry["index"]
        leaf = _b64_hash(entry["leaf_hash"], 6, where, index)
        record = _json(_record_text(entry, leaf, 6, where, index), 6, where, index)
        if not isinstance(record, dict):
            raise BundleInvalid(6, where, "record is not a JSON object", index=index)
        if not opens(record, flt):
            raise BundleInvalid(6, where, "record is outside the manifest's filter", index=index)
        personal = entry["personal"]
        if isinstance(record.get("sealed"), dict):
            if not (isinstance(personal, dict) or personal in ("erased", "unreadable")):
                raise BundleInvalid(
                    6, where, "sealed record without personal fields or marker", index=index
                )
        elif personal is not None:
            raise BundleInvalid(
                6, where, "personal fields on a record that sealed none", index=index
            )
        if index < self._ledger.watermark:  # only a purge's leaves have an age rule
            ts = record.get("ts_ms")
            problem = retention_problem(
                self._ledger, index, payload_present=True, ts_ms=ts if _is_int(ts) else None
            )
            if problem is not None:
                raise BundleInvalid(6, where, problem, index=index)
        self.summary.add(record, personal)
        if self._milestones:
            self._append([leaf], where)
        else:
            self._tree.extend((leaf,))

    def run(self, value: object, where: str, *, purged: bool) -> None:
        start = self._tree.size
        raw = _b64(value, 6, where, start)
        count, rest = divmod(len(raw), HASH_SIZE)
        if rest or not 0 < count <= RUN_LEAVES:
            raise BundleInvalid(
                6, where, f"not 1 to {RUN_LEAVES} hashes of {HASH_SIZE} bytes", index=start
            )
        if start + count > self._span.end:
            raise BundleInvalid(
                6,
                where,
                f"runs past the range's end {self._span.end}: extra leaves",
                index=self._span.end,
            )
        if purged:
            # Purges cover a prefix of the log ([0, highest watermark)): the run is covered
            # as a whole, or from its first leaf at or past the watermark it is not.
            first = max(start, self._ledger.watermark)
            if first < start + count:
                problem = retention_problem(self._ledger, first, payload_present=False, ts_ms=None)
                raise BundleInvalid(6, f"{where}: index {first}", str(problem), index=first)
            self.summary.add_purged(count)
        else:
            self.summary.add_unopened(count)
        self._append([raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)], where)

    def _append(self, leaves: list[bytes], where: str) -> None:
        """Grow the tree; check each milestone the leaves reach."""
        while leaves:
            if not self._milestones:
                self._tree.extend(leaves)
                return
            milestone = self._milestones[-1]
            take = milestone.size - self._tree.size
            self._tree.extend(leaves[:take])
            leaves = leaves[take:]
            if self._tree.size == milestone.size:
                self._milestones.pop()
                if self._tree.root() != milestone.root:
                    self._mismatch(milestone.size, f"signed checkpoint {milestone.size}")
                self._good = milestone.size

    def _mismatch(self, size: int, what: str) -> None:
        good = self._good
        where = f"{RECORDS} (indices {good}..{size - 1})"
        if good == self._span.start and good > 0:
            detail = (
                f"the leaves up to {size - 1}, with the hashes left of {good}, do not rebuild "
                f"the root of {what}: a leaf from {good} to {size - 1} was changed, removed, "
                "inserted or reordered, or a hash left of the range was"
            )
        else:
            detail = (
                f"the leaves do not rebuild the root of {what}: a leaf from {good} to "
                f"{size - 1} was changed, removed, inserted or reordered"
            )
        raise BundleInvalid(7, where, detail, index=good)

    def finish(self, checkpoint: Checkpoint) -> None:
        end = self._span.end
        if self._tree.size < end:
            missing = self._tree.size
            raise BundleInvalid(
                6,
                RECORDS,
                f"index {missing} missing: the lines end at {missing - 1}, the range at {end - 1}",
                index=missing,
            )
        for (level, _), subtree in zip(
            range_nodes(end, checkpoint.size), self._span.right, strict=True
        ):
            self._tree.append_subtree(level, subtree)
        if self._tree.root() != checkpoint.root:
            if self._good == end:
                raise BundleInvalid(
                    7,
                    f"{RANGE} right",
                    f"the hashes right of the range do not rebuild checkpoint "
                    f"{checkpoint.size}'s root, though every leaf up to {end - 1} does",
                    index=end,
                )
            self._mismatch(end, f"checkpoint {checkpoint.size} (with the hashes right of {end})")
