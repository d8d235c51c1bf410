"""The request pipeline: numbered stages over an immutable request context.

This module imports no concern package. Concern packages (security, privacy,
models, policies, audit) import these types and the rest of the shared core, and
each contributes stages; `STAGE_MODULES` names where each stage lives. The
composition root (gateway.wiring) builds each action's pipeline at start-up, and
the control plane rebuilds them after a model or policy swap; route handlers only
parse, run a pipeline and serialise. What stages 3-5 leave in the context is typed
by the protocols below, so no stage reads another's result with `getattr`.

Stage order (DESIGN.md): 0 transport (ASGI middleware), 1 authenticate,
2 authorize, then the route's `decode` step (the body is parsed only once the
caller is known, so anonymous callers learn nothing from validation errors),
3 consent, 4 redact, 5 inspect, 6 rank, 7 respond; 8 audit runs as a `final`
stage, on success and on refusal alike.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

from gateway.errors import GatewayError, InternalError, bug_report
from gateway.logs import REQUEST_FIELDS
from gateway.telemetry import recording, span


class Action(StrEnum):
    """What a request asks to do: the one vocabulary of Cedar, the scope table and routes."""

    RANK = "rank"
    INFER = "infer"
    # OIP infer with raw tensors, server-provided inputs included (feature provenance):
    # asked by the decode step of an infer request that sends them, never a route's own.
    INFER_RAW = "infer.raw"
    MODEL_READ = "model.read"
    AUDIT_READ = "audit.read"
    AUDIT_EXPORT = "audit.export"
    CONSENT_WRITE = "consent.write"
    CONSENT_READ = "consent.read"
    SUBJECT_READ = "subject.read"
    SUBJECT_ERASE = "subject.erase"
    EVENTS = "events"
    ADMIN = "admin"

    @property
    def scope(self) -> str:
        """The OAuth scope the action needs (the dev scope engine's whole rule, and the
        scope an RFC 6750 `insufficient_scope` names when Cedar denies)."""
        return ACTION_SCOPES[self]


ACTION_SCOPES: Mapping[str, str] = MappingProxyType(
    {
        Action.RANK: "rank",
        Action.INFER: "infer",
        Action.INFER_RAW: "infer:raw",
        Action.MODEL_READ: "infer",
        Action.AUDIT_READ: "audit:read",
        Action.AUDIT_EXPORT: "audit:export",
        Action.CONSENT_WRITE: "consent:write",
        Action.CONSENT_READ: "consent:read",
        Action.SUBJECT_READ: "subject:read",
        Action.SUBJECT_ERASE: "subject:erase",
        Action.EVENTS: "events",
        Action.ADMIN: "admin",
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by stage 1."""

    issuer: str
    client_id: str
    subject: str | None
    scopes: frozenset[str]
    tenant: str | None = None
    token_id: str | None = None
    expires_at: float = 0.0
    # RFC 8705 `cnf.x5t#S256`: the token is good only on a connection that presented the
    # client certificate with this SHA-256 thumbprint.
    certificate_thumbprint: str | None = None


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    digest: str
    # SHA-256 of the signed package's manifest; None for an unpackaged (dev) model.
    package_digest: str | None = None
    # The A/B arm that served the request ("A", "B", ...); None without a split.
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class RankQuery:
    """A decoded `/v1/rank` request."""

    user_id: str
    item_ids: tuple[str, ...]
    top_k: int
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RankResult:
    item_ids: tuple[str, ...]
    scores: Any  # numpy float32 [n], aligned with item_ids
    cold_start: bool


@dataclass(frozen=True, slots=True)
class InferQuery:
    """A decoded Open Inference Protocol v2 infer request."""

    id: str | None
    feeds: Mapping[str, Any]  # input name -> numpy array
    outputs: tuple[str, ...] | None = None
    # Which feeds hold values the client chose (feature provenance): None means every
    # feed (raw tensors); the rest were filled server-side from the feature store.
    client_inputs: frozenset[str] | None = None
    # The ids of the provenance path (models.provenance), None for raw tensors: the user
    # (the data subject stage 3 decides for; None when the model takes no user id) and
    # the candidates, which the server maps to feature-store rows after stage 3.
    user_id: str | None = None
    item_ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SubjectQuery:
    """The payload of a subject route; `data_subject` lets the audit stage key the record."""

    data_subject: str | None


