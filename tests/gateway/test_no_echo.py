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
