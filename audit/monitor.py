"""`gateway audit monitor`: an auditor's witness against rollback and forks.

A log that is truncated together with its later checkpoints is self-consistent
again: `gateway audit verify` on the database cannot tell. Only someone who kept
a later checkpoint can. The monitor is that someone: run from cron, it fetches
the gateway's latest signed checkpoint and keeps it in a state file, and each
run proves the new checkpoint an extension of the kept one.

One check, numbered steps, each failing with `MonitorAlarm(kind, detail)`:
  1. fetch the latest checkpoint (GET {url}/v1/audit/checkpoint, bearer token);
  2. verify its signature with the auditor's copy of the log's key, never a key
     the server offers, and that it names the log that key signs for;
  3. read the kept checkpoint and verify it the same way (a state file edited
     by someone else is no evidence);
  4. compare: a smaller size is a rollback, the same size with another root a
     fork; a larger size must come with a consistency proof (GET
     {url}/v1/audit/proofs/consistency?first=M&second=N) that verifies against
     both signed roots, else the log forked;
  5. keep the new checkpoint, atomically (a crash leaves the old one or the new).
With no state file, the first checkpoint is trusted on first use, and the
result says so. The state file is the signed note itself, so it also serves as
`gateway audit verify-bundle --previous-checkpoint`.

Failures to check at all (the gateway unreachable, an HTTP error, a body that
is not a checkpoint) are kind "unavailable": nothing was learnt, the state is
kept as it was, and the caller exits non-zero all the same, because a monitor
that silently stops watching is no witness.

C2SP tlog-witness cosignatures are not produced or checked here: the gateway
serves no cosigned checkpoints yet, so there would be nothing to check.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import httpx
import orjson

from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier, verify_checkpoint
from audit.merkle import ProofError, verify_consistency
from gateway.files import replace_private

__all__ = ["HttpClient", "MonitorAlarm", "Observation", "observe"]

AlarmKind = Literal["rollback", "fork", "bad signature", "bad state", "unavailable"]
Outcome = Literal["first", "unchanged", "grew"]

_CHECKPOINT_PATH = "/v1/audit/checkpoint"
_CONSISTENCY_PATH = "/v1/audit/proofs/consistency"
# A checkpoint note is a few hundred bytes; a consistency proof at most 64 hashes.
_MAX_BODY = 64 * 1024


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...

    def iter_bytes(self) -> Iterator[bytes]: ...


class HttpClient(Protocol):
    """What the monitor needs of an HTTP client based at the gateway: `httpx.Client`
    (the CLI's) or any client with its streaming API (tests use the ASGI app's)."""

    def stream(
        self, method: str, url: str, *, params: dict[str, str]
    ) -> AbstractContextManager[_Response]: ...


class MonitorAlarm(Exception):  # noqa: N818 - named for what it raises, like an alarm
    """The log, the server or the state failed the check at `step`."""

    def __init__(self, step: int, kind: AlarmKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.step = step
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Observation:
    outcome: Outcome
    previous: Checkpoint | None
    current: Checkpoint

    def summary(self, state: Path) -> str:
        size, root = self.current.size, base64.b64encode(self.current.root).decode()
        if self.outcome == "first":
            return (
                f"ok: first run, trusting checkpoint {size} ({root}) of {self.current.origin} "
                f"on first use; kept in {state}"
            )
        assert self.previous is not None  # noqa: S101 - only "first" has none
        if self.outcome == "unchanged":
            return f"ok: checkpoint {size} unchanged since the last run"
        return (
            f"ok: checkpoint {size} ({root}) is consistent with kept checkpoint "
            f"{self.previous.size}; kept in {state}"
        )


def observe(client: HttpClient, verifier: NoteVerifier, state: Path) -> Observation:
    """Run steps 1-5 against the gateway `client` is based at (see the module docstring)."""
    # 1.
    note = _get(client, _CHECKPOINT_PATH, {}, "checkpoint", 1)
    # 2.
    current = _verified(note, verifier, 2, "bad signature", "served checkpoint")
    # 3.
    previous = _kept(state, verifier)
    if previous is None:
        replace_private(state, note)
        return Observation("first", None, current)
    # 4.
    if current.size < previous.size:
        raise MonitorAlarm(
            4,
            "rollback",
            f"the log serves checkpoint {current.size}, smaller than checkpoint "
            f"{previous.size} kept in {state}",
        )
    if current.size == previous.size:
        if current.root != previous.root:
            raise MonitorAlarm(
                4, "fork", f"checkpoint {current.size} has another root than the one kept"
            )
        return Observation("unchanged", previous, current)
    if previous.size:
        _check_consistency(client, previous, current)
    # 5.
    replace_private(state, note)
    return Observation("grew", previous, current)


def _verified(
    note: bytes, verifier: NoteVerifier, step: int, kind: AlarmKind, what: str
) -> Checkpoint:
    try:
        # The log's origin is its key's name: a valid checkpoint of another log proves nothing.
        return verify_checkpoint(note, verifier, origin=verifier.name)
    except CheckpointError as exc:
        raise MonitorAlarm(step, kind, f"{what}: {exc}") from exc


def _kept(state: Path, verifier: NoteVerifier) -> Checkpoint | None:
    try:
        note = state.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MonitorAlarm(3, "bad state", f"cannot read {state}: {exc.strerror}") from exc
    return _verified(note, verifier, 3, "bad state", f"kept checkpoint in {state}")


def _check_consistency(client: HttpClient, old: Checkpoint, new: Checkpoint) -> None:
    params = {"first": str(old.size), "second": str(new.size)}
    body = _get(client, _CONSISTENCY_PATH, params, "consistency proof", 4)
    try:
        document = orjson.loads(body)
        encoded = document["proof"]
        if not isinstance(encoded, list) or len(encoded) > 64:
            raise TypeError("proof is not a list of at most 64 hashes")
        proof = [base64.b64decode(item, validate=True) for item in encoded]
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError) as exc:
        raise MonitorAlarm(4, "unavailable", f"consistency proof unreadable: {exc}") from exc
    try:
        verify_consistency(old.size, new.size, old.root, new.root, proof)
    except ProofError as exc:
        raise MonitorAlarm(
            4,
            "fork",
            f"checkpoint {new.size} does not extend checkpoint {old.size} kept before: {exc}",
        ) from exc


def _get(client: HttpClient, path: str, params: dict[str, str], what: str, step: int) -> bytes:
    try:
        with client.stream("GET", path, params=params) as response:
            if response.status_code != httpx.codes.OK:
                raise MonitorAlarm(
                    step, "unavailable", f"the {what} request answered HTTP {response.status_code}"
                )
            body = b""
            # Read no more than a checkpoint or a proof can be: the server is not trusted.
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise MonitorAlarm(
                        step, "unavailable", f"the {what} is larger than {_MAX_BODY} bytes"
                    )
    except httpx.HTTPError as exc:
        raise MonitorAlarm(step, "unavailable", f"cannot fetch the {what}: {exc}") from exc
    return body
