"""The bundle's range (range.json), for the verifier: step 5, the range's boundaries.

range.json names the range [start, end) of the checkpoint, the compact ranges
either side of it, the leaves just outside it (with inclusion proofs) and the
signed checkpoints inside it (milestones). It is read here for shape against the
manifest and the checkpoint; step 5 then checks the boundary leaves, and steps 6
and 7 (`audit.bundle_leaves`) use the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.bundle_archive import BundleArchive
from audit.bundle_format import MAX_MILESTONES, RANGE, BundleInvalid
from audit.bundle_values import b64_hash, included, is_int, parse_json, record_text
from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import range_nodes
from audit.retention import PurgeLedger

__all__ = ["Range", "check_boundaries", "read_range"]


@dataclass
class Range:
    """range.json, checked for shape against the manifest and the checkpoint."""

    start: int
    end: int
    left: list[bytes]
    right: list[bytes]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    milestones: list[Checkpoint]


def read_range(
    archive: BundleArchive,
    manifest: dict[str, Any],
    checkpoint: Checkpoint,
    verifier: NoteVerifier,
) -> Range:
    """range.json (read for step 5, used by 7)."""
    body = parse_json(archive.read(5, RANGE), 5, RANGE)
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
        raise BundleInvalid(5, RANGE, f"right: not the compact range of [{end}, {checkpoint.size})")
    milestones = _milestones(body["milestones"], start, end, checkpoint, verifier)
    return Range(
        start=start,
        end=end,
        left=[b64_hash(h, 5, f"{RANGE} left") for h in left],
        right=[b64_hash(h, 5, f"{RANGE} right") for h in right],
        before=body["before"],
        after=body["after"],
        milestones=milestones,
    )


def _milestones(
    notes: object, start: int, end: int, checkpoint: Checkpoint, verifier: NoteVerifier
) -> list[Checkpoint]:
    """The signed checkpoints inside the range, verified, sizes increasing."""
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
            raise BundleInvalid(5, f"{RANGE} milestones", "sizes not increasing inside the range")
        milestones.append(milestone)
    return milestones


# -- 5. the boundaries --------------------------------------------------------


def check_boundaries(
    flt: dict[str, Any], span: Range, checkpoint: Checkpoint, ledger: PurgeLedger
) -> None:
    """Step 5: the leaf before the range and the one after it, where there are any."""
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
        leaf = b64_hash(entry.get("leaf_hash"), 5, where, index)
        if side == "before" and entry.get("purged") is True:
            _purged_before(entry, where, index, leaf, flt, checkpoint, ledger)
        else:
            _record_boundary(side, entry, where, index, leaf, flt, checkpoint)


def _purged_before(
    entry: dict[str, Any],
    where: str,
    index: int,
    leaf: bytes,
    flt: dict[str, Any],
    checkpoint: Checkpoint,
    ledger: PurgeLedger,
) -> None:
    """A purged leaf before the range: a carried signed purge must put it before `from`."""
    if set(entry) != {"index", "leaf_hash", "purged", "proof"}:
        raise BundleInvalid(5, where, "fields are not index, leaf_hash, purged, proof")
    included(5, where, index, leaf, entry["proof"], checkpoint)
    # The signed statement vouches that every leaf below its watermark is older
    # than its cutoff: a cutoff no later than `from` puts this leaf before it.
    if not any(p.purged_below > index and p.cutoff_ms <= flt["from_ms"] for p in ledger.purges):
        raise BundleInvalid(
            5,
            where,
            "purged, and no carried signed purge puts it before the range's start",
            index=index,
        )


def _record_boundary(
    side: str,
    entry: dict[str, Any],
    where: str,
    index: int,
    leaf: bytes,
    flt: dict[str, Any],
    checkpoint: Checkpoint,
) -> None:
    """An opened boundary record: stamped before `from` (before) or at or after `to` (after)."""
    if set(entry) != {"index", "leaf_hash", "record", "proof"}:
        raise BundleInvalid(5, where, "fields are not index, leaf_hash, record, proof")
    included(5, where, index, leaf, entry["proof"], checkpoint)
    record = parse_json(record_text(entry, leaf, 5, where, index), 5, where, index)
    ts = record.get("ts_ms") if isinstance(record, dict) else None
    if not is_int(ts):
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
