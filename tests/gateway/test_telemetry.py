"""Traces and logs of the real app: spans reach a real OTLP/HTTP receiver with the right
parent-child structure and no personal data; log lines are JSON naming request, trace,
client and route; the audit record carries the same trace id.

The receiver is an HTTP server in the test that decodes what the stock OpenTelemetry
exporter sends (ExportTraceServiceRequest protobufs, opentelemetry-proto's own classes).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit.record import parse
from gateway.app import create_app
from gateway.logs import LogOutput, configure_logging
from gateway.settings import Settings
from models.features import FeatureStore

JSON = {"Content-Type": "application/json"}
# Personal data a request carries: none of it may reach a span or a log line.
USER = "zelda.unique.mail@example.net"
CONTEXT_PII = "Call Marguerite Okonkwo-Baptiste at +44 20 7946 0958, IBAN GB82WEST12345698765432"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver:
    """An OTLP/HTTP trace endpoint: keeps every span and the raw bodies it was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.spans: list[Span] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.take(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def take(self, body: bytes) -> None:
        self.bodies.append(body)
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: a.value for a in span.attributes},
                        )
                    )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@dataclass
class Captured:
    stream: io.StringIO
    output: LogOutput

    def text(self) -> str:
        self.output.flush()  # the writer thread has written every line logged so far
        return self.stream.getvalue()


@pytest.fixture
def captured_logs() -> Iterator[Captured]:
    """The gateway's own logging set-up (gateway.logs), writing to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    output = configure_logging("info", "json", stream)
    yield Captured(stream, output)
    output.close()
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def traced_client(make_settings: Callable[..., Settings], receiver: Receiver, ratio: float) -> Any:
    settings = make_settings(
        telemetry={"otlp_endpoint": receiver.url, "sample_ratio": ratio, "otlp_timeout_s": 2}
    )
    return TestClient(create_app(settings))


def flush(client: TestClient) -> None:
    client.app.state.components.telemetry.provider.force_flush()  # type: ignore[attr-defined]


def rank(client: TestClient, auth: Callable[..., dict[str, str]], **headers: str) -> Any:
    store: FeatureStore = client.app.state.components.serving.features  # type: ignore[attr-defined]
    return client.post(
        "/v1/rank",
        json={
            "user_id": USER,
            "item_ids": list(store.item_ids[:20]),
            "context": {"query": CONTEXT_PII},
        },
        headers={**auth(), **JSON, **headers},
    )


def audit_record(client: TestClient, request_id: str) -> dict[str, Any]:
    audit_log = client.app.state.components.audit  # type: ignore[attr-defined]
    index = audit_log.store.index_of(request_id)
    assert index is not None
    return parse(audit_log.store.leaf(index).payload)


def test_spans_form_one_tree_per_request_and_carry_no_personal_data(
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    auth: Callable[..., dict[str, str]],
) -> None:
    with traced_client(make_settings, receiver, 1.0) as client:
        response = rank(client, auth)
        assert response.status_code == 200, response.text
        flush(client)
        record = audit_record(client, response.headers["x-request-id"])
    trace_id = record["trace_id"]
    assert isinstance(trace_id, str)
    assert len(trace_id) == 32
    spans = [s for s in receiver.spans if s.trace_id == trace_id]
    by_name = {s.name: s for s in spans}
    root = by_name["POST /v1/rank"]
    assert root.parent_id == ""  # no caller trace: the gateway started this one
    assert root.attributes["http.route"].string_value == "/v1/rank"
    assert root.attributes["http.response.status_code"].int_value == 200
    for stage in ("authenticate", "authorize", "decode", "consent", "redact", "inspect"):
        assert by_name[f"stage {stage}"].parent_id == root.span_id, stage
    assert by_name["stage rank"].parent_id == root.span_id
    assert by_name["onnxruntime.run"].parent_id == by_name["stage rank"].span_id
    assert by_name["audit.append"].parent_id == by_name["stage audit"].span_id
    # Nothing the client sent is in any byte the collector received.
    sent = [USER, "zelda", "Marguerite", "Okonkwo", "7946 0958", "GB82WEST"]
    everything = b"".join(receiver.bodies)
    assert not [value for value in sent if value.encode() in everything]


def test_a_callers_traceparent_is_continued(
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    auth: Callable[..., dict[str, str]],
) -> None:
    # Sampling 0: only the caller's sampled flag gets these spans exported.
    with traced_client(make_settings, receiver, 0.0) as client:
        untraced = rank(client, auth)
        traced = rank(client, auth, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
        malformed = rank(client, auth, traceparent="00-zzzz-not-a-trace-01")
        flush(client)
        records = [audit_record(client, r.headers["x-request-id"]) for r in (traced, malformed)]
    assert (untraced.status_code, traced.status_code, malformed.status_code) == (200, 200, 200)
    assert {s.trace_id for s in receiver.spans} == {CALLER_TRACE}
    root = next(s for s in receiver.spans if s.name == "POST /v1/rank")
    assert root.parent_id == CALLER_SPAN
    assert records[0]["trace_id"] == CALLER_TRACE
    # A malformed header is ignored (W3C): the request gets a trace of its own.
    assert records[1]["trace_id"] not in (None, CALLER_TRACE)


def test_log_lines_are_json_and_name_the_request_without_personal_data(
    client: TestClient,
    captured_logs: Captured,
    auth: Callable[..., dict[str, str]],
) -> None:
    allowed = rank(client, auth)
    refused = client.post("/v1/rank", json={"user_id": USER}, headers=JSON)  # no token
    assert (allowed.status_code, refused.status_code) == (200, 401)
    lines = [json.loads(line) for line in captured_logs.text().splitlines()]
    access = {line["request_id"]: line for line in lines if line["logger"] == "gateway.access"}
    ok = access[allowed.headers["x-request-id"]]
    assert ok["route"] == "/v1/rank"
    assert ok["status"] == 200
    assert ok["client_id"] == "demo"
    assert ok["policy_ids"]
    assert len(ok["trace_id"]) == 32
    assert ok["trace_id"] == audit_record(client, allowed.headers["x-request-id"])["trace_id"]
    assert ok["latency_ms"] > 0
    assert {"ts", "level", "logger", "message"} <= ok.keys()
    denied = access[refused.headers["x-request-id"]]
    assert denied["status"] == 401
    assert "client_id" not in denied
    # Every line the request caused is JSON and none holds what the client sent.
    text = captured_logs.text()
    assert not [v for v in (USER, "zelda", "Marguerite", "7946 0958", "GB82WEST") if v in text]


def test_without_a_collector_nothing_is_exported_yet_records_name_a_trace(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    first, second = rank(client, auth), rank(client, auth)
    ids = [audit_record(client, r.headers["x-request-id"])["trace_id"] for r in (first, second)]
    assert all(isinstance(i, str) and len(i) == 32 for i in ids)
    assert ids[0] != ids[1]
