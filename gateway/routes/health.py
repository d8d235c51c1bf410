"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from gateway.components import components_of
from gateway.readiness import dependency_checks
from gateway.routes._json import json_response

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: model loaded, keys present")
async def readyz(request: Request) -> Response:
    components = components_of(request)
    ranker = components.serving.ranker
    checks: dict[str, object] = {
        "issuer": "enabled" if components.issuer.enabled else "disabled",
        "model": "ok" if ranker is not None else "not loaded",
    }
    if ranker is not None:
        checks["model_version"] = ranker.ref.version
        checks["model_digest"] = f"sha256:{ranker.ref.digest}"
        package = ranker.ref.package_digest
        checks["package_digest"] = f"sha256:{package}" if package else "unpackaged"
    not_ready = components.serving.not_ready()
    if not_ready:
        # Which model version was refused and at which loader step (operators only see this).
        checks["not_ready"] = {record.key: record.public for record in not_ready}
    dependencies = await dependency_checks(components)
    checks["dependencies"] = dependencies
    checks.update(components.policy.readiness())
    checks["privacy"] = components.privacy.describe()
    ready = not not_ready and all(state == "ok" for state in dependencies.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(components_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
