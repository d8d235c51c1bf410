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
personal fields: they are not in the leaves (the sealed ciphertext is).

This module runs the steps; the format the exporter shares is `audit.bundle_format`
(member names, bounds, steps, `BundleInvalid`) and `audit.bundle_summary` (the
counts, so exporter and verifier count with one definition). Steps 1 and 2 are
`audit.bundle_archive`, step 5 `audit.bundle_range`, steps 6 and 7
`audit.bundle_leaves`; 3, 4, 8 and 9 are below.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from audit.bundle_archive import ZIP_ERRORS, BundleArchive
from audit.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CHECKPOINT,
    CONSISTENCY,
    MANIFEST,
    MAX_MILESTONES,
    MAX_PROOF,
    MEMBERS,
    PREVIOUS,
    PUBKEY,
    PURGES,
    RANGE,
    RECORDS,
    RUN_LEAVES,
    STEPS,
    SUMMARY_JSON,
    SUMMARY_TXT,
    BundleInvalid,
    BundleReport,
    narrows,
    opens,
)
from audit.bundle_leaves import check_leaves
from audit.bundle_range import Range, check_boundaries, read_range
from audit.bundle_summary import Summary, render_summary
from audit.bundle_values import b64_hash, included, is_int, parse_json, record_text
from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import ProofError, verify_consistency
from audit.retention import PurgeLedger, PurgeRejected, purge_of, verify_purge

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CHECKPOINT",
    "CONSISTENCY",
    "MANIFEST",
    "MAX_MILESTONES",
    "MEMBERS",
    "PREVIOUS",
    "PUBKEY",
    "PURGES",
    "RANGE",
    "RECORDS",
    "RUN_LEAVES",
    "STEPS",
    "SUMMARY_JSON",
    "SUMMARY_TXT",
    "BundleInvalid",
    "BundleReport",
    "Summary",
    "narrows",
    "opens",
    "render_summary",
    "verify_bundle",
]


def verify_bundle(
    path: Path, *, pubkey: str | None = None, previous_checkpoint: bytes | None = None
) -> BundleReport:
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise BundleInvalid(1, path.name, f"not a readable zip file: {exc}") from exc
    with archive:
        return _Verifier(archive, pubkey, previous_checkpoint).run()


class _Verifier:
    def __init__(self, archive: zipfile.ZipFile, pubkey: str | None, previous: bytes | None):
        self._archive = BundleArchive(archive)
        self._pubkey = pubkey
        self._previous = previous

    def run(self) -> BundleReport:
        self._archive.step1_archive()
        manifest = self._archive.step2_manifest()
        verifier, key_source, checkpoint = self._step3_checkpoint(manifest)
        ledger = self._step4_purges(checkpoint, verifier)
        span = read_range(self._archive, manifest, checkpoint, verifier)
        check_boundaries(manifest["filter"], span, checkpoint, ledger)
        summary = check_leaves(self._archive, manifest, span, checkpoint, ledger)
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

    # -- 3. the checkpoint ----------------------------------------------------

    def _step3_checkpoint(self, manifest: dict[str, Any]) -> tuple[NoteVerifier, str, Checkpoint]:
        bundled = self._archive.text(3, PUBKEY).strip()
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
                self._archive.read(3, CHECKPOINT), verifier, origin=manifest["origin"]
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
        for number, line in self._archive.lines(4, PURGES):
            where = f"{PURGES} line {number}"
            entry = parse_json(line, 4, where)
            if not isinstance(entry, dict) or set(entry) != {
                "index",
                "leaf_hash",
                "record",
                "proof",
            }:
                raise BundleInvalid(4, where, "fields are not index, leaf_hash, record, proof")
            index = entry["index"]
            if not is_int(index) or index <= last:
                raise BundleInvalid(4, where, "indices are not unique and increasing")
            last = index
            where = f"{where} (index {index})"
            leaf = b64_hash(entry["leaf_hash"], 4, where, index)
            included(4, where, index, leaf, entry["proof"], checkpoint)
            record = parse_json(record_text(entry, leaf, 4, where, index), 4, where, index)
            purge = purge_of(index, record) if isinstance(record, dict) else None
            if purge is None:
                raise BundleInvalid(4, where, "not a signed retention record", index=index)
            try:
                purges.append(verify_purge(purge, verifier))
            except PurgeRejected as exc:
                raise BundleInvalid(4, where, str(exc), index=index) from exc
        return PurgeLedger(purges)

    # -- 8. consistency with a previous checkpoint ----------------------------

    def _step8_consistency(
        self, manifest: dict[str, Any], verifier: NoteVerifier, checkpoint: Checkpoint
    ) -> tuple[int | None, str | None]:
        bundled = self._archive.read(8, PREVIOUS) if self._archive.holds(PREVIOUS) else None
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
        if self._archive.holds(CONSISTENCY):
            proof = self._consistency_proof(old, checkpoint)
        if source == "bundle" and manifest["previous_size"] != old.size:
            raise BundleInvalid(8, MANIFEST, "previous_size differs from previous.note")
        try:
            verify_consistency(old.size, checkpoint.size, old.root, checkpoint.root, proof)
        except ProofError as exc:
            raise BundleInvalid(8, CONSISTENCY, f"{old.size} -> {checkpoint.size}: {exc}") from exc
        return old.size, source

    def _consistency_proof(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        body = parse_json(self._archive.read(8, CONSISTENCY), 8, CONSISTENCY)
        if not isinstance(body, dict) or set(body) != {"old_size", "new_size", "proof"}:
            raise BundleInvalid(8, CONSISTENCY, "fields are not old_size, new_size, proof")
        if body["old_size"] != old.size or body["new_size"] != new.size:
            raise BundleInvalid(8, CONSISTENCY, "sizes differ from the two checkpoints")
        path = body["proof"]
        if not isinstance(path, list) or len(path) > 2 * MAX_PROOF:
            raise BundleInvalid(8, CONSISTENCY, "proof is not a list of hashes")
        return [b64_hash(p, 8, CONSISTENCY) for p in path]

    # -- 9. the summary -------------------------------------------------------

    def _step9_summary(
        self, manifest: dict[str, Any], span: Range, summary: Summary
    ) -> dict[str, Any]:
        recomputed = summary.as_json()
        if parse_json(self._archive.read(9, SUMMARY_JSON), 9, SUMMARY_JSON) != recomputed:
            raise BundleInvalid(9, SUMMARY_JSON, "counts differ from the records")
        text = render_summary(
            recomputed,
            origin=manifest["origin"],
            checkpoint_size=manifest["checkpoint_size"],
            filter_=manifest["filter"],
            start=span.start,
            end=span.end,
        )
        if self._archive.text(9, SUMMARY_TXT) != text:
            raise BundleInvalid(9, SUMMARY_TXT, "differs from the records' summary")
        return recomputed
