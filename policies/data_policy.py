"""The typed data-handling policy of a bundle (``data.yaml``).

Cedar answers *may this client do this*; everything about *how* a request is handled
(which PII entities are redacted per jurisdiction, which consent purposes a model
needs, A/B splits, output hardening, detection thresholds, rate limits, retention,
who may sign models) lives here, typed, so every later stage reads one validated
object instead of raw YAML. Models are frozen and refuse unknown keys: a typo in a
compliance setting must fail the load, not silently fall back to a default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_SIGNER_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
OutputMode = Literal["scores", "rounded", "rank_only", "top_k"]
Operator = Literal["replace", "mask", "pseudonymize"]
ConsentSource = Literal["gpc", "tcf", "store"]
DetectionAction = Literal["allow", "flag", "throttle", "block"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    """One arm of an A/B split: a model version and its relative traffic weight."""

    version: str = Field(min_length=1)
    weight: float = Field(gt=0)


class OutputPolicy(_Strict):
    """Output hardening: raw scores leak more of the model than ranks do (extraction)."""

    mode: OutputMode = "scores"
    decimals: int = Field(default=3, ge=0, le=12)
    max_k: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _top_k_needs_k(self) -> OutputPolicy:
        if self.mode == "top_k" and self.max_k is None:
            raise ValueError("mode top_k needs max_k")
        return self


class Guardrails(_Strict):
    """Per-arm limits of an experiment (models.experiments.guardrails); None: not checked."""

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_flag_rate: float | None = Field(default=None, ge=0, le=1)
    min_requests: int = Field(default=100, ge=1)  # served requests before an arm is judged
    # alert: the report shows the breach; stop: the arm's users go to the control arm,
    # recorded in the audit log before it takes effect.
    action: Literal["alert", "stop"] = "alert"


class ExperimentPolicy(_Strict):
    """How the A/B report of a model's variants decides (models.experiments.stats)."""

    control: str | None = None  # the control arm's version; None: the first variant
    alpha: float = Field(default=0.05, gt=0, lt=1)
    mixture_sd: float = Field(default=0.05, gt=0, le=1)  # tau of the mSPRT's normal mixture
    min_samples: int = Field(default=100, ge=1)  # impressions per arm before the first look
    guardrails: Guardrails = Guardrails()


class EventsPolicy(_Strict):
    """Outcome events (`POST /v1/events`): counted only with the subject's consent."""

    purpose: str = "analytics"
    # refuse: 403 consent-required; uncounted: accepted, audited, neither stored nor counted.
    without_consent: Literal["refuse", "uncounted"] = "refuse"


InputSource = Literal["id", "server", "client"]
# The feature store's vocabulary (models.features.FeatureStore.inputs_for): the id inputs
# it maps to rows, and the inputs it fills from those rows, each with the id it is read by.
STORE_ID_INPUTS = ("user_id", "item_id")
STORE_FEATURE_INPUTS: Mapping[str, str] = {"user_features": "user_id", "item_features": "item_id"}


def _check_inputs(inputs: Mapping[str, InputSource]) -> None:
    """What a declaration can be checked for without the model (models.provenance checks
    the names against the model's signature when the gateway serves it)."""
    for name, source in inputs.items():
        if name in STORE_ID_INPUTS and source != "id":
            raise ValueError(f"input {name!r} is a feature-store id: declare it `id`")
        if source == "id" and name not in STORE_ID_INPUTS:
            raise ValueError(f"input {name!r}: `id` is only for the store's ids {STORE_ID_INPUTS}")
        if source == "server":
            by = STORE_FEATURE_INPUTS.get(name)
            if by is None:
                raise ValueError(
                    f"input {name!r}: the feature store provides only "
                    f"{sorted(STORE_FEATURE_INPUTS)}"
                )
            if inputs.get(by) != "id":
                raise ValueError(f"input {name!r} is looked up by {by!r}: declare {by!r} `id`")
    if "user_id" in inputs and "item_id" not in inputs:
        raise ValueError("input 'user_id' needs 'item_id' declared `id` (the candidates)")


class WatermarkPolicy(_Strict):
    """The keyed watermark in served scores (models.watermark): proof of extraction.

    `strength`: the mark's amplitude in score units (a score moves by at most 1.42x it);
    at most 0.17, so that the mark's ramp near a probability's ends stays narrow. `inputs`:
    the model inputs it is a function of; inputs constant within a request (the user's
    features) keep every request's ranking unchanged."""

    enabled: bool = False
    strength: float = Field(default=0.04, gt=0, le=0.17)
    inputs: tuple[str, ...] = Field(default=("user_features",), min_length=1)


