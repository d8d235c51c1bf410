"""JSON Web Key Sets: where verification keys come from.

Three sources with one interface (`await source.key(kid, alg)`): a static set
(the embedded issuer's own keys), a file, and a URL fetched with a cache that is
refreshed on an unknown `kid` at most once per `min_refresh_interval_s`, so a
stream of tokens with random `kid`s cannot turn the gateway into a JWKS
hammer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from jose import jwk
from jose.exceptions import JOSEError

from gateway.telemetry import span

log = logging.getLogger("gateway.jwks")

Clock = Callable[[], float]

# Which key types may verify which algorithms; stops e.g. an EC key verifying "RS256".
_KTY_FOR_ALG = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
}  # fmt: skip
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class JwksError(Exception):
    """The key set could not be read or is malformed."""


class KeySet:
    """Parsed public signing keys by `kid`; key objects are built once per (kid, alg)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        keys = jwks.get("keys")
        if not isinstance(keys, list):
            raise JwksError("JWKS has no 'keys' array")
        self._jwks: dict[str, dict[str, Any]] = {}
        for entry in keys:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue  # a key without kid can never be selected
            if entry.get("use", "sig") != "sig":
                continue
            if any(field in entry for field in ("d", "p", "q", "k")):
                raise JwksError(f"JWKS key {entry['kid']!r} contains private or symmetric material")
            self._jwks[entry["kid"]] = entry
        self._built: dict[tuple[str, str], Any] = {}

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._jwks)

    def key(self, kid: str, alg: str) -> Any | None:
        cached = self._built.get((kid, alg))
        if cached is not None:
            return cached
        entry = self._jwks.get(kid)
        if entry is None:
            return None
        if entry.get("kty") != _KTY_FOR_ALG.get(alg):
            return None
        if entry.get("alg") not in (None, alg):
            return None
        if alg in _CURVE_FOR_ALG and entry.get("crv") != _CURVE_FOR_ALG[alg]:
            return None
        try:
            built = jwk.construct(entry, alg)
        except JOSEError as exc:
            log.warning("unusable JWKS key %s: %s", kid, exc)
            return None
        self._built[(kid, alg)] = built
        return built


class KeySource(Protocol):
    async def key(self, kid: str, alg: str) -> Any | None: ...


class StaticKeySource:
    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._set = KeySet(jwks)

    async def key(self, kid: str, alg: str) -> Any | None:
        return self._set.key(kid, alg)


class FileKeySource:
    """A JWKS file, re-read when it changed: checked at most once per refresh interval,
    off the event loop, on every lookup (a key removed from the file stops verifying
    within the interval, not only when some token names an unknown kid)."""

    def __init__(self, path: Path, *, min_refresh_interval_s: float, clock: Clock) -> None:
        self._path = path
        self._interval = min_refresh_interval_s
        self._clock = clock
        self._mtime = 0.0
        self._checked = 0.0
        self._set = self._read()

    def _read(self) -> KeySet:
        try:
            self._mtime = self._path.stat().st_mtime
            return KeySet(orjson.loads(self._path.read_bytes()))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise JwksError(f"cannot read JWKS file {self._path}: {exc}") from exc

    async def key(self, kid: str, alg: str) -> Any | None:
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            await asyncio.to_thread(self._refresh)
        return self._set.key(kid, alg)

    def _refresh(self) -> None:
        try:
            if self._path.stat().st_mtime != self._mtime:
                self._set = self._read()
        except (OSError, JwksError) as exc:
            # The last good key set stays: a file being rewritten is not a revocation.
            log.warning("JWKS file refresh failed: %s", exc)


class RemoteKeySource:
    """A JWKS URL with a TTL cache, refreshed early on an unknown kid (rate-limited)."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient,
        ttl_s: float,
        min_refresh_interval_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl_s
        self._interval = min_refresh_interval_s
        self._clock = clock
        self._set: KeySet | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = self._clock()
            # Another waiter may have refreshed while we queued on the lock.
            if not force and now - self._fetched_at < self._ttl:
                return
            if now - self._attempted_at < self._interval:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                with span("jwks.fetch"):
                    response = await self._client.get(
                        self._url, headers={"Accept": "application/json"}
                    )
                response.raise_for_status()
                self._set = KeySet(orjson.loads(response.content))
                self._fetched_at = now
            except (httpx.HTTPError, orjson.JSONDecodeError, JwksError) as exc:
                # Keep serving the last good set; a failed fetch must not drop known keys.
                log.warning("JWKS fetch from %s failed: %s", self._url, exc)

    async def key(self, kid: str, alg: str) -> Any | None:
        if self._set is None or self._clock() - self._fetched_at >= self._ttl:
            await self._refresh(force=False)
        if self._set is not None:
            found = self._set.key(kid, alg)
            if found is not None or kid in self._set.kids:
                return found
        await self._refresh(force=True)
        return None if self._set is None else self._set.key(kid, alg)
