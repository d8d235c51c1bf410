"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import components_of
from gateway.routes._json import json_response

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: model loaded, keys present")
async def readyz(request: Request) -> Response:
    components = components_of(request)
    checks: dict[str, object] = {
        "issuer": "enabled" if components.issuer is not None else "disabled",
        "model": "ok" if components.ranker is not None else "not loaded",
    }
    if components.ranker is not None:
        checks["model_version"] = components.ranker.ref.version
        checks["model_digest"] = f"sha256:{components.ranker.ref.digest}"
        package = components.ranker.ref.package_digest
        checks["package_digest"] = f"sha256:{package}" if package else "unpackaged"
    if components.not_ready:
        # Which model version was refused and at which loader step (operators only see this).
        # Step and error class only: paths and details are in the log.
        checks["not_ready"] = {
            k: ":".join(v.split(":")[:2]) for k, v in components.not_ready.items()
        }
    if components.policy is not None:
        bundle = components.policy.active
        checks["policy"] = {
            "name": bundle.name,
            "version": bundle.version,
            "hash": bundle.content_hash,
            "last_reload_error": components.policy.last_error,
            "shadow": components.policy.shadow.content_hash if components.policy.shadow else None,
        }
    if components.privacy is not None:
        checks["privacy"] = components.privacy.describe()
    ready = not components.not_ready
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(components_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