@dataclass(frozen=True, slots=True)
class InferResult:
    outputs: Mapping[str, Any]  # output name -> numpy array


class ConsentView(Protocol):
    """Stage 3's decision as later stages and the audit read it (privacy.ConsentDecision)."""

    @property
    def may_personalize(self) -> bool: ...

    @property
    def jurisdiction(self) -> str: ...

    def as_audit(self) -> dict[str, Any]: ...


class RedactionView(Protocol):
    """Stage 4's outcome: what was redacted, counted per entity type, never the values."""

    @property
    def counts(self) -> Mapping[str, int]: ...

    def as_audit(self) -> dict[str, Any]: ...


class InspectionView(Protocol):
    """Stage 5's verdict (security.inspection.Verdict)."""

    @property
    def verdict(self) -> str: ...

    def record(self) -> dict[str, Any]: ...


class RecordHandOver(Protocol):
    """Stage 0's deadline, as the audit stage sees it (gateway.transport).

    Once a request's record is handed to the audit writer, its outcome is decided by
    that write: the deadline gives the write up to `bound_s` more (the store bounds
    every write), so the status the client gets is the status the record carries.
    """

    def hand_over(self, bound_s: float) -> None: ...


@dataclass(frozen=True)
class RequestContext:
    """Everything a stage may read. Stages return a new context; they never mutate one."""

    request_id: str
    action: str
    route: str
    headers: Mapping[str, str]
    body: bytes = b""
    # A request another surface already decoded (gRPC: gateway.oip_wire.WireInferRequest);
    # None when the decode stage parses `body` itself.
    wire: Any = None
    # Stage 0's deadline; None outside HTTP (CLI, tests) where nothing times out.
    deadline: RecordHandOver | None = None
    # The client's own X-Request-Id when stage 0 found it safe to log; never a lookup key.
    client_request_id: str | None = None
    received_at: float = 0.0
    principal: Principal | None = None
    # The policy ids that decided stage 2, and the content hash of the bundle they came from.
    authorization: tuple[str, ...] | None = None
    policy_bundle: str | None = None
    payload: Any = None
    model: ModelRef | None = None
    result: Any = None
    response: Any = None
    # The status a request that no stage refused is answered with (202 for accepted
    # events, 503 for a model that is not ready): the audit record carries it.
    status: int = 200
    # Filled by stages 3, 4 and 5; None when the stage did not run for this request.
    consent: ConsentView | None = None
    redaction: RedactionView | None = None
    inspection: InspectionView | None = None
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    # `x5t#S256` of the verified TLS client certificate of the request's connection (mutual
    # TLS, gateway.tls_scope); None without one.
    client_cert_thumbprint: str | None = None

    def evolve(self, **changes: Any) -> RequestContext:
        # dataclasses.replace re-runs __init__ over every field; on the hot path
        # (several stages per request) copying the instance dict is ~5x cheaper.
        unknown = changes.keys() - _CONTEXT_FIELDS
        if unknown:
            raise TypeError(f"RequestContext has no field(s) {sorted(unknown)}")
        new = object.__new__(RequestContext)
        state = new.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return new


_CONTEXT_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestContext))


class Respond:
    """A route's own last step, run as stage 7 so its outcome is what gets audited."""

    name = "respond"

    def __init__(self, step: Callable[[RequestContext], Awaitable[Any]]) -> None:
        self._step = step

    async def __call__(self, ctx: RequestContext) -> RequestContext:
        return ctx.evolve(response=await self._step(ctx))


class Stage(Protocol):
    """One pipeline step: returns a new context or raises a `GatewayError`."""

    name: str

    async def __call__(self, ctx: RequestContext) -> RequestContext: ...


class FinalStage(Protocol):
    """Runs after the pipeline whatever happened (stage 8 audit). May raise to fail the request."""

    name: str

    async def __call__(self, ctx: RequestContext, error: GatewayError | None) -> None: ...


# The numbered stages of DESIGN.md, in order; `decode` sits where the body is first needed.
# A pipeline refuses to be built out of this order, so a later stage cannot slip before
# authentication by accident.
STAGE_ORDER = (
    "transport",  # 0 (ASGI middleware, not a pipeline stage)
    "authenticate",  # 1
    "authorize",  # 2
    "decode",
    "consent",  # 3
    "redact",  # 4
    "inspect",  # 5
    "rank",  # 6
    "respond",  # 7
    "audit",  # 8 (a final stage)
)

