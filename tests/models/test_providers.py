"""onnxruntime execution providers come from configuration and are reported where they run.

This machine's onnxruntime is a CPU build (no GPU here): the CUDA path is tested for
its fallback (CUDA listed before CPU: skipped with a warning) and its refusal (CUDA
alone: the gateway does not start), never for running on a GPU.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ConfigurationError
from models.demo import model_bytes
from models.ort import CPU_PROVIDER, ort, resolve_providers, session_from_bytes
from tests.models.conftest import Box

CUDA = "CUDAExecutionProvider"

pytestmark = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="a CUDA build: the fallback is not exercised"
)


def _served_providers(client: TestClient, box: Box) -> tuple[str, str, list[str]]:
    meta = client.get("/v2/models/demo-ranker", headers=box.headers("demo"))
    assert meta.status_code == 200, meta.text
    listing = client.get("/v1/admin/models", headers=box.headers())
    assert listing.status_code == 200, listing.text
    loaded = listing.json()["loaded"]
    return (
        meta.json()["parameters"]["execution_providers"],
        client.get("/metrics").text,
        [p for m in loaded for p in m["execution_providers"]],
    )


def test_default_is_cpu_and_is_reported_in_metadata_listing_and_metrics(box: Box) -> None:
    with TestClient(create_app(box.settings())) as client:
        oip, metrics, listed = _served_providers(client, box)
    assert oip == CPU_PROVIDER
    assert listed == [CPU_PROVIDER]
    assert (
        'gateway_model_execution_provider{model="demo-ranker",provider="CPUExecutionProvider",'
        'rank="0",version="1"} 1.0' in metrics
    )


def test_a_missing_provider_with_cpu_listed_is_skipped_with_a_warning(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    settings = box.settings(model={"execution_providers": [CUDA, CPU_PROVIDER]})
    with caplog.at_level(logging.WARNING, logger="gateway.models"):
        app = create_app(settings)
    assert any(CUDA in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    with TestClient(app) as client:
        oip, metrics, listed = _served_providers(client, box)
        rank = {"user_id": "u7", "item_ids": ["i1", "i7"]}
        ranked = client.post("/v1/rank", json=rank, headers=box.headers("demo"))
    # What is reported is what runs: the CPU, not the provider that was asked for.
    assert (oip, listed) == (CPU_PROVIDER, [CPU_PROVIDER])
    assert CUDA not in metrics
    assert ranked.status_code == 200


def test_a_missing_provider_without_cpu_fallback_refuses_to_start(box: Box) -> None:
    with pytest.raises(ConfigurationError, match=r"CUDAExecutionProvider are not in"):
        create_app(box.settings(model={"execution_providers": [CUDA]}))


def test_the_cli_refuses_to_serve_without_a_fallback_in_one_line(box: Box) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_MODEL__EXECUTION_PROVIDERS"] = f'["{CUDA}"]'
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(box.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert CUDA in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bad", [[], ["cuda"], ["CPUExecutionProvider; rm -rf /"]])
def test_malformed_provider_lists_are_configuration_errors(box: Box, bad: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="execution_providers"):
        box.settings(model={"execution_providers": bad})


def test_resolve_keeps_order_and_drops_duplicates() -> None:
    assert resolve_providers([CPU_PROVIDER, CUDA, CPU_PROVIDER]) == (CPU_PROVIDER,)
    with pytest.raises(ConfigurationError):
        resolve_providers([])


def test_a_session_that_cannot_run_where_asked_is_refused() -> None:
    # Without CPU allowed, a session that onnxruntime would quietly run on the CPU
    # (it warns, then falls back) is not built: here a provider this build lacks.
    with (
        pytest.warns(UserWarning, match=CUDA),
        pytest.raises(ValueError, match="onnxruntime fell back to CPUExecutionProvider"),
    ):
        session_from_bytes(model_bytes(), providers=(CUDA,))
