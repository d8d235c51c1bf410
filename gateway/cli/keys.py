"""`gateway keys list|rotate|delete-retired`: the keyring's KEKs and what they wrap."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.options import ConfigOpt, DataDirOpt, build_settings
from gateway.errors import ConfigurationError
from gateway.files import replace_private

if TYPE_CHECKING:
    from gateway.settings import Settings
    from security.keyring import KeyProvider, LocalKeyring

keys_app = typer.Typer(help="Rotate and retire key-encryption keys.", no_args_is_help=True)


@dataclass
class RotationReport:
    new_key: str
    retired: list[str]
    models: int = 0
    subjects: int = 0
    failures: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)


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


def key_references(settings: Settings) -> Counter[str]:
    """How many wrapped DEKs (model packages + audit subject keys) each KEK id wraps."""
    from audit.factory import open_store
    from models.package_format import WRAPPED_DEK

    refs: Counter[str] = Counter()
    for directory in _package_dirs(settings.resolve(settings.packages.directory)):
        try:
            refs[str(json.loads((directory / WRAPPED_DEK).read_text())["kek_id"])] += 1
        except (OSError, ValueError, KeyError, TypeError):
            refs["<unreadable>"] += 1
    if _audit_store_present(settings):
        from audit.store import StoreError

        try:
            store = open_store(settings)
            try:
                refs.update(store.subject_key_ids())
            finally:
                store.close()
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


def rewrap_subjects(settings: Settings, keyring: KeyProvider) -> int:
    from audit.factory import open_store, subject_keys

    store = open_store(settings)
    try:
        subjects = subject_keys(settings, store, keyring)
        done, _total = subjects.rewrap_all()
        return done
    finally:
        store.close()


def delete_unreferenced(
    settings: Settings, keyring: LocalKeyring
) -> tuple[list[str], dict[str, int]]:
    refs = key_references(settings)
    deleted: list[str] = []
    kept: dict[str, int] = {}
    for info in keyring.entries():
        if info.state != "retired":
            continue
        if refs.get(info.id, 0) or refs.get("<unreadable>", 0):
            kept[info.id] = refs.get(info.id, 0)
            continue
        keyring.delete(info.id)
        deleted.append(info.id)
    return deleted, kept


def rotate(settings: Settings, *, delete_retired: bool = False) -> RotationReport:
    from audit.store import StoreError
    from audit.subjects import SubjectKeyError
    from security.keyring import keyring_from_settings

    keyring = keyring_from_settings(settings, require_active=False)
    before = [k.id for k in keyring.entries()]
    new_key = keyring.rotate()
    report = RotationReport(new_key=new_key, retired=before)
    report.models, report.failures = rewrap_models(
        settings.resolve(settings.packages.directory), keyring
    )
    if _audit_store_present(settings):
        try:
            report.subjects = rewrap_subjects(settings, keyring)
        except (StoreError, SubjectKeyError, ConfigurationError) as exc:
            report.failures.append(f"audit subject keys: {exc}")
    if delete_retired and not report.failures:
        report.deleted, report.kept = delete_unreferenced(settings, keyring)
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
    report = rotate(build_settings(data_dir, config), delete_retired=delete_retired)
    typer.echo(f"active KEK: {report.new_key} (retired: {', '.join(report.retired) or '-'})")
    typer.echo(f"re-wrapped: {report.models} model keys, {report.subjects} audit subject keys")
    for kek_id in report.deleted:
        typer.echo(f"deleted retired KEK {kek_id}")
    for kek_id, count in report.kept.items():
        typer.echo(f"kept retired KEK {kek_id}: still wraps {count} keys")
    if report.failures:
        for failure in report.failures:
            typer.echo(f"error: not re-wrapped: {failure}", err=True)
        raise typer.Exit(1)


@keys_app.command("delete-retired")
def keys_delete_retired(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Destroy retired KEKs that no model package or audit subject key references."""
    from security.keyring import keyring_from_settings

    settings = build_settings(data_dir, config)
    deleted, kept = delete_unreferenced(settings, keyring_from_settings(settings))
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