# Where each stage's code lives (a test checks every module defines a stage of that name).
STAGE_MODULES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "transport": ("gateway.transport",),
        "authenticate": ("security.authn",),
        "authorize": ("policies.stage", "policies.scope_stage", "security.inspection.stage"),
        "decode": ("gateway.decode",),
        "consent": ("privacy.consent_stage", "models.provenance"),
        "redact": ("privacy.redact_stage",),
        "inspect": ("security.inspection.stage",),
        "rank": ("models.stages", "models.variants", "gateway.wiring"),
        "respond": ("gateway.respond", "gateway.pipeline"),
        "audit": ("audit.stage",),
    }
)

StageObserver = Callable[[str, float], None]


class LoopLoad:
    """How many requests are inside a pipeline on this event loop now, whatever their
    surface (REST, gRPC): stage 6 runs a small model on the loop itself when its request
    is the only one (models.ranker, `inference_mode = "auto"`). Event-loop only."""

    __slots__ = ("running",)

    def __init__(self) -> None:
        self.running = 0

    def alone(self) -> bool:
        return self.running <= 1


def _no_observer(_stage: str, _seconds: float) -> None:
    return None


class Pipeline:
    """Runs stages in order; timings go to an observer (the metrics), not to globals."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        final: Sequence[FinalStage] = (),
        observe: StageObserver = _no_observer,
        log_client: Callable[[Principal], str] | None = None,
        load: LoopLoad | None = None,
    ) -> None:
        self.stages = tuple(stages)
        self._load = load if load is not None else LoopLoad()
        self.final = tuple(final)
        self._observe = observe
        # How a log line names the caller (gateway.wiring); None: it does not.
        self._log_client = log_client
        names = [s.name for s in self.stages] + [f.name for f in self.final]
        unknown = [name for name in names if name not in STAGE_ORDER]
        if unknown:
            raise ValueError(f"unknown pipeline stage {unknown[0]!r}")
        positions = [STAGE_ORDER.index(name) for name in names]
        if positions != sorted(positions) or len(set(positions)) != len(positions):
            raise ValueError(f"stages out of order: {names}")

    async def run(self, ctx: RequestContext, *, then: Stage | None = None) -> RequestContext:
        """Run the stages, then `then` (a route's own `respond` step) if given, then finals.

        Routes whose work follows authorization (proofs, metadata, reloads) pass it as
        `then`, so a failure there is audited with the status the client really gets.
        """
        if then is not None and then.name != "respond":
            raise ValueError("a route's own step runs as the respond stage")
        self._load.running += 1
        try:
            return await self._run(ctx, then)
        finally:
            self._load.running -= 1

    async def _run(self, ctx: RequestContext, then: Stage | None) -> RequestContext:
        error: GatewayError | None = None
        timings: dict[str, float] = {}
        traced = recording()  # once: a span per stage only where the request is traced
        stages = self.stages if then is None else (*self.stages, then)
        try:
            for stage in stages:
                started = time.perf_counter()
                try:
                    if traced:
                        with span(f"stage {stage.name}"):
                            ctx = await stage(ctx)
                    else:
                        ctx = await stage(ctx)
                finally:
                    elapsed = time.perf_counter() - started
                    timings[stage.name] = elapsed * 1000.0
                    self._observe(stage.name, elapsed)
            return ctx
        except GatewayError as exc:
            error = exc
            raise
        except Exception as exc:
            # A bug in a stage must still refuse the request (and be audited), never pass it.
            error = InternalError(log_cause=bug_report(exc))
            raise error from exc
        finally:
            fields = REQUEST_FIELDS.get()
            if fields is not None and ctx.principal is not None and self._log_client:
                # The request's log lines from here on (and its access line) name the
                # client and the policies that decided.
                fields["client_id"] = self._log_client(ctx.principal)
                fields["policy_ids"] = list(ctx.authorization or ())
            if self.final:
                ctx = ctx.evolve(stage_ms=timings)
                for final in self.final:
                    if traced:
                        with span(f"stage {final.name}"):
                            await final(ctx, error)
                    else:
                        await final(ctx, error)
