"""The export bundle's format: what the exporter writes and the verifier reads.

Member names and their size bounds, the format version, the shapes of a
records.jsonl line, the verifier's numbered steps and the one error they fail
with, and the rule that says which records of a range a filter opens. The
exporter (`audit.export`) and the verifier (`audit.bundle`) both import these,
so the two never disagree on a name or a bound.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CHECKPOINT",
    "CONSISTENCY",
    "FILTER_KEYS",
    "HASHES",
    "MANIFEST",
    "MAX_LINE",
    "MAX_MILESTONES",
    "MAX_PROOF",
    "MEMBERS",
    "MIB",
    "OPENED",
    "OPTIONAL",
    "PREVIOUS",
    "PUBKEY",
    "PURGED",
    "PURGES",
    "RANGE",
    "RECORDS",
    "REQUIRED",
    "RUN_LEAVES",
    "STEPS",
    "STREAMED",
    "SUMMARY_JSON",
    "SUMMARY_TXT",
    "BundleInvalid",
    "BundleReport",
    "b64_text",
    "json_line",
    "narrows",
    "opens",
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
MIB = 1024 * _KIB
# Upper bounds on each member's uncompressed size. zipfile never inflates past
# the size the central directory declares, so checking that size bounds memory
# (and zip bombs) before anything is read.
MEMBERS: dict[str, int] = {
    MANIFEST: 64 * _KIB,
    CHECKPOINT: 64 * _KIB,
    PUBKEY: 4 * _KIB,
    PREVIOUS: 64 * _KIB,
    CONSISTENCY: 64 * _KIB,
    RANGE: 4 * MIB,
    RECORDS: 1 << 40,  # streamed line by line, never held whole
    PURGES: 256 * MIB,  # streamed too; the purges it holds are kept (~1 KiB each)
    SUMMARY_JSON: 16 * MIB,
    SUMMARY_TXT: 16 * MIB,
}
OPTIONAL = frozenset({PREVIOUS, CONSISTENCY})
REQUIRED = frozenset(MEMBERS) - OPTIONAL
STREAMED = frozenset({RECORDS, PURGES})
MAX_LINE = 4 * MIB
MAX_PROOF = 64  # a tree of at most 2**64 leaves has paths of at most 64 hashes
# Leaves carried as hashes only (or purged) travel as runs: one line per run of at
# most this many consecutive leaves, their hashes concatenated in base64.
RUN_LEAVES = 4096
MAX_MILESTONES = 64

# The manifest's filter, and the three shapes of a records.jsonl line: an opened
# record, a run of hashes the filter did not select, a run of purged leaves.
FILTER_KEYS = frozenset({"from_ms", "to_ms", "client_id", "subject", "tenant", "tenant_scoped"})
OPENED = frozenset({"index", "leaf_hash", "record", "personal"})
HASHES = frozenset({"index", "hashes"})
PURGED = frozenset({"index", "purged"})

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


def b64_text(raw: bytes) -> str:
    """A hash (or hashes, or a proof element) as the exporter writes it."""
    return base64.b64encode(raw).decode()


def json_line(obj: dict[str, Any]) -> bytes:
    """One line of a .jsonl member as the exporter writes it: sorted keys, no spaces."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) + b"\n"


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
