"""The keyring: private key files, wrapped keys bound to their owner, rotation, deletion."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from security.keyring import (
    KeyProvider,
    KeyringError,
    KeyUnwrapError,
    LocalKeyring,
    StaticKeyProvider,
    UnknownKeyError,
    WrappedKey,
    open_keyring,
    rewrap,
)

DEK = bytes(range(32))


@pytest.fixture
def ring(tmp_path: Path) -> LocalKeyring:
    return open_keyring(tmp_path / "keys", create=True, clock=lambda: 1_800_000_000.0)


def test_keys_are_private_files_and_the_state_names_them(ring: LocalKeyring) -> None:
    kek = ring.current_key_id()
    path = ring.directory / "kek" / f"{kek}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring.state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    state = json.loads(ring.state_file.read_text())
    assert state["keys"] == [{"id": kek, "created": "2027-01-15T08:00:00Z", "state": "active"}]
    assert path.read_bytes() not in ring.state_file.read_bytes()
    assert isinstance(ring, KeyProvider)


def test_wrap_unwrap_binds_the_associated_data(ring: LocalKeyring) -> None:
    wrapped = ring.wrap(DEK, b"model a")
    assert DEK not in wrapped.blob
    assert ring.unwrap(wrapped, b"model a") == DEK
    with pytest.raises(KeyUnwrapError):
        ring.unwrap(wrapped, b"model b")
    flipped = bytearray(wrapped.blob)
    flipped[-1] ^= 1
    with pytest.raises(KeyUnwrapError):
        ring.unwrap(WrappedKey(wrapped.kek_id, bytes(flipped)), b"model a")
    with pytest.raises(KeyUnwrapError, match="truncated"):
        ring.unwrap(WrappedKey(wrapped.kek_id, wrapped.blob[:20]), b"model a")


def test_wrapped_key_json_round_trip_and_refusals() -> None:
    wrapped = WrappedKey("kek-1", b"\x01" * 60)
    assert WrappedKey.from_json(wrapped.to_json()) == wrapped
    for bad in ([], {"kek_id": "k"}, {"kek_id": "k", "wrapped": "%%%"}):
        with pytest.raises(KeyringError):
            WrappedKey.from_json(bad)


def test_rotation_retires_the_old_key_which_still_unwraps(ring: LocalKeyring) -> None:
    old = ring.current_key_id()
    wrapped = ring.wrap(DEK, b"x")
    new = ring.rotate()
    assert new != old
    assert {k.id: k.state for k in ring.entries()} == {old: "retired", new: "active"}
    assert ring.unwrap(wrapped, b"x") == DEK
    moved = rewrap(ring, wrapped, b"x")
    assert moved.kek_id == new
    assert ring.unwrap(moved, b"x") == DEK
    assert rewrap(ring, moved, b"x") is moved  # already current: untouched


def test_delete_only_retired_keys_and_then_they_are_gone(ring: LocalKeyring) -> None:
    old = ring.current_key_id()
    wrapped = ring.wrap(DEK, b"x")
    with pytest.raises(KeyringError, match="active"):
        ring.delete(old)
    ring.rotate()
    ring.delete(old)
    assert not (ring.directory / "kek" / f"{old}.key").exists()
    with pytest.raises(UnknownKeyError):
        ring.unwrap(wrapped, b"x")
    with pytest.raises(UnknownKeyError):
        open_keyring(ring.directory).unwrap(wrapped, b"x")


def test_a_second_process_sees_a_rotation(ring: LocalKeyring) -> None:
    other = open_keyring(ring.directory)
    new = ring.rotate()
    assert other.current_key_id() == new
    wrapped = ring.wrap(DEK, b"x")
    assert other.unwrap(wrapped, b"x") == DEK


def test_key_ids_cannot_escape_the_key_directory(ring: LocalKeyring) -> None:
    with pytest.raises(UnknownKeyError):
        ring.unwrap(WrappedKey("../../etc/passwd", b"\0" * 40), b"x")


def test_legacy_audit_kek_is_adopted_and_shredded_with_its_key(tmp_path: Path) -> None:
    legacy = tmp_path / "audit-kek.bin"
    legacy.write_bytes(os.urandom(32))
    provider = StaticKeyProvider("local-kek-1", legacy.read_bytes())
    old_wrap = provider.wrap(DEK, b"subject")
    ring = open_keyring(tmp_path / "keys", legacy_audit_kek=legacy, create=True)
    assert ring.current_key_id() == "local-kek-1"  # an old data dir keeps working unchanged
    assert ring.unwrap(old_wrap, b"subject") == DEK
    ring.rotate()
    ring.delete("local-kek-1")
    assert not legacy.exists()
    # Reopening does not resurrect it.
    again = open_keyring(tmp_path / "keys", legacy_audit_kek=legacy)
    assert "local-kek-1" not in {k.id for k in again.entries()}


def test_corrupt_state_is_refused(tmp_path: Path) -> None:
    ring = open_keyring(tmp_path / "keys", create=True)
    ring.state_file.write_text(
        '{"keys": [{"id": "a", "created": "x", "state": "active"},'
        ' {"id": "b", "created": "x", "state": "active"}]}'
    )
    with pytest.raises(KeyringError, match="more than one active"):
        LocalKeyring(ring.directory)
    ring.state_file.write_text("not json")
    with pytest.raises(KeyringError, match="unreadable"):
        LocalKeyring(ring.directory)


def test_empty_keyring_has_no_current_key(tmp_path: Path) -> None:
    with pytest.raises(UnknownKeyError, match="no active key"):
        open_keyring(tmp_path / "keys").wrap(DEK, b"x")
