"""Key rotation re-wraps audit subject keys on every backend; sealed fields still open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit.store import AuditStore
from audit.subjects import SubjectKeyError, SubjectKeys
from security.keyring import open_keyring


def test_rewrap_moves_every_subject_to_the_new_kek(store: AuditStore, tmp_path: Path) -> None:
    keyring = open_keyring(tmp_path / "keys", create=True)
    old = keyring.current_key_id()
    subjects = SubjectKeys(store, keyring=keyring, handle_key=os.urandom(32))
    handles = [subjects.handle("t1", f"user-{i}") for i in range(25)]
    keys = [subjects.get_or_create(h) for h in handles]
    sealed = SubjectKeys.seal(keys[3], "req-3", {"user_id": "user-3"})
    assert store.subject_key_ids() == {old: 25}
    erased = handles.pop()
    subjects.destroy(erased)

    new = keyring.rotate()
    fresh = SubjectKeys(store, keyring=keyring, handle_key=b"unused")
    done, total = fresh.rewrap_all(batch=7)  # several pages
    assert (done, total) == (24, 24)
    assert store.subject_key_ids() == {new: 24}
    assert fresh.rewrap_all() == (0, 24)  # idempotent

    keyring.delete(old)
    for handle, key in zip(handles, keys, strict=False):
        found = fresh.lookup(handle)
        assert found is not None
        assert found.key == key.key  # same subject key: same pseudonym, same sealed data
        assert found.pseudonym == key.pseudonym
    opened = SubjectKeys.unseal(fresh.lookup(handles[3]), "req-3", sealed)  # type: ignore[arg-type]
    assert opened == {"user_id": "user-3"}
    assert fresh.lookup(erased) is None  # erasure stays erasure


def test_rows_left_under_a_deleted_kek_do_not_open(store: AuditStore, tmp_path: Path) -> None:
    keyring = open_keyring(tmp_path / "keys", create=True)
    old = keyring.current_key_id()
    subjects = SubjectKeys(store, keyring=keyring, handle_key=os.urandom(32))
    handle = subjects.handle(None, "alice")
    subjects.get_or_create(handle)
    keyring.rotate()
    keyring.delete(old)  # deleted without re-wrapping: the operator skipped `keys rotate`
    with pytest.raises(SubjectKeyError):
        SubjectKeys(store, keyring=keyring, handle_key=b"x").lookup(handle)