class ModelPolicy(_Strict):
    """How one model (keyed by name) may be called and what its answers may reveal."""

    allowed_clients: tuple[str, ...] = ()  # empty: any authenticated client
    allowed_scopes: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()  # consent purposes a personalized call needs
    significant_decision: bool = False  # GDPR Art. 22: needs human-review path
    blocked: bool = False  # exposed to Cedar as the resource's `blocked` attribute
    variants: tuple[Variant, ...] = ()
    shadow_version: str | None = None
    output: OutputPolicy = OutputPolicy()
    min_version: str | None = None
    experiment: ExperimentPolicy = ExperimentPolicy()
    watermark: WatermarkPolicy = WatermarkPolicy()
    # Feature provenance (models.provenance): where each model input comes from. `id`:
    # the client sends string ids, mapped to store rows; `server`: filled from the feature
    # store, a client may not send it; `client`: a real-time feature the client sends
    # (validated and inspected). None (undeclared) is safe: nothing is filled server-side,
    # so OIP infer takes only raw tensors, from callers the bundle lets do `infer.raw`.
    inputs: dict[str, InputSource] | None = None

    @field_validator("inputs")
    @classmethod
    def _known_inputs(
        cls, value: dict[str, InputSource] | None
    ) -> dict[str, InputSource] | None:
        if value is not None:
            if not value:
                raise ValueError("inputs: declare every model input, or leave `inputs` out")
            _check_inputs(value)
        return value

    @field_validator("variants")
    @classmethod
    def _unique_versions(cls, value: tuple[Variant, ...]) -> tuple[Variant, ...]:
        versions = [v.version for v in value]
        if len(set(versions)) != len(versions):
            raise ValueError("variant versions must be unique")
        return value


Region = Literal["default", "eu", "california"]


class JurisdictionPolicy(_Strict):
    """PII handling for one jurisdiction: what to detect and what to do with it.

    Strict unless narrowed in writing: `pii_entities` is `all` (every entity the engine
    can detect, names and places included) unless the bundle lists entities."""

    pii_entities: tuple[str, ...] | Literal["all"] = "all"
    operators: dict[str, Operator] = Field(default_factory=dict)
    score_thresholds: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _operators_name_entities(self) -> JurisdictionPolicy:
        if self.pii_entities != "all":
            unknown = sorted(set(self.operators) - set(self.pii_entities))
            if unknown:
                raise ValueError(f"operators for entities not in pii_entities: {unknown}")
        for entity, threshold in self.score_thresholds.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"score threshold for {entity} must be within [0, 1]")
        return self

    def entities(self, detectable: Iterable[str]) -> frozenset[str]:
        """What this jurisdiction redacts with an engine that detects `detectable`."""
        return frozenset(detectable if self.pii_entities == "all" else self.pii_entities)


class Jurisdictions(_Strict):
    default: JurisdictionPolicy
    eu: JurisdictionPolicy | None = None
    california: JurisdictionPolicy | None = None
    # A tenant's own jurisdiction (from its configuration): its requests get these rules
    # on top of the subject's, whatever a request header says.
    tenants: dict[str, Region] = Field(default_factory=dict)

    def for_region(self, region: str) -> JurisdictionPolicy:
        """The region's policy, or the default one where the bundle has none."""
        chosen = {"eu": self.eu, "california": self.california}.get(region)
        return chosen if chosen is not None else self.default

    def for_tenant(self, tenant: str | None) -> Region | None:
        return self.tenants.get(tenant) if tenant is not None else None


class ConsentPolicy(_Strict):
    """Which consent signal wins when they disagree (GPC is a legal opt-out in CA)."""

    precedence: tuple[ConsentSource, ...] = ("gpc", "tcf", "store")
    # most_restrictive: any source that refuses a purpose wins (the default); precedence:
    # the first source with an opinion decides. Either way a stored withdrawal beats a
    # TCF grant: a client's header never re-grants what the subject withdrew.
    combine: Literal["most_restrictive", "precedence"] = "most_restrictive"
    default_personalization: bool = False  # no signal at all: non-personalized path
    tcf_purposes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    # Purposes a `Sec-GPC: 1` request opts out of (CCPA regulation 7025: sale/sharing).
    gpc_opt_out: tuple[str, ...] = ("sale_share",)
    # When set, a TCF string must also carry vendor consent for this IAB vendor id.
    tcf_vendor_id: int | None = Field(default=None, ge=1)

    @field_validator("precedence")
    @classmethod
    def _no_repeats(cls, value: tuple[ConsentSource, ...]) -> tuple[ConsentSource, ...]:
        if len(set(value)) != len(value):
            raise ValueError("precedence lists a source twice")
        return value

    def resolve(
        self, purpose: str, opinions: Mapping[ConsentSource, bool | None]
    ) -> tuple[str, bool]:
        """Which source decides `purpose` and what it says, from each source's opinion
        (None: no opinion). The stage (privacy.consent_stage) and the bundle's consent
        test cases both decide through here."""
        said = [(s, v) for s in self.precedence if (v := opinions.get(s)) is not None]
        refusals = [o for o in said if not o[1]]
        withdrawn = [o for o in refusals if o[0] == "store"]
        if withdrawn:
            return withdrawn[0]  # the subject's own withdrawal
        if refusals and self.combine == "most_restrictive":
            return refusals[0]
        if said:
            return said[0]
        return "default", purpose == "personalization" and self.default_personalization


