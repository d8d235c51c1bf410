"""The served OpenAPI document (`/openapi.json`): `CONTRACT` merged into FastAPI's.

FastAPI lists the routes (paths, operation ids, summaries); gateway.openapi_contract says
what each takes and answers. Nothing here parses a request: the document describes the
API for clients and for schemathesis, and bodies are still parsed after authentication.
A route without a contract keeps FastAPI's bare description, marked `x-undocumented`;
tests/gateway/test_openapi_contract.py fails while any route is (`contract_gaps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from gateway import openapi_models as m
from gateway.components import Components
from gateway.openapi_contract import (
    CONTRACT,
    HEADERS,
    JSON,
    MODEL_NAME,
    OAUTH_STATUSES,
    PROBLEM,
    REF,
    SECURITY_SCHEME,
    STATUS_TEXT,
    VERSION,
    ListOf,
    Operation,
    Param,
    Reply,
    Source,
)
from gateway.pipeline import ACTION_SCOPES
from gateway.routes.events import EventBatch
from gateway.schemas import RankRequest
from gateway.settings import Settings
from models.provenance import advertised_inputs


@dataclass
class _Builder:
    settings: Settings
    schemas: dict[str, Any] = field(default_factory=dict)

    def ref(self, model: type[BaseModel], *, mode: Literal["validation", "serialization"]) -> Any:
        schema = model.model_json_schema(ref_template=REF, mode=mode)
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}

    def schema(self, source: Source) -> Any:
        if isinstance(source, Mapping):
            return dict(source)
        if isinstance(source, ListOf):
            return {"type": "array", "items": self.ref(source.model, mode="serialization")}
        return self.ref(source, mode="serialization")

    def content(self, media: str, source: Source) -> Any:
        return {media: {"schema": self.schema(source)}}

    def reply(self, reply: Reply) -> dict[str, Any]:
        out: dict[str, Any] = {"description": reply.description, "content": {}}
        for media, source in reply.content.items():
            out["content"].update(self.content(media, source))
        out["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in reply.headers}
        out["headers"]["X-Request-Id"] = {"$ref": "#/components/headers/X-Request-Id"}
        return out

    def error(self, status: int, op: Operation) -> dict[str, Any]:
        model: type[BaseModel]
        if op.shape == "oip":
            media, model = JSON, m.OipError
        elif op.shape == "oauth" and status in OAUTH_STATUSES:
            media, model = JSON, m.OAuthErrorBody
        else:
            media, model = PROBLEM, m.ProblemDetails
        headers: list[str] = []
        if status == 401:
            headers.append("WWW-Authenticate")
        elif status == 429:
            headers.append("Retry-After")
        return self.reply(Reply(STATUS_TEXT[status], {media: model}, tuple(headers)))

    def parameter(self, param: Param) -> dict[str, Any]:
        schema = dict(param.schema)
        if schema.get("enum") == [MODEL_NAME]:
            schema["enum"] = [self.settings.model.name]
        out: dict[str, Any] = {
            "name": param.name,
            "in": param.location,
            "required": param.required or param.location == "path",
            "schema": schema,
        }
        if param is VERSION:
            out["example"] = self.settings.model.version
        if param.description:
            out["description"] = param.description
        return out

    def request_body(self, op: Operation) -> dict[str, Any]:
        assert op.body is not None  # noqa: S101 - called only for operations with a body
        schema = self.ref(op.body, mode="validation")
        if op.body is RankRequest:
            self._bound_rank_request()
        elif op.body is EventBatch:
            events = self.schemas["EventBatch"]["properties"]["events"]
            events["maxItems"] = self.settings.experiments.max_events_per_request
        return {"required": op.body_required, "content": {op.body_media: {"schema": schema}}}

    def _bound_rank_request(self) -> None:
        """The limits the rank decode step enforces beyond the model: from the settings."""
        limits = self.settings.limits
        rank = self.schemas["RankRequest"]["properties"]
        rank["item_ids"].update(maxItems=limits.max_candidates, uniqueItems=True)
        context = self.schemas["RankContextIn"]["properties"]["query"]
        for option in context.get("anyOf", [context]):
            if option.get("type") == "string":
                option["maxLength"] = limits.max_context_chars

    def operation(self, generated: dict[str, Any], op: Operation) -> dict[str, Any]:
        out = {k: v for k, v in generated.items() if k in ("summary", "operationId", "tags")}
        if op.description:
            out["description"] = op.description
        if op.params:
            out["parameters"] = [self.parameter(p) for p in op.params]
        if op.body is not None:
            out["requestBody"] = self.request_body(op)
        responses = {str(status): self.reply(reply) for status, reply in op.replies.items()}
        for status in op.errors:
            responses.setdefault(str(status), self.error(status, op))
        out["responses"] = dict(sorted(responses.items()))
        out["security"] = [{SECURITY_SCHEME: [ACTION_SCOPES[op.action]]}] if op.action else []
        return out


def token_url(settings: Settings) -> str:
    """The embedded issuer's token endpoint (RFC 8414 `token_endpoint`)."""
    return f"{settings.issuer_url.rstrip('/')}/oauth/token"


