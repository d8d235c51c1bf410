"""Real bundles on disk: the shipped default, and editable copies of it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from policies.bundle import PolicyBundle, load_bundle, rehash

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "policies" / "bundles" / "default"


@pytest.fixture(scope="session")
def default_bundle() -> PolicyBundle:
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A private copy of the default bundle directory, safe to edit."""
    return Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))


EditBundle = Callable[..., Path]


@pytest.fixture
def edit(bundle_dir: Path) -> EditBundle:
    """Rewrite one file of the copy (``old`` → ``new``, or whole ``text``), then rehash.

    Rehashing keeps the content hash right so that each test reaches the check it
    means to exercise; pass ``rehash_after=False`` to test the hash check itself.
    """

    def apply(
        name: str,
        old: str | None = None,
        new: str = "",
        *,
        text: str | None = None,
        rehash_after: bool = True,
    ) -> Path:
        path = bundle_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            current = path.read_text(encoding="utf-8")
            assert old is not None
            assert old in current, f"{old!r} not in {name}"
            text = current.replace(old, new, 1)
        path.write_text(text, encoding="utf-8")
        if rehash_after:
            rehash(bundle_dir)
        return bundle_dir

    return apply
