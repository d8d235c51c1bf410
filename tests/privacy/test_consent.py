"""Consent store (both backends, attacked with raw SQL) and the consent decision rules."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from gateway.derivation import DerivedKeys
from gateway.pipeline import Principal, RankQuery, RequestContext
from policies import InForce
from policies.data_policy import ConsentPolicy, DataPolicy
from privacy.consent_stage import ConsentStage, decide
from privacy.consent_store import (
    ConsentEntry,
    ConsentStore,
    ConsentStoreError,
    PostgresConsentStore,
    SqliteConsentStore,
)
from privacy.errors import ConsentRequired
from privacy.signals import ABSENT, MALFORMED, decode_tcf
from tests.privacy.tcf import encode_core

PG_DSN = os.environ.get("AUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PG_UNREACHABLE = "PostgreSQL at 127.0.0.1:5432 unreachable: consent store backend NOT TESTED"
KEYS = DerivedKeys(b"s" * 32)


def entry(purpose: str = "personalization", granted: bool = True, **kw: object) -> ConsentEntry:
    fields: dict[str, object] = {
        "lawful_basis": "consent",
        "jurisdiction": "eu",
        "source": "test",
        "ts_ms": 1,
        "policy_version": "v",
    }
    fields.update(kw)
    return ConsentEntry(purpose, granted, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConsentStore]:
    if request.param == "sqlite":
        opened: ConsentStore = SqliteConsentStore(tmp_path / "consent.db", KEYS)
        yield opened
        opened.close()
        return
    yield from _postgres_store()


@pytest.fixture
def pg_store() -> Iterator[PostgresConsentStore]:
    yield from _postgres_store()


def _postgres_store() -> Iterator[PostgresConsentStore]:
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        print(f"WARNING: {PG_UNREACHABLE} ({exc})", file=sys.stderr)
        pytest.skip(PG_UNREACHABLE)
    schema = f"test_consent_{uuid.uuid4().hex[:16]}"
    opened = PostgresConsentStore(PG_DSN, schema, KEYS)
    yield opened
    opened.close()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def raw(store: ConsentStore, statement: str) -> None:
    """Plain SQL with the store's own connection, as someone with database access would."""
    if isinstance(store, SqliteConsentStore):
        store._conn.execute(statement)
    else:
        assert isinstance(store, PostgresConsentStore)
        with psycopg.connect(PG_DSN, autocommit=True) as conn, conn.transaction():
            path = sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(store.schema))
            conn.execute(path)
            conn.execute(statement.encode())


REJECTED = (sqlite3.DatabaseError, psycopg.Error)


def test_current_is_the_latest_entry_per_purpose(store: ConsentStore) -> None:
    store.record("t", "alice", [entry(granted=True, ts_ms=1), entry("analytics", False)])
    store.record("t", "alice", [entry(granted=False, ts_ms=2)])
    current = store.current("t", "alice")
    assert current["personalization"].granted is False
    assert current["analytics"].granted is False
    assert [e.granted for e in store.history("t", "alice")] == [True, False, False]
    # Tenants are separate subjects.
    assert store.current("other", "alice") == {}


def test_current_follows_every_change(store: ConsentStore) -> None:
    # Read before and after each write: the SQLite store answers reads from a cache that
    # every write must clear (a stale "granted" after a withdrawal would be a violation).
    assert store.current("t", "fay") == {}
    store.record("t", "fay", [entry(granted=True)])
    assert store.current("t", "fay")["personalization"].granted is True
    assert store.current("t", "fay")["personalization"].granted is True
    store.record("t", "fay", [entry(granted=False, ts_ms=2)])
    assert store.current("t", "fay")["personalization"].granted is False
    store.erase("t", "fay", 3)
    assert store.current("t", "fay") == {}
    store.current("t", "fay")["personalization"] = entry()  # a caller's copy, not the store's
    assert store.current("t", "fay") == {}


def test_no_subject_id_is_stored(store: ConsentStore, tmp_path: Path) -> None:
    store.record(None, "bob-the-subject", [entry()])
    if isinstance(store, SqliteConsentStore):
        data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"bob-the-subject" not in data


def test_history_cannot_be_rewritten(store: ConsentStore) -> None:
    store.record(None, "carol", [entry(granted=False)])
    with pytest.raises(REJECTED):
        raw(store, "UPDATE consent_history SET granted = 1")
    with pytest.raises(REJECTED):
        raw(store, "DELETE FROM consent_history")
    assert store.current(None, "carol")["personalization"].granted is False


