"""Malformed bundles are refused with a message naming file, line and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies.bundle import load_bundle
from policies.errors import PolicyError
from tests.policies.conftest import DEFAULT_BUNDLE, EditBundle


def refused(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_bundle(path)
    return info.value


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing ``needle`` (so tests survive edits)."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_default_bundle_loads(bundle_dir: Path) -> None:
    bundle = load_bundle(DEFAULT_BUNDLE)
    assert (bundle.name, bundle.version) == ("default", "1.0.0")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", bundle.content_hash)
    assert bundle.signature is None
    assert bundle.data.models["retired-ranker"].blocked
    assert bundle.data.jurisdictions.for_region("eu").pii_entities[-1] == "IBAN_CODE"
    assert len(bundle.tests) >= 2 * 9


def test_bad_yaml_names_file_and_line(edit: EditBundle) -> None:
    path = edit("data.yaml", "  audit_days: 2190", "  audit_days: [2190")
    error = refused(path)
    assert error.file == "data.yaml"
    assert error.line is not None
    assert error.line >= line_of(path / "data.yaml", "audit_days")
    assert "invalid YAML" in str(error)


def test_unknown_key_names_line_and_key_path(edit: EditBundle) -> None:
    path = edit("data.yaml", "    significant_decision: false", "    significant_decisoin: false")
    error = refused(path)
    assert (error.file, error.key) == ("data.yaml", "models.demo-ranker.significant_decisoin")
    assert error.line == line_of(path / "data.yaml", "significant_decisoin")
    assert str(error).startswith(f"data.yaml:{error.line}: models.demo-ranker.significant_decisoin")
    assert "unknown key" in str(error)


def test_wrong_type_names_line_and_key_path(edit: EditBundle) -> None:
    path = edit(
        "data.yaml",
        "output: {mode: rounded, decimals: 3}",
        "output: {mode: rounded, decimals: many}",
    )
    error = refused(path)
    assert error.key == "models.demo-ranker.output.decimals"
    assert error.line == line_of(path / "data.yaml", "decimals: many")
    assert "integer" in error.message


def test_wrong_enum_value_in_sequence(edit: EditBundle) -> None:
    path = edit("data.yaml", "precedence: [gpc, tcf, store]", "precedence: [gpc, tcf, cookie]")
    error = refused(path)
    assert error.key == "consent.precedence[2]"
    assert error.line == line_of(path / "data.yaml", "cookie")


def test_manifest_bad_semver(edit: EditBundle) -> None:
    path = edit("manifest.yaml", "version: 1.0.0", "version: one", rehash_after=False)
    error = refused(path)
    assert (error.file, error.line, error.key) == ("manifest.yaml", 2, "version")


def test_bad_cedar_names_the_policy_line(edit: EditBundle) -> None:
    path = edit(
        "policies.cedar",
        'when { principal.scopes.contains("audit:export") };',
        'when { principal.scopes.contains("audit:export") ;',
    )
    error = refused(path)
    assert error.file == "policies.cedar"
    assert error.line == line_of(path / "policies.cedar", '@id("scope-audit-export")')
    assert error.key == "scope-audit-export"
    assert "Cedar syntax error" in error.message


def test_schema_mismatch_names_policy_and_line(edit: EditBundle) -> None:
    path = edit(
        "policies.cedar",
        'when { principal.scopes.contains("consent:read") };',
        'when { principal.groups.contains("consent:read") };',
    )
    error = refused(path)
    assert (error.file, error.key) == ("policies.cedar", "scope-consent-read")
    assert error.line == line_of(path / "policies.cedar", '@id("scope-consent-read")')
    assert "schema mismatch" in error.message
    assert "groups" in error.message


def test_schema_json_syntax_error(edit: EditBundle) -> None:
    # The comma between AuditLog's block and Subject goes missing.
    path = edit("schema.cedarschema.json", '},\n      "Subject": {}', '}\n      "Subject": {}')
    error = refused(path)
    assert error.file == "schema.cedarschema.json"
    assert error.line == line_of(path / "schema.cedarschema.json", '"Subject": {}')


def test_content_hash_mismatch(edit: EditBundle) -> None:
    path = edit("data.yaml", "audit_days: 2190", "audit_days: 30", rehash_after=False)
    error = refused(path)
    assert (error.file, error.key) == ("manifest.yaml", "content_hash")
    assert error.line == line_of(path / "manifest.yaml", "content_hash:")
    assert "content hash mismatch" in error.message


def test_unknown_model_in_a_test_case(edit: EditBundle) -> None:
    path = edit("tests/forbid.yaml", "id: demo-ranker}", "id: ghost-ranker}")
    error = refused(path)
    assert error.file == "tests/forbid.yaml"
    assert error.line == line_of(path / "tests/forbid.yaml", "ghost-ranker")
    assert error.key == "cases[2].request.resource.id"
    assert "unknown model 'ghost-ranker'" in error.message


def test_unknown_model_named_in_a_policy(edit: EditBundle) -> None:
    text = (DEFAULT_BUNDLE / "policies.cedar").read_text() + (
        '\n@id("ghost")\nforbid (principal, action, resource == Gateway::Model::"ghost");\n'
    )
    path = edit("policies.cedar", text=text)
    error = refused(path)
    assert error.file == "policies.cedar"
    assert error.line == line_of(path / "policies.cedar", 'Gateway::Model::"ghost"')


def test_unknown_key_in_a_test_case(edit: EditBundle) -> None:
    path = edit(
        "tests/forbid.yaml",
        "expect: {decision: deny, policies: [forbid-suspended-tenant]}",
        "expect: {decision: deny, reason: [forbid-suspended-tenant]}",
    )
    error = refused(path)
    assert error.key == "cases[2].expect.reason"
    assert error.line == line_of(path / "tests/forbid.yaml", "reason:")


def test_missing_and_unexpected_files(bundle_dir: Path, edit: EditBundle) -> None:
    (bundle_dir / "notes.txt").write_text("hi")
    assert refused(bundle_dir).file == "notes.txt"
    (bundle_dir / "notes.txt").unlink()
    (bundle_dir / "data.yaml").unlink()
    assert str(refused(bundle_dir)) == "data.yaml: missing required file"
