"""`gateway audit verify-bundle`: check an export bundle offline, naming the first damage.

Needs no database and no network: the standard library, `cryptography` (through
`audit.checkpoint`) and the Merkle math. Steps, each failing with one
`BundleInvalid(step, where, detail)`:
  1. the file is a zip of exactly the expected members, each once, flat names,
     not encrypted, stored or deflated, within a size bound (memory stays bounded:
     small members are read whole, the two line files one bounded line at a time);
  2. the manifest is well formed and the SHA-256 and size of every other member
     match it (this catches damage; the manifest is not signed, so authenticity
     comes from the steps below, not from it);
  3. the checkpoint note verifies with the trusted key (the caller's own copy when
     given, else the bundle's pubkey.txt, which then only proves self-consistency),
     for the manifest's origin and size;
  4. every record line: indices strictly increasing, leaf hash == SHA-256(0x00 ||
     record text), the record is a JSON object inside the manifest's filter, and the
     personal field is present exactly for sealed records; purged lines carry
     only index and leaf hash;
  5. every record's inclusion proof verifies against the checkpoint's root and size;
  6. the previous checkpoint (the caller's, else previous.note) verifies with the
     same key and origin, and the consistency proof old -> new verifies;
  7. summary.json and summary.txt equal the summary recomputed from the records.

What a bundle cannot prove: that it holds *every* record matching its filter
(the log could leave some out), and the opened personal fields (they are not in
the leaves; the sealed ciphertext is). The summary code lives here so that the
exporter and this verifier count with one definition.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import zipfile
import zlib
from collections import Counter
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import HASH_SIZE, ProofError, leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MEMBERS",
    "BundleInvalid",
    "BundleReport",
    "Summary",
    "record_matches",
    "render_summary",
    "verify_bundle",
]

BUNDLE_FORMAT = "gateway-audit-bundle"
BUNDLE_VERSION = 1

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
PROOFS = "proofs.jsonl"
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
    RECORDS: 1 << 40,  # streamed line by line, never held whole
    PROOFS: 1 << 40,
    SUMMARY_JSON: 16 * _MIB,
    SUMMARY_TXT: 16 * _MIB,
}
_OPTIONAL = frozenset({PREVIOUS, CONSISTENCY})
_REQUIRED = frozenset(MEMBERS) - _OPTIONAL
_MAX_LINE = 4 * _MIB
_MAX_PROOF = 64  # a tree of at most 2**64 leaves has paths of at most 64 hashes

_STEPS = {
    1: "archive",
    2: "manifest",
    3: "checkpoint",
    4: "records",
    5: "inclusion",
    6: "consistency",
    7: "summary",
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


class BundleInvalid(Exception):  # noqa: N818 - the finding, like LogDamaged
    """The bundle fails verification at `step`; `where` names the member and line."""

    def __init__(self, step: int, where: str, detail: str) -> None:
        super().__init__(f"step {step} ({_STEPS[step]}): {where}: {detail}")
        self.step = step
        self.where = where
        self.detail = detail


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


# --- what exporter and verifier share ------------------------------------------------


def record_matches(
    record: dict[str, Any], from_ms: int, to_ms: int, client_id: str | None, subject: str | None
) -> bool:
    """The export filter: time in [from_ms, to_ms), then client and subject when given."""
    ts = record.get("ts_ms")
    if not isinstance(ts, int) or not from_ms <= ts < to_ms:
        return False
    if client_id is not None and record.get("client_id") != client_id:
        return False
    return subject is None or record.get("subject") == subject


_NONE = "(none)"


class Summary:
    """Counts over a bundle's records; the exporter writes them, the verifier recomputes them."""

    def __init__(self) -> None:
        self.records = 0
        self.purged = 0
        self.erased = 0
        self.first_ts_ms: int | None = None
        self.last_ts_ms: int | None = None
        self.by_kind: Counter[str] = Counter()
        self.by_decision: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.by_refusal: Counter[str] = Counter()
        self.by_pii_type: Counter[str] = Counter()

    def add_purged(self) -> None:
        self.records += 1
        self.purged += 1

    def add(self, record: dict[str, Any], personal: object) -> None:
        self.records += 1
        if personal == "erased":
            self.erased += 1
        ts = record.get("ts_ms")
        if isinstance(ts, int):
            self.first_ts_ms = ts if self.first_ts_ms is None else min(self.first_ts_ms, ts)
            self.last_ts_ms = ts if self.last_ts_ms is None else max(self.last_ts_ms, ts)
        kind = str(record.get("kind"))
        self.by_kind[kind] += 1
        if kind != "request":
            return
        decision = str(record.get("decision"))
        self.by_decision[decision] += 1
        self.by_client[_name(record.get("client_id"))] += 1
        model = record.get("model")
        if isinstance(model, dict):
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
            "time_range": {"first_ts_ms": self.first_ts_ms, "last_ts_ms": self.last_ts_ms},
            "by_kind": dict(sorted(self.by_kind.items())),
            "by_decision": dict(sorted(self.by_decision.items())),
            "by_model": dict(sorted(self.by_model.items())),
            "by_client": dict(sorted(self.by_client.items())),
            "by_refusal": dict(sorted(self.by_refusal.items())),
            "by_pii_type": dict(sorted(self.by_pii_type.items())),
        }