def test_erasure_is_the_only_delete(store: ConsentStore) -> None:
    store.record(None, "dave", [entry(), entry("analytics")])
    store.record(None, "erin", [entry()])
    assert store.erase(None, "dave", 5) == 2
    assert store.history(None, "dave") == []
    assert store.erased(None, "dave") is True
    assert len(store.history(None, "erin")) == 1  # others untouched
    # The marker covers only what it erased: later consent of the same id is protected.
    store.record(None, "dave", [entry()])
    with pytest.raises(REJECTED):
        raw(store, "DELETE FROM consent_history")
    with pytest.raises(REJECTED):
        raw(store, "DELETE FROM consent_erasures")
    with pytest.raises(REJECTED):
        raw(store, "UPDATE consent_erasures SET history_upto = 999999")
    assert store.erase(None, "dave", 6) == 1  # idempotent, and again possible
    assert store.feature_handle(None, "dave") in store.erased_feature_handles()


# -- decisions -------------------------------------------------------------

DEFAULT = ConsentPolicy(
    tcf_purposes={"personalization": (1, 3, 4)},
    gpc_opt_out=("sale_share", "personalization"),
)
STORED_YES = {"personalization": entry(granted=True)}
STORED_NO = {"personalization": entry(granted=False)}
TCF_YES = decode_tcf(encode_core(purposes={1, 3, 4}))
TCF_NO = decode_tcf(encode_core(purposes={1, 3}))
NEEDED = ("personalization",)


@pytest.mark.parametrize(
    ("precedence", "gpc", "tcf", "stored", "personal", "source"),
    [
        (("gpc", "tcf", "store"), False, ABSENT, {}, False, "default"),
        (("gpc", "tcf", "store"), False, ABSENT, STORED_YES, True, "store"),
        (("gpc", "tcf", "store"), True, ABSENT, STORED_YES, False, "gpc"),
        # A client's TCF header never re-grants what the subject withdrew.
        (("gpc", "tcf", "store"), False, TCF_YES, STORED_NO, False, "store"),
        (("gpc", "tcf", "store"), False, TCF_NO, STORED_YES, False, "tcf"),
        (("gpc", "tcf", "store"), False, MALFORMED, STORED_YES, False, "tcf"),
        (("gpc", "tcf", "store"), True, TCF_YES, STORED_YES, False, "gpc"),
        (("store", "tcf", "gpc"), True, TCF_NO, STORED_YES, False, "tcf"),
        (("store", "gpc"), True, TCF_YES, {}, False, "gpc"),
        (("tcf", "store"), True, ABSENT, STORED_YES, True, "store"),
        (("tcf", "store"), False, TCF_YES, STORED_YES, True, "tcf"),
    ],
)
def test_the_most_restrictive_signal_wins_by_default(
    precedence: tuple[str, ...],
    gpc: bool,
    tcf: object,
    stored: dict[str, ConsentEntry],
    personal: bool,
    source: str,
) -> None:
    assert DEFAULT.combine == "most_restrictive"
    _check_decision({"precedence": precedence}, gpc, tcf, stored, personal, source)


def _check_decision(
    update: dict[str, object],
    gpc: bool,
    tcf: object,
    stored: dict[str, ConsentEntry],
    personal: bool,
    source: str,
) -> None:
    policy = DEFAULT.model_copy(update=update)
    decision = decide(policy, NEEDED, stored, gpc=gpc, tcf=tcf)  # type: ignore[arg-type]
    assert decision.may_personalize is personal
    assert decision.sources["personalization"] == source


@pytest.mark.parametrize(
    ("precedence", "gpc", "tcf", "stored", "personal", "source"),
    [
        (("gpc", "tcf", "store"), False, ABSENT, STORED_YES, True, "store"),
        (("gpc", "tcf", "store"), False, TCF_NO, STORED_YES, False, "tcf"),
        # Only a bundle that asks for it lets the first source's grant override a refusal.
        (("store", "tcf", "gpc"), True, TCF_NO, STORED_YES, True, "store"),
        (("tcf", "store"), True, TCF_YES, STORED_YES, True, "tcf"),
        # ... and never a stored withdrawal.
        (("tcf", "store"), False, TCF_YES, STORED_NO, False, "store"),
    ],
)
def test_precedence_comes_from_the_policy_when_it_says_so(
    precedence: tuple[str, ...],
    gpc: bool,
    tcf: object,
    stored: dict[str, ConsentEntry],
    personal: bool,
    source: str,
) -> None:
    update = {"precedence": precedence, "combine": "precedence"}
    _check_decision(update, gpc, tcf, stored, personal, source)


DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies/bundles/default"


def test_the_default_bundle_states_its_consent_combination_in_its_own_tests() -> None:
    """`policy test` runs the bundle's consent cases through the stage's own rule
    (ConsentPolicy.resolve): the default is most restrictive, and another combination
    is shown only as a what-if that names it explicitly."""
    from policies.bundle import load_bundle
    from policies.testing import run_tests

    bundle = load_bundle(DEFAULT_BUNDLE)
    assert "combine" not in (DEFAULT_BUNDLE / "data.yaml").read_text()
    assert bundle.data.consent.combine == "most_restrictive"
    report = run_tests(bundle)
    assert report.passed, report.render()
    cases = {c.case.name: c.case for c in bundle.consent_tests}
    explicit = [c for c in cases.values() if c.policy is not None and c.policy.combine]
    assert [(c.policy.combine, c.expect.decision) for c in explicit if c.policy] == [
        ("precedence", "grant")
    ]
    # The same signals through the stage, with real TC strings, decide the same way.
    bundle_rules = bundle.data.consent
    explicit_rules = bundle_rules.model_copy(
        update={"combine": "precedence", "precedence": ("store", "tcf", "gpc")}
    )
    for rules, personal in ((bundle_rules, False), (explicit_rules, True)):
        decision = decide(rules, NEEDED, STORED_YES, gpc=False, tcf=TCF_NO)
        assert decision.may_personalize is personal


def test_a_wrong_consent_case_fails_policy_test(tmp_path: Path) -> None:
    import shutil

    from policies.bundle import load_bundle, rehash
    from policies.testing import run_tests

    copy = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))
    cases = copy / "tests/consent.yaml"
    text = cases.read_text()
    wrong = "expect: {decision: grant, source: store}"
    assert text.count(wrong) == 2  # a stored grant alone; the explicit what-if
    cases.write_text(text.replace("    expect: {decision: deny, source: tcf}", f"    {wrong}", 1))
    rehash(copy)
    report = run_tests(load_bundle(copy))
    [failure] = report.consent_failures
    assert failure.name == "a TCF refusal beats a stored grant"
    assert (
        f"tests/consent.yaml:{failure.line}: a TCF refusal beats a stored grant: expected "
        "grant by store, got deny by tcf" in report.render()
    )


def test_gpc_opts_out_of_sale_even_where_it_does_not_touch_personalisation() -> None:
    policy = ConsentPolicy(gpc_opt_out=("sale_share",))
    decision = decide(policy, NEEDED, STORED_YES, gpc=True, tcf=ABSENT)
    assert decision.may_personalize is True
    assert decision.purposes["sale_share"] is False
    assert decision.sources["sale_share"] == "gpc"


def test_tcf_vendor_consent_is_required_when_configured() -> None:
    policy = DEFAULT.model_copy(update={"tcf_vendor_id": 9})
    without_vendor = decide(policy, NEEDED, {}, gpc=False, tcf=TCF_YES)
    assert without_vendor.may_personalize is False
    with_vendor = decode_tcf(encode_core(purposes={1, 3, 4}, vendors={9}))
    assert decide(policy, NEEDED, {}, gpc=False, tcf=with_vendor).may_personalize is True


@pytest.mark.parametrize(
    ("restriction", "personal"),
    [
        ((3, 0, [(9, 9)]), False),  # purpose 3 not allowed for our vendor
        ((4, 2, [(1, 20)]), False),  # purpose 4 on legitimate interest only
        ((1, 1, [(9, 9)]), True),  # consent required: consent is what we have
        ((3, 0, [(10, 30)]), True),  # another vendor's restriction
        ((7, 0, [(9, 9)]), True),  # a purpose we do not use
    ],
)
def test_publisher_restrictions_on_our_vendor_withhold_the_grant(
    restriction: tuple[int, int, list[tuple[int, int]]], personal: bool
) -> None:
    policy = DEFAULT.model_copy(update={"tcf_vendor_id": 9})
    signal = decode_tcf(encode_core(purposes={1, 3, 4}, vendors={9}, restrictions=[restriction]))
    assert signal.state == "valid"
    assert decide(policy, NEEDED, {}, gpc=False, tcf=signal).may_personalize is personal
    # Without a vendor id the bundle asks about purposes only: restrictions name vendors.
    assert decide(DEFAULT, NEEDED, {}, gpc=False, tcf=signal).may_personalize is True