class RedactionPolicy(_Strict):
    """Where PII redaction applies beyond `context.query` (always) and how eager it is."""

    # Request fields (dotted paths into the request body, under `context`) to redact.
    fields: tuple[str, ...] = ("context.query",)
    allow_list: tuple[str, ...] = ()  # terms never flagged (exact match)
    default_threshold: float = Field(default=0.4, ge=0.0, le=1.0)

    @field_validator("fields")
    @classmethod
    def _context_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            parts = path.removeprefix("$.").split(".")
            if len(parts) != 2 or parts[0] != "context" or not parts[1].isidentifier():
                raise ValueError(f"redaction field {path!r} is not a path context.<name>")
        return value


# Detector thresholds (security.inspection), their defaults and allowed ranges. Distances
# are RMS over the standardised features (training standard deviations per feature); counts
# are time-decayed (security.inspection.sketch): a row seen `window_seconds` ago weighs 1/e.
DETECTION_THRESHOLDS: dict[str, tuple[float, float, float]] = {
    # fraction of a request's feature values outside the training bounds that is tolerated
    "out_of_range": (0.0, 0.0, 1.0),
    # rows within an RMS distance of (1 - similarity) share most fine LSH buckets (the
    # coarse scale is 3x wider): noise of 0.3 per feature on every query still collides
    "query_similarity": (0.85, 0.0, 0.99),
    # earlier off-store rows near one off-store row (LSH estimate, ids ignored) in any of
    # its histories
    "near_duplicates": (8.0, 1.0, 1_000_000.0),
    # a row this close to the store row of its ids is the store's own (float rounding on
    # the way): never counted. Kept tiny: every value beyond it is a version, so an
    # attacker probing near the decision boundary with small steps is counted too (a
    # radius of 0.12 left such steps free); a recomputing pipeline makes one version per
    # recomputation whatever the distance, far below `versions`.
    "store_radius": (0.01, 0.0, 1000.0),
    # new versions of one id's features (a feature input beyond store_radius from the
    # store row, each exact value counted once) in a tenant within versions_seconds:
    # probing on fixed ids. A pipeline recomputing features makes a few an hour.
    "versions": (24.0, 1.0, 1_000_000.0),
    # a row farther than this from the store row of its ids is off the store: no drift of
    # a feature pipeline explains it (the store rows of other ids lie ~1-1.4 away)
    "off_manifold": (0.9, 0.0, 1000.0),
    # off-store rows in one history (decayed count) that count as probing or extraction
    "off_store_rows": (32.0, 1.0, 1_000_000_000.0),
}


class DetectionScopes(_Strict):
    """The histories a row counts in, each with its threshold multiple (0 = not kept).

    `client`: the calling client; `tenant`: every client of its tenant together (an
    attack split over many credentials adds up); `subject`: the data subject of the row
    (the user id), across the clients of the tenant."""

    client: float = Field(default=1.0, ge=0)
    tenant: float = Field(default=2.0, ge=0)
    subject: float = Field(default=1.0, ge=0)


class ScorePerturbation(_Strict):
    """Keyed score perturbation (security.inspection.perturb): each served score moves by a
    keyed pseudo-random offset of the exact query, at most `max_offset` and under half the
    gap to its neighbours in the request, so the ranking within a request never changes
    while finite differences between near queries turn to noise."""

    enabled: bool = False
    max_offset: float = Field(default=0.004, gt=0, le=1)


