"""The policy in force: one interface for every stage and operation that reads it.

`PolicyManager` implements it over signed, tested bundles (Cedar plus the typed data
policy). `ScopeTablePolicy` is its null object for dev mode's `policy.engine = scopes`:
the scope table authorizes, and the data policy is a fixed default that changes
nothing (no entity redacted, no limit on the served model, full scores). Readers
take one `InForce` per call, so a decision never mixes two bundles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import NotFound
from gateway.metrics import Metrics
from gateway.pipeline import Stage
from policies.bundle import PolicyBundle
from policies.data_policy import (
    DataPolicy,
    JurisdictionPolicy,
    Jurisdictions,
    ModelPolicy,
    OutputPolicy,
)
from policies.scope_stage import ScopeAuthorizeStage

log = logging.getLogger("gateway.policy")

NO_BUNDLE = "no-bundle"
# The respond stage's score precision when no bundle shapes the output (gateway.respond).
_FULL_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class InForce:
    """The data policy and the content hash of the one bundle it came from."""

    data: DataPolicy
    content_hash: str

    def in_force(self) -> InForce:
        """A fixed policy is its own reader (tools and stage tests pass one directly)."""
        return self


class PolicyReader(Protocol):
    """What a stage needs of the policy: the bundle in force, read once per request."""

    def in_force(self) -> InForce: ...


@dataclass(frozen=True)
class Candidate:
    """A bundle read from disk and checked (signature, tests), not yet in force."""

    previous: PolicyBundle
    bundle: PolicyBundle | None  # None: refused, and `error` says why
    error: str | None = None

    @property
    def outcome(self) -> str:
        if self.bundle is None:
            return "refused"
        return "unchanged" if self.bundle.content_hash == self.previous.content_hash else "swapped"


@dataclass(frozen=True)
class ReloadResult:
    swapped: bool
    bundle: PolicyBundle
    error: str | None = None


class PolicyInForce(Protocol):
    """What the gateway reads of its policy; implemented by PolicyManager."""

    @property
    def reloadable(self) -> bool:
        """Whether there is a bundle on disk to reload (and triggers to watch it)."""
        ...

    def in_force(self) -> InForce: ...

    def authorize_stage(self, model_name: str, model_version: str) -> Stage: ...

    def readiness(self) -> dict[str, object]:
        """`/readyz` checks about the policy ({} when there is no bundle)."""
        ...

    def candidate(self) -> Candidate:
        """Load, verify and test the bundle on disk; nothing is in force yet."""
        ...

    def commit(self, candidate: Candidate) -> ReloadResult:
        """Put a checked candidate in force (after its audit record is durable)."""
        ...

    def changed_on_disk(self) -> bool: ...

    def observe(self, metrics: Metrics) -> None:
        """Publish the bundle in force (name, version, hash) to the metrics."""
        ...


def without_bundle(model_name: str) -> InForce:
    """The data policy when there is no bundle (dev mode's scope table, offline tools).

    The served model is listed so the package loader's name check admits it; every other
    field is the default that leaves requests as they are."""
    model = ModelPolicy(purposes=("personalization",), output=OutputPolicy(decimals=_FULL_DECIMALS))
    return InForce(
        DataPolicy(
            models={model_name: model},
            jurisdictions=Jurisdictions(default=JurisdictionPolicy()),
        ),
        NO_BUNDLE,
    )


class ScopeTablePolicy:
    """No bundle (dev mode only): the fixed scope table decides; warns once, when built."""

    reloadable = False

    def __init__(self, model_name: str) -> None:
        log.warning("POLICY ENGINE OFF (dev mode): authorization by fixed scope table")
        self._in_force = without_bundle(model_name)

    def in_force(self) -> InForce:
        return self._in_force

    def authorize_stage(self, model_name: str, model_version: str) -> Stage:
        return ScopeAuthorizeStage()

    def readiness(self) -> dict[str, object]:
        return {}

    def candidate(self) -> Candidate:
        raise NotFound("the policy engine is off")

    def commit(self, candidate: Candidate) -> ReloadResult:
        raise NotFound("the policy engine is off")

    def changed_on_disk(self) -> bool:
        return False

    def observe(self, metrics: Metrics) -> None:
        return None