@pytest.mark.parametrize("range_encoding", [False, True])
def test_tcf_vendor_sections_decode_in_both_encodings(range_encoding: bool) -> None:
    """CMPs with many vendors send range-encoded sections; both must read the same."""
    vendors = {9, 10, 11, 12, 755}
    signal = decode_tcf(
        encode_core(purposes={1, 3, 4}, vendors=vendors, range_encoding=range_encoding)
    )
    assert signal.state == "valid"
    assert set(signal.vendors) == vendors
    policy = DEFAULT.model_copy(update={"tcf_vendor_id": 755})
    assert decide(policy, NEEDED, {}, gpc=False, tcf=signal).may_personalize is True
    other = DEFAULT.model_copy(update={"tcf_vendor_id": 13})
    assert decide(other, NEEDED, {}, gpc=False, tcf=signal).may_personalize is False


def test_unreadable_store_means_no_consent() -> None:
    decision = decide(DEFAULT, NEEDED, {}, gpc=False, tcf=ABSENT, store_ok=False)
    assert decision.may_personalize is False


@pytest.mark.parametrize(
    "raw_string", ["", "   ", "%%%", "BOGUS.STRING", "A" * 9000, "BOAAAAAAAAAAAAAAA"]
)
def test_malformed_tc_strings_never_raise(raw_string: str) -> None:
    assert decode_tcf(raw_string).state in ("absent", "malformed")


def art22_policy(data: DataPolicy) -> DataPolicy:
    model = data.models["demo-ranker"].model_copy(update={"significant_decision": True})
    return data.model_copy(update={"models": {**data.models, "demo-ranker": model}})


@pytest.mark.asyncio
async def test_significant_decisions_need_explicit_stored_consent(tmp_path: Path) -> None:
    from policies.bundle import load_bundle

    data = art22_policy(
        load_bundle(Path(__file__).resolve().parents[2] / "policies/bundles/default").data
    )
    store = SqliteConsentStore(tmp_path / "c.db", KEYS)
    stage = ConsentStage(store, InForce(data, "h"), model_name="demo-ranker")
    principal = Principal(issuer="i", client_id="c", subject=None, scopes=frozenset())

    def ctx(user: str, headers: dict[str, str] | None = None) -> RequestContext:
        return RequestContext(
            request_id="r",
            action="rank",
            route="/v1/rank",
            headers=headers or {},
            principal=principal,
            payload=RankQuery(user_id=user, item_ids=("i1",), top_k=1),
        )

    # A TCF grant is not explicit consent to an Art. 22 decision: refused.
    tcf = {"tcf-consent": encode_core(purposes={1, 3, 4})}
    with pytest.raises(ConsentRequired):
        await stage(ctx("zoe", tcf))
    store.record(None, "zoe", [entry(lawful_basis="legitimate_interest")])
    with pytest.raises(ConsentRequired):
        await stage(ctx("zoe"))
    store.record(None, "zoe", [entry(lawful_basis="consent")])
    allowed = await stage(ctx("zoe"))
    assert allowed.consent.explicit is True
    assert allowed.consent.may_personalize is True
    store.close()


def _terminate_store_backends(application_name: str = "gateway-consent") -> int:
    """What a database restart does to the store's connection: the server closes it."""
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


def test_postgres_store_comes_back_by_itself_after_its_connection_is_dropped(
    pg_store: PostgresConsentStore,
) -> None:
    store = pg_store
    store.record("t1", "u1", [entry(granted=True)])
    assert _terminate_store_backends() >= 1
    # A read after the outage succeeds on a fresh connection, with nothing lost.
    assert store.current("t1", "u1")["personalization"].granted is True
    assert _terminate_store_backends() >= 1
    # So does a write: the dropped connection is found before its transaction starts.
    store.record("t1", "u1", [entry(granted=False, ts_ms=2)])
    assert store.current("t1", "u1")["personalization"].granted is False
    assert [e.granted for e in store.history("t1", "u1")] == [True, False]


def test_postgres_store_bounds_each_statement(pg_store: PostgresConsentStore) -> None:
    """A hung statement ends at the statement timeout (a typed error, not a hang)."""
    store = pg_store
    started = time.monotonic()
    with pytest.raises(ConsentStoreError):
        store._query("SELECT pg_sleep(30)")
    assert time.monotonic() - started < 10
    store.record("t1", "u2", [entry()])  # and the store still works afterwards
    assert "personalization" in store.current("t1", "u2")


def test_sqlite_store_files_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "consent.db"
    store = SqliteConsentStore(path, KEYS)
    try:
        store.record("t1", "u1", [entry()])
        files = [path, path.with_name("consent.db-wal"), path.with_name("consent.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()
