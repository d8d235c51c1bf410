"""Retention as evidence: the signed purge record, and when a missing payload is lawful.

A purge (the gateway's retention task, `gateway audit purge`) appends one record
of kind "retention" BEFORE it deletes anything, and deletes only once that
append is durable: a crash or a failed append leaves a record without effect,
never an effect without a record. The record names

    purged_below    W: payloads of leaves with index < W may be gone
    cutoff_ms       every leaf below W is older than this (W is the first index
                    at or after the cutoff)
    retention_days  the retention in force; cutoff_ms <= ts_ms - retention_days days
    trigger         what ran the purge: "schedule", "cli", "api"
    ts_ms           when the purge was decided
    tree_size,      the log's size and root when the purge was decided (>= W): the
    tree_root       statement names the very leaves it covers, so it cannot be
                    moved to another log signed by the same key
    signature       the log's key over the statement below

The log's own signing key signs a statement of those fields (a C2SP signed note
whose text cannot parse as a checkpoint, see `statement`). Checkpoints alone
could not vouch for a purge: anyone who can write the database can append a
well-formed record, and the gateway's next checkpoint would sign it. The
signature can only come from the key holder, which is why a purge record is
evidence and a moved watermark is not.

What is verifiable once a payload is gone: only its leaf hash. The record's own
`ts_ms` went with it; the store's index column keeps a time, but nothing commits
to it (it is unchanged only while the database's guards hold). So the age of a
purged record is judged by, in order of strength:
  1. the signed purge statement, made by the key holder while the payloads still
     existed: every record below W is older than cutoff_ms, and cutoff_ms lies at
     least retention_days before the purge;
  2. every record below W whose payload is still there (hashed, so its `ts_ms`
     is the record's own): it must be older than the cutoff, or the watermark
     covers a younger record;
  3. where a verifier has the store's index times (`gateway audit verify` does,
     a bundle does not), each purged leaf's index time against the cutoff, as a
     cross-check that catches a purge covering younger records even after
     their payloads are gone.

Both verifiers use the same three pieces: `purge_of` reads a purge from a
record, `verify_purge` checks its signature and statement (`PurgeRejected`
otherwise), `PurgeLedger` holds the verified purges, and `retention_problem`
is the acceptance rule for one leaf. Each verifier turns a problem into its
own error type, naming the index.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from audit.checkpoint import CheckpointError, NoteSigner, NoteVerifier
from audit.merkle import HASH_SIZE
from audit.record import KIND_RETENTION, event_record

__all__ = [
    "DAY_MS",
    "Purge",
    "PurgeLedger",
    "PurgeRejected",
    "purge_of",
    "purge_record",
    "retention_problem",
    "statement",
    "verify_purge",
]

DAY_MS = 86_400_000

# The first line of a signed purge statement. A checkpoint's second line is a
# decimal tree size; this statement's second line never is, so no checkpoint
# verifier can be tricked into reading one as a tree head, nor the reverse.
_STATEMENT_HEADER = "gateway-audit-retention/v1"
_TRIGGER = re.compile(r"[a-z][a-z0-9-]{0,31}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{4,200}={0,2}")
_FIELDS = (
    "purged_below",
    "cutoff_ms",
    "retention_days",
    "trigger",
    "ts_ms",
    "tree_size",
    "tree_root",
    "signature",
)


class PurgeRejected(Exception):  # noqa: N818 - a refusal, named for what happened
    """A retention record is not a signed, self-consistent purge of this log."""


@dataclass(frozen=True, slots=True)
class Purge:
    """One logged purge. `index` is the leaf index of the purge record itself."""

    index: int
    purged_below: int
    cutoff_ms: int
    retention_days: int
    trigger: str
    ts_ms: int
    tree_size: int
    tree_root: bytes
    signature: str
    # Set by `verify_purge` only: a ledger holds nothing else.
    verified: bool = False


def statement(
    origin: str,
    *,
    purged_below: int,
    cutoff_ms: int,
    retention_days: int,
    trigger: str,
    ts_ms: int,
    tree_size: int,
    tree_root: bytes,
) -> bytes:
    """The note text the log's key signs for a purge."""
    lines = [
        _STATEMENT_HEADER,
        origin,
        f"purged_below {purged_below}",
        f"cutoff_ms {cutoff_ms}",
        f"retention_days {retention_days}",
        f"trigger {trigger}",
        f"ts_ms {ts_ms}",
        f"tree_size {tree_size}",
        f"tree_root {base64.b64encode(tree_root).decode()}",
    ]
    return "".join(line + "\n" for line in lines).encode()


