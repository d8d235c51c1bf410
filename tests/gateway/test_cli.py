"""The `gateway` CLI as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from jose import jwt

from gateway.datadir import InitReport

GATEWAY = [sys.executable, "-m", "gateway.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [*GATEWAY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        check=False,
    )


def test_init_is_idempotent_and_private(tmp_path: Path) -> None:
    target = tmp_path / "gw"
    first = run("init", "--data-dir", str(target))
    assert first.returncode == 0, first.stderr
    key = target / "keys" / "issuer-signing-key.pem"
    secret = target / "clients" / "demo.secret"
    config = target / "gateway.toml"
    for path in (key, secret, config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {p: p.read_bytes() for p in (key, secret, config)}
    second = run("init", "--data-dir", str(target))
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout
    assert {p: p.read_bytes() for p in before} == before
    assert secret.read_text().strip() not in config.read_text()


def test_token_command_mints_a_verifiable_token(initialised: InitReport) -> None:
    result = run(
        "token", "--client", "demo", "--scope", "rank", "--data-dir", str(initialised.data_dir)
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.get_unverified_claims(token)
    assert claims["client_id"] == "demo"
    assert claims["scope"] == "rank"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("token", "--client", "nobody"), "unknown client 'nobody'"),
        (("token", "--client", "demo", "--scope", "admin"), "may not have scope"),
        (("token", "--bogus"), "No such option"),
        (("serve", "--port", "not-a-number"), "Invalid value for '--port'"),
        (("frobnicate",), "No such command"),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(
    initialised: InitReport, args: tuple[str, ...], message: str
) -> None:
    result = run(*args, "--data-dir", str(initialised.data_dir))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_refuses_placeholder_secret_outside_dev_mode(initialised: InitReport) -> None:
    result = run(
        "serve", "--data-dir", str(initialised.data_dir), env={"GATEWAY_SECRET_KEY": "change-me"}
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: secret_key is a placeholder")


def test_serve_without_data_dir_says_to_init(tmp_path: Path) -> None:
    result = run(
        "serve", "--data-dir", str(tmp_path / "empty"), env={"GATEWAY_SECRET_KEY": "x" * 40}
    )
    assert result.returncode == 2
    assert "run `gateway init`" in result.stderr


def test_models_list(initialised: InitReport) -> None:
    result = run("models", "list", "--data-dir", str(initialised.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo-ranker\t1\tsha256:")
