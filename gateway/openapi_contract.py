"""The OpenAPI contract of every operation: what it takes and what it answers.

Routes read their raw body and the pipeline's decode step parses it after stages 1 and 2
(anonymous callers learn nothing from validation), so FastAPI sees no body parameter and
would document none. `CONTRACT` states, per operation, what the code really takes and
answers, from the models the code validates with: the request body (gateway.schemas,
gateway.routes.subjects, gateway.routes.events), parameters, the action whose OAuth2 scope
it needs (gateway.pipeline.ACTION_SCOPES), and every status it can answer with its media
type and schema (errors are RFC 9457 problem+json, `{"error": ...}` under `/v2`, RFC 6749
JSON at the token endpoint). gateway.openapi turns it into the served document.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from gateway import openapi_models as m
from gateway.pipeline import Action
from gateway.routes.events import EventBatch
from gateway.routes.subjects import ConsentUpdate
from gateway.schemas import InferRequest, RankRequest, RepositoryIndexRequest

JSON = "application/json"
PROBLEM = "application/problem+json"
FORM = "application/x-www-form-urlencoded"
TEXT = "text/plain; charset=utf-8"
PROMETHEUS = CONTENT_TYPE_LATEST  # the text exposition format /metrics answers in
ZIP = "application/zip"
OCTET = "application/octet-stream"
SECURITY_SCHEME = "oauth2"
REF = "#/components/schemas/{model}"

ErrorShape = Literal["problem", "oip", "oauth"]
Location = Literal["path", "query", "header"]

STATUS_TEXT = {
    400: "Malformed request (body not valid JSON, or bad binary tensor framing)",
    401: "Missing or invalid bearer token (RFC 6750; one body for every cause)",
    403: "Token lacks the scope, the policy denies, or the inspector refused the request",
    404: "Not found (the resource, or another tenant's, which is answered alike)",
    409: "Conflicts with the state of the resource it names",
    413: "Request body larger than the gateway's limit",
    415: "Unsupported media type",
    422: "Request failed validation (names the field and rule, never the value)",
    429: "Rate limited or query budget exhausted; see Retry-After",
    500: "The audit log is damaged where the request reads it (an operator must look)",
    503: "A dependency is unavailable or the request timed out (fail closed)",
}
# Statuses the token endpoint answers in RFC 6749 section 5.2's shape (others: problem+json).
OAUTH_STATUSES = frozenset({400, 401, 429})


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: Location
    schema: Mapping[str, Any]
    required: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class ListOf:
    """A JSON array of one model."""

    model: type[BaseModel]


Source = type[BaseModel] | ListOf | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    description: str
    # media type -> a documentation model, an array of one, or a JSON schema
    content: Mapping[str, Source]
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """What one method on one path takes and answers."""

    action: Action | None  # None: open to anyone (probes, discovery)
    replies: Mapping[int, Reply]  # the statuses that are not refusals
    errors: tuple[int, ...]  # refusal statuses, rendered in `shape`
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_media: str = JSON
    body_required: bool = True
    shape: ErrorShape = "problem"
    description: str = ""


def _json(model: type[BaseModel], description: str = "OK", *headers: str) -> Reply:
    return Reply(description, {JSON: model}, headers)


_STRING: Mapping[str, Any] = {"type": "string"}
_NON_EMPTY: Mapping[str, Any] = {"type": "string", "minLength": 1}
_COUNT: Mapping[str, Any] = {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}
MODEL_NAME = "{model}"  # replaced by the served model's name (it serves one)
_NAME = Param("name", "path", {"type": "string", "enum": [MODEL_NAME]}, True, "the served model")
VERSION = Param("version", "path", _STRING, True, "a model version")
_SUBJECT = Param(
    "subject_id", "path", {"type": "string", "minLength": 1, "maxLength": 128}, True,
    "the data subject's id within the caller's tenant",
)  # fmt: skip
_EXPORT_TIME: Mapping[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,15}$"},
        {"type": "string", "format": "date"},
    ]
}

# Refusals every authenticated operation can answer: stage 1 (401), stage 2 and the
# per-client limit (403, 429), and 503 when the audit append, the shared inspection
# state or the deadline fails (fail closed).
_AUTHED = (401, 403, 429, 503)
_WITH_BODY = (400, 413, 415, 422)

_INFER_DESCRIPTION = (
    "Open Inference Protocol v2 inference. The body is JSON (no Content-Type is read as "
    "JSON). With the binary tensor data extension the body is `application/octet-stream`: "
    "an `Inference-Header-Content-Length` header names how many leading bytes are this "
    "JSON header, and inputs with `parameters.binary_data_size` take their bytes, in "
    "order, from what follows. `binary_data` on an output (or `binary_data_output` on the "
    "request) answers it the same way."
)


def _infer(*params: Param) -> Operation:
    return Operation(
        Action.INFER,
        {
            200: Reply(
                "The model's outputs",
                {JSON: m.OipInferResponse, OCTET: {"type": "string", "format": "binary"}},
                ("X-Inspection-Verdict", "Inference-Header-Content-Length"),
            )
        },
        (*_AUTHED, *_WITH_BODY, 404),
        params,
        body=InferRequest,
        shape="oip",
        description=_INFER_DESCRIPTION,
    )


def _oip_read(reply: Reply, *params: Param) -> Operation:
    return Operation(Action.MODEL_READ, {200: reply}, (*_AUTHED, 404), params, shape="oip")


def _oip_admin(reply: Reply, *params: Param) -> Operation:
    return Operation(Action.ADMIN, {200: reply}, (*_AUTHED, 404), params, shape="oip")


_STATS = _json(m.OipStatistics, "Inference statistics from the gateway's metrics")
_CONFIG = _json(m.OipModelConfig, "The model's configuration")
_MODEL_READY = Reply("Whether the model is ready", {JSON: m.OipModelReady})
_OIP_METADATA = _json(m.OipModelMetadata, "The model's signature and versions")

CONTRACT: Mapping[tuple[str, str], Operation] = {
    ("POST", "/v1/rank"): Operation(
        Action.RANK,
        {200: _json(m.RankResponse, "Ranked items", "Personalization", "X-Inspection-Verdict")},
        (*_AUTHED, *_WITH_BODY),
        (
            Param("Sec-GPC", "header", _STRING, description="Global Privacy Control: `1` opts out"),
            Param("TCF-Consent", "header", _STRING, description="IAB TCF v2.2 TC string"),
            Param(
                "Data-Jurisdiction",
                "header",
                _STRING,
                description="eu, california or default (others are ignored)",
            ),
        ),
        body=RankRequest,
        description="Candidates must be known items of the served catalogue (else 422 "
        "unknown-items). Without personalisation consent the ranking is non-personal.",
    ),
    ("POST", "/v1/events"): Operation(
        Action.EVENTS,
        {202: _json(m.EventsAccepted, "Received; counted where the subject's consent covers it")},
        (*_AUTHED, *_WITH_BODY, 404, 409),
        (
            Param("Sec-GPC", "header", _STRING, description="Global Privacy Control: `1` opts out"),
            Param("TCF-Consent", "header", _STRING, description="IAB TCF v2.2 TC string"),
        ),
        body=EventBatch,
        description="`request_id` names a ranking of `user_id` (404 otherwise, 409 when that "
        "ranking was refused).",
    ),
    ("GET", "/v1/admin/experiments/{model}"): Operation(
        Action.ADMIN,
        {200: _json(m.ExperimentReport, "The arms' report")},
        (*_AUTHED, 404),
        (Param("model", "path", {"type": "string", "minLength": 1, "maxLength": 128}, True),),
        description="Reads only: guardrails are applied by each replica every "
        "`experiments.guardrail_interval_s`, or now by `POST .../guardrails`.",
    ),
    ("POST", "/v1/admin/experiments/{model}/guardrails"): Operation(
        Action.ADMIN,
        {200: _json(m.ExperimentReport, "The report; `stopped_now` names the arms stopped")},
        (*_AUTHED, 404, 503),
        (Param("model", "path", {"type": "string", "minLength": 1, "maxLength": 128}, True),),
        description="Applies the bundle's guardrail action now: a stop is recorded in the "
        "audit log before the arm's users go to the control arm.",
    ),
    ("GET", "/v2"): Operation(None, {200: _json(m.OipServerMetadata)}, (503,), shape="oip"),
    ("GET", "/v2/health/live"): Operation(None, {200: _json(m.OipLive)}, (503,), shape="oip"),
    ("GET", "/v2/health/ready"): Operation(
        None,
        {
            200: _json(m.OipReady, "Ready"),
            503: Reply("Not ready (a dependency or the model)", {JSON: m.OipReady}),
        },
        (),
        shape="oip",
    ),
    ("GET", "/v2/models/{name}"): _oip_read(_OIP_METADATA, _NAME),
    ("GET", "/v2/models/{name}/versions/{version}"): _oip_read(_OIP_METADATA, _NAME, VERSION),
    ("GET", "/v2/models/{name}/ready"): _oip_read(_MODEL_READY, _NAME),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): _oip_read(_MODEL_READY, _NAME, VERSION),
    ("GET", "/v2/models/stats"): _oip_admin(_STATS),
    ("GET", "/v2/models/{name}/stats"): _oip_admin(_STATS, _NAME),
    ("GET", "/v2/models/{name}/versions/{version}/stats"): _oip_admin(_STATS, _NAME, VERSION),
    ("GET", "/v2/models/{name}/config"): _oip_admin(_CONFIG, _NAME),
    ("GET", "/v2/models/{name}/versions/{version}/config"): _oip_admin(_CONFIG, _NAME, VERSION),
    ("POST", "/v2/repository/index"): Operation(
        Action.ADMIN,
        {
            200: Reply(
                "Loaded and packaged versions",
                {JSON: ListOf(m.RepositoryEntry)},
            )
        },
        (*_AUTHED, 400, 413, 422),
        body=RepositoryIndexRequest,
        body_required=False,
        shape="oip",
        description="An empty body lists every version; `ready: true` only the ready ones.",
    ),
    ("POST", "/v2/models/{name}/infer"): _infer(_NAME),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): _infer(_NAME, VERSION),
    ("GET", "/v1/audit/checkpoint"): Operation(
        Action.AUDIT_READ,
        {200: Reply("The latest checkpoint, a C2SP signed note", {TEXT: _STRING})},
        _AUTHED,
    ),
    ("POST", "/v1/audit/checkpoint"): Operation(
        Action.ADMIN,
        {200: Reply("A checkpoint covering every record, a C2SP signed note", {TEXT: _STRING})},
        _AUTHED,
    ),
    ("GET", "/v1/audit/records/{request_id}"): Operation(
        Action.AUDIT_READ,
        {200: _json(m.AuditRecordView, "The record (personal fields sealed without audit:export)")},
        (*_AUTHED, 404),
        (Param("request_id", "path", _STRING, True, "the gateway's X-Request-Id"),),
    ),
    ("GET", "/v1/audit/proofs/inclusion"): Operation(
        Action.AUDIT_READ,
        {200: _json(m.InclusionProof, "RFC 9162 inclusion proof and the checkpoint it is for")},
        (*_AUTHED, 404, 422),
        (
            Param("request_id", "query", _STRING, description="give this or `index`"),
            Param("index", "query", _COUNT, description="give this or `request_id`"),
        ),
    ),
    ("GET", "/v1/audit/proofs/consistency"): Operation(
        Action.AUDIT_READ,
        {200: _json(m.ConsistencyProof, "RFC 9162 consistency proof")},
        (*_AUTHED, 422),
        (
            Param("first", "query", {**_COUNT, "minimum": 1}, True, "0 < first <= second"),
            Param("second", "query", {**_COUNT, "minimum": 1}, True, "second <= the log's size"),
        ),
    ),
    ("GET", "/v1/audit/export"): Operation(
        Action.AUDIT_EXPORT,
        {
            200: Reply(
                "Compliance bundle (zip, streamed): records, proofs, checkpoint",
                {ZIP: {"type": "string", "format": "binary"}},
                ("Content-Disposition",),
            )
        },
        (*_AUTHED, 404, 422, 500),
        (
            Param("from", "query", _EXPORT_TIME, True, "epoch ms, or an ISO 8601 date (UTC)"),
            Param("to", "query", _EXPORT_TIME, True, "epoch ms, or an ISO 8601 date (UTC)"),
            Param("client", "query", _NON_EMPTY, description="only this client's records"),
            Param("subject", "query", _NON_EMPTY, description="only this data subject's records"),
            Param(
                "tenant",
                "query",
                _NON_EMPTY,
                description="one tenant (yours, or any for a reader of every tenant)",
            ),
        ),
    ),
    ("POST", "/v1/admin/policy/reload"): Operation(
        Action.ADMIN,
        {200: _json(m.PolicyReloadResult, "Swapped, or the bundle in force was unchanged")},
        (*_AUTHED, 422),
        description="422 names why a candidate bundle was refused; the last good stays.",
    ),
    ("GET", "/v1/admin/models"): Operation(
        Action.ADMIN, {200: _json(m.ModelList)}, (*_AUTHED, 404)
    ),
    ("POST", "/v1/admin/models/{name}/versions/{version}/load"): Operation(
        Action.ADMIN,
        {200: _json(m.ModelLoadResult, "Verified and loaded (primary unless activate=false)")},
        (*_AUTHED, 404, 422),
        (
            _NAME,
            Param("version", "path", _STRING, True, "a packaged version on disk"),
            Param("activate", "query", {"type": "boolean", "default": True}),
        ),
        description="422 names the loader step that refused the package (a version with no "
        "package is refused at its first step); nothing changes.",
    ),
    ("PUT", "/v1/subjects/{subject_id}/consent"): Operation(
        Action.CONSENT_WRITE,
        {200: _json(m.ConsentView, "The subject's consent now in force")},
        (*_AUTHED, *_WITH_BODY),
        (_SUBJECT,),
        body=ConsentUpdate,
        description="Each purpose at most once.",
    ),
    ("GET", "/v1/subjects/{subject_id}/consent"): Operation(
        Action.CONSENT_READ,
        {200: _json(m.ConsentView, "Consent in force and its history")},
        (*_AUTHED, 422),
        (_SUBJECT,),
    ),
    ("GET", "/v1/subjects/{subject_id}/export"): Operation(
        Action.SUBJECT_READ,
        {200: _json(m.SubjectExport, "Everything held about the subject (GDPR art. 15)")},
        (*_AUTHED, 422),
        (_SUBJECT,),
    ),
    ("DELETE", "/v1/subjects/{subject_id}"): Operation(
        Action.SUBJECT_ERASE,
        {200: _json(m.ErasureResult, "Erased (crypto-shredded in the audit log)")},
        (*_AUTHED, 422),
        (_SUBJECT,),
    ),
    ("GET", "/.well-known/gpc.json"): Operation(None, {200: _json(m.GpcSupport)}, (503,)),
    ("POST", "/oauth/token"): Operation(
        None,
        {200: _json(m.TokenResponse, "An access token (RFC 6749 section 5.1)")},
        (400, 401, 404, 413, 429, 503),
        body=m.TokenRequest,
        body_media=FORM,
        shape="oauth",
        description="client_credentials only. 404 while the embedded issuer is disabled.",
    ),
    ("GET", "/.well-known/jwks.json"): Operation(
        None, {200: _json(m.Jwks, "The issuer's public keys")}, (404, 503)
    ),
    ("GET", "/.well-known/oauth-authorization-server"): Operation(
        None, {200: _json(m.AuthorizationServerMetadata, "RFC 8414 metadata")}, (404, 503)
    ),
    ("GET", "/healthz"): Operation(None, {200: _json(m.Liveness, "The process answers")}, (503,)),
    ("GET", "/readyz"): Operation(
        None,
        {
            200: _json(m.Readiness, "Ready"),
            503: Reply("Not ready: the failing check is named", {JSON: m.Readiness}),
        },
        (),
    ),
    ("GET", "/metrics"): Operation(
        None,
        {200: Reply("Prometheus text exposition format", {PROMETHEUS: _STRING})},
        (503,),
    ),
}

HEADERS: Mapping[str, Mapping[str, Any]] = {
    "X-Request-Id": {
        "description": "The gateway's id of this request: the audit record's key",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    },
    "WWW-Authenticate": {
        "description": "RFC 6750 Bearer challenge (Basic at the token endpoint)",
        "required": True,
        "schema": _STRING,
    },
    "Retry-After": {
        "description": "Seconds to wait",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "Personalization": {
        "description": "Whether the ranking used the subject's data",
        "required": True,
        "schema": {"type": "string", "enum": ["on", "off"]},
    },
    "X-Inspection-Verdict": {
        "description": "Stage 5's verdict, where the deployment exposes it",
        "schema": {"type": "string", "enum": ["allow", "flag", "block"]},
    },
    "Inference-Header-Content-Length": {
        "description": "Binary tensor data extension: bytes of the JSON header",
        "schema": {"type": "integer", "minimum": 0},
    },
    "Content-Disposition": {"description": "attachment; the bundle's file name", "schema": _STRING},
}
