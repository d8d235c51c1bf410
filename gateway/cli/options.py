"""What every command group shares: the `--data-dir`/`--config` options, the one
Settings object built from them, the policy-bundle loader and a file reader whose
failures are one-line `ConfigurationError`s.

Imports stay cheap here: settings (pydantic) and policies (cedarpy) load only when
a command calls for them, so `gateway --help` starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.errors import ConfigurationError

if TYPE_CHECKING:
    from gateway.settings import Settings
    from policies.bundle import PolicyBundle

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $GATEWAY_DATA_DIR or .gateway)"),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML/YAML config (default: DATA_DIR/gateway.toml)")
]


def resolve_data_dir(option: Path | None) -> Path:
    """`--data-dir`, else $GATEWAY_DATA_DIR, else `.gateway`."""
    return option or Path(os.environ.get("GATEWAY_DATA_DIR") or ".gateway")


def build_settings(data_dir: Path | None, config: Path | None, **overrides: object) -> Settings:
    """The process's one Settings object, built here and injected into everything else."""
    from gateway.settings import load_settings

    directory = resolve_data_dir(data_dir)
    if config is None and not os.environ.get("GATEWAY_CONFIG_FILE"):
        default = directory / "gateway.toml"
        config = default if default.is_file() else None
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if config is not None:
        kwargs["config_file"] = config
    return load_settings(**kwargs)


def load_policy(path: Path) -> PolicyBundle:
    """A policy bundle (directory or .tar.gz), checked as the gateway checks it."""
    from policies.bundle import load_bundle
    from policies.errors import PolicyError

    if not path.exists():
        raise ConfigurationError(f"no such bundle: {path}")
    try:
        return load_bundle(path)
    except PolicyError as exc:
        raise ConfigurationError(f"bundle invalid: {exc}") from exc


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
