"""The refusal budget: refusals of callers no one authenticated cannot grow the log without bound.

A refusal is *anonymous* when no caller was authenticated for it: stage 1 refused the
bearer token (missing, malformed, forged, expired), stage 0 refused the transport (a
body over the limit, a timeout before stage 1 passed), or the token endpoint refused a
client it did not authenticate. Anyone can send those as fast as the network allows,
and each used to append one durable record (500 anonymous calls: 501 leaves, +287 KB).

Rules, per gateway process (with several workers or replicas, each keeps its own):

1. Windows are aligned on the clock: window `w` covers `[w * window_s, (w + 1) * window_s)`.
2. A source is the client's address as the server saw it (after trusted proxies):
   the IPv4 address, or the IPv6 /64, as the token endpoint's limiter keys it.
3. In a window, a source's first `individual_per_window` anonymous refusals are
   recorded individually, exactly as before (durable before the response; if the append
   fails the client gets 503: fail closed), while fewer than
   `global_individual_per_window` were recorded individually in that window across all
   sources (so many addresses cannot grow the log without bound either).
4. Past that, a refusal is only counted, in memory, by (action, status, outcome); the
   client's response is the same as for a recorded one. At most `max_sources` sources
   are counted apart per window; refusals of any further source share one count under
   the source `"overflow"`. Memory is bounded by `max_sources + 1` tallies for the open
   window and as many for closed windows not yet appended.
5. When a window closes (a timer task: the event loop never waits on it), each source's
   counts are appended, through the ordinary durable writer, as one record of kind
   `refusals`, so the Merkle log, its checkpoints, exports and `verify` treat it like any
   other record. The same happens at shutdown, for the window still open.
6. A flush that fails is logged and keeps its counts: they are merged into the next
   flush (the record's window then spans both) and retried once per window, never in a
   tight loop. At shutdown a flush that still fails logs how many refusals were not
   recorded: counts are never dropped silently.
7. A request whose caller stage 1 authenticated is never counted: it is recorded
   individually, refused or not, including a timeout that stage 0 records after stage 1
   passed (the audit stage tells the budget, by request id, that the caller is known).

The `refusals` record (canonical JSON, like every record):

    {"v": 1, "kind": "refusals", "ts_ms": <flush time>, "request_id": null,
     "tenant": null, "source": "203.0.113.7" | "2001:db8::/64" | "overflow",
     "window_start_ms": ..., "window_end_ms": ...,
     "individual": <refusals of this source in the span sent to be recorded one by one>,
     "counted": <refusals counted here, not recorded one by one>,
     "counts": [{"action": "rank", "status": 401, "outcome": "invalid-token", "count": 490}],
     "first_request_id": <first counted>, "last_request_id": <last counted>}

So for a source and span: anonymous refusals = `individual` + `counted`, and `counted`
is the sum of `counts`. Counted requests keep their gateway request id (sent in
`X-Request-Id`) but no record of their own: an id whose time prefix (its first 12 hex
digits, milliseconds) lies between those of `first_request_id` and `last_request_id` may
be accounted for by the aggregate. Ids are time-ordered only to the millisecond (the rest
is random), so compare the prefixes, never whole ids; the exact check is the sum above.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audit.appender import AppendFailed
from audit.log import AuditLog
from audit.record import event_record

log = logging.getLogger("gateway.audit")

KIND_REFUSALS = "refusals"
OVERFLOW_SOURCE = "overflow"
# A request that reached no address (a Unix socket, an ASGI test without a client).
UNKNOWN_SOURCE = "unknown"
_SAFE_HOST = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RefusalLimits:
    """The budget's bounds (settings `audit.anonymous_refusals`)."""

    individual_per_window: int = 10
    window_s: float = 60.0
    max_sources: int = 10_000
    global_individual_per_window: int = 1_000


