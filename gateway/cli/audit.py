"""`gateway audit ...`: verify, checkpoint, purge, erase and export the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings, load_policy, read_file
from gateway.errors import ConfigurationError

audit_app = typer.Typer(help="Verify, checkpoint and export the audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output")] = False,
) -> None:
    """Re-hash every record, check every node, checkpoint signature and consistency."""
    from audit.factory import open_audit_log
    from audit.verify import LogDamaged, verify_store

    settings = build_settings(data_dir, config)
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

    audit_log = open_audit_log(build_settings(data_dir, config))
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

    settings = build_settings(data_dir, config)
    days = older_than_days or settings.audit.retention_days
    if days is None and settings.policy.engine == "cedar":
        # The policy bundle sets retention, exactly as the running gateway reads it.
        days = load_policy(settings.resolve(settings.policy.bundle)).data.retention.audit_days
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

    audit_log = open_audit_log(build_settings(data_dir, config))

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

    previous = read_file(previous_checkpoint) if previous_checkpoint else None
    audit_log = open_audit_log(build_settings(data_dir, config))
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

    previous = read_file(previous_checkpoint) if previous_checkpoint else None
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


@audit_app.command("pubkey")
def audit_pubkey(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the verifier key auditors need (C2SP/sumdb note verifier key format)."""
    from audit.keys import load_signer

    settings = build_settings(data_dir, config)
    typer.echo(load_signer(settings.resolve(settings.audit.signing_key_file)).verifier_key())
