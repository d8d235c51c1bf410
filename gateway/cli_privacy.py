"""`gateway privacy ...`: what the PII engine can detect, checked against the bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gateway.errors import ConfigurationError

privacy_app = typer.Typer(help="Inspect the PII redaction engine.", no_args_is_help=True)


@privacy_app.command("doctor")
def doctor(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    config: Annotated[Path | None, typer.Option("--config")] = None,
) -> None:
    """Build the offline engine as `serve` would; list the entities it detects, and warn
    about entities a jurisdiction of the bundle asks for that it cannot detect."""
    from gateway.cli import _settings
    from policies.bundle import load_bundle
    from policies.errors import PolicyError
    from privacy.components import shared_analyzer, undetectable
    from privacy.nlp import describe

    settings = _settings(data_dir, config)
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
