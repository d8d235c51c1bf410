"""`gateway init`: lay out a data directory (keys, demo model, default config) if absent.

Idempotent and non-destructive: existing keys, secrets and config are never
overwritten, so re-running init after an upgrade cannot lock clients out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from audit.keys import create_audit_keys
from gateway.errors import ConfigurationError
from gateway.files import write_private
from models.demo import install_demo
from models.demo_package import package_demo
from models.signing import create_signing_key as create_model_signing_key
from policies.errors import PolicyError
from policies.install import install_default_bundle
from security.issuer import create_signing_key
from security.keyring import KeyringError, open_keyring
from security.secrets import hash_secret, new_secret

CONFIG_NAME = "gateway.toml"
SIGNING_KEY = "keys/issuer-signing-key.pem"
AUDIT_SIGNING_KEY = "keys/audit-log.key"
AUDIT_KEK = "keys/audit-kek.bin"
POLICY_BUNDLE = "policy"
POLICY_KEY = "keys/policy-signing.key"
POLICY_PUBLIC_KEY = "keys/policy-signing.pub"
MODEL_SIGNING_KEY = "keys/model-signing.key"
MODEL_SIGNING_PUBLIC_KEY = "keys/model-signing.pub"
DEFAULT_CLIENTS: dict[str, tuple[str, ...]] = {
    "demo": ("rank", "infer"),
    "operator": (
        *("rank", "infer", "admin", "audit:read", "audit:export"),
        *("consent:write", "consent:read", "subject:read", "subject:erase"),
    ),
}


@dataclass(frozen=True)
class InitReport:
    data_dir: Path
    config: Path
    created: tuple[str, ...]
    client_secrets: dict[str, Path]


def _toml_str(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


def _default_config(data_dir: Path, secrets_dir: Path) -> tuple[str, dict[str, Path]]:
    lines = [
        "# Written by `gateway init`. Environment variables GATEWAY_* override these values.",
        f"data_dir = {_toml_str(str(data_dir))}",
        f"secret_key = {_toml_str(new_secret())}",
        "",
        "[issuer]",
        "enabled = true",
        'audience = "gateway"',
        "token_ttl_s = 900",
        f"signing_key_file = {_toml_str(SIGNING_KEY)}",
    ]
    secret_files: dict[str, Path] = {}
    for client_id, scopes in DEFAULT_CLIENTS.items():
        secret = new_secret()
        secret_file = secrets_dir / f"{client_id}.secret"
        write_private(secret_file, (secret + "\n").encode())
        secret_files[client_id] = secret_file
        lines += [
            "",
            "[[issuer.clients]]",
            f"client_id = {_toml_str(client_id)}",
            f"secret_hash = {_toml_str(hash_secret(secret))}",
            f"scopes = [{', '.join(_toml_str(s) for s in scopes)}]",
        ]
    return "\n".join(lines) + "\n", secret_files


def init_data_dir(data_dir: Path) -> InitReport:
    data_dir = data_dir.resolve()
    created: list[str] = []
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = data_dir / SIGNING_KEY
        if not key_path.exists():
            create_signing_key(key_path)
            created.append(str(key_path))
        config = data_dir / CONFIG_NAME
        secrets_dir = data_dir / "clients"
        secret_files = {c: secrets_dir / f"{c}.secret" for c in DEFAULT_CLIENTS}
        if not config.exists():
            if any(p.exists() for p in secret_files.values()):
                raise ConfigurationError(
                    f"{secrets_dir} holds client secrets but {config} is missing; "
                    "restore the config or remove the stale secrets"
                )
            text, secret_files = _default_config(data_dir, secrets_dir)
            write_private(config, text.encode())
            created.append(str(config))
        # The keyring first: it adopts an existing audit KEK file, else makes its own KEK.
        created += [str(p) for p in init_model_keys(data_dir)]
        created += [str(p) for p in create_audit_keys(data_dir / AUDIT_SIGNING_KEY, None)]
        created += [
            str(p)
            for p in install_default_bundle(
                data_dir / POLICY_BUNDLE, data_dir / POLICY_KEY, data_dir / POLICY_PUBLIC_KEY
            )
        ]
        demo = install_demo(data_dir)
        if demo.created:
            created.append(str(demo.feature_store))
        packaged = package_demo(
            data_dir,
            keyring=open_keyring(data_dir / "keys", legacy_audit_kek=data_dir / AUDIT_KEK),
            signing_key=data_dir / MODEL_SIGNING_KEY,
            store_path=demo.feature_store,
        )
        if packaged is not None:
            created.append(str(packaged.directory))
    except OSError as exc:
        raise ConfigurationError(f"cannot initialise {data_dir}: {exc.strerror or exc}") from exc
    except PolicyError as exc:
        raise ConfigurationError(f"default policy bundle: {exc}") from exc
    except KeyringError as exc:
        raise ConfigurationError(f"keyring: {exc}") from exc
    return InitReport(data_dir, config, tuple(created), secret_files)


def init_model_keys(data_dir: Path) -> list[Path]:
    """The keyring (one active KEK) and the model-signing key pair; never overwrites."""
    keyring = open_keyring(data_dir / "keys", legacy_audit_kek=data_dir / AUDIT_KEK)
    created = keyring.ensure()
    created += create_model_signing_key(
        data_dir / MODEL_SIGNING_KEY, data_dir / MODEL_SIGNING_PUBLIC_KEY
    )
    return created
