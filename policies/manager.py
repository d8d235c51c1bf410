"""The active policy bundle, and how a new one replaces it.

A candidate is (1) loaded and validated, (2) its signature verified against the
trusted keys (unsigned only in dev mode), (3) its own test cases run; only then
is it swapped in, by one reference assignment, so a request sees either the old
bundle or the new one, never a mix. A candidate that fails any step leaves the
last good bundle in force; the failure is kept for /readyz, counted and audited.
A shadow bundle, when set, is evaluated beside the active one and every decision
that would differ is logged (dry run); it never decides anything.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.metrics import Metrics
from gateway.pipeline import Stage
from policies.bundle import PolicyBundle, load_bundle
from policies.cedar_engine import AuthzRequest, Decision
from policies.errors import PolicyError
from policies.in_force import Candidate, InForce, ReloadResult
from policies.signing import verify_bundle_signature
from policies.stage import PolicyAuthorizeStage
from policies.testing import run_tests

log = logging.getLogger("gateway.policy")


ReloadListener = Callable[[ReloadResult, PolicyBundle | None], None]


def _nothing(_result: ReloadResult, _previous: PolicyBundle | None) -> None:
    return None


def fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection for the file watch: names, sizes and mtimes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


class PolicyManager:
    """The bundle in force and its reloads (implements policies.in_force.PolicyInForce)."""

    reloadable = True

    def __init__(
        self,
        path: Path,
        *,
        trusted_keys: Iterable[str],
        allow_unsigned: bool,
        on_reload: ReloadListener = _nothing,
    ) -> None:
        self.path = path
        self._trusted = tuple(trusted_keys)
        self._allow_unsigned = allow_unsigned
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.shadow: PolicyBundle | None = None
        self._active = self.check(path)  # the first bundle must be good: no fallback exists
        self._in_force = InForce(self._active.data, self._active.content_hash)
        self._fingerprint = fingerprint(path)

    @property
    def active(self) -> PolicyBundle:
        return self._active

    @active.setter
    def active(self, bundle: PolicyBundle) -> None:
        # Both in one step for readers: a request sees the old pair or the new one.
        self._in_force = InForce(bundle.data, bundle.content_hash)
        self._active = bundle

    def in_force(self) -> InForce:
        return self._in_force

    def authorize_stage(self, model_name: str, model_version: str) -> Stage:
        return PolicyAuthorizeStage(self, model_name=model_name, model_version=model_version)

    def observe(self, metrics: Metrics) -> None:
        metrics.observe_policy(self._active)

    def readiness(self) -> dict[str, object]:
        bundle = self._active
        return {
            "policy": {
                "name": bundle.name,
                "version": bundle.version,
                "hash": bundle.content_hash,
                "last_reload_error": self.last_error,
                "shadow": self.shadow.content_hash if self.shadow else None,
            }
        }

    def check(self, path: Path) -> PolicyBundle:
        """Load, verify and test a bundle; PolicyError says what is wrong."""
        bundle = load_bundle(path)
        if bundle.signature is None and self._allow_unsigned:
            log.warning("policy bundle %s is unsigned (accepted in dev mode only)", path)
        else:
            verify_bundle_signature(bundle, self._trusted)
        report = run_tests(bundle)
        if not report.passed:
            raise PolicyError(f"bundle test cases fail:\n{report.render()}", file=str(path))
        return bundle

    def reload(self, path: Path | None = None) -> ReloadResult:
        """Try a candidate (default: the configured path); swap only if it passes.

        The gateway goes through `candidate` and `commit` instead, recording the outcome
        in the audit log between the two (record before effect)."""
        return self.commit(self.candidate(path))

    def candidate(self, path: Path | None = None) -> Candidate:
        """Load, verify and test the bundle on disk; nothing changes but `last_error`."""
        candidate_path = path or self.path
        previous = self.active
        try:
            bundle = self.check(candidate_path)
        except (PolicyError, OSError) as exc:
            self.last_error = str(exc)
            log.error(
                "policy bundle %s refused, keeping %s: %s",
                candidate_path,
                previous.content_hash,
                exc,
            )
            return Candidate(previous, None, self.last_error)
        return Candidate(previous, bundle)

    def commit(self, candidate: Candidate) -> ReloadResult:
        """Swap a checked candidate in (one reference assignment); a refused one changes
        nothing."""
        with self._lock:
            previous = self.active
            bundle = candidate.bundle
            if bundle is None:
                result = ReloadResult(False, previous, candidate.error)
                self._on_reload(result, previous)
                return result
            self.last_error = None
            swapped = bundle.content_hash != previous.content_hash
            if swapped:
                self.active = bundle
                log.info(
                    "policy bundle %s %s active (%s)",
                    bundle.name,
                    bundle.version,
                    bundle.content_hash,
                )
            result = ReloadResult(swapped, self.active)
            self._on_reload(result, previous)
            return result

    def changed_on_disk(self) -> bool:
        try:
            current = fingerprint(self.path)
        except OSError:
            return True  # a vanished bundle is a change; reload() will report it
        if current == self._fingerprint:
            return False
        self._fingerprint = current
        return True

    def set_shadow(self, path: Path | None) -> PolicyBundle | None:
        """Evaluate `path` beside the active bundle (dry run); None stops it."""
        self.shadow = None if path is None else self.check(path)
        return self.shadow

    def decide(
        self, request: AuthzRequest, model: tuple[str, str] | None = None
    ) -> tuple[Decision, PolicyBundle]:
        """Decide with the active bundle; `model` (name, version) takes its attributes
        from each bundle's own data policy, so a shadow bundle is judged on its own data."""
        bundle = self.active  # one read: the whole decision uses one bundle
        decision = bundle.engine.decide(_with_model(request, bundle, model))
        shadow = self.shadow
        if shadow is not None:
            other = shadow.engine.decide(_with_model(request, shadow, model))
            if other.allowed != decision.allowed:
                log.warning(
                    "shadow policy %s would %s %s on %s:%s for %s (active %s: %s by %s)",
                    shadow.content_hash,
                    "allow" if other.allowed else "deny",
                    request.action,
                    request.resource_type,
                    request.resource_id,
                    request.client_id,
                    bundle.content_hash,
                    "allow" if decision.allowed else "deny",
                    ",".join(decision.policy_ids) or "default deny",
                )
        return decision, bundle


def _with_model(
    request: AuthzRequest, bundle: PolicyBundle, model: tuple[str, str] | None
) -> AuthzRequest:
    if model is None:
        return request
    return dataclasses.replace(request, resource_attrs=bundle.model_attrs(*model))
