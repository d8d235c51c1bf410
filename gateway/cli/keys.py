"""`gateway keys list|rotate|delete-retired`: the keyring's KEKs and what they wrap.

Record before effect: a rotation and a deletion are appended to the audit log
(opened as the other audit commands open it) durably before the keyring
changes. If the append fails, the keyring is left as it was and the command
exits non-zero with one line. A rotation writes two records: its intent (the new
KEK's id, chosen before the key exists, and the KEK it retires) before anything
changes, and its outcome (how many keys were re-wrapped) after. With the audit
log switched off (dev mode only) the change is made unrecorded, with a warning.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings
from gateway.errors import ConfigurationError
from gateway.files import replace_private

if TYPE_CHECKING:
    from audit.log import AuditLog
    from audit.store import AuditStore
    from gateway.settings import Settings
    from security.keyring import KeyProvider, LocalKeyring

keys_app = typer.Typer(help="Rotate and retire key-encryption keys.", no_args_is_help=True)


class ChangeNotRecorded(ConfigurationError):  # noqa: N818 - named for what happened
    """The audit log refused a key change's record."""


class ChangeLog:
    """The audit log as the keys commands record their changes (a context manager).

    Opened as `gateway audit purge` opens it; None inside when the audit log is
    switched off (dev mode), and then changes go unrecorded, with a warning.
    """

    def __init__(self, settings: Settings) -> None:
        from audit.factory import open_audit_log

        self._log: AuditLog | None = None
        if settings.audit.enabled:
            try:
                self._log = open_audit_log(settings)
            except ConfigurationError as exc:
                raise ChangeNotRecorded(f"audit log unavailable: {exc}") from exc
        else:
            typer.echo(
                "warning: the audit log is switched off (dev mode): "
                "this key change is not recorded",
                err=True,
            )
        self._runner = asyncio.Runner()

    @property
    def store(self) -> AuditStore | None:
        return self._log.store if self._log is not None else None

    def record(self, kind: str, **fields: Any) -> int | None:
        """Append durably, or raise `ChangeNotRecorded`; the record's index (None: off)."""
        from audit.appender import AppendFailed

        if self._log is None:
            return None
        try:
            return self._runner.run(self._log.record_event(kind, **fields))
        except AppendFailed as exc:
            raise ChangeNotRecorded(f"audit log unavailable: {exc}") from exc

    def close(self) -> None:
        try:
            if self._log is not None:
                self._runner.run(self._log.close())
                self._log.store.close()
        finally:
            self._runner.close()

    def __enter__(self) -> ChangeLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class RotationReport:
    new_key: str
    retired: list[str]
    models: int = 0
    subjects: int = 0
    failures: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    # Set when the rotation took effect but its outcome record could not be appended.
    unrecorded: str | None = None


def _package_dirs(root: Path) -> list[Path]:
    from models.package_format import MANIFEST, WRAPPED_DEK

    if not root.is_dir():
        return []
    return sorted(
        p.parent
        for p in root.glob(f"*/*/{WRAPPED_DEK}")
        if (p.parent / MANIFEST).is_file() and not p.parent.name.startswith(".")
    )


def rewrap_models(root: Path, keyring: KeyProvider) -> tuple[int, list[str]]:
    """Re-wrap every package's DEK under the current KEK; the signed files are untouched."""
    from models.package_format import MANIFEST, WRAPPED_DEK, dek_aad
    from security.keyring import KeyringError, WrappedKey, rewrap

    done, failures = 0, []
    for directory in _package_dirs(root):
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            aad = dek_aad(
                str(manifest["name"]), str(manifest["version"]), manifest["encryption"]["dek_id"]
            )
            wrapped = WrappedKey.from_json(json.loads((directory / WRAPPED_DEK).read_text()))
            fresh = rewrap(keyring, wrapped, aad)
        except (OSError, ValueError, KeyError, TypeError, KeyringError) as exc:
            failures.append(f"{directory}: {exc}")
            continue
        if fresh is not wrapped:
            replace_private(
                directory / WRAPPED_DEK, (json.dumps(fresh.to_json(), indent=2) + "\n").encode()
            )
            done += 1
    return done, failures


