"""The `gateway` CLI as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
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


def test_audit_commands_end_to_end(tmp_path: Path) -> None:
    import sqlite3

    data = tmp_path / "gw"
    assert run("init", "--data-dir", str(data)).returncode == 0
    for subject in ("alice", "bob"):  # two erasure events: records to verify and export
        erased = run("audit", "erase", "--subject", subject, "--data-dir", str(data))
        assert erased.returncode == 0, erased.stderr
    verified = run("audit", "verify", "--quiet", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: 2 records")
    pubkey = run("audit", "pubkey", "--data-dir", str(data)).stdout.strip()

    bad_time = run(
        "audit",
        "export",
        "--data-dir",
        str(data),
        "--from",
        "soon",
        "--to",
        "2100-01-01",
        "-o",
        str(tmp_path / "x.zip"),
    )
    assert bad_time.returncode == 2
    assert bad_time.stderr.strip().startswith("error: --from:")
    bundle = tmp_path / "export.zip"
    exported = run(
        "audit",
        "export",
        "--data-dir",
        str(data),
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "-o",
        str(bundle),
    )
    assert exported.returncode == 0, exported.stderr
    good = run("audit", "verify-bundle", str(bundle), "--pubkey", pubkey)
    assert good.returncode == 0, good.stderr
    assert "ok: 2 records" in good.stdout
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(bundle) as archive:
        member = archive.getinfo("records.jsonl")
    raw = bytearray(bundle.read_bytes())
    # Inside the compressed records, past the 30-byte local header and the file name.
    raw[member.header_offset + 30 + len(member.filename) + member.compress_size // 2] ^= 0x01
    damaged.write_bytes(bytes(raw))
    bad = run("audit", "verify-bundle", str(damaged), "--pubkey", pubkey)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: bundle invalid")

    # An attacker with the file drops the guard and edits a record: verify names it.
    with sqlite3.connect(data / "audit" / "audit.db") as conn:
        conn.execute("DROP TRIGGER audit_payloads_no_update")
        conn.execute("UPDATE audit_payloads SET record = CAST(? AS BLOB) WHERE idx = 1", ("{}",))
    tampered = run("audit", "verify", "--quiet", "--data-dir", str(data))
    assert tampered.returncode == 1
    assert "altered record at index 1" in tampered.stderr


def test_policy_commands(initialised: InitReport, tmp_path: Path) -> None:
    import shutil

    bundle = initialised.data_dir / "policy"
    pubkey = (initialised.data_dir / "keys" / "policy-signing.pub").read_text().strip()
    lint = run("policy", "lint", str(bundle))
    assert lint.returncode == 0, lint.stderr
    assert "41 test cases, signed" in lint.stdout
    assert run("policy", "test", str(bundle)).returncode == 0
    assert run("policy", "verify", str(bundle), "--pubkey", pubkey).returncode == 0

    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    cedar = changed / "policies.cedar"
    text = cedar.read_text()
    cedar.write_text(
        text[: text.index('@id("scope-rank")')] + text[text.index('@id("scope-infer")') :]
    )
    stale = run("policy", "lint", str(changed))
    assert stale.returncode == 2
    assert "content" in stale.stderr.lower()
    from policies.bundle import rehash

    rehash(changed)
    failing = run("policy", "test", str(changed))
    assert failing.returncode == 1
    # The failure names the case, where it is, and what decided instead.
    assert "tests/scopes.yaml:3: rank with rank: expected allow by [scope-rank]" in failing.stderr
    assert "48/50 passed" in failing.stderr
    diff = run("policy", "diff", str(bundle), str(changed))
    assert diff.returncode == 0
    assert "0 of" not in diff.stdout  # some sampled decisions change
    unsigned_key = tmp_path / "other.key"
    import base64
    import os as _os

    unsigned_key.write_bytes(base64.b64encode(_os.urandom(32)))
    (changed / "bundle.sig").unlink()
    assert run("policy", "sign", str(changed), "--key", str(unsigned_key)).returncode == 0
    untrusted = run("policy", "verify", str(changed), "--pubkey", pubkey)
    assert untrusted.returncode == 2
    assert untrusted.stderr.startswith("error: signature:")
