"""The content hash changes exactly when a hashed file's bytes (or name) change."""

from __future__ import annotations

import hashlib

import pytest

from policies.content_hash import content_hash

BASE = {
    "data.yaml": b"models: {}\n",
    "policies.cedar": b"// p\n",
    "tests/a.yaml": b"cases: []\n",
    "manifest.yaml": b"name: x\n",
}


def test_documented_encoding() -> None:
    files = {"b.txt": b"BB", "a.txt": b"A"}
    expected = hashlib.sha256(
        b"a.txt\x00" + (1).to_bytes(8, "big") + b"A" + b"b.txt\x00" + (2).to_bytes(8, "big") + b"BB"
    ).hexdigest()
    assert content_hash(files) == f"sha256:{expected}"


@pytest.mark.parametrize("name", ["data.yaml", "policies.cedar", "tests/a.yaml"])
def test_changes_when_a_hashed_file_changes(name: str) -> None:
    changed = {**BASE, name: BASE[name] + b" "}
    assert content_hash(changed) != content_hash(BASE)


def test_changes_when_a_file_is_added_removed_or_renamed() -> None:
    base = content_hash(BASE)
    assert content_hash({**BASE, "README.md": b""}) != base
    assert content_hash({k: v for k, v in BASE.items() if k != "tests/a.yaml"}) != base
    renamed = {k if k != "tests/a.yaml" else "tests/b.yaml": v for k, v in BASE.items()}
    assert content_hash(renamed) != base


@pytest.mark.parametrize("name", ["manifest.yaml", "bundle.sig"])
def test_unchanged_by_manifest_and_signature(name: str) -> None:
    assert content_hash({**BASE, name: b"anything else"}) == content_hash(BASE)


def test_boundaries_are_unambiguous() -> None:
    # Moving bytes between name and content must not collide.
    assert content_hash({"ab": b"c"}) != content_hash({"a": b"bc"})


def test_nested_manifest_is_hashed() -> None:
    assert content_hash({**BASE, "tests/manifest.yaml": b"x"}) != content_hash(BASE)
