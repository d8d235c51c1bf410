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
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


# Detector thresholds (security.inspection), their defaults and allowed ranges.
DETECTION_THRESHOLDS: dict[str, tuple[float, float, float]] = {
    # fraction of a request's feature values outside the training bounds that is tolerated
    "out_of_range": (0.0, 0.0, 1.0),
    # two queries on the same ids are near-duplicates above this similarity (1 = identical)
    "query_similarity": (0.9, 0.0, 1.0),
    # near-duplicates of one query in the client's history that count as boundary probing
    "near_duplicates": (8.0, 1.0, 1024.0),
    # fraction of a client's recent rows off the data manifold that counts as extraction
    "extraction_rate": (0.8, 0.0, 1.0),
    # RMS distance (training standard deviations) from the store row that is "off manifold"
    "off_manifold": (0.5, 0.0, 1000.0),
    # rows seen before extraction_rate is judged
    "min_rows": (32.0, 1.0, 100_000.0),
}


class DetectionPolicy(_Strict):
    """Thresholds of the input inspector and what it does when one is crossed."""

    thresholds: dict[str, float] = Field(default_factory=dict)
    action: DetectionAction = "flag"
    shadow: bool = False  # evaluate and record, never enforce
    # Values may exceed the training [min, max] by this fraction of the span.
    bounds_tolerance: float = Field(default=0.05, ge=0, le=100)
    history: int = Field(default=128, ge=8, le=1024)  # fingerprints kept per client
    window_seconds: int = Field(default=900, ge=1)  # history and strikes expire after this
    cooldown_after: int = Field(default=3, ge=1)  # detections within the window
    cooldown_seconds: int = Field(default=300, ge=0)
    throttle_seconds: int = Field(default=10, ge=1)  # Retry-After of a throttled request

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

    def threshold(self, name: str) -> float:
        return self.thresholds.get(name, DETECTION_THRESHOLDS[name][0])


class RateLimitPolicy(_Strict):
    per_client_rps: float = Field(default=50.0, gt=0)
    burst: int = Field(default=100, ge=1)
    # /oauth/token, per source address, before the (deliberately slow) secret check.
    token_endpoint_rps: float = Field(default=2.0, gt=0)
    token_endpoint_burst: int = Field(default=20, ge=1)


class QueryBudget(_Strict):
    """Query budget against model extraction: at most ``max_queries`` per window."""

    window_seconds: int = Field(ge=1)
    max_queries: int = Field(ge=1)


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
    query_budgets: dict[str, QueryBudget] = Field(default_factory=dict)
    retention: RetentionPolicy = RetentionPolicy()
    model_signers: tuple[ModelSigner, ...] = ()
    events: EventsPolicy = EventsPolicy()

    def model(self, name: str) -> ModelPolicy | None:
        return self.models.get(name)
