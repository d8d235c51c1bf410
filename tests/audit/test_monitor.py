"""The monitor witnesses the log: growth passes, rollback, forks and bad signatures fail.

Every gateway here is the real app over its own log (a SQLite file or a
PostgreSQL schema, each test on both), all logs signed by
the data directory's one audit key, as a rolled-back or forked deployment
would be: a log restored from an old backup (smaller), or rebuilt with other
records (same size, or larger but not an extension). The monitor talks to the
app through starlette's TestClient (an httpx client) and, for the CLI, to a
real uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from audit.checkpoint import NoteSigner, NoteVerifier, verify_checkpoint
from audit.factory import open_audit_log
from audit.merkle import leaf_hash
from audit.monitor import MonitorAlarm, Observation, observe
from audit.record import canonical, event_record
from audit.store import PendingRecord
from gateway.app import create_app
from gateway.settings import Settings
from tests.audit.conftest import BACKENDS, PG_DSN
from tests.security._servers import serve

Gateway = Callable[[str, int], Settings]


@pytest.fixture(params=BACKENDS)
def gateway(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Gateway]:
    """A gateway log named `name`, seeded with `size` records and a checkpoint at `size`."""
    schemas: list[str] = []

    def make(name: str, size: int) -> Settings:
        where: dict[str, Any] = {"sqlite_path": str(tmp_path / f"{name}.db")}
        if request.param == "postgres":
            schemas.append(f"test_monitor_{uuid.uuid4().hex[:12]}_{name}")
            where = {
                "postgres_dsn": request.getfixturevalue("pg_dsn"),
                "postgres_schema": schemas[-1],
            }
        settings = make_settings(audit={**where, "checkpoint_interval_s": 3600})
        audit_log = open_audit_log(settings)
        try:
            records = [
                canonical(event_record("test", 1_000 + n, log=name, n=n)) for n in range(size)
            ]
            pending = [
                PendingRecord(r, leaf_hash(r), None, 1_000 + n) for n, r in enumerate(records)
            ]
            audit_log.store.append_batch(pending)
            assert audit_log.publish_checkpoint().size == size
        finally:
            audit_log.store.close()
        return settings

    yield make
    if schemas:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )


@pytest.fixture
def verifier(settings: Settings) -> NoteVerifier:
    from audit.keys import load_signer

    return load_signer(settings.resolve(settings.audit.signing_key_file)).verifier()


@contextmanager
def client_of(settings: Settings, token: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def _watch(settings: Settings, token: str, verifier: NoteVerifier, state: Path) -> Observation:
    with client_of(settings, token) as client:
        return observe(client, verifier, state)


def _alarm(settings: Settings, token: str, verifier: NoteVerifier, state: Path) -> MonitorAlarm:
    before = state.read_bytes() if state.exists() else None
    with pytest.raises(MonitorAlarm) as caught:
        _watch(settings, token, verifier, state)
    # An alarm never replaces the checkpoint the monitor kept.
    assert (state.read_bytes() if state.exists() else None) == before
    return caught.value


@pytest.fixture
def token(mint: Callable[..., str]) -> str:
    return mint("operator")


def test_first_run_growth_and_no_change(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    state = tmp_path / "monitor" / "checkpoint.note"
    settings = gateway("main", 20)
    with client_of(settings, token) as client:
        first = observe(client, verifier, state)
        assert (first.outcome, first.current.size) == ("first", 20)
        assert "trusting checkpoint 20" in first.summary(state)
        assert "on first use" in first.summary(state)
        assert state.stat().st_mode & 0o777 == 0o600
        # The state is the signed note itself: verifiable, and usable as a previous checkpoint.
        assert verify_checkpoint(state.read_bytes(), verifier).size == 20

        assert observe(client, verifier, state).outcome == "unchanged"

        # The monitor's own reads were audited: publish a checkpoint that covers them.
        published = client.post("/v1/audit/checkpoint")
        assert published.status_code == 200, published.text
        grown = observe(client, verifier, state)
        assert grown.outcome == "grew"
        assert grown.previous is not None
        assert grown.previous.size == 20
        assert grown.current.size > 20
        assert verify_checkpoint(state.read_bytes(), verifier).size == grown.current.size
        assert "is consistent with kept checkpoint 20" in grown.summary(state)


def test_a_smaller_log_is_a_rollback(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    state = tmp_path / "checkpoint.note"
    assert _watch(gateway("main", 20), token, verifier, state).outcome == "first"
    # The operator restores an old backup: 12 records, its own valid checkpoint.
    alarm = _alarm(gateway("restored", 12), token, verifier, state)
    assert (alarm.step, alarm.kind) == (4, "rollback")
    assert "checkpoint 12, smaller than checkpoint 20" in str(alarm)


def test_the_same_size_with_another_root_is_a_fork(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    state = tmp_path / "checkpoint.note"
    assert _watch(gateway("main", 20), token, verifier, state).outcome == "first"
    alarm = _alarm(gateway("forked", 20), token, verifier, state)
    assert (alarm.kind, str(alarm)) == (
        "fork",
        "fork: checkpoint 20 has another root than the one kept",
    )


def test_a_larger_log_that_does_not_extend_the_kept_one_is_a_fork(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    state = tmp_path / "checkpoint.note"
    assert _watch(gateway("main", 20), token, verifier, state).outcome == "first"
    # Larger, validly signed, but with other records: the consistency proof cannot hold.
    alarm = _alarm(gateway("rebuilt", 26), token, verifier, state)
    assert (alarm.step, alarm.kind) == (4, "fork")
    assert "checkpoint 26 does not extend checkpoint 20" in str(alarm)


def test_a_checkpoint_not_signed_by_the_auditors_key_is_refused(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    settings = gateway("main", 20)
    state = tmp_path / "checkpoint.note"
    # The auditor's key is not the one the server signs with (same name, other key).
    other = NoteSigner.generate(verifier.name).verifier()
    alarm = _alarm(settings, token, other, state)
    assert (alarm.step, alarm.kind) == (2, "bad signature")
    assert not state.exists()  # nothing trusted, not even on first use


def test_an_edited_state_file_is_no_evidence(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    settings = gateway("main", 20)
    state = tmp_path / "checkpoint.note"
    assert _watch(settings, token, verifier, state).outcome == "first"
    # Someone lowers the kept size so a rollback would pass unnoticed.
    state.write_bytes(state.read_bytes().replace(b"\n20\n", b"\n12\n"))
    alarm = _alarm(settings, token, verifier, state)
    assert (alarm.step, alarm.kind) == (3, "bad state")


def test_no_answer_is_no_pass(gateway: Gateway, verifier: NoteVerifier, tmp_path: Path) -> None:
    alarm = _alarm(gateway("main", 3), "not-a-token", verifier, tmp_path / "checkpoint.note")
    assert (alarm.step, alarm.kind) == (1, "unavailable")
    assert "HTTP 401" in str(alarm)


# -- the CLI against a real server ---------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "monitor", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_monitor_one_line_per_outcome(
    gateway: Gateway, token: str, verifier: NoteVerifier, tmp_path: Path
) -> None:
    pubkey = tmp_path / "audit.pub"
    pubkey.write_text(verifier.verifier_key() + "\n")
    token_file = tmp_path / "token"
    token_file.write_text(token)
    state = tmp_path / "checkpoint.note"
    common = ["--state", str(state), "--pubkey", str(pubkey)]

    def run(settings: Settings, *extra: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        with serve(create_app(settings)) as served:
            return _cli(served.url, *common, *extra, **kwargs)

    first = run(gateway("main", 20), "--token-file", str(token_file))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ok: first run, trusting checkpoint 20 (")
    assert "on first use" in first.stdout

    # The token may come from the environment instead (cron keeps secrets out of argv).
    again = run(gateway("again", 20), env={"GATEWAY_AUDIT_TOKEN": token})
    assert again.returncode == 1
    assert again.stderr.strip() == "alarm: fork: checkpoint 20 has another root than the one kept"

    rolled_back = run(gateway("old", 5), "--token-file", str(token_file))
    assert rolled_back.returncode == 1
    lines = rolled_back.stderr.strip().splitlines()
    assert len(lines) == 1, rolled_back.stderr
    assert lines[0].startswith("alarm: rollback: the log serves checkpoint 5, smaller than")

    no_token = _cli("http://127.0.0.1:9", *common)
    assert no_token.returncode == 2
    assert no_token.stderr.strip() == (
        "error: no token: pass --token-file or set GATEWAY_AUDIT_TOKEN"
    )
    # Nobody listens on port 9: the monitor says it could not check, and fails.
    unreachable = _cli("http://127.0.0.1:9", *common, "--token-file", str(token_file))
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("error: cannot check: unavailable: cannot fetch")
    assert "Traceback" not in unreachable.stderr
