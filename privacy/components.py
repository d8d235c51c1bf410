"""Everything the privacy stages and routes need, built once per app from the settings."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from audit import AuditLog
from gateway.errors import ConfigurationError
from gateway.pipeline import Stage
from gateway.settings import Settings
from models import FeatureStore
from policies import DataPolicy, PolicyInForce
from privacy.consent_stage import ConsentStage
from privacy.consent_store import (
    ConsentStore,
    ConsentStoreError,
    PostgresConsentStore,
    SqliteConsentStore,
)
from privacy.feature_erasure import reapply
from privacy.nlp import OfflineAnalyzer, build_analyzer, describe
from privacy.redact_stage import RedactStage
from privacy.redaction import Redactor
from privacy.subjects import SubjectRows, SubjectService

log = logging.getLogger("gateway.privacy")

@functools.cache
def shared_analyzer(ner_model: str | None) -> OfflineAnalyzer:
    """One analyzer per process and NER model: building it costs seconds, and it holds no
    request state (apps built in the same process, e.g. by tests, share it)."""
    analyzer = build_analyzer(ner_model)
    analyzer.engine.analyze("warm up jane@example.com 212-555-0199", language="en")
    return analyzer


def open_consent_store(settings: Settings) -> ConsentStore:
    cfg = settings.privacy
    keys = settings.derived_keys
    try:
        if cfg.consent_postgres_dsn is not None:
            return PostgresConsentStore(
                cfg.consent_postgres_dsn.get_secret_value(),
                cfg.consent_postgres_schema,
                keys,
                timeout_s=settings.limits.store_timeout_s,
            )
        return SqliteConsentStore(settings.resolve(cfg.consent_sqlite_path), keys)
    except ConsentStoreError as exc:
        raise ConfigurationError(str(exc)) from exc


def undetectable(analyzer: OfflineAnalyzer, data: DataPolicy) -> dict[str, list[str]]:
    """Entities a jurisdiction asks for that this engine cannot detect (e.g. PERSON, no NER)."""
    found: dict[str, list[str]] = {}
    for region in ("default", "eu", "california"):
        wanted = data.jurisdictions.for_region(region).entities(analyzer.entities)
        missing = sorted(wanted - set(analyzer.entities))
        if missing:
            found[region] = missing
    return found


@dataclass
class Privacy:
    analyzer: OfflineAnalyzer
    redactor: Redactor
    executor: ThreadPoolExecutor
    consent: ConsentStore
    subjects: SubjectService
    policy: PolicyInForce
    model_name: str
    timeout_s: float

    def rank_stages(self) -> tuple[Stage, ...]:
        return (
            ConsentStage(self.consent, self.policy, model_name=self.model_name),
            self.redact_stage(),
        )

    def redact_stage(self) -> RedactStage:
        return RedactStage(
            self.redactor, self.policy, timeout_s=self.timeout_s, executor=self.executor
        )

    def describe(self) -> dict[str, object]:
        """The running engine and what it can detect (for `/readyz` and the doctor)."""
        return {
            **describe(self.analyzer),
            "consent_store": self.consent.kind,
            "undetectable": undetectable(self.analyzer, self.policy.in_force().data),
        }

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.consent.close()


def subject_service(
    settings: Settings,
    consent: ConsentStore,
    *,
    audit: AuditLog | None,
    features: FeatureStore | None,
    clock: Callable[[], float] = time.time,
    rows: Sequence[SubjectRows] = (),
) -> SubjectService:
    """Access and erasure over the configured feature store (the gateway and the CLI)."""
    return SubjectService(
        consent,
        audit=audit,
        features=features,
        features_path=(
            settings.resolve(settings.model.features_path) if features is not None else None
        ),
        features_tenant=settings.model.features_tenant,
        clock=clock,
        rows=rows,
    )


def open_privacy(
    settings: Settings,
    *,
    policy: PolicyInForce,
    audit: AuditLog | None,
    features: FeatureStore | None,
    clock: Callable[[], float] = time.time,
    rows: Sequence[SubjectRows] = (),
) -> Privacy:
    cfg = settings.privacy
    analyzer = shared_analyzer(cfg.ner_model)
    consent = open_consent_store(settings)
    if features is not None:
        features_path = settings.resolve(settings.model.features_path)
        # Erasures made before this start (or before a restored snapshot) apply again.
        erased = consent.erased_feature_handles()
        owner = settings.model.features_tenant
        if erased:
            n = reapply(
                features_path, features, lambda u: consent.feature_handle(owner, u) in erased
            )
            if n:
                log.warning("re-applied %d feature-store erasure(s) at start-up", n)
    missing = undetectable(analyzer, policy.in_force().data)
    if missing:
        # Loud, not fatal: a bundle may name entities of recognizers this build lacks.
        log.error(
            "PII NOT REDACTED: the policy asks for entities this engine cannot detect %s",
            missing,
        )
    return Privacy(
        analyzer=analyzer,
        redactor=Redactor(
            analyzer, keys=settings.derived_keys, cache_size=cfg.redaction_cache_size
        ),
        executor=ThreadPoolExecutor(cfg.redaction_threads, thread_name_prefix="pii"),
        consent=consent,
        subjects=subject_service(
            settings, consent, audit=audit, features=features, clock=clock, rows=rows
        ),
        policy=policy,
        model_name=settings.model.name,
        timeout_s=cfg.redaction_timeout_ms / 1000.0,
    )
