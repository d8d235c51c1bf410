"""Data-subject rights: access (one JSON export) and erasure.

Who the subject is: the `user_id` of `/v1/rank` within the caller's tenant (the
token's tenant claim; none for the embedded issuer's demo clients). The audit
log, the consent store and these endpoints all key the subject by that same
(tenant, user_id) pair:
- audit records carry HMAC(subject key, "pseudonym"), the subject key being found
  by HMAC(handle key, tenant || 0 || user_id) (audit.subjects);
- the consent store keeps HMAC(consent handle key, tenant || 0 || user_id);
- the feature store is shared by all tenants and keyed by user_id alone.

Record before effect: a consent write and an erasure each append their event to
the audit log durably before anything changes; if that append fails, nothing
changes and the caller gets 503 audit-unavailable.

Consent write: the "consent" event (subject pseudonym, tenant, and the entries as
stored: purpose, granted, lawful basis, jurisdiction, source, policy version; no
raw id), then the consent store.

Erasure (idempotent): the erasure event (the pseudonym about to die), then the
audit subject key (crypto-shredding; the log still verifies), then the consent
history under an erasure marker, then the subject's rows in other stores
(outcome events, keyed by the consent handle), then the feature row (file and
memory). A failure in any step is a 503 and the call can simply be repeated: a step already
done is a no-op, and a repeated event is one more record of the same intent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from audit import (
    KIND_CONSENT,
    AppendFailed,
    AuditLog,
    RecordError,
    StoreError,
    SubjectKeyError,
    parse,
    subject_pseudonym,
)
from gateway.errors import AuditUnavailable
from models import FeatureStore
from privacy.consent_store import ConsentEntry, ConsentStore, ConsentStoreError
from privacy.errors import ConsentUnavailable
from privacy.feature_erasure import erase_user


class SubjectRows(Protocol):
    """Other stores of a subject's rows, keyed by the consent store's subject handle
    (models.experiments' outcome events): erasure deletes them after the consent history.
    `erase_owner` raises an `OSError` when its store fails."""

    def erase_owner(self, owner: bytes) -> int: ...


class SubjectService:
    def __init__(
        self,
        consent: ConsentStore,
        *,
        audit: AuditLog | None,
        features: FeatureStore | None,
        features_path: Path | None,
        features_tenant: str | None = None,
        clock: Callable[[], float] = time.time,
        rows: Sequence[SubjectRows] = (),
    ) -> None:
        self.consent = consent
        self._rows = tuple(rows)
        self._audit = audit
        self._features = features
        self._features_path = features_path
        # Only this tenant's subjects have rows in the feature store (settings.model).
        self._features_tenant = features_tenant
        self._clock = clock
        # Told of each consent write and erasure done here ("consent" | "erasure", tenant,
        # subject): `serve --workers N` tells the other workers (gateway.control).
        self.observers: list[Callable[[str, str | None, str], Awaitable[None]]] = []

    async def _changed(self, kind: str, tenant: str | None, subject_id: str) -> None:
        for observer in self.observers:
            await observer(kind, tenant, subject_id)

    async def apply_elsewhere(self, kind: str, tenant: str | None, subject_id: str) -> None:
        """Another process sharing these stores changed the subject (and recorded it): drop
        what this one keeps in memory, the erased subject's audit key and feature row too."""
        self.consent.invalidate()
        if kind != "erasure":
            return
        if self._audit is not None:
            handle = self._audit.subjects.handle(tenant, subject_id)
            await asyncio.to_thread(self._audit.subjects.destroy, handle)
        if self._features is not None and tenant == self._features_tenant:
            self._features.forget_user(subject_id)  # the file is the other process's work

    # -- consent -------------------------------------------------------------

    async def record_consent(
        self, tenant: str | None, subject_id: str, entries: list[ConsentEntry]
    ) -> dict[str, ConsentEntry]:
        """Log the consent change durably, then store it; the subject's current consent.

        If the event cannot be appended, nothing is stored (AuditUnavailable, 503).
        """
        if self._audit is not None:  # None: dev mode with the audit log switched off
            try:
                key = await self._audit.subject_key(tenant, subject_id)
                await self._audit.record_event(
                    KIND_CONSENT,
                    # The action that made the change: the record reads like the request's.
                    action="consent.write",
                    tenant=tenant,
                    subject=key.pseudonym,
                    consents=[e.as_json() for e in entries],
                )
            except (AppendFailed, StoreError, SubjectKeyError) as exc:
                raise AuditUnavailable(
                    log_cause=f"consent not recorded, nothing stored: {exc}"
                ) from exc
        try:
            await asyncio.to_thread(self.consent.record, tenant, subject_id, entries)
            current: dict[str, ConsentEntry] = await asyncio.to_thread(
                self.consent.current, tenant, subject_id
            )
        except ConsentStoreError as exc:
            raise ConsentUnavailable(log_cause=f"consent store: {exc}") from exc
        await self._changed("consent", tenant, subject_id)
        return current

    # -- access --------------------------------------------------------------

    async def export(self, tenant: str | None, subject_id: str) -> dict[str, Any]:
        try:
            current = await asyncio.to_thread(self.consent.current, tenant, subject_id)
            history = await asyncio.to_thread(self.consent.history, tenant, subject_id)
            erased = await asyncio.to_thread(self.consent.erased, tenant, subject_id)
        except ConsentStoreError as exc:
            raise ConsentUnavailable(log_cause=f"consent store: {exc}") from exc
        audit: dict[str, Any] = {"pseudonym": None, "records": []}
        if self._audit is not None:
            try:
                audit = await asyncio.to_thread(self._audit_records, tenant, subject_id)
            except (StoreError, SubjectKeyError) as exc:
                raise AuditUnavailable(log_cause=f"subject export: {exc}") from exc
        return {
            "subject": {"id": subject_id, "tenant": tenant},
            "generated_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "erasure_requested_before": erased,
            "consent": {
                "current": [e.as_json() for e in current.values()],
                "history": [e.as_json() for e in history],
            },
            "audit": audit,
            "features": self._feature_values(tenant, subject_id),
        }

    def _audit_records(self, tenant: str | None, subject_id: str) -> dict[str, Any]:
        """Blocking: scan the log for the subject's pseudonym and open each record."""
        assert self._audit is not None  # noqa: S101 - checked by the caller
        pseudonym = subject_pseudonym(self._audit, tenant, subject_id)
        if pseudonym is None:
            # Never seen, or erased: erasure destroyed the only link from id to records.
            return {"pseudonym": None, "records": []}
        records = []
        for leaf in self._audit.store.iter_leaves():
            if leaf.payload is None:
                continue  # purged past retention
            try:
                record = parse(leaf.payload)
            except RecordError:
                continue
            if record.get("subject") == pseudonym:
                opened = self._audit.open_record(leaf.payload, unseal=True)
                records.append({"index": leaf.index, **opened})
        return {"pseudonym": pseudonym, "records": records}

    def _feature_values(self, tenant: str | None, subject_id: str) -> dict[str, Any]:
        store = self._features
        if tenant != self._features_tenant:
            store = None  # another tenant's person of the same id: nothing of theirs here
        row = store.user_row(subject_id) if store is not None else None
        if store is None or row is None:
            return {"known": False, "values": {}}
        names = store.user_feature_names
        return {"known": True, "values": dict(zip(names, row.tolist(), strict=True))}

    # -- erasure -------------------------------------------------------------

    async def erase(self, tenant: str | None, subject_id: str) -> dict[str, Any]:
        # 1-2. The erasure event, durable, then the audit subject key (AuditLog.erase_subject):
        # if the event cannot be appended, nothing below happens.
        audit_key = False
        if self._audit is not None:
            try:
                audit_key = await self._audit.erase_subject(tenant, subject_id)
            except AppendFailed as exc:
                raise AuditUnavailable(
                    log_cause=f"erasure not recorded, nothing erased: {exc}"
                ) from exc
            except (StoreError, SubjectKeyError) as exc:
                raise AuditUnavailable(log_cause=f"audit erasure: {exc}") from exc
        # 3. The consent store's erasure marker before the feature row: it is what start-up
        # re-applies to the feature store, so a failure below is repaired by a retry or a
        # restart, never lost.
        try:
            consent_rows = await asyncio.to_thread(
                self.consent.erase, tenant, subject_id, int(self._clock() * 1000)
            )
        except ConsentStoreError as exc:
            raise ConsentUnavailable(log_cause=f"consent erasure: {exc}") from exc
        # 3b. Rows other stores keep under the subject's handle (outcome events): the handle
        # outlives the audit key, so a failure here is repaired by the retry.
        other_rows = 0
        for store in self._rows:
            try:
                other_rows += await asyncio.to_thread(
                    store.erase_owner, self.consent.handle(tenant, subject_id)
                )
            except OSError as exc:  # what SubjectRows raises when its store fails
                raise ConsentUnavailable(log_cause=f"subject rows erasure: {exc}") from exc
        # 4. The feature row.
        feature_row = False
        owned = tenant == self._features_tenant
        if owned and self._features is not None and self._features_path is not None:
            try:
                feature_row = await asyncio.to_thread(
                    erase_user, self._features_path, self._features, subject_id
                )
            except (OSError, ValueError) as exc:
                raise ConsentUnavailable(log_cause=f"feature erasure: {exc}") from exc
        await self._changed("erasure", tenant, subject_id)
        return {
            "erased": True,
            "feature_row_erased": feature_row,
            "consent_rows_deleted": consent_rows,
            "events_deleted": other_rows,
            "audit_key_destroyed": audit_key,
        }
