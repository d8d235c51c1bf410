"""The `gateway` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli_keys import keys_app
from gateway.cli_models import models_app
from gateway.cli_privacy import privacy_app
from gateway.errors import ConfigurationError
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from policies.bundle import PolicyBundle

app = typer.Typer(
    name="gateway",
    help="Secure, compliance-focused gateway for ONNX ranking models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
audit_app = typer.Typer(help="Verify, checkpoint and export the audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
policy_app = typer.Typer(help="Lint, test, sign and diff policy bundles.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(privacy_app, name="privacy")

BundleArg = Annotated[Path, typer.Argument(help="A bundle directory or packed .tar.gz")]


def _load_policy(path: Path) -> PolicyBundle:
    from policies.bundle import load_bundle
    from policies.errors import PolicyError

    if not path.exists():
        raise ConfigurationError(f"no such bundle: {path}")
    try:
        return load_bundle(path)
    except PolicyError as exc:
        raise ConfigurationError(f"bundle invalid: {exc}") from exc


@policy_app.command("lint")
def policy_lint(bundle: BundleArg) -> None:
    """Check manifest, content hash, data policy, Cedar syntax and schema, references."""

    loaded = _load_policy(bundle)
    signed = "signed" if loaded.signature else "UNSIGNED"
    typer.echo(
        f"ok: {loaded.name} {loaded.version} {loaded.content_hash} "
        f"({len(loaded.engine.policy_ids)} policies, {len(loaded.tests)} test cases, {signed})"
    )


@policy_app.command("test")
def policy_test(bundle: BundleArg) -> None:
    """Run the bundle's test cases; failures name the deciding policies."""
    from policies.testing import run_tests

    loaded = _load_policy(bundle)
    report = run_tests(loaded)
    typer.echo(report.render(), err=not report.passed)
    if not report.passed:
        raise typer.Exit(1)


@policy_app.command("sign")
def policy_sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key file (base64, raw)")],
) -> None:
    """Sign a bundle directory (writes bundle.sig over its content hash)."""
    from policies.errors import PolicyError
    from policies.signing import key_id, public_key_of, sign_bundle

    if not bundle.is_dir():
        raise ConfigurationError(f"not a bundle directory: {bundle}")
    private = _read_file(key).decode().strip()
    try:
        written = sign_bundle(bundle, private)
        kid = key_id(public_key_of(private))
    except PolicyError as exc:
        raise ConfigurationError(f"cannot sign: {exc}") from exc
    typer.echo(f"signed {bundle} with key {kid}: {written}")


@policy_app.command("verify")
def policy_verify(
    bundle: BundleArg,
    pubkey: Annotated[
        list[str], typer.Option("--pubkey", help="Trusted public key (base64), repeatable")
    ],
) -> None:
    """Verify a bundle's signature against trusted keys."""
    from policies.errors import PolicyError
    from policies.signing import verify_bundle_signature

    loaded = _load_policy(bundle)
    try:
        kid = verify_bundle_signature(loaded, pubkey)
    except PolicyError as exc:
        raise ConfigurationError(f"signature: {exc}") from exc
    typer.echo(f"ok: {loaded.content_hash} signed by trusted key {kid}")


@policy_app.command("diff")
def policy_diff(old: BundleArg, new: BundleArg) -> None:
    """Which test cases and which sampled decisions change from OLD to NEW."""
    from policies.diff import diff_bundles

    before, after = _load_policy(old), _load_policy(new)
    typer.echo(diff_bundles(before, after).render())


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $GATEWAY_DATA_DIR or .gateway)"),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML/YAML config (default: DATA_DIR/gateway.toml)")
]


def _data_dir(option: Path | None) -> Path:
    return option or Path(os.environ.get("GATEWAY_DATA_DIR") or ".gateway")


def _settings(data_dir: Path | None, config: Path | None, **overrides: object) -> Settings:
    """The process's one Settings object, built here and injected into everything else."""
    directory = _data_dir(data_dir)
    if config is None and not os.environ.get("GATEWAY_CONFIG_FILE"):
        default = directory / "gateway.toml"
        config = default if default.is_file() else None
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if config is not None:
        kwargs["config_file"] = config
    return load_settings(**kwargs)


