"""The control plane: the only code that changes what the gateway runs while it runs.

A policy reload (admin API, SIGHUP, file watch) and a model load or activation
go through here. Record before effect: each change is appended to the audit log
durably before it takes effect, and if that append fails nothing changes and the
caller gets 503 audit-unavailable. Each change is then applied in one step for
requests (the pipelines are replaced together, nothing awaits in between).

With `serve --workers N` the worker that makes a change records it once and tells the
others (gateway.workers.channel), which apply the same change unrecorded: the policy
bundle of the recorded hash, the recorded model package (of two activations, the later
recorded one). A worker that starts asks the others for the activation in force. A
policy file watch runs in worker 0 only, and the supervisor sends SIGHUP to one worker,
so a trigger is one record.
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
from gateway.workers.channel import RESYNC
from models.registry import LoadedModel
from policies.in_force import Candidate, ReloadResult
from security.inspection.state import StateUnavailableError

log = logging.getLogger("gateway.control")

# A model version made available (and, with activate, primary) by an operator.
KIND_MODEL_LOAD = "model-load"


class ControlPlane:
    def __init__(self, components: Components) -> None:
        self._c = components
        self._locks: dict[int, asyncio.Lock] = {}
        # When the activation of the primary model in force was recorded (ms; 0: the one
        # configured at start): of two activations told by other workers, the later wins.
        self._primary_since = 0
        self.rebuild()

    def rebuild(self) -> None:
        """Rebuild every pipeline from the components and swap them in at once."""
        self._c.pipelines.replace(build_pipelines(self._c))

    def _lock(self) -> asyncio.Lock:
        """One change at a time (check, record, apply), per event loop."""
        loop = id(asyncio.get_running_loop())
        return self._locks.setdefault(loop, asyncio.Lock())

    async def _record(self, kind: str, **fields: Any) -> int:
        """Append the change's record durably, or raise AuditUnavailable (no change);
        the record's time (ms)."""
        c = self._c
        ts_ms = int(c.clock() * 1000)
        if c.audit is not None:  # dev mode only: the audit log switched off
            await append_durably(c.audit, event_record(kind, ts_ms, **fields))
        return ts_ms

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
            result = await self._take_policy(candidate)
        if result.swapped and c.workers is not None:
            await _tell(c, "policy", {"hash": result.bundle.content_hash})
        return result

    async def _take_policy(self, candidate: Candidate) -> ReloadResult:
        c = self._c
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

    async def apply_policy(self, content_hash: str) -> bool:
        """Another worker recorded and took the bundle `content_hash`: take the same one
        from disk, unrecorded. Another bundle (the files changed again) is not taken."""
        async with self._lock():
            candidate = await asyncio.to_thread(self._c.policy.candidate)
            if candidate.bundle is None or candidate.bundle.content_hash != content_hash:
                log.error(
                    "policy %s taken by another worker not applied here: disk has %s",
                    content_hash,
                    candidate.bundle.content_hash if candidate.bundle else candidate.error,
                )
                return False
            await self._take_policy(candidate)
            return True

    async def load_model(self, name: str, version: str, *, activate: bool) -> LoadedModel:
        """Verify, decrypt and load a package; if asked, make it primary (atomic swap)."""
        c = self._c
        async with self._lock():
            loaded = await c.serving.build(name, version)
            try:
                since = await self._record(
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
                self._primary_since = since
        if c.workers is not None:
            await _tell(c, "model", _model_event(loaded, activate=activate, since=since))
        return loaded

    async def apply_model(
        self, name: str, version: str, *, activate: bool, package_digest: str, since: int
    ) -> bool:
        """Another worker recorded this model load (at `since`, ms): load the same package,
        unrecorded. An activation older than the one in force here is not taken."""
        c = self._c
        async with self._lock():
            if activate and since <= self._primary_since:
                return False  # a later activation is in force (or this very one)
            loaded = await c.serving.build(name, version)
            if loaded.package_digest != package_digest:
                loaded.ranker.close()
                log.error("model %s %s differs from the one recorded: not loaded", name, version)
                return False
            c.serving.install(loaded, activate=activate)
            if activate:
                self.rebuild()
                self._primary_since = since
            return True

    async def on_worker_event(self, topic: str, payload: Any) -> None:
        """A change another worker made (gateway.workers.channel)."""
        if topic == "policy":
            await self.apply_policy(str(payload["hash"]))
        elif topic == "model":
            await self.apply_model(
                str(payload["name"]),
                str(payload["version"]),
                activate=bool(payload["activate"]),
                package_digest=str(payload["package_digest"]),
                since=int(payload["since"]),
            )
        elif topic == "subject":
            tenant = None if payload["tenant"] is None else str(payload["tenant"])
            await self._c.privacy.subjects.apply_elsewhere(
                str(payload["kind"]), tenant, str(payload["subject"])
            )
        elif topic == "sync":
            # A worker (re)started with the configured model: tell it (it alone) the one
            # activated here since, if any (that activation is recorded).
            primary = self._c.serving.primary()
            if primary is not None and self._primary_since:
                event = _model_event(primary, activate=True, since=self._primary_since)
                await _tell(self._c, "model", event, to=int(payload["worker"]))
        elif topic == RESYNC:
            # Missed events: what is cached may be stale, and is dropped.
            self._c.privacy.consent.invalidate()
            if await asyncio.to_thread(self._c.policy.changed_on_disk):
                log.warning("worker events may have been missed; the policy on disk differs")

    def start_triggers(self) -> list[asyncio.Task[Any]]:
        """SIGHUP and, when configured, a file watch reload the policy bundle; the A/B
        guardrails are checked every `experiments.guardrail_interval_s`."""
        c = self._c
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        if c.workers is not None:
            c.workers.on_event(self.on_worker_event)

            async def join() -> None:
                assert c.workers is not None  # noqa: S101 - checked above
                await c.workers.subscribe()
                # What changed before this worker started:
                await _tell(c, "sync", {"worker": c.workers.worker})

            tasks.append(loop.create_task(join(), name="worker-events"))

            async def subject_changed(kind: str, tenant: str | None, subject: str) -> None:
                # Within the box only (the supervisor's owner-only socket), never logged.
                await _tell(c, "subject", {"kind": kind, "tenant": tenant, "subject": subject})

            c.privacy.subjects.observers.append(subject_changed)
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
        if interval > 0 and (c.workers is None or c.workers.worker == 0):

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


def _model_event(loaded: LoadedModel, *, activate: bool, since: int) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "version": loaded.version,
        "activate": activate,
        "package_digest": loaded.package_digest,
        "since": since,
    }


async def _tell(
    c: Components, topic: str, payload: dict[str, Any], *, to: int | None = None
) -> None:
    """Tell the other workers (or worker `to`) of a change made and recorded here (best
    effort: a worker that misses it resyncs, and one restarted later asks)."""
    assert c.workers is not None  # noqa: S101 - the callers check
    try:
        await c.workers.publish(topic, payload, to=to)
    except StateUnavailableError as exc:
        log.error("other workers not told of %s: %s", topic, exc)


def control_of(request: Request) -> ControlPlane:
    found: ControlPlane = request.app.state.control
    return found
