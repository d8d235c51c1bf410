"""``run_tests``: the default bundle passes its own cases; a wrong case is reported."""

from __future__ import annotations

from policies.bundle import PolicyBundle, load_bundle
from policies.testing import run_tests
from tests.policies.conftest import EditBundle


def test_default_bundle_passes_its_tests(default_bundle: PolicyBundle) -> None:
    report = run_tests(default_bundle)
    assert report.passed, report.render()
    assert report.total == len(default_bundle.tests) + len(default_bundle.consent_tests)
    names = {c.case.name for c in default_bundle.tests}
    assert "rank with rank" in names
    assert "rank without rank" in names
    assert "suspended tenant refused despite every scope" in names


def test_failing_case_is_reported_with_the_deciding_policies(edit: EditBundle) -> None:
    path = edit(
        "tests/forbid.yaml",
        "    expect: {decision: deny, policies: [forbid-suspended-tenant]}",
        "    expect: {decision: allow}",
    )
    report = run_tests(load_bundle(path))
    assert not report.passed
    [failure] = report.failures
    assert failure.name == "suspended tenant refused despite every scope"
    assert failure.file == "tests/forbid.yaml"
    assert failure.got.policy_ids == ("forbid-suspended-tenant",)
    rendered = report.render()
    assert "expected allow, got deny by forbid-suspended-tenant" in rendered
    assert f"tests/forbid.yaml:{failure.line}:" in rendered


def test_wrong_expected_policy_ids_fail(edit: EditBundle) -> None:
    path = edit(
        "tests/scopes.yaml",
        "expect: {decision: allow, policies: [scope-rank]}",
        "expect: {decision: allow, policies: [scope-admin]}",
    )
    report = run_tests(load_bundle(path))
    [failure] = report.failures
    assert failure.name == "rank with rank"
    assert "expected allow by [scope-admin], got allow by scope-rank" in failure.render()


def test_a_case_the_schema_refuses_reports_the_cedar_error(edit: EditBundle) -> None:
    path = edit("tests/forbid.yaml", "action: rank\n", "action: teleport\n")
    report = run_tests(load_bundle(path))
    [failure] = report.failures
    assert "teleport" in failure.render()