def purge_record(
    signer: NoteSigner,
    *,
    purged_below: int,
    cutoff_ms: int,
    retention_days: int,
    trigger: str,
    ts_ms: int,
    tree_size: int,
    tree_root: bytes,
) -> dict[str, Any]:
    """The retention record a purge appends before it deletes anything."""
    if not _TRIGGER.fullmatch(trigger):
        raise ValueError(f"invalid purge trigger {trigger!r}")
    if len(tree_root) != HASH_SIZE:
        raise ValueError("tree root is not a hash")
    text = statement(
        signer.name,
        purged_below=purged_below,
        cutoff_ms=cutoff_ms,
        retention_days=retention_days,
        trigger=trigger,
        ts_ms=ts_ms,
        tree_size=tree_size,
        tree_root=tree_root,
    )
    line = signer.signature_line(text).decode()
    # `— <name> <base64(key id || signature)>\n`: the record keeps the base64 only.
    signature = line.rstrip("\n").rsplit(" ", 1)[1]
    return event_record(
        KIND_RETENTION,
        ts_ms,
        purged_below=purged_below,
        cutoff_ms=cutoff_ms,
        retention_days=retention_days,
        trigger=trigger,
        tree_size=tree_size,
        tree_root=base64.b64encode(tree_root).decode(),
        signature=signature,
    )


def _int(value: object) -> int | None:
    # bool is an int to Python, never to an auditor.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def purge_of(index: int, record: dict[str, Any]) -> Purge | None:
    """The purge a record states, or None: not a retention record, or not a signed one.

    Retention records written before purges were signed (fields `purged_below`
    and `purged` only) return None: they vouch for nothing, so payloads that
    only they would cover count as deleted outside retention.
    """
    if record.get("kind") != KIND_RETENTION or any(name not in record for name in _FIELDS):
        return None
    names = ("purged_below", "cutoff_ms", "retention_days", "ts_ms", "tree_size")
    numbers = [_int(record[name]) for name in names]
    trigger, root, signature = record["trigger"], record["tree_root"], record["signature"]
    if any(n is None for n in numbers) or not isinstance(trigger, str):
        return None
    if not isinstance(signature, str) or not isinstance(root, str):
        return None
    try:
        tree_root = base64.b64decode(root, validate=True)
    except binascii.Error:
        return None
    if len(tree_root) != HASH_SIZE or base64.b64encode(tree_root).decode() != root:
        return None
    purged_below, cutoff_ms, retention_days, ts_ms, tree_size = (int(n or 0) for n in numbers)
    return Purge(
        index,
        purged_below,
        cutoff_ms,
        retention_days,
        trigger,
        ts_ms,
        tree_size,
        tree_root,
        signature,
    )