def source_key(host: str | None) -> str:
    """The IPv4 address, or the IPv6 /64 (one host routinely holds a whole /64)."""
    if not host:
        return UNKNOWN_SOURCE
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Not an address (a test client's name): kept only if it is safe to record.
        return host if _SAFE_HOST.fullmatch(host) else UNKNOWN_SOURCE
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(slots=True)
class _Tally:
    """One source's anonymous refusals over a span of windows."""

    window_start_ms: int
    window_end_ms: int
    individual: int = 0
    counts: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    first_request_id: str | None = None
    last_request_id: str | None = None

    @property
    def counted(self) -> int:
        return sum(self.counts.values())

    def count(self, request_id: str, action: str, status: int, outcome: str) -> None:
        self.counts[(action, status, outcome)] += 1
        if self.first_request_id is None:
            self.first_request_id = request_id
        self.last_request_id = request_id

    def then(self, newer: _Tally) -> _Tally:
        """This tally followed by a newer one (a failed flush meeting the next window)."""
        return _Tally(
            window_start_ms=min(self.window_start_ms, newer.window_start_ms),
            window_end_ms=max(self.window_end_ms, newer.window_end_ms),
            individual=self.individual + newer.individual,
            counts=self.counts + newer.counts,
            first_request_id=self.first_request_id or newer.first_request_id,
            last_request_id=newer.last_request_id or self.last_request_id,
        )

    def record(self, source: str, ts_ms: int) -> dict[str, Any]:
        return event_record(
            KIND_REFUSALS,
            ts_ms,
            # Anonymous: the gateway operator's record, like any anonymous refusal's.
            tenant=None,
            source=source,
            window_start_ms=self.window_start_ms,
            window_end_ms=self.window_end_ms,
            individual=self.individual,
            counted=self.counted,
            counts=[
                {"action": action, "status": status, "outcome": outcome, "count": n}
                for (action, status, outcome), n in sorted(self.counts.items())
            ],
            first_request_id=self.first_request_id,
            last_request_id=self.last_request_id,
        )


@dataclass(slots=True)
class _InFlight:
    host: str | None  # keyed (source_key) only if the request is refused anonymously
    caller_known: bool = False


class RefusalBudget:
    """Decides, per anonymous refusal, whether it is recorded individually or counted.

    Stage 0 calls `begin`/`end` around each request (gateway.transport.RequestSources);
    the audit stage calls `caller_known` once stage 1 has passed, and every recorder of
    a refusal asks `admit` before appending.
    """

    def __init__(
        self, audit_log: AuditLog, limits: RefusalLimits, clock: Clock = time.time
    ) -> None:
        self._log = audit_log
        self._limits = limits
        self._clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._window: int | None = None
        self._sources: dict[str, _Tally] = {}
        self._overflow: _Tally | None = None
        self._individual = 0  # in the open window, across all sources
        self._pending: dict[str, _Tally] = {}  # closed windows not yet appended
        self._flush_lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False
        self.flushes_failed = 0

    # -- stage 0 -----------------------------------------------------------

    def begin(self, request_id: str, client_host: str | None) -> None:
        self._in_flight[request_id] = _InFlight(client_host)

    def end(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)

    # -- the recorders -----------------------------------------------------

    def caller_known(self, request_id: str) -> None:
        """Stage 1 authenticated this request's caller: its refusals are never counted."""
        entry = self._in_flight.get(request_id)
        if entry is not None:
            entry.caller_known = True

    def admit(self, request_id: str, *, action: str, status: int, outcome: str) -> bool:
        """True: record this anonymous refusal individually (the caller appends it, and
        fails closed). False: it has been counted, and is appended with its source's
        aggregate when the window closes."""
        entry = self._in_flight.get(request_id)
        if entry is None or entry.caller_known or self._closed:
            # Not seen by stage 0 (so not known to be anonymous), a known caller, or a
            # gateway shutting down: recorded individually, as every request once was.
            return True
        now = self._clock()
        self._roll(now)
        limits = self._limits
        source = source_key(entry.host)
        tally = self._sources.get(source)
        if tally is None:
            if len(self._sources) < limits.max_sources:
                tally = self._sources[source] = self._new_tally(now)
            else:
                if self._overflow is None:
                    self._overflow = self._new_tally(now)
                self._overflow.count(request_id, action, status, outcome)
                self._start_timer()
                return False
        if (
            tally.individual < limits.individual_per_window
            and self._individual < limits.global_individual_per_window
        ):
            tally.individual += 1
            self._individual += 1
            return True
        tally.count(request_id, action, status, outcome)
        self._start_timer()
        return False

    # -- windows -----------------------------------------------------------

    def _window_of(self, now: float) -> int:
        return math.floor(now / self._limits.window_s)

    def _new_tally(self, now: float) -> _Tally:
        window = self._window_of(now)
        width = self._limits.window_s
        return _Tally(
            window_start_ms=round(window * width * 1000),
            window_end_ms=round((window + 1) * width * 1000),
        )

    def _roll(self, now: float, *, force: bool = False) -> None:
        """Close the open window if the clock has left it (or if forced, at shutdown)."""
        window = self._window_of(now)
        if window == self._window and not force:
            return
        for source, tally in self._sources.items():
            if tally.counts:
                self._keep(source, tally)
        if self._overflow is not None:
            self._keep(OVERFLOW_SOURCE, self._overflow)
        self._sources = {}
        self._overflow = None
        self._individual = 0
        self._window = window

    def _keep(self, source: str, newer: _Tally) -> None:
        """Add a tally to those awaiting a flush, bounded like the open window's."""
        pending = self._pending
        if source not in pending and len(pending) >= self._limits.max_sources:
            source = OVERFLOW_SOURCE
        older = pending.get(source)
        pending[source] = newer if older is None else older.then(newer)

    def _has_counts(self) -> bool:
        """Anything counted and not yet appended (open window or pending)?"""
        return bool(
            self._pending
            or self._overflow is not None
            or any(t.counts for t in self._sources.values())
        )

    def _unflushed(self) -> tuple[int, int]:
        """Refusals counted and not yet appended, and their sources."""
        tallies = [*self._pending.values(), *self._sources.values()]
        if self._overflow is not None:
            tallies.append(self._overflow)
        counted = [t.counted for t in tallies if t.counts]
        return sum(counted), len(counted)

    # -- flushing ----------------------------------------------------------

    async def flush(self, *, force: bool = False) -> int:
        """Close the open window if it is over (always, with `force`) and append every
        pending aggregate. Returns how many records were appended; a failure is logged
        and the counts kept for the next flush."""
        async with self._flush_lock:
            self._roll(self._clock(), force=force)
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            ts_ms = int(self._clock() * 1000)
            sources = list(batch)
            # Appended concurrently, so the group commit writes them in one transaction.
            results = await asyncio.gather(
                *(self._log.append(batch[s].record(s, ts_ms)) for s in sources),
                return_exceptions=True,
            )
            kept: dict[str, _Tally] = {}
            causes: set[str] = set()
            unexpected: BaseException | None = None
            for source, result in zip(sources, results, strict=True):
                if isinstance(result, int):
                    continue
                kept[source] = batch[source]
                if isinstance(result, AppendFailed):
                    causes.add(str(result))
                else:
                    # Not a store failure (a bug, a cancellation): kept, then raised below.
                    causes.add(type(result).__name__)
                    unexpected = result
            if kept:
                self.flushes_failed += 1
                # Older than anything counted since: merged back in front of it.
                newer, self._pending = self._pending, {}
                for source, tally in kept.items():
                    self._keep(source, tally)
                for source, tally in newer.items():
                    self._keep(source, tally)
                log.error(
                    "anonymous refusals not yet recorded: %d aggregate(s) of %d refusal(s) "
                    "kept for the next flush: %s",
                    len(kept),
                    sum(t.counted for t in kept.values()),
                    "; ".join(sorted(causes)),
                )
            if unexpected is not None:
                raise unexpected
            return len(sources) - len(kept)

    def _start_timer(self) -> None:
        if self._closed or (self._timer is not None and not self._timer.done()):
            return
        self._timer = asyncio.get_running_loop().create_task(
            self._run(), name="audit-refusal-flush"
        )

    async def _run(self) -> None:
        """Flush as each window closes, while anything is counted or pending."""
        while self._has_counts():
            window = self._window if self._window is not None else self._window_of(self._clock())
            end = (window + 1) * self._limits.window_s
            # A little past the end, so the window has closed when the flush looks.
            await asyncio.sleep(max(0.01, end - self._clock() + 0.01))
            # Shielded: shutdown cancels the wait, never a flush half done (its appends
            # are in the writer's queue either way; the outcome must be accounted for).
            await asyncio.shield(self.flush())

    async def close(self) -> None:
        """At shutdown, before the audit log closes: append what is counted, or say what
        is lost. Afterwards every anonymous refusal is recorded individually."""
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()
            await asyncio.wait([timer])  # never raises: what ended it is looked at below
            if not timer.cancelled() and timer.exception() is not None:
                log.error("the refusal flush task failed: %r", timer.exception())
        await self.flush(force=True)
        lost, sources = self._unflushed()
        if lost:
            log.error(
                "anonymous refusals NOT recorded at shutdown: %d refusal(s) from %d source(s) "
                "(the audit log would not take their aggregates)",
                lost,
                sources,
            )
