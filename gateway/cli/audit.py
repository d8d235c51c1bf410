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
        f"{report.purged_payloads} payloads purged by retention ({report.purges} signed "
        f"purges); origin {audit_log.origin}"
    )


@audit_app.command("monitor")
def audit_monitor(
    url: Annotated[str, typer.Argument(help="The gateway's base URL, e.g. https://gw.example")],
    state: Annotated[
        Path, typer.Option("--state", help="File keeping the last checkpoint seen (signed note)")
    ],
    pubkey: Annotated[
        Path, typer.Option("--pubkey", help="File with the log's verifier key, kept by you")
    ],
    token_file: Annotated[
        Path | None,
        typer.Option(help="File with a bearer token (audit:read); else $GATEWAY_AUDIT_TOKEN"),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request")] = 10.0,
) -> None:
    """Witness the log: fail on a rollback, a fork or a bad signature (run it from cron).

    Exit 0: consistent with the checkpoint kept in --state (or first run, trusted on first
    use); 1: rollback, fork, bad signature or an unreadable state; 3: could not check.
    """
    import os

    import httpx

    from audit.checkpoint import CheckpointError, NoteVerifier
    from audit.monitor import MonitorAlarm, observe

    try:
        verifier = NoteVerifier.from_verifier_key(read_file(pubkey).decode().strip())
    except (CheckpointError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"--pubkey {pubkey}: not a verifier key: {exc}") from exc
    if token_file is not None:
        token = read_file(token_file).decode(errors="replace").strip()
    else:
        token = os.environ.get("GATEWAY_AUDIT_TOKEN", "").strip()
    if not token:
        raise ConfigurationError("no token: pass --token-file or set GATEWAY_AUDIT_TOKEN")
    if not url.startswith(("https://", "http://")):
        raise ConfigurationError(f"not an http(s) URL: {url}")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            seen = observe(client, verifier, state)
    except MonitorAlarm as exc:
        prefix = "error: cannot check" if exc.kind == "unavailable" else "alarm"
        typer.echo(f"{prefix}: {exc}", err=True)
        raise typer.Exit(3 if exc.kind == "unavailable" else 1) from None
    except OSError as exc:  # writing the state file
        raise ConfigurationError(f"cannot keep the checkpoint in {state}: {exc}") from exc
    typer.echo(seen.summary(state))


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
    """Delete record payloads past retention; leaf hashes and proofs stay.

    The purge is logged, signed, before anything is deleted; if that fails, nothing is.
    """
    import asyncio

    from audit.appender import AppendFailed
    from audit.factory import open_audit_log
    from audit.log import Purged
    from audit.store import StoreError

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

    async def purge() -> Purged:
        try:
            return await audit_log.purge(days, trigger="cli")
        finally:
            await audit_log.close()
            audit_log.store.close()

    try:
        done = asyncio.run(purge())
    except (AppendFailed, StoreError) as exc:
        # The delete is one transaction after the append: a failure anywhere deletes nothing.
        raise ConfigurationError(f"purge failed, nothing deleted: {exc}") from exc
    logged = (
        f"; purge logged at index {done.record_index}"
        if done.record_index is not None
        else "; nothing to purge, nothing logged"
    )
    typer.echo(f"purged {done.deleted} record payloads older than {days} days{logged}")


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

    from audit.appender import AppendFailed
    from audit.store import StoreError
    from audit.subjects import SubjectKeyError

    try:
        existed = asyncio.run(erase())
    except AppendFailed as exc:
        # Recorded first: no record, no erasure.
        raise ConfigurationError(f"erasure not recorded, nothing erased: {exc}") from exc
    except (StoreError, SubjectKeyError) as exc:
        raise ConfigurationError(f"erasure failed (run it again): {exc}") from exc
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
    """Write a compliance bundle an auditor verifies offline with `audit verify-bundle`.

    The bundle holds every record of the range (those not selected as hashes only),
    so it proves nothing is missing. A damaged log is refused, naming the first
    damaged record; nothing is written.
    """
    from audit.export import (
        AuditDamaged,
        ExportError,
        ExportFilter,
        parse_time_ms,
        subject_pseudonym,
        write_bundle,
    )
    from audit.factory import open_audit_log
    from audit.store import StoreError

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
    except AuditDamaged as exc:
        typer.echo(f"error: audit log damaged, nothing exported: {exc}", err=True)
        raise typer.Exit(1) from None
    except StoreError as exc:
        raise ConfigurationError(f"audit store unavailable, nothing exported: {exc}") from exc
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
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write a self-contained HTML report here (pass or fail; never overwrites)",
        ),
    ] = None,
) -> None:
    """Verify a bundle offline: no database, no network."""
    import time

    from audit.bundle import BundleInvalid, verify_bundle
    from audit.report import ReportInput, report_failed, report_verified, write_report

    previous = read_file(previous_checkpoint) if previous_checkpoint else None
    if not bundle.is_file():
        raise ConfigurationError(f"no such bundle: {bundle}")
    if report_file is not None and (report_file.exists() or report_file.is_symlink()):
        # Checked first as well as at the write (O_EXCL), so no verification is wasted.
        raise ConfigurationError(f"report file already exists, not overwritten: {report_file}")

    def write(data: ReportInput) -> None:
        if report_file is None:
            return
        try:
            write_report(report_file, data)
        except FileExistsError as exc:
            if exc.filename == str(report_file):
                raise ConfigurationError(
                    f"report file already exists, not overwritten: {report_file}"
                ) from None
            # A parent that is a file, not a directory.
            raise ConfigurationError(
                f"cannot write report {report_file}: {exc.filename} is not a directory"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot write report {report_file}: {exc.strerror}") from None
        typer.echo(f"report: {report_file}", err=True)

    try:
        report = verify_bundle(bundle, pubkey=pubkey, previous_checkpoint=previous)
    except BundleInvalid as exc:
        typer.echo(f"error: bundle invalid: {exc}", err=True)
        write(report_failed(bundle, exc, pubkey=pubkey, clock=time.time))
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
        f"included in checkpoint {report.checkpoint_size} of {report.origin}{previous_text}; "
        f"{report.complete}"
    )
    write(report_verified(bundle, report, clock=time.time))


@audit_app.command("pubkey")
def audit_pubkey(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the verifier key auditors need (C2SP/sumdb note verifier key format)."""
    from audit.keys import load_signer

    settings = build_settings(data_dir, config)
    typer.echo(load_signer(settings.resolve(settings.audit.signing_key_file)).verifier_key())