def verify_purge(purge: Purge, verifier: NoteVerifier) -> Purge:
    """The purge, marked verified; `PurgeRejected` unless the log's key signed it
    and its statement holds on its own.

    1. the signature is the log's key over the statement of these fields;
    2. the trigger is a plain word (the statement has no room for anything else);
    3. the purge covers only records before itself, and names a tree that holds
       them: purged_below <= tree_size <= its own index;
    4. the cutoff lies at least `retention_days` before the purge.
    Whether `tree_root` is this log's root at `tree_size` is for a verifier that
    has the whole tree (`gateway audit verify`); a bundle relies on the signature.
    """
    # 2. first: a trigger with a newline would not even make a note text.
    if not _TRIGGER.fullmatch(purge.trigger):
        raise PurgeRejected(f"purge trigger {purge.trigger!r} is not a plain word")
    # 1.
    text = statement(
        verifier.name,
        purged_below=purge.purged_below,
        cutoff_ms=purge.cutoff_ms,
        retention_days=purge.retention_days,
        trigger=purge.trigger,
        ts_ms=purge.ts_ms,
        tree_size=purge.tree_size,
        tree_root=purge.tree_root,
    )
    if not _BASE64.fullmatch(purge.signature):
        raise PurgeRejected("purge signature is not base64")
    try:
        verifier.verify(text + b"\n" + f"\u2014 {verifier.name} {purge.signature}\n".encode())
    except CheckpointError as exc:
        raise PurgeRejected(f"purge statement is not signed by the log's key: {exc}") from exc
    # 3.
    if purge.purged_below > purge.tree_size:
        raise PurgeRejected(
            f"purge watermark {purge.purged_below} lies past the tree of size "
            f"{purge.tree_size} it names"
        )
    if purge.tree_size > purge.index:
        raise PurgeRejected(
            f"purge names a tree of size {purge.tree_size}, past the purge record itself"
        )
    # 4.
    latest_cutoff = purge.ts_ms - purge.retention_days * DAY_MS
    if purge.cutoff_ms > latest_cutoff:
        raise PurgeRejected(
            f"purge cutoff {purge.cutoff_ms} is later than its retention of "
            f"{purge.retention_days} days allows ({latest_cutoff})"
        )
    return replace(purge, verified=True)


class PurgeLedger:
    """The verified purges of one log, answering which purge covers a leaf.

    The purge that covers leaf i is the first logged one (lowest index) whose
    watermark lies above i: the purge that made deleting i lawful. Later purges
    with higher watermarks also lie above i, but their cutoffs are later; the
    first one is the strictest test of i's age.
    """

    def __init__(self, purges: Iterable[Purge]) -> None:
        ordered = sorted(purges, key=lambda p: p.index)
        for purge in ordered:
            if not purge.verified:
                # A bug in the caller: an unverified purge would be an attacker's gift.
                raise ValueError(f"purge at index {purge.index} was not verified")
        # Only purges that raise the watermark can be the first to cover a leaf.
        self._firsts: list[Purge] = []
        for purge in ordered:
            if not self._firsts or purge.purged_below > self._firsts[-1].purged_below:
                self._firsts.append(purge)
        self._marks = [p.purged_below for p in self._firsts]
        self.purges: tuple[Purge, ...] = tuple(ordered)

    def __len__(self) -> int:
        return len(self.purges)

    @property
    def watermark(self) -> int:
        """The highest watermark any logged purge set (0 without purges)."""
        return self._marks[-1] if self._marks else 0

    def covering(self, leaf_index: int) -> Purge | None:
        """The first logged purge whose watermark covers `leaf_index`, or None."""
        at = bisect.bisect_right(self._marks, leaf_index)
        return self._firsts[at] if at < len(self._firsts) else None


def retention_problem(
    ledger: PurgeLedger, leaf_index: int, *, payload_present: bool, ts_ms: int | None
) -> str | None:
    """The acceptance rule for one leaf; None if it holds, else why not (one line).

    - A missing payload is lawful only below the watermark of a verified purge.
    - A leaf below a purge's watermark must be older than that purge's cutoff:
      with its payload present, `ts_ms` is the record's own (verifiable) time;
      with it gone, pass the store's index time if you have one (a cross-check),
      else None and the signed statement is the evidence.
    """
    purge = ledger.covering(leaf_index)
    if purge is None:
        if payload_present:
            return None
        return "payload deleted, and no signed purge record in the log covers it"
    if ts_ms is not None and ts_ms >= purge.cutoff_ms:
        return (
            f"the purge at index {purge.index} covers a record younger than its cutoff "
            f"(record time {ts_ms}, cutoff {purge.cutoff_ms}, "
            f"retention {purge.retention_days} days)"
        )
    return None
