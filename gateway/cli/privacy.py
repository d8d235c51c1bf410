"""`gateway privacy ...`: what the PII engine can detect, checked against the bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.options import build_settings
from gateway.errors import ConfigurationError, GatewayError

privacy_app = typer.Typer(help="Inspect the PII redaction engine.", no_args_is_help=True)


@privacy_app.command("doctor")
def doctor(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    config: Annotated[Path | None, typer.Option("--config")] = None,
) -> None:
    """Build the offline engine as `serve` would; list the entities it detects, and warn
    about entities a jurisdiction of the bundle asks for that it cannot detect."""
    from policies.bundle import load_bundle
    from policies.errors import PolicyError
    from privacy.components import shared_analyzer, undetectable
    from privacy.nlp import describe

    settings = build_settings(data_dir, config)
    analyzer = shared_analyzer(settings.privacy.ner_model)
    try:
        data = load_bundle(settings.resolve(settings.policy.bundle)).data
    except (PolicyError, OSError) as exc:
        raise ConfigurationError(f"policy bundle: {exc}") from exc
    report = {**describe(analyzer), "undetectable": undetectable(analyzer, data)}
    typer.echo(json.dumps(report, indent=2))
    if report["undetectable"]:
        typer.echo(
            "warning: some jurisdictions list entities this engine cannot detect "
            "(install a spaCy NER package and set privacy.ner_model)",
            err=True,
        )


@privacy_app.command("erase")
def erase(
    subject: Annotated[str, typer.Option("--subject", help="The data subject's user id")],
    tenant: Annotated[str | None, typer.Option("--tenant")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    config: Annotated[Path | None, typer.Option("--config")] = None,
) -> None:
    """Full erasure with the gateway stopped, as `DELETE /v1/subjects/{id}` does: feature
    row, consent history, outcome events, audit subject key (idempotent)."""
    import asyncio

    from audit.factory import open_audit_log
    from gateway.event_store import open_event_store
    from models.features import FeatureStore
    from privacy.components import open_consent_store, subject_service

    settings = build_settings(data_dir, config)
    try:
        features = FeatureStore.load(settings.resolve(settings.model.features_path))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"feature store: {exc}") from exc
    consent = open_consent_store(settings)
    audit_log = open_audit_log(settings) if settings.audit.enabled else None
    events = open_event_store(settings)
    service = subject_service(settings, consent, audit=audit_log, features=features, rows=(events,))

    async def run() -> dict[str, object]:
        try:
            return await service.erase(tenant, subject)
        finally:
            if audit_log is not None:
                await audit_log.close()
                audit_log.store.close()
            consent.close()
            events.close()

    try:
        typer.echo(json.dumps(asyncio.run(run())))
    except GatewayError as exc:
        raise ConfigurationError(f"erasure incomplete: {exc.log_cause or exc}") from exc
