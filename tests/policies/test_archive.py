"""Packed bundles: deterministic, loadable, and refusing anything that escapes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from policies.archive import pack_bundle, pack_files, read_directory
from policies.bundle import load_bundle
from policies.errors import PolicyError
from policies.testing import run_tests
from tests.policies.conftest import DEFAULT_BUNDLE


def test_round_trip(tmp_path: Path) -> None:
    packed = pack_bundle(DEFAULT_BUNDLE, tmp_path / "default.tar.gz")
    from_tar = load_bundle(packed)
    from_dir = load_bundle(DEFAULT_BUNDLE)
    assert from_tar.content_hash == from_dir.content_hash
    assert (from_tar.name, from_tar.version) == (from_dir.name, from_dir.version)
    assert from_tar.source == packed
    assert run_tests(from_tar).passed


def test_packing_is_deterministic(tmp_path: Path) -> None:
    first = pack_bundle(DEFAULT_BUNDLE, tmp_path / "a.tar.gz").read_bytes()
    second = pack_bundle(DEFAULT_BUNDLE, tmp_path / "b.tar.gz").read_bytes()
    assert first == second
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    files = read_directory(DEFAULT_BUNDLE)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    out = tmp_path / "evil.tar.gz"
    out.write_bytes(raw.getvalue())
    return out


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../escape.yaml", "path traversal"),
        ("tests/../../escape.yaml", "path traversal"),
        ("/etc/cron.d/x", "absolute path"),
    ],
)
def test_unsafe_paths_are_refused(tmp_path: Path, name: str, message: str) -> None:
    path = _tar_with(tmp_path, tarfile.TarInfo(name), b"x")
    with pytest.raises(PolicyError, match=rf"^evil.tar.gz: {message}"):
        load_bundle(path)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    member = tarfile.TarInfo("tests/link.yaml")
    member.type = kind
    member.linkname = "/etc/passwd"
    with pytest.raises(PolicyError, match="only regular files"):
        load_bundle(_tar_with(tmp_path, member))


def test_symlink_in_directory_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "tests" / "link.yaml").symlink_to(bundle_dir / "data.yaml")
    with pytest.raises(PolicyError, match="symbolic links"):
        load_bundle(bundle_dir)


def test_not_a_tar(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not gzip at all")
    with pytest.raises(PolicyError, match=r"^bogus\.tar\.gz: cannot read bundle archive"):
        load_bundle(bogus)


def test_pack_files_order_does_not_matter() -> None:
    assert pack_files({"b": b"2", "a": b"1"}) == pack_files({"a": b"1", "b": b"2"})
