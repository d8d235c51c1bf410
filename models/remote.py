"""Stage 6 on a remote Open Inference Protocol v2 server (Triton, KServe, MLServer).

Only the model call leaves the gateway: authentication, policy, consent, redaction,
inspection, response hardening and the audit record stay here, and the package the
gateway verified and loaded still gives the model's digest and signature.

One `RemoteBackend` per gateway process: one pooled `httpx.AsyncClient` (at most
`max_connections` connections), one circuit breaker. A call:

1. is refused at once (503 model-not-ready) while the breaker is open;
2. gets `attempt_timeout_s` per attempt and `deadline_s` for every attempt together;
3. is retried, with full-jitter exponential backoff, after a failure that cannot have
   produced an answer (no connection, a connection the server dropped before answering,
   a 503): inference has no side effects, so a repeat is harmless. A read timeout is not
   retried: the server is busy, and a repeat would add to its load;
4. counts once, success or failure, towards the breaker (after its retries). A 400 is
   the request's fault, not the server's: it is an invalid request, and the server is
   healthy.

The breaker opens after `breaker_failures` failed calls in a row, refuses for
`breaker_cooldown_s`, then lets one call through (half-open): its success closes the
breaker, its failure opens it again. While open, readiness says so.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
import numpy as np

from gateway.errors import InvalidRequest, ModelNotReady
from models.remote_wire import HEADER_LENGTH, WireError, decode_response, encode_request

log = logging.getLogger("gateway.models.remote")

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half-open"]

# No answer can have been computed: safe to send again.
_RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


class CircuitBreaker:
    """Closed -> open after `failures` failures in a row -> half-open after `cooldown_s`
    (one probe at a time) -> closed on the probe's success, open again on its failure.

    Event-loop only."""

    def __init__(self, *, failures: int, cooldown_s: float, clock: Clock = time.monotonic):
        self._limit = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._cooldown_s:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True  # this call is the probe
        return True

    def success(self) -> None:
        if self._opened_at is not None:
            log.warning("remote ranker circuit closed")
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self._limit):
            log.error("remote ranker circuit open after %d failures", self._failures)
            self._opened_at = self._clock()
        self._probing = False

    def abandon(self) -> None:
        """The call gave up (its request was cancelled) without a verdict on the server."""
        self._probing = False


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    url: str
    model_name: str | None = None
    send_version: bool = True
    binary: bool = True
    unit_axis: bool = False
    max_connections: int = 32
    connect_timeout_s: float = 0.5
    attempt_timeout_s: float = 2.0
    deadline_s: float = 3.0
    retries: int = 2
    backoff_ms: float = 20.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 5.0


class _RetryableError(Exception):
    """One attempt failed in a way that may be retried."""


class RemoteBackend:
    """The pooled client and breaker of one gateway process (see the module doc)."""

    def __init__(
        self,
        options: RemoteOptions,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self._base = options.url.rstrip("/")
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self.breaker = CircuitBreaker(
            failures=options.breaker_failures, cooldown_s=options.breaker_cooldown_s, clock=clock
        )
        # One client per event loop: an httpx client's connections belong to the loop
        # that opened them (tests run several apps, each on its own loop).
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            limits = httpx.Limits(
                max_connections=self.options.max_connections,
                max_keepalive_connections=self.options.max_connections,
            )
            # trust_env=False: no proxy or netrc from the environment on the model path.
            self._client = httpx.AsyncClient(limits=limits, trust_env=False)
            self._loop = loop
        return self._client

    def path(self, name: str, version: str) -> str:
        model = self.options.model_name or name
        if self.options.send_version:
            return f"/v2/models/{model}/versions/{version}/infer"
        return f"/v2/models/{model}/infer"

    async def infer(
        self, name: str, version: str, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if not self.breaker.allow():
            raise ModelNotReady(
                "the model server is unavailable", log_cause="remote ranker circuit open"
            )
        body, headers = encode_request(
            feeds, outputs, binary=self.options.binary, unit_axis=self.options.unit_axis
        )
        url = self._base + self.path(name, version)
        try:
            result = await self._with_retries(url, body, headers, outputs)
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        except InvalidRequest:
            self.breaker.success()  # the server answered: it is up
            raise
        except ModelNotReady:
            self.breaker.failure()
            raise
        self.breaker.success()
        return result

    async def _with_retries(
        self, url: str, body: bytes, headers: dict[str, str], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        options = self.options
        deadline = self._clock() + options.deadline_s
        attempt = 0
        while True:
            remaining = deadline - self._clock()
            try:
                if remaining <= 0:
                    raise ModelNotReady(
                        "the model server did not answer in time",
                        log_cause="remote ranker deadline spent",
                    )
                return await self._attempt(url, body, headers, outputs, remaining)
            except _RetryableError as cause:
                if attempt >= options.retries:
                    raise ModelNotReady(
                        "the model server is unavailable",
                        log_cause=f"remote ranker: {cause} (after {attempt + 1} attempts)",
                    ) from None
                # Full jitter: uniform in [0, base * 2^attempt], never past the deadline.
                pause = self._rng.uniform(0, options.backoff_ms / 1000 * 2**attempt)
                if self._clock() + pause >= deadline:
                    raise ModelNotReady(
                        "the model server is unavailable",
                        log_cause=f"remote ranker: {cause} (no time left to retry)",
                    ) from None
                await asyncio.sleep(pause)
                attempt += 1

    async def _attempt(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        outputs: Sequence[str],
        remaining: float,
    ) -> dict[str, np.ndarray]:
        options = self.options
        read = min(options.attempt_timeout_s, remaining)
        timeout = httpx.Timeout(read, connect=min(options.connect_timeout_s, read))
        try:
            response = await self._http().post(url, content=body, headers=headers, timeout=timeout)
        except _RETRYABLE as exc:
            raise _RetryableError(type(exc).__name__) from None
        except httpx.TimeoutException as exc:
            raise ModelNotReady(
                "the model server did not answer in time",
                log_cause=f"remote ranker: {type(exc).__name__}",
            ) from None
        except httpx.HTTPError as exc:
            raise ModelNotReady(
                "the model server is unavailable", log_cause=f"remote ranker: {exc!r}"
            ) from None
        status = response.status_code
        if status == 503:
            raise _RetryableError("503")
        if status == 400:
            raise InvalidRequest(
                "the model rejected the input tensors",
                log_cause=f"remote ranker 400: {response.text[:200]}",
            )
        if status != 200:
            raise ModelNotReady(
                "the model server is unavailable", log_cause=f"remote ranker answered {status}"
            )
        try:
            return decode_response(
                response.content,
                response.headers.get(HEADER_LENGTH),
                outputs,
                unit_axis=options.unit_axis,
            )
        except WireError as exc:
            raise ModelNotReady(
                "the model server is unavailable", log_cause=f"remote ranker: {exc}"
            ) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