def key_references(settings: Settings, store: AuditStore | None = None) -> Counter[str]:
    """How many wrapped DEKs (model packages + audit subject keys) each KEK id wraps.

    `store`: the audit store already open, else one is opened (and closed) here.
    """
    from audit.factory import open_store
    from models.package_format import WRAPPED_DEK

    refs: Counter[str] = Counter()
    for directory in _package_dirs(settings.resolve(settings.packages.directory)):
        try:
            refs[str(json.loads((directory / WRAPPED_DEK).read_text())["kek_id"])] += 1
        except (OSError, ValueError, KeyError, TypeError):
            refs["<unreadable>"] += 1
    if store is not None or _audit_store_present(settings):
        from audit.store import StoreError

        try:
            opened = store or open_store(settings)
            try:
                refs.update(opened.subject_key_ids())
            finally:
                if store is None:
                    opened.close()
        except StoreError as exc:
            # Unknown references: nothing may be deleted.
            raise ConfigurationError(f"cannot count audit subject keys: {exc}") from exc
    return refs


def _audit_store_present(settings: Settings) -> bool:
    """Subject keys exist wherever an audit store does, even with audit switched off now:
    a KEK they still need must never look unreferenced."""
    audit = settings.audit
    return (
        audit.enabled
        or audit.postgres_dsn is not None
        or settings.resolve(audit.sqlite_path).exists()
    )


def rewrap_subjects(
    settings: Settings, keyring: KeyProvider, store: AuditStore | None = None
) -> int:
    """Re-wrap every audit subject key under the current KEK; `store` as in key_references."""
    from audit.factory import open_store, subject_keys

    opened = store or open_store(settings)
    try:
        done, _total = subject_keys(settings, opened, keyring).rewrap_all()
        return done
    finally:
        if store is None:
            opened.close()


def plan_deletion(
    settings: Settings, keyring: LocalKeyring, store: AuditStore | None = None
) -> tuple[list[str], dict[str, int]]:
    """Retired KEKs nothing references (to delete), and those still referenced (kept)."""
    refs = key_references(settings, store)
    doomed: list[str] = []
    kept: dict[str, int] = {}
    for info in keyring.entries():
        if info.state != "retired":
            continue
        if refs.get(info.id, 0) or refs.get("<unreadable>", 0):
            kept[info.id] = refs.get(info.id, 0)
        else:
            doomed.append(info.id)
    return doomed, kept


def delete_unreferenced(
    settings: Settings, keyring: LocalKeyring, changes: ChangeLog | None = None
) -> tuple[list[str], dict[str, int]]:
    """Destroy the retired KEKs nothing references, recorded first; (deleted, kept).

    `changes`: the audit log already open, else it is opened (and closed) here.
    Raises `ChangeNotRecorded` (nothing deleted) when the record cannot be appended.
    """
    if changes is None:
        with ChangeLog(settings) as opened:
            return delete_unreferenced(settings, keyring, opened)
    from audit.record import KIND_KEY_DELETION

    doomed, kept = plan_deletion(settings, keyring, changes.store)
    if doomed:
        changes.record(KIND_KEY_DELETION, kek_ids=doomed, kept=sorted(kept))
        for kek_id in doomed:
            keyring.delete(kek_id)
    return doomed, kept


