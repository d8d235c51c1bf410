"""A damaged log is refused whole, by the CLI and over HTTP, naming the damage.

`gateway audit export` prints one line naming the index and kind and exits 1
(it used to print `unexpected ValueError: Can't close the ZIP file ...`).
`GET /v1/audit/export` answers with a problem, never 200 with a body that breaks
off: the check runs before the status line.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from audit.bundle import verify_bundle
from gateway.app import create_app
from gateway.datadir import init_data_dir
from gateway.settings import Settings

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [*GATEWAY, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _damage(db: Path, statement: str) -> None:
    """What someone holding the file does: drop the guards, then change the log."""
    with sqlite3.connect(db) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute(statement)


def test_cli_export_of_a_damaged_log_names_the_record_in_one_line(tmp_path: Path) -> None:
    data = init_data_dir(tmp_path / "gw").data_dir
    for subject in ("alice", "bob", "carol"):
        erased = _gateway("audit", "erase", "--subject", subject, "--data-dir", str(data))
        assert erased.returncode == 0, erased.stderr
    window = ("--from", "2000-01-01", "--to", "2100-01-01", "--data-dir", str(data))
    good = tmp_path / "good.zip"
    exported = _gateway("audit", "export", *window, "-o", str(good))
    assert exported.returncode == 0, exported.stderr
    pubkey = _gateway("audit", "pubkey", "--data-dir", str(data)).stdout.strip()
    verified = _gateway("audit", "verify-bundle", str(good), "--pubkey", pubkey)
    assert verified.returncode == 0, verified.stderr
    assert "; complete: records 0..2 of checkpoint 3" in verified.stdout

    _damage(data / "audit" / "audit.db", "DELETE FROM audit_leaves WHERE idx = 1")
    bad = tmp_path / "bad.zip"
    refused = _gateway("audit", "export", *window, "-o", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(
        "error: audit log damaged, nothing exported: record 1: missing record: "
    ), refused.stderr
    assert "Traceback" not in refused.stderr
    assert "unexpected" not in refused.stderr
    assert not bad.exists()


def test_http_export_of_a_damaged_log_is_a_problem_not_a_broken_200(
    make_settings: Callable[..., Settings], tmp_path: Path, auth: Callable[..., dict[str, str]]
) -> None:
    db = tmp_path / "audit.db"
    settings = make_settings(audit={"sqlite_path": str(db)})
    exporter = auth(client_id="operator")
    window = {"from": 0, "to": 2**45}
    with TestClient(create_app(settings)) as client:
        for _ in range(3):  # reading the checkpoint is audited: three records
            assert client.get("/v1/audit/checkpoint", headers=exporter).status_code == 200
        whole = client.get("/v1/audit/export", params=window, headers=exporter)
        assert whole.status_code == 200
        (tmp_path / "whole.zip").write_bytes(whole.content)
        verify_bundle(tmp_path / "whole.zip")

        _damage(db, "DELETE FROM audit_payloads WHERE idx = 1")
        response = client.get("/v1/audit/export", params=window, headers=exporter)
    assert response.status_code == 500, response.text  # the log is damaged, not the request
    assert response.headers["content-type"].startswith("application/problem+json")
    assert b"PK" not in response.content[:2]
    problem = response.json()
    assert problem["type"] == "urn:gateway:problem:audit-damaged"
    assert "record 1" in problem["detail"]
