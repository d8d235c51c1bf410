"""The `gateway` root command: the sub-command groups, `init`, `serve`, `token`, and
`main`, the process boundary where every failure becomes one `error:` line on stderr
and a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.ab import ab_app
from gateway.cli.audit import audit_app
from gateway.cli.keys import keys_app
from gateway.cli.models import models_app
from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings, resolve_data_dir
from gateway.cli.policy import policy_app
from gateway.cli.privacy import privacy_app
from gateway.errors import ConfigurationError

app = typer.Typer(
    name="gateway",
    help="Secure, compliance-focused gateway for ONNX ranking models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Help lists the groups in this order.
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(privacy_app, name="privacy")
app.add_typer(ab_app, name="ab")


@app.command()
def init(data_dir: DataDirOpt = None) -> None:
    """Create keys, client secrets, the demo model and a default config (never overwrites)."""
    from gateway.datadir import init_data_dir

    report = init_data_dir(resolve_data_dir(data_dir))
    typer.echo(f"data directory: {report.data_dir}")
    typer.echo(f"config: {report.config}")
    for path in report.created:
        typer.echo(f"created: {path}")
    for client, secret_file in report.client_secrets.items():
        typer.echo(f"client '{client}': secret in {secret_file}")


@app.command()
def serve(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="Also serve OIP v2 gRPC on this port (e.g. 8081)")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve HTTPS only: PEM certificate (then intermediates)")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The certificate's PEM private key")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="Mutual TLS: verify client certificates against this CA")
    ] = None,
    init_if_missing: Annotated[
        bool, typer.Option("--init", help="Run `init` first if the data directory is new")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Worker processes on one socket (default: the number of cores; "
            "1: one process, no supervisor)",
        ),
    ] = None,
) -> None:
    """Run the gateway (uvicorn; a supervisor and N worker processes with --workers N)."""
    from gateway.logs import configure_logging
    from gateway.server import serve_inputs
    from gateway.workers.supervisor import default_workers

    if init_if_missing:
        init(data_dir)
    inputs = serve_inputs(data_dir, config, host, port, grpc_port, tls_cert, tls_key, tls_client_ca)
    settings = inputs.settings()
    configure_logging(settings.log_level, settings.telemetry.log_format)
    count = workers if workers is not None else default_workers()
    if count == 1:
        import uvicorn

        from gateway.app import create_app
        from gateway.server import server_config

        uvicorn.Server(server_config(settings, create_app(settings))).run()
        return
    from gateway.server import serve_workers

    raise typer.Exit(serve_workers(inputs, settings, count))


@app.command()
def token(
    client: Annotated[str, typer.Option("--client", help="Client id from the config")] = "demo",
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="Scope to request (repeatable)")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Mint an access token from the embedded issuer and print it."""
    from security.issuer import EmbeddedIssuer, load_signing_key

    settings = build_settings(data_dir, config)
    if not settings.issuer.enabled:
        raise ConfigurationError("the embedded issuer is disabled (issuer.enabled = false)")
    issuer = EmbeddedIssuer(
        settings.issuer,
        issuer_url=settings.issuer_url,
        signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
    )
    found = issuer.client(client)
    if found is None:
        raise ConfigurationError(f"unknown client '{client}'")
    scopes = tuple(scope) if scope else None
    if scopes is not None and not set(scopes) <= set(found.scopes):
        raise ConfigurationError(
            f"client '{client}' may not have scope(s) {sorted(set(scopes) - set(found.scopes))}"
        )
    typer.echo(issuer.mint(found, scopes)["access_token"])


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        # Without standalone mode, click returns typer.Exit's code instead of raising it.
        result = command.main(args=argv, prog_name="gateway", standalone_mode=False)
    except typer.TyperException as exc:
        # Typer vendors click; its usage errors carry format_message() and exit_code.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"error: {message}", err=True)
        return int(getattr(exc, "exit_code", 2) or 2)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except Exception as exc:
        # Last resort at the process boundary: an operator gets one line and a non-zero
        # exit, never a traceback (which may quote key paths or data). Known failures
        # are mapped to ConfigurationError above; this catches what slipped through.
        first_line = (str(exc).splitlines() or [""])[0][:200]
        typer.echo(f"error: unexpected {type(exc).__name__}: {first_line}", err=True)
        return 1
    return result if isinstance(result, int) else 0