def rotate(
    settings: Settings, *, delete_retired: bool = False, changes: ChangeLog | None = None
) -> RotationReport:
    """New active KEK, recorded first; re-wrap every DEK and subject key under it.

    `changes`: the audit log already open, else it is opened (and closed) here.
    Raises `ChangeNotRecorded` (keyring unchanged) when the intent cannot be appended.
    """
    if changes is None:
        with ChangeLog(settings) as opened:
            return rotate(settings, delete_retired=delete_retired, changes=opened)
    from audit.record import KIND_KEY_ROTATION
    from audit.store import StoreError
    from audit.subjects import SubjectKeyError
    from security.keyring import KeyringError, keyring_from_settings

    keyring = keyring_from_settings(settings, require_active=False)
    before = [k.id for k in keyring.entries()]
    active = [k.id for k in keyring.entries() if k.state == "active"]
    # The new key's id is chosen first, so the record names it before it exists.
    new_key = keyring.new_key_id()
    changes.record(
        KIND_KEY_ROTATION,
        step="intent",
        new_kek=new_key,
        retired_kek=active[0] if active else None,
        delete_retired=delete_retired,
    )
    try:
        keyring.rotate(new_key)
    except (KeyringError, OSError) as exc:
        raise ConfigurationError(f"rotation failed, keyring unchanged: {exc}") from exc
    report = RotationReport(new_key=new_key, retired=before)
    report.models, report.failures = rewrap_models(
        settings.resolve(settings.packages.directory), keyring
    )
    if changes.store is not None or _audit_store_present(settings):
        try:
            report.subjects = rewrap_subjects(settings, keyring, changes.store)
        except (StoreError, SubjectKeyError, ConfigurationError) as exc:
            report.failures.append(f"audit subject keys: {exc}")
    try:
        changes.record(
            KIND_KEY_ROTATION,
            step="done",
            new_kek=new_key,
            model_keys_rewrapped=report.models,
            subject_keys_rewrapped=report.subjects,
            failures=len(report.failures),
        )
    except ChangeNotRecorded as exc:
        # The rotation stands (its intent is logged); nothing more may change unrecorded.
        report.unrecorded = str(exc)
        return report
    if delete_retired and not report.failures:
        try:
            report.deleted, report.kept = delete_unreferenced(settings, keyring, changes)
        except ChangeNotRecorded as exc:
            report.unrecorded = str(exc)
    return report


@keys_app.command("rotate")
def keys_rotate(
    delete_retired: Annotated[
        bool,
        typer.Option(
            "--delete-retired", help="Then destroy retired KEKs that no wrapped key references"
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """New active KEK; re-wrap every model DEK and audit subject key; retire the old KEK."""
    settings = build_settings(data_dir, config)
    try:
        report = rotate(settings, delete_retired=delete_retired)
    except ChangeNotRecorded as exc:
        raise ConfigurationError(f"rotation not recorded, keyring unchanged: {exc}") from exc
    typer.echo(f"active KEK: {report.new_key} (retired: {', '.join(report.retired) or '-'})")
    typer.echo(f"re-wrapped: {report.models} model keys, {report.subjects} audit subject keys")
    for kek_id in report.deleted:
        typer.echo(f"deleted retired KEK {kek_id}")
    for kek_id, count in report.kept.items():
        typer.echo(f"kept retired KEK {kek_id}: still wraps {count} keys")
    if report.unrecorded:
        typer.echo(
            f"error: rotated, but not recorded further and nothing deleted: {report.unrecorded}",
            err=True,
        )
        raise typer.Exit(1)
    if report.failures:
        for failure in report.failures:
            typer.echo(f"error: not re-wrapped: {failure}", err=True)
        raise typer.Exit(1)


@keys_app.command("delete-retired")
def keys_delete_retired(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Destroy retired KEKs that no model package or audit subject key references."""
    from security.keyring import keyring_from_settings

    settings = build_settings(data_dir, config)
    try:
        deleted, kept = delete_unreferenced(settings, keyring_from_settings(settings))
    except ChangeNotRecorded as exc:
        raise ConfigurationError(f"deletion not recorded, nothing deleted: {exc}") from exc
    for kek_id in deleted:
        typer.echo(f"deleted retired KEK {kek_id}")
    for kek_id, count in kept.items():
        typer.echo(f"kept retired KEK {kek_id}: still wraps {count} keys (run `keys rotate`)")
    if not deleted and not kept:
        typer.echo("no retired keys")


@keys_app.command("list")
def keys_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """KEK ids, state, creation time and how many wrapped keys each one wraps."""
    from security.keyring import keyring_from_settings

    settings = build_settings(data_dir, config)
    refs = key_references(settings)
    for info in keyring_from_settings(settings, require_active=False).entries():
        typer.echo(f"{info.id}\t{info.state}\t{info.created}\twraps {refs.get(info.id, 0)}")
