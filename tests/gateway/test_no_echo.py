"""No client-supplied value in error details or log lines (OIP and model admin paths)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

MARK = "zelda.unique.mail@example.net"


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/models/{MARK}",
        f"/v2/models/demo-ranker/versions/{MARK}",
        f"/v2/models/{MARK}/ready",
    ],
)
def test_oip_not_found_does_not_echo_the_name(
    client: TestClient, auth: Callable[..., dict[str, str]], path: str
) -> None:
    response = client.get(path, headers=auth(("infer",)))
    assert response.status_code == 404
    assert MARK not in response.text


def test_a_forged_version_string_never_reaches_a_log_line_raw(
    client: TestClient, auth: Callable[..., dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    forged = "9\nERROR forged line\x00"
    with caplog.at_level(logging.INFO):
        response = client.post(
            "/v1/admin/models/demo-ranker/versions/9%0AERROR%20forged%20line%00/load",
            headers=auth(("admin",), client_id="operator"),
        )
    assert response.status_code == 422
    assert forged not in response.text
    for record in caplog.records:
        line = record.getMessage()
        assert "\nERROR forged" not in line
        assert "\x00" not in line


def test_refusals_never_log_what_the_client_sent(
    client: TestClient, auth: Callable[..., dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    bodies = [
        {"user_id": "u1", "item_ids": ["i1", MARK]},  # unknown item: the detail names it
        {"user_id": "u1", "item_ids": ["i1"], "top_k": MARK},  # a field of the wrong type
        {"user_id": MARK * 20, "item_ids": ["i1"]},  # too long an id
    ]
    with caplog.at_level(logging.DEBUG):
        for body in bodies:
            response = client.post("/v1/rank", json=body, headers=auth(("rank",)))
            assert 400 <= response.status_code < 500
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "refused" in logged  # the refusals are logged, by slug and server-written cause
    assert MARK not in logged
