"""The experiments component: stores outcome events, reports, and enforces guardrails.

Built once by the composition root. Routes and the CLI call it; stage 6 asks it
which arms a guardrail stopped (`redirect`), an in-memory answer kept in step with
the store, so the hot path never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from audit import AppendFailed, AuditLog
from gateway.errors import AuditUnavailable, ConfigurationError
from models.experiments.guardrails import fold_audit
from models.experiments.join import EventsUnavailable, ServedArm, served_arm
from models.experiments.report import build_report
from models.experiments.store import (
    ArmHealth,
    ArmKey,
    ArmStop,
    EventStore,
    EventStoreError,
    OutcomeEvent,
)
from policies import PolicyReader

log = logging.getLogger("gateway.experiments")

# The audit record of a guardrail's decision to stop an arm (record before effect).
KIND_ARM_STOP = "experiment-arm-stop"


@dataclass
class EventMetrics:
    events: Counter
    ctr: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> EventMetrics:
        return cls(
            events=Counter(
                "gateway_experiment_events_total",
                "Outcome events counted, by model, version, A/B arm and kind",
                ["model", "version", "variant", "kind"],
                registry=registry,
            ),
            ctr=Gauge(
                "gateway_experiment_ctr",
                "Clicks over impressions of each arm, over every event the store holds",
                ["model", "version", "variant"],
                registry=registry,
            ),
        )


class Experiments:
    def __init__(
        self,
        store: EventStore,
        *,
        audit: AuditLog | None,
        policy: PolicyReader,
        clock: Callable[[], float],
        metrics: EventMetrics | None = None,
    ) -> None:
        self.store = store
        self._audit = audit
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._redirects: dict[tuple[str, str], str] = {}
        # One enforcement at a time per event loop (two reports must not stop an arm twice).
        self._locks: dict[int, asyncio.Lock] = {}
        self._totals: dict[ArmKey, list[int]] = {}
        try:
            stops = store.stops()
        except EventStoreError as exc:
            # Fail closed: an arm a guardrail stopped must not come back with a restart.
            raise ConfigurationError(f"event store: stopped arms unreadable: {exc}") from exc
        for stop in stops:
            self._remember(stop.arm)

    # -- stage 6 ----------------------------------------------------------------------

    def redirect(self, model: str, version: str) -> str | None:
        """The version that serves a stopped arm's users (the control); None: not stopped."""
        return self._redirects.get((model, version))

    def _remember(self, arm: ArmKey) -> None:
        data = self._policy.in_force().data.model(arm.model)
        if data is None or not data.variants:
            return
        control = data.experiment.control or data.variants[0].version
        if control != arm.version:
            self._redirects[(arm.model, arm.version)] = control

    # -- events -----------------------------------------------------------------------

    def join(self, tenant: str | None, user_id: str, request_id: str) -> ServedArm:
        """The arm that served the ranking (blocking; see models.experiments.join)."""
        if self._audit is None:
            raise AuditUnavailable(log_cause="outcome events need the audit log")
        return served_arm(self._audit, tenant, user_id, request_id)

    def add(self, events: Sequence[OutcomeEvent]) -> int:
        """Store the events (blocking); how many were new. Repeats are not counted again."""
        try:
            added = self.store.add(events)
        except EventStoreError as exc:
            raise EventsUnavailable(log_cause=f"event store: {exc}") from exc
        fresh = [e for e, new in zip(events, added, strict=True) if new]
        if self._metrics is not None:
            for event in fresh:
                arm = event.arm
                self._metrics.events.labels(arm.model, arm.version, arm.variant, event.kind).inc()
                totals = self._totals.setdefault(arm, [0, 0])
                if event.kind in ("impression", "click"):
                    totals[0 if event.kind == "impression" else 1] += 1
                if totals[0]:
                    self._metrics.ctr.labels(arm.model, arm.version, arm.variant).set(
                        totals[1] / totals[0]
                    )
        return len(fresh)

    def load_totals(self, model: str) -> None:
        """Start the CTR gauge from the store's counts (blocking; once at start). Metrics
        only: a store that cannot be read leaves the gauge to the events from now on."""
        try:
            found = self.store.counts(model)
        except EventStoreError as exc:
            log.error("event counts not read at start, CTR gauge starts empty: %s", exc)
            return
        for arm, kinds in found.items():
            self._totals[arm] = [kinds["impression"], kinds["click"]]
            if self._metrics is not None and kinds["impression"]:
                self._metrics.ctr.labels(arm.model, arm.version, arm.variant).set(
                    kinds["click"] / kinds["impression"]
                )

    # -- the report -------------------------------------------------------------------

    def report(self, model: str, *, buckets: int = 100) -> dict[str, Any]:
        """The A/B report of `model` (blocking); KeyError for a model the bundle lacks."""
        try:
            return self._report(model, buckets)
        except EventStoreError as exc:
            raise EventsUnavailable(log_cause=f"event store: {exc}") from exc

    def _report(self, model: str, buckets: int) -> dict[str, Any]:
        data = self._policy.in_force().data.model(model)
        if data is None:
            raise KeyError(model)
        health: dict[ArmKey, ArmHealth] = (
            fold_audit(self.store, self._audit, model) if self._audit is not None else {}
        )
        return build_report(
            model,
            variants=data.variants,
            policy=data.experiment,
            counts=self.store.counts(model),
            series=self.store.series(model, buckets),
            health=health,
            stops=self.store.stops(),
            generated_ms=int(self._clock() * 1000),
        )

    async def enforce(self, report: dict[str, Any]) -> list[str]:
        """Stop every arm whose guardrail is breached, where the bundle says `stop`.

        Record before effect: the decision is appended to the audit log durably, then
        stored, then stage 6 sends the arm's users to the control arm; if the append
        fails nothing changes (AuditUnavailable). The variants stopped now.
        """
        lock = self._locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock())
        async with lock:
            return await self._enforce(report)

    async def _enforce(self, report: dict[str, Any]) -> list[str]:
        model = str(report["model"])
        data = self._policy.in_force().data.model(model)
        if data is None or data.experiment.guardrails.action != "stop":
            return []
        stopped = []
        for row in report["arms"]:
            breached = row["guardrails"]["breached"]
            if not breached or row["control"] or row["stopped"] is not None:
                continue
            if self.redirect(model, row["version"]) is not None:
                continue  # stopped by a report that finished while this one was built
            arm = ArmKey(model, row["version"], row["variant"])
            reason = "guardrail breached: " + ", ".join(breached)
            now_ms = int(self._clock() * 1000)
            if self._audit is not None:
                try:
                    await self._audit.record_event(
                        KIND_ARM_STOP,
                        action="admin",
                        model=model,
                        version=arm.version,
                        variant=arm.variant,
                        reason=reason,
                        guardrails=row["guardrails"]["checks"],
                    )
                except AppendFailed as exc:
                    raise AuditUnavailable(log_cause=f"arm stop not recorded: {exc}") from exc
            try:
                await asyncio.to_thread(self.store.stop, ArmStop(arm, reason, now_ms))
            except EventStoreError as exc:
                raise EventsUnavailable(log_cause=f"arm stop not stored: {exc}") from exc
            self._remember(arm)
            row["stopped"] = {"reason": reason, "ts_ms": now_ms}
            stopped.append(arm.variant)
            log.warning("experiment %s: arm %s stopped (%s)", model, arm.variant, reason)
        return stopped

    def refresh_stops(self) -> None:
        """Re-read the stopped arms (blocking): another replica's stops reach this one."""
        try:
            stops = self.store.stops()
        except EventStoreError as exc:
            log.error("stopped arms not refreshed (kept as they were): %s", exc)
            return
        for stop in stops:
            self._remember(stop.arm)

    def guarded_models(self) -> list[str]:
        """Models of the bundle in force with A/B arms whose guardrail action is `stop`."""
        data = self._policy.in_force().data
        return [
            name
            for name, model in data.models.items()
            if len(model.variants) > 1 and model.experiment.guardrails.action == "stop"
        ]

    async def check_guardrails(self) -> dict[str, list[str]]:
        """Report every guarded model and apply its guardrails (record before effect);
        then take up the stops other replicas made. The arms stopped now, per model."""
        stopped: dict[str, list[str]] = {}
        for model in self.guarded_models():
            report = await asyncio.to_thread(self.report, model)
            found = await self.enforce(report)
            if found:
                stopped[model] = found
        await asyncio.to_thread(self.refresh_stops)
        return stopped

    def close(self) -> None:
        self.store.close()
