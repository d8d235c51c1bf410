"""Response bodies as the OpenAPI contract describes them (documentation models).

Request bodies are described by the models the code validates with (gateway.schemas,
gateway.routes.subjects); these describe what the gateway answers, for clients and for
schemathesis' response checks. Objects whose contents follow the deployment (readiness
checks, audit records, a subject's export) stay open (`extra="allow"`): the contract
fixes the keys a client relies on, not every key the gateway may add.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FieldError(_Closed):
    loc: str
    msg: str


class ProblemDetails(_Open):
    """RFC 9457 problem details; `type` is `urn:gateway:problem:<slug>`."""

    type: str = Field(pattern=r"^urn:gateway:problem:[a-z-]+$")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None
    # Zero-based positions in the request's `item_ids` (the ids themselves are not echoed).
    unknown_item_positions: list[int] | None = None


class OipError(_Closed):
    """The Open Inference Protocol's error body (every `/v2` error)."""

    error: str


class OAuthErrorBody(_Closed):
    """RFC 6749 section 5.2 token endpoint error."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "slow_down",
    ]
    error_description: str | None = None


class TokenRequest(_Closed):
    """RFC 6749 section 4.4 client credentials grant, form-encoded. The client secret
    goes in HTTP Basic (client_secret_basic) or here (client_secret_post), not both."""

    grant_type: Literal["client_credentials"]
    scope: str | None = Field(default=None, description="space-separated scopes")
    client_id: str | None = None
    client_secret: str | None = None


class TokenResponse(_Closed):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str


class Jwk(_Open):
    kty: str
    kid: str


class Jwks(_Closed):
    keys: list[Jwk]


class AuthorizationServerMetadata(_Open):
    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    scopes_supported: list[str]


class GpcSupport(_Closed):
    gpc: bool
    lastUpdate: str  # noqa: N815 - the GPC specification's member name


class Liveness(_Closed):
    status: Literal["ok"]


class Readiness(_Closed):
    status: Literal["ready", "not ready"]
    checks: dict[str, Any]


class ModelObject(_Closed):
    name: str
    version: str
    package_digest: str | None = None
    variant: str | None = None


class RankedItem(_Closed):
    item_id: str
    rank: int = Field(ge=1)
    score: float | None = None


class RankResponse(_Closed):
    request_id: str
    model: ModelObject
    personalized: bool
    items: list[RankedItem]
    redacted: dict[str, int] | None = None


class OipServerMetadata(_Closed):
    name: str
    version: str
    extensions: list[str]


class OipLive(_Closed):
    live: bool


class OipReady(_Closed):
    ready: bool


class OipTensorMetadata(_Open):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(_Open):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipModelReady(_Closed):
    name: str
    ready: bool


class OipOutputTensor(_Open):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None


class OipInferResponse(_Open):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[OipOutputTensor]


class BundleRef(_Closed):
    name: str
    version: str
    hash: str


class PolicyReloadResult(_Closed):
    swapped: bool
    bundle: BundleRef


class LoadedModelView(_Open):
    name: str
    version: str


class ModelPackageRef(_Closed):
    name: str
    version: str


class ModelList(_Closed):
    primary: LoadedModelView | None
    loaded: list[LoadedModelView]
    on_disk: list[ModelPackageRef]
    not_ready: list[str]


class ModelLoadResult(_Closed):
    loaded: LoadedModelView
    primary: bool


class AuditRecordView(_Closed):
    index: int = Field(ge=0)
    leaf_hash: str
    purged: bool | None = None
    record: dict[str, Any] | None = None


class InclusionProof(_Closed):
    index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    leaf_hash: str
    proof: list[str]
    checkpoint: str


class ConsistencyProof(_Closed):
    first: int = Field(ge=1)
    second: int = Field(ge=1)
    proof: list[str]


class ConsentEntryView(_Open):
    purpose: str
    granted: bool
    lawful_basis: str
    jurisdiction: str
    ts_ms: int


class ConsentView(_Closed):
    subject: str
    consent: dict[str, ConsentEntryView]
    history: list[ConsentEntryView] | None = None


class SubjectExport(_Open):
    subject: dict[str, Any]
    generated_at: str


class ErasureResult(_Open):
    erased: bool


class OipModelStats(_Open):
    name: str
    version: str
    inference_count: int
    execution_count: int
    inference_stats: dict[str, Any]


class OipStatistics(_Closed):
    """Triton's inference statistics extension."""

    model_stats: list[OipModelStats]


class OipModelConfig(_Open):
    """Triton's model configuration extension (the parts the gateway can state)."""

    name: str
    platform: str
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]


class RepositoryEntry(_Closed):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class EventsModel(_Closed):
    name: str
    version: str
    variant: str


class EventsAccepted(_Closed):
    """`POST /v1/events`: what was received, and counted where consent covers it."""

    request_id: str
    ranking: str
    model: EventsModel
    received: int = Field(ge=1)
    counted: int = Field(ge=0)
    consent: dict[str, bool]


class ExperimentReport(_Open):
    """The A/B report of a model's arms (models.experiments.report)."""

    stopped_now: Any = None
