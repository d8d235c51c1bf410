"""Build the audit log a configuration asks for (SQLite by default, PostgreSQL with a DSN)."""

from __future__ import annotations

import time
from collections.abc import Callable

from audit.keys import load_signer
from audit.log import AuditLog
from audit.sqlite_store import SqliteAuditStore
from audit.store import AuditStore, StoreError
from audit.subjects import SubjectKeys
from gateway.derivation import Purpose
from gateway.errors import ConfigurationError
from gateway.settings import Settings
from security import KeyProvider, keyring_from_settings


def store_timeout_s(settings: Settings) -> float:
    """How long one store call may take (gateway.settings.Limits.store_timeout_s)."""
    return settings.limits.store_timeout_s


def open_store(settings: Settings) -> AuditStore:
    cfg = settings.audit
    timeout_s = store_timeout_s(settings)
    try:
        if cfg.postgres_dsn is not None:
            from audit.postgres_store import PostgresAuditStore

            return PostgresAuditStore(
                cfg.postgres_dsn.get_secret_value(), schema=cfg.postgres_schema, timeout_s=timeout_s
            )
        return SqliteAuditStore(settings.resolve(cfg.sqlite_path), busy_timeout_s=timeout_s)
    except StoreError as exc:
        raise ConfigurationError(str(exc)) from exc


def subject_keys(settings: Settings, store: AuditStore, keyring: KeyProvider) -> SubjectKeys:
    """Per-subject keys: wrapped by the keyring's KEKs, looked up by a keyed handle."""
    return SubjectKeys(
        store, keyring=keyring, handle_key=settings.derived_keys[Purpose.AUDIT_SUBJECT_HANDLE]
    )


def open_audit_log(settings: Settings, *, clock: Callable[[], float] = time.time) -> AuditLog:
    cfg = settings.audit
    signer = load_signer(settings.resolve(cfg.signing_key_file))
    # Subject keys are wrapped by the keyring's KEKs (the old keys/audit-kek.bin is adopted).
    keyring = keyring_from_settings(settings)
    store = open_store(settings)
    subjects = subject_keys(settings, store, keyring)
    return AuditLog(
        store,
        signer=signer,
        subject_keys=subjects,
        clock=clock,
        max_batch=cfg.max_batch,
        commit_delay_s=cfg.commit_delay_ms / 1000,
        # The batch ahead of a record, then its own: one bounded store call each.
        write_bound_s=2 * store_timeout_s(settings) + 0.25,
    )