@app.command()
def init(data_dir: DataDirOpt = None) -> None:
    """Create keys, client secrets, the demo model and a default config (never overwrites)."""
    from gateway.datadir import init_data_dir

    report = init_data_dir(_data_dir(data_dir))
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
    init_if_missing: Annotated[
        bool, typer.Option("--init", help="Run `init` first if the data directory is new")
    ] = False,
) -> None:
    """Run the gateway (uvicorn, one process)."""
    import uvicorn

    from gateway.app import create_app

    if init_if_missing:
        init(data_dir)
    settings = _settings(data_dir, config, host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    application = create_app(settings)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
    )


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

    settings = _settings(data_dir, config)
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


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output")] = False,
) -> None:
    """Re-hash every record, check every node, checkpoint signature and consistency."""
    from audit.factory import open_audit_log
    from audit.verify import LogDamaged, verify_store

    settings = _settings(data_dir, config)
    audit_log = open_audit_log(settings)

    def progress(done: int, total: int) -> None:
        if not quiet and total:
            typer.echo(f"verified {done}/{total} records", err=True)

    try:
        report = verify_store(audit_log.store, audit_log.verifier, progress=progress)
    except LogDamaged as exc:
        typer.echo(f"error: audit log damaged: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        audit_log.store.close()
    typer.echo(
        f"ok: {report.size} records, {report.checkpoints} checkpoints, "
        f"{report.purged_payloads} payloads purged by retention; origin {audit_log.origin}"
    )


@audit_app.command("checkpoint")
def audit_checkpoint(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Publish a signed checkpoint of the current log now and print it."""
    from audit.factory import open_audit_log
    from audit.log import CheckpointRefused

    audit_log = open_audit_log(_settings(data_dir, config))
    try:
        typer.echo(audit_log.publish_checkpoint().note.decode(), nl=False)
    except CheckpointRefused as exc:
        raise ConfigurationError(f"checkpoint refused: {exc}") from exc
    finally:
        audit_log.store.close()


@audit_app.command("purge")
def audit_purge(
    older_than_days: Annotated[
        int | None,
        typer.Option(
            min=1, help="Default: audit.retention_days, else the bundle's retention.audit_days"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete record payloads past retention; leaf hashes and proofs stay; the purge is logged."""
    import asyncio

    from audit.factory import open_audit_log

    settings = _settings(data_dir, config)
    days = older_than_days or settings.audit.retention_days
    if days is None and settings.policy.engine == "cedar":
        # The policy bundle sets retention, exactly as the running gateway reads it.
        days = _load_policy(settings.resolve(settings.policy.bundle)).data.retention.audit_days
    if days is None:
        raise ConfigurationError(
            "no retention period: pass --older-than-days or set audit.retention_days"
        )
    audit_log = open_audit_log(settings)

    async def purge() -> int:
        try:
            return await audit_log.purge_before(audit_log.now_ms() - days * 86_400_000)
        finally:
            await audit_log.close()
            audit_log.store.close()

    typer.echo(f"purged {asyncio.run(purge())} record payloads older than {days} days")


@audit_app.command("erase")
def audit_erase(
    subject: Annotated[str, typer.Option("--subject", help="The data subject's user id")],
    tenant: Annotated[str | None, typer.Option("--tenant")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Crypto-shred a data subject's key and log the erasure; the log stays verifiable."""
    import asyncio

    from audit.factory import open_audit_log

    audit_log = open_audit_log(_settings(data_dir, config))

    async def erase() -> bool:
        try:
            return await audit_log.erase_subject(tenant, subject)
        finally:
            await audit_log.close()
            audit_log.store.close()

    existed = asyncio.run(erase())
    typer.echo(
        "erased: subject key destroyed" if existed else "no key for this subject; erasure logged"
    )


@audit_app.command("export")
def audit_export(
    output: Annotated[Path, typer.Option("-o", "--output", help="Bundle file to create (zip)")],
    from_: Annotated[str, typer.Option("--from", help="Start, ISO 8601 (inclusive)")],
    to: Annotated[str, typer.Option("--to", help="End, ISO 8601 (exclusive)")],
    client: Annotated[str | None, typer.Option("--client", help="Only this client id")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Only this user id")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant")] = None,
    previous_checkpoint: Annotated[
        Path | None, typer.Option(help="checkpoint.note of the previous export")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a compliance bundle an auditor verifies offline with `audit verify-bundle`."""
    from audit.export import (
        ExportError,
        ExportFilter,
        parse_time_ms,
        subject_pseudonym,
        write_bundle,
    )
    from audit.factory import open_audit_log

    previous = _read_file(previous_checkpoint) if previous_checkpoint else None
    audit_log = open_audit_log(_settings(data_dir, config))
    try:
        pseudonym = None
        if subject is not None:
            pseudonym = subject_pseudonym(audit_log, tenant, subject)
            if pseudonym is None:
                raise ConfigurationError("unknown or erased subject: no records can be selected")
        flt = ExportFilter(
            parse_time_ms(from_, "--from"), parse_time_ms(to, "--to"), client, pseudonym
        )
        write_bundle(audit_log, flt, output, previous_checkpoint=previous)
    except ExportError as exc:
        raise ConfigurationError(str(exc)) from exc
    finally:
        audit_log.store.close()
    typer.echo(f"wrote {output}")


@audit_app.command("verify-bundle")
def audit_verify_bundle(
    bundle: Annotated[Path, typer.Argument(help="The exported bundle (zip)")],
    pubkey: Annotated[
        str | None, typer.Option(help="The log's verifier key, from a trusted source")
    ] = None,
    previous_checkpoint: Annotated[
        Path | None, typer.Option(help="A checkpoint.note you verified before")
    ] = None,
) -> None:
    """Verify a bundle offline: no database, no network."""
    from audit.bundle import BundleInvalid, verify_bundle

    previous = _read_file(previous_checkpoint) if previous_checkpoint else None
    if not bundle.is_file():
        raise ConfigurationError(f"no such bundle: {bundle}")
    try:
        report = verify_bundle(bundle, pubkey=pubkey, previous_checkpoint=previous)
    except BundleInvalid as exc:
        typer.echo(f"error: bundle invalid: {exc}", err=True)
        raise typer.Exit(1) from None
    if report.key_source == "bundle":
        typer.echo(
            "warning: verified with the key inside the bundle; pass --pubkey from a trusted "
            "source to prove who signed it",
            err=True,
        )
    previous_text = (
        f", consistent with checkpoint {report.previous_size}"
        if (report.previous_size is not None)
        else ""
    )
    typer.echo(
        f"ok: {report.records} records ({report.erased} erased, {report.purged} purged) "
        f"included in checkpoint {report.checkpoint_size} of {report.origin}{previous_text}"
    )


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc


@audit_app.command("pubkey")
def audit_pubkey(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the verifier key auditors need (C2SP/sumdb note verifier key format)."""
    from audit.keys import load_signer

    settings = _settings(data_dir, config)
    typer.echo(load_signer(settings.resolve(settings.audit.signing_key_file)).verifier_key())


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


if __name__ == "__main__":
    sys.exit(main())
