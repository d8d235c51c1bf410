"""Readiness of the dependencies the stages need, each probed off the event loop with a
timeout: a load balancer must stop sending traffic while a request would be refused
because the audit store, the consent store or the shared state is down, and send it
again once they are back. Liveness (`/healthz`) never waits on any of them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import psycopg
from redis.exceptions import RedisError

from audit.store import StoreError
from gateway.components import Components
from privacy.consent_store import ConsentStoreError

PROBE_TIMEOUT_S = 1.0
_DOWN = (StoreError, ConsentStoreError, RedisError, OSError, sqlite3.Error, psycopg.Error)

Probe = Callable[[], Awaitable[object]]


def _probes(c: Components) -> dict[str, Probe]:
    probes: dict[str, Probe] = {
        "consent_store": lambda: asyncio.to_thread(c.privacy.consent.ping),
        "inspection_state": c.inspection.ping,
    }
    audit = c.audit
    if audit is not None:
        # check(): answers, and (SQLite) has room: a full disk refuses every request.
        probes["audit_store"] = lambda: asyncio.to_thread(audit.store.check)
    return probes


async def _probe(probe: Probe) -> str:
    try:
        await asyncio.wait_for(probe(), PROBE_TIMEOUT_S)
    except TimeoutError:
        return "timeout"
    except _DOWN as exc:
        return f"down ({type(exc).__name__})"  # the class only: messages may hold a DSN
    return "ok"


async def dependency_checks(c: Components) -> dict[str, str]:
    """Each dependency's state: "ok", "timeout" or "down (ErrorClass)"."""
    probes = _probes(c)
    results = await asyncio.gather(*(_probe(p) for p in probes.values()))
    return dict(zip(probes, results, strict=True))
