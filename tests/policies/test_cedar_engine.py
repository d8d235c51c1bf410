"""Cedar decisions of the default bundle: the spine's scope table, forbids, default deny."""

from __future__ import annotations

import statistics
import time

import pytest

from policies.bundle import PolicyBundle, load_bundle
from policies.cedar_engine import AuthzRequest, CedarEngine, split_policies
from policies.errors import PolicyError
from policies.vocabulary import ACTION_SCOPES
from tests.policies.conftest import EditBundle

RESOURCES = {
    "rank": ("Model", "demo-ranker"),
    "infer": ("Model", "demo-ranker"),
    "infer.raw": ("Model", "demo-ranker"),
    "model.read": ("Model", "demo-ranker"),
    "events": ("Model", "demo-ranker"),
    "audit.read": ("AuditLog", "log"),
    "audit.export": ("AuditLog", "log"),
    "consent.write": ("Subject", "subject-1"),
    "consent.read": ("Subject", "subject-1"),
    "subject.read": ("Subject", "subject-1"),
    "subject.erase": ("Subject", "subject-1"),
    "admin": ("Model", "demo-ranker"),
}
ALL_SCOPES = frozenset(ACTION_SCOPES.values())


def request(action: str, scopes: frozenset[str], **kw: object) -> AuthzRequest:
    rtype, rid = RESOURCES[action]
    fields: dict[str, object] = {"resource_type": rtype, "resource_id": rid, **kw}
    return AuthzRequest(client_id="demo", scopes=scopes, action=action, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("action", sorted(ACTION_SCOPES))
@pytest.mark.parametrize("scopes", sorted(ALL_SCOPES | {""}))
def test_each_action_needs_exactly_its_scope(
    default_bundle: PolicyBundle, action: str, scopes: str
) -> None:
    granted = frozenset({scopes} - {""})
    decision = default_bundle.engine.decide(request(action, granted))
    needed = ACTION_SCOPES[action]
    assert decision.allowed == (needed in granted)
    assert decision.errors == ()
    expected_ids = (f"scope-{action.replace('.', '-')}",) if decision.allowed else ()
    assert decision.policy_ids == expected_ids


@pytest.mark.parametrize("action", sorted(ACTION_SCOPES))
def test_all_other_scopes_do_not_help(default_bundle: PolicyBundle, action: str) -> None:
    others = ALL_SCOPES - {ACTION_SCOPES[action]}
    assert not default_bundle.engine.decide(request(action, others)).allowed


@pytest.mark.parametrize(
    "resource", [("Model", "demo-ranker"), ("AuditLog", "log"), ("Subject", "s")]
)
def test_admin_applies_to_every_resource_type(
    default_bundle: PolicyBundle, resource: tuple[str, str]
) -> None:
    req = AuthzRequest(
        client_id="ops",
        scopes=frozenset({"admin"}),
        action="admin",
        resource_type=resource[0],
        resource_id=resource[1],
    )
    assert default_bundle.engine.decide(req).policy_ids == ("scope-admin",)


def test_forbid_blocked_model_overrides_permit(default_bundle: PolicyBundle) -> None:
    blocked = request(
        "rank", ALL_SCOPES, resource_id="retired-ranker", resource_attrs={"blocked": True}
    )
    decision = default_bundle.engine.decide(blocked)
    assert not decision.allowed
    assert decision.policy_ids == ("forbid-blocked-model",)


def test_forbid_suspended_tenant_overrides_permit(default_bundle: PolicyBundle) -> None:
    decision = default_bundle.engine.decide(request("audit.read", ALL_SCOPES, tenant="suspended"))
    assert not decision.allowed
    assert decision.policy_ids == ("forbid-suspended-tenant",)
    assert default_bundle.engine.decide(request("audit.read", ALL_SCOPES, tenant="acme")).allowed


def test_default_deny_when_no_policy_permits_the_action(edit: EditBundle) -> None:
    # Drop the only permit for `admin`: with every scope, admin is now denied by no policy.
    path = edit(
        "policies.cedar",
        '@id("scope-admin")\npermit (principal, action == Gateway::Action::"admin", resource)\n'
        'when { principal.scopes.contains("admin") };\n',
        "",
    )
    engine = load_bundle(path).engine
    decision = engine.decide(request("admin", ALL_SCOPES))
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert decision.errors == ()
    assert "scope-admin" not in engine.policy_ids


def test_unknown_action_is_denied_with_the_schema_error(default_bundle: PolicyBundle) -> None:
    req = AuthzRequest(
        client_id="demo",
        scopes=ALL_SCOPES,
        action="model.delete",
        resource_type="Model",
        resource_id="demo-ranker",
    )
    decision = default_bundle.engine.decide(req)
    assert not decision.allowed
    assert decision.policy_ids == ()
    assert any("model.delete" in e for e in decision.errors)


def test_resource_attribute_outside_schema_is_denied(default_bundle: PolicyBundle) -> None:
    decision = default_bundle.engine.decide(
        request("rank", ALL_SCOPES, resource_attrs={"owner": "mallory"})
    )
    assert not decision.allowed
    assert any("owner" in e for e in decision.errors)


def test_policy_ids_are_the_id_annotations(default_bundle: PolicyBundle) -> None:
    assert default_bundle.engine.policy_ids == (
        "scope-rank",
        "scope-infer",
        "scope-infer-raw",
        "scope-model-read",
        "scope-events",
        "scope-audit-read",
        "scope-audit-export",
        "scope-consent-write",
        "scope-consent-read",
        "scope-subject-read",
        "scope-subject-erase",
        "scope-admin",
        "forbid-blocked-model",
        "forbid-audit-all-tenants",
        "forbid-suspended-tenant",
    )


def test_split_policies_finds_lines_past_comments_and_strings() -> None:
    text = (
        "// a; comment\n"
        '@id("a")\n'
        "permit (principal, action, resource)\n"
        'when { "x;y" == "x;y" };\n'
        "\n"
        '@id("b") forbid (principal, action, resource);\n'
    )
    sources = split_policies(text)
    assert [(s.line, s.policy_id) for s in sources] == [(2, "a"), (6, "b")]


def test_policy_without_id_is_refused(default_bundle: PolicyBundle) -> None:
    schema = (default_bundle.source / "schema.cedarschema.json").read_text()
    with pytest.raises(PolicyError, match=r"policies.cedar:2: every policy needs an @id"):
        CedarEngine("\npermit (principal, action, resource);\n", schema)


def test_cache_returns_the_same_decision_and_stays_bounded(default_bundle: PolicyBundle) -> None:
    schema = (default_bundle.source / "schema.cedarschema.json").read_text()
    engine = CedarEngine(default_bundle.engine.policies_text, schema, cache_size=8)
    first = engine.decide(request("rank", frozenset({"rank"})))
    assert engine.decide(request("rank", frozenset({"rank"}))) is first
    for i in range(20):
        engine.decide(request("rank", frozenset({"rank"}), resource_id=f"m{i}"))
    assert engine.decide(request("rank", frozenset({"rank"}))) is not first
    assert engine.decide(request("rank", frozenset({"rank"}))) == first


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def test_cached_decide_is_well_under_50_microseconds(default_bundle: PolicyBundle) -> None:
    req = request("rank", frozenset({"rank"}), tenant="acme")
    engine = default_bundle.engine
    engine.decide(req)
    samples = []
    for _ in range(2000):
        start = time.perf_counter_ns()
        engine.decide(req)
        samples.append((time.perf_counter_ns() - start) / 1000)
    p50, _ = _p50_p99(samples)
    assert p50 < 50.0, f"cached decide p50 {p50:.1f} µs"
