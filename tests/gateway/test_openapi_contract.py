"""The served OpenAPI document against the app that serves it (issue 14, item 3).

Every route is documented with its body, scope and refusals; real responses, refused
and served, conform to what the document declares (schemathesis' own validator is the
oracle); a 405 names every method of its path; HEAD answers as GET without the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient

from gateway.openapi import contract_gaps
from gateway.openapi_contract import CONTRACT, JSON, PROBLEM, TEXT
from gateway.pipeline import ACTION_SCOPES

Auth = Callable[..., dict[str, str]]
EVERY_SCOPE = tuple(sorted(set(ACTION_SCOPES.values())))
METHODS = ("get", "put", "post", "delete", "patch")
PATH_VALUES = {
    "name": "demo-ranker", "model": "demo-ranker", "version": "1", "request_id": "x",
    "subject_id": "u1",
}  # fmt: skip


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


@pytest.fixture(scope="module")
def schema(document: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(document)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in document["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def test_every_route_has_a_contract_and_every_contract_a_route(client: TestClient) -> None:
    assert contract_gaps(client.app) == ([], [])  # type: ignore[arg-type]


def test_every_operation_is_in_the_document_and_readable_by_schemathesis(
    document: dict[str, Any], schema: Any
) -> None:
    listed = {(method.upper(), path) for method, path, _ in _operations(document)}
    assert listed == set(CONTRACT)
    assert not any(op.get("x-undocumented") for _, _, op in _operations(document))
    results = list(schema.get_all_operations())
    assert len(results) == len(CONTRACT)
    assert all(result.ok() for result in results)


@pytest.mark.parametrize(
    ("method", "path", "model", "media"),
    [
        ("post", "/v1/rank", "RankRequest", "application/json"),
        ("post", "/v2/models/{name}/infer", "InferRequest", "application/json"),
        ("post", "/v2/models/{name}/versions/{version}/infer", "InferRequest", "application/json"),
        ("put", "/v1/subjects/{subject_id}/consent", "ConsentUpdate", "application/json"),
        ("post", "/oauth/token", "TokenRequest", "application/x-www-form-urlencoded"),
        ("post", "/v2/repository/index", "RepositoryIndexRequest", "application/json"),
        ("post", "/v1/events", "EventBatch", "application/json"),
    ],
)
def test_bodies_are_described_by_the_models_the_code_validates_with(
    document: dict[str, Any], method: str, path: str, model: str, media: str
) -> None:
    body = document["paths"][path][method]["requestBody"]
    assert body["content"][media]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    # The strict models refuse unknown keys; the document says so.
    assert document["components"]["schemas"][model]["additionalProperties"] is False


def test_only_operations_that_read_a_body_declare_one(document: dict[str, Any]) -> None:
    with_body = {(m, p) for m, p, op in _operations(document) if "requestBody" in op}
    assert with_body == {(m.lower(), p) for (m, p), op in CONTRACT.items() if op.body is not None}


def test_the_rank_body_carries_the_limits_the_decode_step_enforces(
    document: dict[str, Any], client: TestClient
) -> None:
    settings = client.app.state.components.settings  # type: ignore[attr-defined]
    schemas = document["components"]["schemas"]
    items = schemas["RankRequest"]["properties"]["item_ids"]
    assert items["maxItems"] == settings.limits.max_candidates
    assert items["uniqueItems"] is True


def test_security_scheme_is_client_credentials_at_the_issuers_token_endpoint(
    document: dict[str, Any], client: TestClient
) -> None:
    scheme = document["components"]["securitySchemes"]["oauth2"]
    flow = scheme["flows"]["clientCredentials"]
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert flow["tokenUrl"] == metadata["token_endpoint"]
    assert set(flow["scopes"]) == set(EVERY_SCOPE)


def test_each_operation_names_the_scope_its_action_needs(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        contract = CONTRACT[(method.upper(), path)]
        if contract.action is None:
            assert op["security"] == [], (method, path)
            # Only the token endpoint, for a client that failed to authenticate.
            assert "401" not in op["responses"] or path == "/oauth/token", (method, path)
        else:
            assert op["security"] == [{"oauth2": [ACTION_SCOPES[contract.action]]}]
            assert {"401", "403"} <= set(op["responses"]), (method, path)
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]


def test_errors_are_problem_json_outside_oip(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400 or path == "/readyz" or path.startswith("/v2"):
                continue
            media = set(response["content"])
            if path == "/oauth/token" and status in ("400", "401", "429"):
                assert media == {"application/json"}  # RFC 6749 section 5.2
            else:
                assert media == {PROBLEM}, (method, path, status)
                ref = response["content"][PROBLEM]["schema"]["$ref"]
                assert ref.endswith("/ProblemDetails")


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/metrics", "text/plain"),
        ("/v1/audit/checkpoint", "text/plain"),
        ("/v1/audit/export?from=0&to=9999999999999", "application/zip"),
        ("/healthz", "application/json"),
    ],
)
def test_declared_media_types_are_the_served_ones(
    client: TestClient, document: dict[str, Any], auth: Auth, path: str, media: str
) -> None:
    response = client.get(path, headers=auth(EVERY_SCOPE, client_id="operator"))
    assert response.status_code == 200
    served = response.headers["content-type"].split(";")[0]
    assert served == media
    declared = document["paths"][path.split("?")[0]]["get"]["responses"]["200"]["content"]
    assert [m.split(";")[0] for m in declared] == [media]


def _conforms(schema: Any, response: Any, method: str, path: str) -> None:
    """schemathesis' validator: status declared, media type declared, body and declared
    headers conform (it raises on the first violation)."""
    operation = schema[path][method.upper()]
    declared = operation.definition.raw["responses"]
    assert str(response.status_code) in declared, (method, path, response.status_code)
    media = response.headers["content-type"].split(";")[0]
    assert media in [m.split(";")[0] for m in declared[str(response.status_code)]["content"]]
    operation.validate_response(response)


@pytest.mark.parametrize(
    ("method", "path", "scopes", "kwargs"),
    [
        ("post", "/v1/rank", None, {"json": {"user_id": "u1", "item_ids": ["i1", "i2"]}}),
        ("post", "/v1/rank", ("rank",), {"json": {"user_id": "u1", "item_ids": ["i1"]}}),
        ("post", "/v1/rank", ("infer",), {"json": {"user_id": "u1", "item_ids": ["i1"]}}),
        ("post", "/v1/rank", ("rank",), {"json": {"user_id": "u1", "item_ids": ["nope"]}}),
        ("post", "/v1/rank", ("rank",), {"content": b"{", "headers": {"content-type": JSON}}),
        ("post", "/v1/rank", ("rank",), {"content": b"x", "headers": {"content-type": TEXT}}),
        ("get", "/v1/audit/proofs/inclusion", ("audit:read",), {}),
        ("get", "/v1/audit/records/{request_id}", ("audit:read",), {}),
        ("get", "/v2/models/{name}", ("infer",), {}),
        ("get", "/v2/models/{name}", None, {}),
        ("get", "/v1/subjects/{subject_id}/consent", ("consent:read",), {}),
        ("get", "/v1/admin/models", ("admin",), {}),
        ("post", "/oauth/token", None, {"data": {"grant_type": "client_credentials"}}),
        ("get", "/readyz", None, {}),
        ("get", "/.well-known/jwks.json", None, {}),
    ],
)  # fmt: skip
def test_real_answers_conform_to_the_document(
    client: TestClient, schema: Any, auth: Auth, method: str, path: str,
    scopes: tuple[str, ...] | None, kwargs: dict[str, Any],
) -> None:  # fmt: skip
    url = path.format(name="demo-ranker", request_id="0" * 32, subject_id="u1")
    headers = dict(kwargs.pop("headers", {}))
    if scopes is not None:
        headers.update(auth(scopes, client_id="operator"))
    response = client.request(method, url, headers=headers, **kwargs)
    assert response.status_code < 500
    _conforms(schema, response, method, path)


def test_a_405_names_every_method_of_its_path(client: TestClient, document: dict[str, Any]) -> None:
    for path, ops in document["paths"].items():
        url = path.format_map(PATH_VALUES)
        declared = {m.upper() for m in ops if m in METHODS}
        # Routes of other templates may match the same URL (a model named "stats").
        for other, other_ops in document["paths"].items():
            if other != path and _same_url(other, url):
                declared |= {m.upper() for m in other_ops if m in METHODS}
        expected = declared | {"OPTIONS"} | ({"HEAD"} if "GET" in declared else set())
        for method in {"PUT", "PATCH", "DELETE", "POST", "GET"} - declared:
            response = client.request(method, url)
            assert response.status_code == 405, (method, url)
            assert set(response.headers["allow"].split(", ")) == expected, (method, url)
            if path.startswith("/v2"):
                assert response.json() == {"error": "method not allowed on this endpoint"}
            else:
                assert response.headers["content-type"] == PROBLEM
                assert response.json()["status"] == 405
        options = client.options(url)
        assert options.status_code == 204
        assert set(options.headers["allow"].split(", ")) == expected


def _same_url(template: str, url: str) -> bool:
    parts, given = template.split("/"), url.split("/")
    return len(parts) == len(given) and all(
        p == g or (p.startswith("{") and p.endswith("}")) for p, g in zip(parts, given, strict=True)
    )


def test_a_405_is_a_405_for_anonymous_callers_of_a_protected_path(client: TestClient) -> None:
    # Method refusal says nothing about the resource and needs no token; it is not a way
    # around authentication either: the request never reaches the route.
    response = client.request("PATCH", "/v1/subjects/u1/consent")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "PUT"}
    assert "u1" not in response.text


@pytest.mark.parametrize(
    ("path", "scopes"),
    [
        ("/healthz", None),
        ("/v2", None),
        ("/v2/health/live", None),
        ("/.well-known/gpc.json", None),
        ("/.well-known/jwks.json", None),
        ("/v2/models/demo-ranker", ("infer",)),
        ("/v1/subjects/u1/consent", ("consent:read",)),
    ],
)
def test_head_answers_as_get_without_the_body(
    client: TestClient, auth: Auth, path: str, scopes: tuple[str, ...] | None
) -> None:
    headers = auth(scopes, client_id="operator") if scopes else {}
    got = client.get(path, headers=headers)
    head = client.head(path, headers=headers)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    ignored = {"x-request-id", "date"}
    assert {k: v for k, v in head.headers.items() if k not in ignored} == {
        k: v for k, v in got.headers.items() if k not in ignored
    }
    assert int(head.headers["content-length"]) == len(got.content) > 0


def test_head_does_not_get_around_authentication_or_scope(client: TestClient, auth: Auth) -> None:
    assert client.head("/v1/subjects/u1/export").status_code == 401
    assert client.head("/v1/audit/export?from=0&to=1").status_code == 401
    wrong = client.head("/v1/subjects/u1/export", headers=auth(("rank",), client_id="operator"))
    assert wrong.status_code == 403
    assert wrong.content == b""


def test_head_is_refused_where_there_is_no_get(client: TestClient) -> None:
    response = client.head("/v1/rank")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize(
    "path", ["/v1/rank", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]
)
def test_the_documented_examples_are_served(
    client: TestClient, document: dict[str, Any], schema: Any, auth: Auth, path: str
) -> None:
    op = document["paths"][path]["post"]
    example = op["requestBody"]["content"][JSON]["example"]
    version = next((p["example"] for p in op["parameters"] if p["name"] == "version"), None)
    url = path.format(name="demo-ranker", version=version)
    response = client.post(url, json=example, headers=auth(("rank", "infer")))
    assert response.status_code == 200, response.text
    _conforms(schema, response, "post", path)


def test_a_bad_export_time_is_refused_without_echoing_it(client: TestClient, auth: Auth) -> None:
    sent = "not-a-time-<script>"
    response = client.get(
        "/v1/audit/export",
        params={"from": sent, "to": "0"},
        headers=auth(("audit:export",), "operator"),
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert "not-a-time" not in response.text
