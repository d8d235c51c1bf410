"""The control plane: the only code that changes what the gateway runs while it runs.

A policy reload (admin API, SIGHUP, file watch) and a model load or activation
go through here. Each change is applied in one step for requests (the pipelines
are replaced together, nothing awaits in between), and a policy reload is
audited whether or not the candidate is taken.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable

from starlette.requests import Request

from audit.appender import AppendFailed
from audit.record import KIND_POLICY_RELOAD, event_record
from gateway.components import Components
from gateway.wiring import build_pipelines
from models.registry import LoadedModel
from policies.in_force import ReloadResult

log = logging.getLogger("gateway.control")


class ControlPlane:
    def __init__(self, components: Components) -> None:
        self._c = components
        self.rebuild()

    def rebuild(self) -> None:
        """Rebuild every pipeline from the components and swap them in at once."""
        self._c.pipelines.replace(build_pipelines(self._c))

    async def reload_policy(self, trigger: str) -> ReloadResult:
        """Reload from disk; audited and counted whether or not the candidate is taken."""
        c = self._c
        previous = c.policy.in_force().content_hash
        result = await asyncio.to_thread(c.policy.reload)
        outcome = "swapped" if result.swapped else ("refused" if result.error else "unchanged")
        c.metrics.policy_reloads.labels(outcome).inc()
        if result.swapped:
            c.metrics.observe_policy(result.bundle)
            # A bundle that refuses the primary version takes effect before anything awaits:
            # rank and infer refuse until an allowed version is loaded (POST
            # /v1/admin/models/.../load). Then the A/B arms and shadow it names are loaded.
            if c.serving.refuse_by_policy(result.bundle.data):
                self.rebuild()
            await c.serving.load_named(result.bundle.data)
        if c.audit is not None:
            await c.audit.append(
                event_record(
                    KIND_POLICY_RELOAD,
                    int(c.clock() * 1000),
                    trigger=trigger,
                    outcome=outcome,
                    previous_bundle=previous,
                    policy_bundle=result.bundle.content_hash,
                    error=result.error,
                )
            )
        return result

    async def load_model(self, name: str, version: str, *, activate: bool) -> LoadedModel:
        """Verify, decrypt and load a package; if asked, make it primary (atomic swap)."""
        loaded = await self._c.serving.load(name, version, activate=activate)
        if activate:
            self.rebuild()  # no await since the activation: one step for every request
        return loaded

    def start_triggers(self) -> list[asyncio.Task[None]]:
        """SIGHUP and, when configured, a file watch reload the policy bundle."""
        c = self._c
        if not c.policy.reloadable:
            return []
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        def on_sighup() -> None:
            tasks.append(loop.create_task(_quietly(self.reload_policy("sighup"))))

        try:
            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        except (ValueError, RuntimeError, NotImplementedError):
            log.info("SIGHUP reload unavailable here (not the main thread)")
        interval = c.settings.policy.watch_interval_s
        if interval > 0:

            async def watch() -> None:
                while True:
                    await asyncio.sleep(interval)
                    if await asyncio.to_thread(c.policy.changed_on_disk):
                        await _quietly(self.reload_policy("file-change"))

            tasks.append(loop.create_task(watch(), name="policy-watch"))
        return tasks


async def _quietly(reload: Awaitable[ReloadResult]) -> None:
    try:
        await reload
    except AppendFailed as exc:
        log.error("policy reload not audited: %s", exc)


def control_of(request: Request) -> ControlPlane:
    found: ControlPlane = request.app.state.control
    return found
