"""``diff_bundles``: removing a permit shows up in tests and in sampled decisions."""

from __future__ import annotations

from policies.bundle import PolicyBundle, load_bundle
from policies.diff import diff_bundles
from tests.policies.conftest import EditBundle


def test_identical_bundles_do_not_differ(default_bundle: PolicyBundle) -> None:
    report = diff_bundles(default_bundle, default_bundle)
    assert not report.changed
    assert report.sampled > 100


def test_removed_permit_is_reported(default_bundle: PolicyBundle, edit: EditBundle) -> None:
    path = edit(
        "policies.cedar",
        '@id("scope-audit-export")\npermit (principal, action == Gateway::Action::"audit.export", '
        'resource)\nwhen { principal.scopes.contains("audit:export") };\n',
        "",
    )
    edit("manifest.yaml", "version: 1.0.0", "version: 1.1.0")
    new = load_bundle(path)
    report = diff_bundles(default_bundle, new)
    assert [t.name for t in report.test_changes] == [
        "an auditor of the whole gateway exports every tenant's records",
        "audit.export with audit:export",
    ]
    assert report.decision_changes
    for change in report.decision_changes:
        assert change.request.action == "audit.export"
        assert "audit:export" in change.request.scopes
        assert change.old.policy_ids == ("scope-audit-export",)
        assert not change.new.allowed
    assert "default@1.0.0 -> default@1.1.0" in report.render()


def test_newly_blocked_model_is_reported(default_bundle: PolicyBundle, edit: EditBundle) -> None:
    path = edit("data.yaml", "    significant_decision: false", "    blocked: true")
    report = diff_bundles(default_bundle, load_bundle(path))
    assert report.decision_changes
    assert {c.request.resource_id for c in report.decision_changes} == {"demo-ranker"}
    assert {c.new.policy_ids for c in report.decision_changes} == {("forbid-blocked-model",)}