class DetectionPolicy(_Strict):
    """Thresholds of the input inspector and what it does when one is crossed."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    action: DetectionAction = "flag"
    shadow: bool = False  # evaluate and record, never enforce
    # Values may exceed the training [min, max] by this fraction of the span.
    bounds_tolerance: float = Field(default=0.05, ge=0, le=100)
    # Time constant of the decayed histories, and the window detections (strikes) count in:
    # a day, so an attack paced over hours still adds up.
    window_seconds: int = Field(default=86_400, ge=1)
    # Time constant of the `versions` counts: an hour, the scale at which a pipeline's
    # recomputations and an attack's probes differ (a few against tens).
    versions_seconds: int = Field(default=3600, ge=1)
    scopes: DetectionScopes = DetectionScopes()
    cooldown_after: int = Field(default=3, ge=1)  # detections within the window
    cooldown_seconds: int = Field(default=300, ge=0)
    throttle_seconds: int = Field(default=10, ge=1)  # Retry-After of a throttled request
    perturbation: ScorePerturbation = ScorePerturbation()

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        for name, threshold in value.items():
            if name not in DETECTION_THRESHOLDS:
                raise ValueError(
                    f"unknown threshold {name!r} (known: {sorted(DETECTION_THRESHOLDS)})"
                )
            _, low, high = DETECTION_THRESHOLDS[name]
            if not low <= threshold <= high:
                raise ValueError(f"threshold {name} must be within [{low}, {high}]")
        return value

    @model_validator(mode="after")
    def _radii_ordered(self) -> DetectionPolicy:
        if self.threshold("store_radius") > self.threshold("off_manifold"):
            raise ValueError("threshold store_radius must not exceed off_manifold")
        return self

    def threshold(self, name: str) -> float:
        return self.thresholds.get(name, DETECTION_THRESHOLDS[name][0])


class Rate(_Strict):
    """A token bucket: `rps` sustained, `burst` at once."""

    rps: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitPolicy(_Strict):
    # Each client (tenant and client id), before the body is read.
    per_client_rps: float = Field(default=50.0, gt=0)
    burst: int = Field(default=100, ge=1)
    # Optional: each (client, data subject of the request), and every client of a tenant
    # together. A request for several subjects takes one token from each subject's bucket.
    per_subject: Rate | None = None
    per_tenant: Rate | None = None
    # /oauth/token, per source address, before the (deliberately slow) secret check.
    token_endpoint_rps: float = Field(default=2.0, gt=0)
    token_endpoint_burst: int = Field(default=20, ge=1)


class QueryBudget(_Strict):
    """Query budget against model extraction: at most ``max_queries`` rows per window."""

    window_seconds: int = Field(ge=1)
    max_queries: int = Field(ge=1)


def _budget_list(value: object) -> object:
    """One budget or a list of them (e.g. an hourly and a daily one)."""
    return [value] if isinstance(value, Mapping) else value


BudgetWindows = Annotated[tuple[QueryBudget, ...], BeforeValidator(_budget_list)]


class QueryBudgets(_Strict):
    """Rows scored per window, per scope; a request must fit every budget that applies.

    `default`: each client, all its subjects together (unless `clients` names it);
    `per_subject`: each (client, data subject of the row); `per_tenant`: every client of
    a tenant together. A service acting for many users gets `default` whole while each
    user behind it is held to `per_subject`; many credentials of one tenant share
    `per_tenant`."""

    default: BudgetWindows = ()
    clients: dict[str, BudgetWindows] = Field(default_factory=dict)
    per_subject: BudgetWindows = ()
    per_tenant: BudgetWindows = ()

    def for_client(self, client_id: str) -> tuple[QueryBudget, ...]:
        return self.clients.get(client_id, self.default)


class RetentionPolicy(_Strict):
    audit_days: int = Field(default=365 * 6, ge=1)


class ModelSigner(_Strict):
    """A key trusted to sign model packages: a PEM EC public key (P-256/384/521).

    OpenSSF model-signing's key-based signatures are ECDSA, not Ed25519 (models/signing.py).
    """

    name: str = Field(min_length=1)
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _pem_ec_key(cls, value: str) -> str:
        try:
            key = serialization.load_pem_public_key(value.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError("public_key is not a PEM public key") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SIGNER_CURVES:
            raise ValueError("public_key must be an EC P-256, P-384 or P-521 key")
        return value


class DataPolicy(_Strict):
    """The whole of ``data.yaml``."""

    models: dict[str, ModelPolicy]
    jurisdictions: Jurisdictions
    consent: ConsentPolicy = ConsentPolicy()
    detection: DetectionPolicy = DetectionPolicy()
    redaction: RedactionPolicy = RedactionPolicy()
    rate_limits: RateLimitPolicy = RateLimitPolicy()
    query_budgets: QueryBudgets = QueryBudgets()
    retention: RetentionPolicy = RetentionPolicy()
    model_signers: tuple[ModelSigner, ...] = ()
    events: EventsPolicy = EventsPolicy()

    def model(self, name: str) -> ModelPolicy | None:
        return self.models.get(name)
