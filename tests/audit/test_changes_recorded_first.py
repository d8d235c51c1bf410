"""Record before effect: key rotation, consent writes and erasure, each with the audit store down.

Each change appends its event record durably before it takes effect. With the
audit store really down, the change must not happen: for the running gateway
the store is closed under it (as stage 8's fail-closed test does); for the CLI
the SQLite database refuses every append (a trigger, so that it holds even for
root, for whom a 0400 file is still writable) or is not a database at all (a
directory where the file should be). With the store up, the event precedes
the change and names it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit.factory import open_audit_log
from audit.log import AuditLog
from audit.record import (
    KIND_CONSENT,
    KIND_ERASURE,
    KIND_KEY_DELETION,
    KIND_KEY_ROTATION,
    KIND_REQUEST,
    parse,
)
from audit.sqlite_store import SqliteAuditStore
from audit.verify import verify_store
from gateway.app import create_app
from gateway.cli.root import main
from gateway.datadir import InitReport, init_data_dir
from gateway.settings import Settings, load_settings
from models.features import FeatureStore
from privacy.components import open_consent_store
from privacy.consent_store import ConsentEntry
from security.issuer import EmbeddedIssuer, load_signing_key
from security.keyring import KeyringError, open_keyring

JSON = {"Content-Type": "application/json"}
ITEMS = [f"i{n}" for n in range(1, 11)]
AUDIT_UNAVAILABLE = "urn:gateway:problem:audit-unavailable"


# -- the audit store, really down -------------------------------------------------------


def refuse_appends(db: Path) -> None:
    """The database refuses every new record, as a full or read-only disk would."""
    SqliteAuditStore(db).close()  # the schema exists, as on any gateway that ran once
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_appends BEFORE INSERT ON audit_leaves "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    conn.close()


def allow_appends(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse_appends")
    conn.close()


def not_a_database(db: Path) -> None:
    """A directory where the database file should be: the store cannot even open."""
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.mkdir()


DOWN: dict[str, Callable[[Path], None]] = {
    "refuses-appends": refuse_appends,
    "not-a-database": not_a_database,
}


# -- reading the log as an auditor does ----------------------------------------------------


@dataclass(frozen=True)
class Logged:
    index: int
    record: dict[str, Any]
    raw: bytes


def logged(db: Path) -> list[Logged]:
    store = SqliteAuditStore(db)
    try:
        return [
            Logged(leaf.index, parse(leaf.payload), leaf.payload)
            for leaf in store.iter_leaves()
            if leaf.payload is not None
        ]
    finally:
        store.close()


def of_kind(entries: list[Logged], kind: str) -> list[Logged]:
    return [e for e in entries if e.record["kind"] == kind]


def request_entry(entries: list[Logged], request_id: str) -> Logged:
    found = [e for e in entries if e.record.get("request_id") == request_id]
    assert len(found) == 1, found
    return found[0]


def subject_key_rows(db: Path, pseudonym: str) -> int:
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM subject_keys WHERE pseudonym = ?", (pseudonym,)
        ).fetchone()
    conn.close()
    return int(count)


def verifies(settings: Settings) -> None:
    audit_log = open_audit_log(settings)
    try:
        verify_store(audit_log.store, audit_log.verifier)
    finally:
        audit_log.store.close()


# -- the CLI, in process -------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the keyring and the model packages, by path."""
    files = [*sorted((root / "keys").rglob("*")), *sorted((root / "models").rglob("*"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def keyring_state(root: Path) -> dict[str, str]:
    entries = json.loads((root / "keys" / "keyring.json").read_text())["keys"]
    return {e["id"]: e["state"] for e in entries}


@pytest.fixture
def box(tmp_path: Path) -> InitReport:
    return init_data_dir(tmp_path / "gw")


def settings_of(report: InitReport, **overrides: Any) -> Settings:
    return load_settings(data_dir=report.data_dir, config_file=report.config, **overrides)


def audit_db(settings: Settings) -> Path:
    return settings.resolve(settings.audit.sqlite_path)


# -- 1. key rotation and deletion ----------------------------------------------------------


def test_a_new_key_is_named_before_it_exists(tmp_path: Path) -> None:
    keyring = open_keyring(tmp_path / "keys", create=True)
    (old,) = [k.id for k in keyring.entries()]
    chosen = keyring.new_key_id()
    assert chosen not in {k.id for k in keyring.entries()}
    assert not (tmp_path / "keys" / "kek" / f"{chosen}.key").exists()
    assert keyring.rotate(chosen) == chosen == keyring.current_key_id()
    assert {k.id: k.state for k in keyring.entries()} == {old: "retired", chosen: "active"}
    with pytest.raises(KeyringError, match="already"):
        keyring.rotate(chosen)
    with pytest.raises(KeyringError, match="malformed"):
        keyring.rotate("../../escape")
    assert keyring.current_key_id() == chosen


@pytest.mark.parametrize("down", sorted(DOWN))
def test_rotation_is_refused_while_the_audit_store_is_down(
    box: InitReport, capsys: pytest.CaptureFixture[str], down: str
) -> None:
    root = box.data_dir
    DOWN[down](audit_db(settings_of(box)))
    before = snapshot(root)
    code, out, err = cli(capsys, "keys", "rotate", "--delete-retired", "--data-dir", str(root))
    assert code != 0
    assert err.startswith("error: rotation not recorded, keyring unchanged: audit log unavailable")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert out == ""
    # Not one byte of the keyring or of any package's wrapped key changed.
    assert snapshot(root) == before


def test_rotation_and_deletion_are_recorded_before_the_keyring_changes(
    box: InitReport, capsys: pytest.CaptureFixture[str]
) -> None:
    root = box.data_dir
    settings = settings_of(box)
    (old,) = keyring_state(root)
    code, out, err = cli(capsys, "keys", "rotate", "--delete-retired", "--data-dir", str(root))
    assert code == 0, err
    (new,) = keyring_state(root)
    assert keyring_state(root) == {new: "active"}
    assert f"deleted retired KEK {old}" in out

    entries = logged(audit_db(settings))
    intent, done = of_kind(entries, KIND_KEY_ROTATION)
    (deletion,) = of_kind(entries, KIND_KEY_DELETION)
    # In index order: the intent (naming the key before it existed), then the outcome,
    # then the deletion (naming the key before it was destroyed).
    assert intent.index < done.index < deletion.index
    assert intent.record["step"] == "intent"
    assert intent.record["new_kek"] == new
    assert intent.record["retired_kek"] == old
    assert done.record["step"] == "done"
    assert done.record["new_kek"] == new
    assert done.record["model_keys_rewrapped"] == 1
    assert done.record["failures"] == 0
    assert deletion.record["kek_ids"] == [old]
    assert not (root / "keys" / "kek" / f"{old}.key").exists()
    assert cli(capsys, "audit", "verify", "--quiet", "--data-dir", str(root))[0] == 0


def test_delete_retired_is_refused_while_the_audit_store_is_down(
    box: InitReport, capsys: pytest.CaptureFixture[str]
) -> None:
    root = box.data_dir
    (old,) = keyring_state(root)
    code, _, err = cli(capsys, "keys", "rotate", "--data-dir", str(root))
    assert code == 0, err
    assert keyring_state(root)[old] == "retired"
    refuse_appends(audit_db(settings_of(box)))
    before = snapshot(root)
    code, _out, err = cli(capsys, "keys", "delete-retired", "--data-dir", str(root))
    assert code != 0
    assert err.startswith("error: deletion not recorded, nothing deleted:")
    assert err.count("\n") == 1
    assert snapshot(root) == before
    assert (root / "keys" / "kek" / f"{old}.key").is_file()


def test_rotation_with_the_audit_log_switched_off_warns(
    box: InitReport, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dev mode only: nothing to record into, so the change is made, and said unrecorded."""
    monkeypatch.setenv("GATEWAY_DEV_MODE", "true")
    monkeypatch.setenv("GATEWAY_AUDIT__ENABLED", "false")
    root = box.data_dir
    (old,) = keyring_state(root)
    code, _, err = cli(capsys, "keys", "rotate", "--data-dir", str(root))
    assert code == 0, err
    assert "warning: the audit log is switched off (dev mode)" in err
    assert keyring_state(root)[old] == "retired"


# -- the running gateway --------------------------------------------------------------------


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> InitReport:
    """A data directory of its own: erasure rewrites the feature store."""
    return init_data_dir(tmp_path_factory.mktemp("recorded-first"))


@pytest.fixture
def gw(own: InitReport, tmp_path: Path) -> Settings:
    """Each test's own audit database (the rest of the data directory is shared)."""
    return settings_of(own, audit={"sqlite_path": str(tmp_path / "audit.db")})


@pytest.fixture(scope="module")
def token(own: InitReport) -> Callable[..., dict[str, str]]:
    settings = settings_of(own)
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )

    def headers(*scopes: str) -> dict[str, str]:
        client = issuer.client("operator")
        assert client is not None
        return {"Authorization": f"Bearer {issuer.mint(client, scopes)['access_token']}"}

    return headers


@pytest.fixture
def running(gw: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(gw)) as client:
        yield client


def audit_of(client: TestClient) -> AuditLog:
    audit_log = client.app.state.components.audit  # type: ignore[attr-defined]
    assert isinstance(audit_log, AuditLog)
    return audit_log


def consent(
    client: TestClient, token: Callable[..., dict[str, str]], user: str, *items: dict[str, Any]
) -> Any:
    body = {"jurisdiction": "eu", "consents": list(items)}
    return client.put(
        f"/v1/subjects/{user}/consent", json=body, headers={**token("consent:write"), **JSON}
    )


PERSONALIZE = {"purpose": "personalization", "granted": True}
WITHDRAW = {"purpose": "personalization", "granted": False}


def history(settings: Settings, user: str) -> list[tuple[str, bool]]:
    store = open_consent_store(settings)
    try:
        return [(e.purpose, e.granted) for e in store.history(None, user)]
    finally:
        store.close()


# -- 2. consent writes ----------------------------------------------------------------------


def test_consent_is_not_stored_while_the_audit_store_is_down(
    gw: Settings, running: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    assert consent(running, token, "u51", PERSONALIZE).status_code == 200
    audit_of(running).store.close()  # the database goes away under the gateway
    refused = consent(running, token, "u51", WITHDRAW)
    assert refused.status_code == 503
    assert refused.json()["type"] == AUDIT_UNAVAILABLE
    # The withdrawal was not stored: the subject's history is the grant alone.
    assert history(gw, "u51") == [("personalization", True)]


def test_consent_is_recorded_before_it_is_stored(
    gw: Settings, running: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    analytics = {"purpose": "analytics", "granted": False, "lawful_basis": "legitimate_interest"}
    response = consent(running, token, "u52", PERSONALIZE, analytics)
    assert response.status_code == 200, response.text
    entries = logged(audit_db(gw))
    request = request_entry(entries, response.headers["x-request-id"])
    (event,) = of_kind(entries, KIND_CONSENT)
    assert event.index < request.index
    assert event.record["action"] == "consent.write"
    assert event.record["subject"] == request.record["subject"] is not None
    assert event.record["tenant"] is None
    stored = {(c["purpose"], c["granted"], c["lawful_basis"]) for c in event.record["consents"]}
    assert stored == {
        ("personalization", True, "consent"),
        ("analytics", False, "legitimate_interest"),
    }
    assert {c["jurisdiction"] for c in event.record["consents"]} == {"eu"}
    assert {c["source"] for c in event.record["consents"]} == {"api:operator"}
    # The pseudonym, never the subject's id.
    assert b"u52" not in event.raw
    assert history(gw, "u52") == [("personalization", True), ("analytics", False)]


# -- 3. erasure -------------------------------------------------------------------------------


def seen(client: TestClient, token: Callable[..., dict[str, str]], user: str) -> str:
    """Consent and a personal ranking: the subject has a key, records, a feature row."""
    assert consent(client, token, user, PERSONALIZE).status_code == 200
    ranked = client.post(
        "/v1/rank", json={"user_id": user, "item_ids": ITEMS}, headers={**token("rank"), **JSON}
    )
    assert ranked.status_code == 200, ranked.text
    assert ranked.json()["personalized"] is True
    return str(ranked.json()["request_id"])


def test_nothing_is_erased_while_the_audit_store_is_down(
    gw: Settings, token: Callable[..., dict[str, str]]
) -> None:
    user = "u53"
    with TestClient(create_app(gw)) as client:
        rank_id = seen(client, token, user)
        audit_of(client).store.close()
        refused = client.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
        assert refused.status_code == 503
        assert refused.json()["type"] == AUDIT_UNAVAILABLE
    entries = logged(audit_db(gw))
    assert of_kind(entries, KIND_ERASURE) == []
    pseudonym = request_entry(entries, rank_id).record["subject"]
    assert subject_key_rows(audit_db(gw), pseudonym) == 1
    assert history(gw, user) == [("personalization", True)]
    assert FeatureStore.load(gw.resolve(gw.model.features_path)).known_user(user)
    # The subject is still exportable, its records still open.
    with TestClient(create_app(gw)) as client:
        export = client.get(f"/v1/subjects/{user}/export", headers=token("subject:read"))
        assert export.status_code == 200, export.text
        doc = export.json()
    assert doc["audit"]["pseudonym"] == pseudonym
    ranked = [r for r in doc["audit"]["records"] if r.get("action") == "rank"]
    assert ranked[0]["personal"]["user_id"] == user
    assert doc["features"]["known"] is True


def test_erasure_is_recorded_before_the_key_is_destroyed(
    gw: Settings, running: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    user = "u54"
    rank_id = seen(running, token, user)
    db = audit_db(gw)
    # The database itself checks the order: a subject key may be deleted only once the
    # log holds an erasure event naming its pseudonym.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER erasure_recorded_first BEFORE DELETE ON subject_keys "
            "WHEN NOT EXISTS (SELECT 1 FROM audit_payloads "
            'WHERE instr(CAST(record AS TEXT), \'"kind":"erasure"\') > 0 '
            "AND instr(CAST(record AS TEXT), '\"subject\":\"' || OLD.pseudonym || '\"') > 0) "
            "BEGIN SELECT RAISE(ABORT, 'subject key deleted before its erasure was logged'); END"
        )
    conn.close()
    erased = running.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
    assert erased.status_code == 200, erased.text
    assert erased.json()["audit_key_destroyed"] is True
    assert erased.json()["feature_row_erased"] is True
    entries = logged(db)
    pseudonym = request_entry(entries, rank_id).record["subject"]
    (event,) = of_kind(entries, KIND_ERASURE)
    assert event.record["subject"] == pseudonym
    assert event.record["key_existed"] is True
    assert event.index < request_entry(entries, erased.headers["x-request-id"]).index
    assert subject_key_rows(db, pseudonym) == 0
    assert history(gw, user) == []


def test_an_erasure_cut_short_after_its_record_completes_when_retried(
    gw: Settings, running: TestClient, token: Callable[..., dict[str, str]]
) -> None:
    """A crash between the record and the key's destruction: the retry finishes the job,
    and the log (two events of the same intent) still verifies."""
    user = "u55"
    rank_id = seen(running, token, user)
    db = audit_db(gw)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER crash BEFORE DELETE ON subject_keys "
            "BEGIN SELECT RAISE(ABORT, 'process gone'); END"
        )
    conn.close()
    cut = running.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
    assert cut.status_code == 503
    pseudonym = request_entry(logged(db), rank_id).record["subject"]
    assert [e.record["subject"] for e in of_kind(logged(db), KIND_ERASURE)] == [pseudonym]
    assert subject_key_rows(db, pseudonym) == 1
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER crash")
    conn.close()

    retried = running.delete(f"/v1/subjects/{user}", headers=token("subject:erase"))
    assert retried.status_code == 200, retried.text
    assert retried.json()["audit_key_destroyed"] is True
    events = of_kind(logged(db), KIND_ERASURE)
    assert [e.record["subject"] for e in events] == [pseudonym, pseudonym]
    assert subject_key_rows(db, pseudonym) == 0
    assert history(gw, user) == []
    assert not FeatureStore.load(gw.resolve(gw.model.features_path)).known_user(user)
    old = running.get(f"/v1/audit/records/{rank_id}", headers=token("audit:read", "audit:export"))
    assert old.json()["record"]["personal"] == "erased"
    verifies(gw)


def test_cli_erasure_is_refused_while_the_audit_store_is_down(
    box: InitReport, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway privacy erase` with the gateway stopped: the same order, the same refusal."""
    import asyncio

    settings = settings_of(box)
    user = "u7"
    audit_log = open_audit_log(settings)
    pseudonym = asyncio.run(audit_log.subject_key(None, user)).pseudonym
    audit_log.store.close()
    store = open_consent_store(settings)
    store.record(None, user, [ConsentEntry("personalization", True, "consent", "eu", "t", 0, "t")])
    store.close()
    db = audit_db(settings)
    refuse_appends(db)
    features = settings.resolve(settings.model.features_path)
    features_before = features.read_bytes()

    code, out, err = cli(
        capsys, "privacy", "erase", "--subject", user, "--data-dir", str(box.data_dir)
    )
    assert code != 0
    assert "erasure not recorded, nothing erased" in err
    assert err.count("\n") == 1
    assert out == ""
    assert subject_key_rows(db, pseudonym) == 1
    assert history(settings, user) == [("personalization", True)]
    assert features.read_bytes() == features_before

    allow_appends(db)
    code, out, err = cli(
        capsys, "privacy", "erase", "--subject", user, "--data-dir", str(box.data_dir)
    )
    assert code == 0, err
    assert json.loads(out)["audit_key_destroyed"] is True
    (event,) = of_kind(logged(db), KIND_ERASURE)
    assert event.record["subject"] == pseudonym
    assert subject_key_rows(db, pseudonym) == 0
    assert history(settings, user) == []
    assert of_kind(logged(db), KIND_REQUEST) == []  # the CLI writes the event alone
    assert cli(capsys, "audit", "verify", "--quiet", "--data-dir", str(box.data_dir))[0] == 0