def served_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every documented route the app serves."""
    return {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        and context.include_in_schema
        and context.path
        for method in context.methods or ()
    }


def contract_gaps(app: FastAPI) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(served routes without a contract, contract entries naming no served route)."""
    served = served_operations(app)
    return sorted(served - set(CONTRACT)), sorted(set(CONTRACT) - served)


def build_document(
    app: FastAPI, settings: Settings, examples: Mapping[tuple[str, str], Any] | None = None
) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description="A secure, compliance-focused model gateway. Errors are RFC 9457 "
        'problem+json (`{"error": ...}` under /v2, RFC 6749 JSON at /oauth/token).',
        routes=app.routes,
    )
    builder = _Builder(settings)
    for path, methods in document["paths"].items():
        for method, generated in list(methods.items()):
            op = CONTRACT.get((method.upper(), path))
            if op is None:
                generated["x-undocumented"] = True
                generated.get("responses", {}).pop("422", None)
                continue
            methods[method] = builder.operation(generated, op)
            example = (examples or {}).get((method.upper(), path))
            if example is not None:
                content = methods[method]["requestBody"]["content"][op.body_media]
                content["example"] = example
    scopes = sorted(set(ACTION_SCOPES.values()))
    document["components"] = {
        "schemas": dict(sorted(builder.schemas.items())),
        "headers": {name: dict(header) for name, header in HEADERS.items()},
        "securitySchemes": {
            SECURITY_SCHEME: {
                "type": "oauth2",
                "description": "Bearer JWT access tokens (RFC 9068) from the client "
                "credentials grant; each operation names the scope it needs.",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": token_url(settings),
                        "scopes": {scope: f"the {scope} operations" for scope in scopes},
                    }
                },
            }
        },
    }
    return document


def request_examples(components: Components) -> dict[tuple[str, str], Any]:
    """A request each model-serving operation accepts, for clients and for schemathesis'
    examples phase. Catalogue item ids and the model's signature only: the document is
    public, so no row of the feature tables (a user's features are personal data)."""
    examples: dict[tuple[str, str], Any] = {}
    features, ranker = components.serving.features, components.serving.ranker
    if features is not None and features.item_ids:
        examples[("POST", "/v1/rank")] = {
            "user_id": "user-123",
            "item_ids": list(features.item_ids[:3]),
            "context": {"locale": "en-GB"},
        }
    if ranker is not None:
        tensors = []
        # What a default client sends (models.provenance): ids as BYTES, declared features.
        policy = components.policy.in_force().data.model(ranker.ref.name)
        for spec in advertised_inputs(ranker.inputs, policy):
            shape = [1 if size < 0 else size for size in spec.shape]
            value: int | float = 1 if spec.datatype.startswith(("INT", "UINT")) else 0.0
            data: list[Any] = [value] * math.prod(shape)
            if spec.datatype == "BYTES":
                items = list(features.item_ids) if features is not None else []
                data = ["user-123"] if spec.name == "user_id" else items[: math.prod(shape)]
            tensors.append(
                {"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data}
            )
        for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
            examples[("POST", path)] = {"inputs": tensors}
    return examples


def install_openapi(app: FastAPI, components: Components) -> None:
    """Serve `CONTRACT` as the app's OpenAPI document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            examples = request_examples(components)
            app.openapi_schema = build_document(app, components.settings, examples)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
