"""The control plane: the only code that changes what the gateway runs while it runs.

A policy reload (admin API, SIGHUP, file watch) and a model load or activation
go through here. Record before effect: each change is appended to the audit log
durably before it takes effect, and if that append fails nothing changes and the
caller gets 503 audit-unavailable. Each change is then applied in one step for
requests (the pipelines are replaced together, nothing awaits in between).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import Any

from starlette.requests import Request

from audit.record import KIND_POLICY_RELOAD, event_record
from audit.stage import append_durably
from gateway.components import Components
from gateway.errors import AuditUnavailable, GatewayError
from gateway.wiring import build_pipelines
from models.registry import LoadedModel
from policies.in_force import ReloadResult

log = logging.getLogger("gateway.control")

# A model version made available (and, with activate, primary) by an operator.
KIND_MODEL_LOAD = "model-load"


class ControlPlane:
    def __init__(self, components: Components) -> None:
        self._c = components
        self._locks: dict[int, asyncio.Lock] = {}
        self.rebuild()

    def rebuild(self) -> None:
        """Rebuild every pipeline from the components and swap them in at once."""
        self._c.pipelines.replace(build_pipelines(self._c))

    def _lock(self) -> asyncio.Lock:
        """One change at a time (check, record, apply), per event loop."""
        loop = id(asyncio.get_running_loop())
        return self._locks.setdefault(loop, asyncio.Lock())

    async def _record(self, kind: str, **fields: Any) -> None:
        """Append the change's record durably, or raise AuditUnavailable (no change)."""
        c = self._c
        if c.audit is not None:  # dev mode only: the audit log switched off
            await append_durably(c.audit, event_record(kind, int(c.clock() * 1000), **fields))

    async def reload_policy(self, trigger: str) -> ReloadResult:
        """Reload from disk; recorded (taken, refused or unchanged) before it takes effect."""
        c = self._c
        async with self._lock():
            candidate = await asyncio.to_thread(c.policy.candidate)
            outcome = candidate.outcome
            await self._record(
                KIND_POLICY_RELOAD,
                trigger=trigger,
                outcome=outcome,
                previous_bundle=candidate.previous.content_hash,
                policy_bundle=(candidate.bundle or candidate.previous).content_hash,
                error=candidate.error,
            )
            c.metrics.policy_reloads.labels(outcome).inc()
            result = c.policy.commit(candidate)
            if result.swapped:
                c.metrics.observe_policy(result.bundle)
                # A bundle that refuses the primary version takes effect before anything
                # awaits: rank and infer refuse until an allowed version is loaded (POST
                # /v1/admin/models/.../load). Then the A/B arms and shadow it names load.
                if c.serving.refuse_by_policy(result.bundle.data):
                    self.rebuild()
                await c.serving.load_named(result.bundle.data)
            return result

    async def load_model(self, name: str, version: str, *, activate: bool) -> LoadedModel:
        """Verify, decrypt and load a package; if asked, make it primary (atomic swap)."""
        c = self._c
        async with self._lock():
            loaded = await c.serving.build(name, version)
            try:
                await self._record(
                    KIND_MODEL_LOAD,
                    model=name,
                    version=version,
                    activate=activate,
                    model_digest=loaded.ranker.ref.digest,
                    package_digest=loaded.package_digest,
                )
            except AuditUnavailable:
                loaded.ranker.close()
                raise
            c.serving.install(loaded, activate=activate)
            if activate:
                self.rebuild()  # no await since the activation: one step for every request
            return loaded

    def start_triggers(self) -> list[asyncio.Task[Any]]:
        """SIGHUP and, when configured, a file watch reload the policy bundle; the A/B
        guardrails are checked every `experiments.guardrail_interval_s`."""
        c = self._c
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        every = c.settings.experiments.guardrail_interval_s
        if every > 0:
            tasks.append(loop.create_task(_guard(c, every), name="experiment-guardrails"))
        if not c.policy.reloadable:
            return tasks

        def on_sighup() -> None:
            tasks.append(loop.create_task(_quietly(self.reload_policy("sighup"))))

        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (ValueError, RuntimeError, NotImplementedError):
            log.info("SIGHUP reload unavailable here (not the main thread)")
        interval = c.settings.policy.watch_interval_s
        if interval > 0:

            async def watch() -> None:
                pending = False  # a change seen but not applied (it could not be recorded)
                while True:
                    await asyncio.sleep(interval)
                    if pending or await asyncio.to_thread(c.policy.changed_on_disk):
                        pending = not await _quietly(self.reload_policy("file-change"))

            tasks.append(loop.create_task(watch(), name="policy-watch"))
        return tasks


async def _guard(c: Components, every: float) -> None:
    """The guardrail loop: a failed check (store or audit log away) waits for the next."""
    while True:
        await asyncio.sleep(every)
        try:
            await c.experiments.check_guardrails()
        except GatewayError as exc:
            log.error("experiment guardrails not checked: %s", exc.log_cause or exc.title)
        except Exception:
            # A bug must not end the loop: guardrails unchecked from then on, silently.
            log.exception("experiment guardrails not checked")


async def _quietly(reload: Awaitable[ReloadResult]) -> bool:
    """Run a triggered reload; False when it could not be recorded (nothing changed)."""
    try:
        await reload
    except AuditUnavailable as exc:
        log.error("policy reload not applied, it could not be recorded: %s", exc.log_cause)
        return False
    return True


def control_of(request: Request) -> ControlPlane:
    found: ControlPlane = request.app.state.control
    return found
