"""`gateway ab report MODEL`: the A/B report of a model's arms, as the admin API gives it.

Reads the data directory (event store, audit log, policy bundle in force); safe while
the gateway runs. It only reports: a guardrail's `stop` is applied by the gateway
(`GET /v1/admin/experiments/{model}`), which records the decision before it acts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings
from gateway.errors import ConfigurationError, GatewayError

ab_app = typer.Typer(help="A/B experiments: reports that decide.", no_args_is_help=True)


@ab_app.command("report")
def ab_report(
    model: Annotated[str, typer.Argument(help="Model name, as the policy bundle names it")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as one HTML page here")
    ] = None,
) -> None:
    """Per arm: impressions, clicks, CTR and its interval, lift, the always-valid test,
    guardrails."""
    report = build_report(model, data_dir, config)
    if html is not None:
        from models.experiments.html import render_html

        html.write_text(render_html(report), encoding="utf-8")
    typer.echo(json.dumps(report, indent=2) if as_json else summary(report))


def build_report(model: str, data_dir: Path | None, config: Path | None) -> dict[str, Any]:
    from audit.factory import open_audit_log
    from gateway.event_store import open_event_store
    from models.experiments import Experiments
    from policies.factory import open_policy

    settings = build_settings(data_dir, config)
    policy = open_policy(settings)
    if policy.in_force().data.model(model) is None:
        raise ConfigurationError("the policy bundle names no such model")
    audit_log = open_audit_log(settings) if settings.audit.enabled else None
    experiments = Experiments(
        open_event_store(settings), audit=audit_log, policy=policy, clock=_now
    )
    try:
        return experiments.report(model)
    except GatewayError as exc:  # the event store or the audit log cannot be read
        raise ConfigurationError(f"report: {exc.log_cause or exc}") from exc
    finally:
        experiments.close()
        if audit_log is not None:
            audit_log.store.close()


def _now() -> float:
    import time

    return time.time()


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"model {report['model']}: alpha {report['alpha']}, "
        f"guardrail action {report['guardrail_action']}",
        f"{'arm':<6}{'version':<9}{'impr':>8}{'clicks':>8}{'CTR':>9}  {'95% interval':<17}"
        f"{'lift':>8}{'p (AV)':>9}  {'decision':<9}{'guardrails':<12}stopped",
    ]
    for row in report["arms"]:
        versus = row.get("versus_control") or {}
        interval = row["ctr_interval"]
        lines.append(
            f"{row['variant'] + ('*' if row['control'] else ''):<6}{row['version']:<9}"
            f"{row['impressions']:>8}{row['clicks']:>8}{_num(row['ctr']):>9}  "
            f"{(f'{interval[0]:.4f}-{interval[1]:.4f}' if interval else '-'):<17}"
            f"{_num(versus.get('lift')):>8}{_num(versus.get('p_value')):>9}  "
            f"{versus.get('decision', 'control'):<9}"
            f"{', '.join(row['guardrails']['breached']) or 'ok':<12}"
            f"{'yes' if row['stopped'] else 'no'}"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