def _name(value: object) -> str:
    return _NONE if value is None else str(value)


_SECTIONS = (
    ("by_kind", "Records by kind"),
    ("by_decision", "Requests by decision"),
    ("by_model", "Requests by model"),
    ("by_client", "Requests by client"),
    ("by_refusal", "Refused requests by reason"),
    ("by_pii_type", "Personal data by entity type"),
)


def render_summary(
    summary: dict[str, Any], *, origin: str, checkpoint_size: int, filter_: dict[str, Any]
) -> str:
    """summary.txt: the same counts for a human; deterministic, so the verifier compares bytes."""
    lines = [
        "Audit export summary",
        f"Log origin:        {origin}",
        f"Checkpoint size:   {checkpoint_size}",
        f"Filter:            ts_ms in [{filter_['from_ms']}, {filter_['to_ms']})"
        f", client {filter_['client_id'] or 'any'}, subject {filter_['subject'] or 'any'}",
        f"Records:           {summary['records']}",
        f"  purged (hash only, payload deleted by retention): {summary['purged']}",
        f"  erased subject (personal fields destroyed):        {summary['erased']}",
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


def _json(text: bytes | str, step: int, where: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    try:
        return json.loads(text, parse_constant=reject)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleInvalid(step, where, f"not valid JSON: {exc}") from exc


def _b64_hash(value: object, step: int, where: str) -> bytes:
    if not isinstance(value, str):
        raise BundleInvalid(step, where, "hash is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleInvalid(step, where, "hash is not valid base64") from exc
    if len(raw) != HASH_SIZE:
        raise BundleInvalid(step, where, f"hash is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_optional_str(value: object) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


class _Verifier:
    def __init__(self, archive: zipfile.ZipFile, pubkey: str | None, previous: bytes | None):
        self._zip = archive
        self._pubkey = pubkey
        self._previous = previous
        self._names: set[str] = set()

    def run(self) -> BundleReport:
        self._step1_archive()
        manifest = self._step2_manifest()
        verifier, key_source, checkpoint = self._step3_checkpoint(manifest)
        summary = self._steps4_5_records(manifest, checkpoint)
        previous_size, previous_source = self._step6_consistency(manifest, verifier, checkpoint)
        self._step7_summary(manifest, summary)
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
        """(line number, line) of a line member, one bounded line at a time."""
        try:
            with self._zip.open(name) as handle:
                number = 0
                while True:
                    line = handle.readline(_MAX_LINE + 1)
                    if not line:
                        return
                    number += 1
                    if not line.endswith(b"\n"):
                        detail = "line too long" if len(line) > _MAX_LINE else "unterminated line"
                        raise BundleInvalid(step, f"{name} line {number}", detail)
                    yield number, line
        except _ZIP_ERRORS as exc:
            raise BundleInvalid(step, name, f"unreadable: {exc}") from exc

    # -- 1. the archive -------------------------------------------------------

    def _step1_archive(self) -> None:
        infos = self._zip.infolist()
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

    # -- 2. manifest and digests ----------------------------------------------

    def _step2_manifest(self) -> dict[str, Any]:
        manifest = _json(self._read(2, MANIFEST), 2, MANIFEST)
        if not isinstance(manifest, dict):
            raise BundleInvalid(2, MANIFEST, "not a JSON object")
        if manifest.get("format") != BUNDLE_FORMAT or manifest.get("version") != BUNDLE_VERSION:
            raise BundleInvalid(2, MANIFEST, "not a supported bundle format or version")
        flt = manifest.get("filter")
        if (
            not isinstance(manifest.get("origin"), str)
            or not _is_int(manifest.get("checkpoint_size"))
            or not _is_int(manifest.get("records"))
            or not (manifest.get("previous_size") is None or _is_int(manifest["previous_size"]))
            or not isinstance(flt, dict)
            or set(flt) != {"from_ms", "to_ms", "client_id", "subject"}
            or not _is_int(flt["from_ms"])
            or not _is_int(flt["to_ms"])
            or not _is_optional_str(flt["client_id"])
            or not _is_optional_str(flt["subject"])
        ):
            raise BundleInvalid(2, MANIFEST, "missing or mistyped fields")
        if (manifest["previous_size"] is None) != (PREVIOUS not in self._names):
            raise BundleInvalid(2, MANIFEST, "previous_size disagrees with previous.note")
        members = manifest.get("members")
        if not isinstance(members, dict) or set(members) != self._names - {MANIFEST}:
            raise BundleInvalid(2, MANIFEST, "member list differs from the archive's members")
        for name in sorted(members):
            entry = members[name]
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise BundleInvalid(2, MANIFEST, f"no digest for {name}")
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

    # -- 4. and 5. records and their proofs, read in lockstep -----------------

    def _steps4_5_records(self, manifest: dict[str, Any], checkpoint: Checkpoint) -> Summary:
        flt = manifest["filter"]
        summary = Summary()
        last = -1
        # closing(): a failure mid-way must not leave the other member's reader open.
        with closing(self._lines(4, RECORDS)) as records, closing(self._lines(5, PROOFS)) as proofs:
            for number, line in records:
                last = self._record_and_proof(number, line, last, flt, summary, proofs, checkpoint)
            extra = next(proofs, None)
        if extra is not None:
            raise BundleInvalid(5, f"{PROOFS} line {extra[0]}", "proof without a record")
        if summary.records != manifest["records"]:
            raise BundleInvalid(4, RECORDS, "record count differs from the manifest's")
        return summary

    def _record_and_proof(
        self,
        number: int,
        line: bytes,
        last: int,
        flt: dict[str, Any],
        summary: Summary,
        proofs: Iterator[tuple[int, bytes]],
        checkpoint: Checkpoint,
    ) -> int:
        """Steps 4 and 5 for one record line; returns its index."""
        where = f"{RECORDS} line {number}"
        entry = _json(line, 4, where)
        if not isinstance(entry, dict) or not _is_int(entry.get("index")):
            raise BundleInvalid(4, where, "not an object with an index")
        index: int = entry["index"]
        where = f"{where} (index {index})"
        if index <= last:
            raise BundleInvalid(4, where, "indices are not unique and increasing")
        leaf = _b64_hash(entry.get("leaf_hash"), 4, where)
        self._check_record(entry, leaf, flt, summary, where)
        self._check_proof(next(proofs, None), index, leaf, checkpoint)
        return index

    def _check_record(
        self,
        entry: dict[str, Any],
        leaf: bytes,
        flt: dict[str, Any],
        summary: Summary,
        where: str,
    ) -> None:
        if entry.get("purged") is True:
            if set(entry) != {"index", "leaf_hash", "purged"}:
                raise BundleInvalid(4, where, "a purged record carries only index and leaf hash")
            summary.add_purged()
            return
        if set(entry) != {"index", "leaf_hash", "record", "personal"}:
            raise BundleInvalid(4, where, "fields are not index, leaf_hash, record, personal")
        text = entry["record"]
        if not isinstance(text, str):
            raise BundleInvalid(4, where, "record is not a string")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BundleInvalid(4, where, "record is not encodable as UTF-8") from exc
        if not hmac.compare_digest(leaf_hash(data), leaf):
            raise BundleInvalid(4, where, "record does not hash to its leaf hash")
        record = _json(text, 4, where)
        if not isinstance(record, dict):
            raise BundleInvalid(4, where, "record is not a JSON object")
        if not record_matches(
            record, flt["from_ms"], flt["to_ms"], flt["client_id"], flt["subject"]
        ):
            raise BundleInvalid(4, where, "record is outside the manifest's filter")
        personal = entry["personal"]
        if isinstance(record.get("sealed"), dict):
            if not (isinstance(personal, dict) or personal in ("erased", "unreadable")):
                raise BundleInvalid(4, where, "sealed record without personal fields or marker")
        elif personal is not None:
            raise BundleInvalid(4, where, "personal fields on a record that sealed none")
        summary.add(record, personal)

    def _check_proof(
        self, item: tuple[int, bytes] | None, index: int, leaf: bytes, checkpoint: Checkpoint
    ) -> None:
        if item is None:
            raise BundleInvalid(5, f"{PROOFS} (index {index})", "no proof for this record")
        number, line = item
        where = f"{PROOFS} line {number} (index {index})"
        entry = _json(line, 5, where)
        if not isinstance(entry, dict) or set(entry) != {"index", "proof"}:
            raise BundleInvalid(5, where, "fields are not index, proof")
        if entry["index"] != index:
            raise BundleInvalid(5, where, f"proof is for index {entry['index']!r}")
        path = entry["proof"]
        if not isinstance(path, list) or len(path) > _MAX_PROOF:
            raise BundleInvalid(5, where, "proof is not a list of at most 64 hashes")
        hashes = [_b64_hash(p, 5, where) for p in path]
        try:
            verify_inclusion(leaf, index, checkpoint.size, hashes, checkpoint.root)
        except ProofError as exc:
            raise BundleInvalid(5, where, str(exc)) from exc

    # -- 6. consistency with a previous checkpoint ----------------------------

    def _step6_consistency(
        self, manifest: dict[str, Any], verifier: NoteVerifier, checkpoint: Checkpoint
    ) -> tuple[int | None, str | None]:
        bundled = self._read(6, PREVIOUS) if PREVIOUS in self._names else None
        if self._previous is not None:
            note, source, where = self._previous, "argument", "previous checkpoint given"
        elif bundled is not None:
            note, source, where = bundled, "bundle", PREVIOUS
        else:
            return None, None
        try:
            old = verify_checkpoint(note, verifier, origin=checkpoint.origin)
        except CheckpointError as exc:
            raise BundleInvalid(6, where, str(exc)) from exc
        if bundled is not None and source == "argument":
            try:
                in_bundle = Checkpoint.parse_body(verifier.verify(bundled))
            except CheckpointError as exc:
                raise BundleInvalid(6, PREVIOUS, str(exc)) from exc
            if in_bundle != old:
                raise BundleInvalid(6, PREVIOUS, "differs from the previous checkpoint given")
        proof: list[bytes] = []
        if CONSISTENCY in self._names:
            proof = self._consistency_proof(old, checkpoint)
        if source == "bundle" and manifest["previous_size"] != old.size:
            raise BundleInvalid(6, MANIFEST, "previous_size differs from previous.note")
        try:
            verify_consistency(old.size, checkpoint.size, old.root, checkpoint.root, proof)
        except ProofError as exc:
            raise BundleInvalid(6, CONSISTENCY, f"{old.size} -> {checkpoint.size}: {exc}") from exc
        return old.size, source

    def _consistency_proof(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        body = _json(self._read(6, CONSISTENCY), 6, CONSISTENCY)
        if not isinstance(body, dict) or set(body) != {"old_size", "new_size", "proof"}:
            raise BundleInvalid(6, CONSISTENCY, "fields are not old_size, new_size, proof")
        if body["old_size"] != old.size or body["new_size"] != new.size:
            raise BundleInvalid(6, CONSISTENCY, "sizes differ from the two checkpoints")
        path = body["proof"]
        if not isinstance(path, list) or len(path) > 2 * _MAX_PROOF:
            raise BundleInvalid(6, CONSISTENCY, "proof is not a list of hashes")
        return [_b64_hash(p, 6, CONSISTENCY) for p in path]

    # -- 7. the summary -------------------------------------------------------

    def _step7_summary(self, manifest: dict[str, Any], summary: Summary) -> None:
        recomputed = summary.as_json()
        if _json(self._read(7, SUMMARY_JSON), 7, SUMMARY_JSON) != recomputed:
            raise BundleInvalid(7, SUMMARY_JSON, "counts differ from the records")
        text = render_summary(
            recomputed,
            origin=manifest["origin"],
            checkpoint_size=manifest["checkpoint_size"],
            filter_=manifest["filter"],
        )
        if self._text(7, SUMMARY_TXT) != text:
            raise BundleInvalid(7, SUMMARY_TXT, "differs from the records' summary")
