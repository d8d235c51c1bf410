"""The gRPC port as an operator runs it and from the client's side: `gateway serve
--grpc-port` serves it (and stops cleanly); a call past the request timeout is
DEADLINE_EXCEEDED, and the refusal is on record (the audit stage, cancelled with the
pipeline, wrote nothing; stage 0 did), read back from the audit store itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from audit.factory import open_audit_log
from bench.servers import free_port, wait_ready
from gateway.datadir import init_data_dir
from gateway.settings import load_settings
from tests.clients._gateway import run_client
from tests.clients._grpc_gateway import GrpcGateway, grpc_gateway, ok, refused

REQUEST_ID_HEADER = "x-request-id"


def test_a_call_past_the_request_timeout_is_deadline_exceeded_and_recorded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    report = init_data_dir(tmp_path_factory.mktemp("grpc-timeout"))
    # Shorter than any inference: every pipeline is cut off by stage 0.
    settings = load_settings(
        data_dir=report.data_dir,
        config_file=report.config,
        limits={"request_timeout_s": 0.0001},
    )
    with grpc_gateway(settings) as (_served, app):
        spec: dict[str, Any] = GrpcGateway.spec_for(settings, f"127.0.0.1:{app.state.grpc_port}")
        spec["only"] = "timeout"
        found = run_client("run_triton_grpc.py", spec)
    outcome = refused(found, "infer", "DEADLINE_EXCEEDED")
    assert outcome["message"] == "The request did not complete in time"
    request_id = outcome["trailers"][REQUEST_ID_HEADER]

    audit_log = open_audit_log(settings)
    try:
        index = audit_log.store.index_of(request_id)
        assert index is not None
        payload = audit_log.store.leaf(index).payload
        assert payload is not None
        record = audit_log.open_record(payload, unseal=False)
    finally:
        audit_log.store.close()
    assert (record["route"], record["status"], record["outcome"]) == (
        "grpc:ModelInfer",
        503,
        "timeout",
    )


def test_gateway_serve_grpc_port(tmp_path_factory: pytest.TempPathFactory) -> None:
    report = init_data_dir(tmp_path_factory.mktemp("grpc-serve"))
    port, grpc_port = free_port(), free_port()
    # The issuer's URL, and so the tokens' `iss`, follows the listen port.
    settings = load_settings(data_dir=report.data_dir, config_file=report.config, port=port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(report.data_dir)]
    command += ["--port", str(port), "--grpc-port", str(grpc_port)]
    process = subprocess.Popen(command, env={**env, "GATEWAY_LOG_LEVEL": "warning"})
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        spec = GrpcGateway.spec_for(settings, f"127.0.0.1:{grpc_port}")
        found = run_client("run_triton_grpc.py", {**spec, "only": "smoke"})
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    assert ok(found, "live") is True
    assert np.shape(ok(found, "infer")) == (4,)
    # SIGTERM: uvicorn's lifespan stops the gRPC server, then the components.
    assert returncode in (0, -signal.SIGTERM)
