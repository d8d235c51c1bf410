"""The audit log's own keys: the checkpoint signing key and the local key-encryption key."""

from __future__ import annotations

import secrets
from pathlib import Path

from audit.checkpoint import CheckpointError, NoteSigner
from gateway.errors import ConfigurationError
from gateway.files import write_private


def create_audit_keys(signing_key: Path, kek: Path | None) -> list[Path]:
    """Create whichever of the two keys is missing; never overwrite one.

    `kek` None: subject keys are wrapped by the keyring (security/keyring.py), the
    default since it exists; a legacy KEK file is still adopted by the keyring.
    """
    created = []
    if not signing_key.exists():
        # The origin names this log uniquely, so checkpoints of two logs never mix.
        signer = NoteSigner.generate(f"gateway-audit-{secrets.token_hex(6)}")
        write_private(signing_key, signer.signer_key().encode() + b"\n")
        created.append(signing_key)
    if kek is not None and not kek.exists():
        write_private(kek, secrets.token_bytes(32))
        created.append(kek)
    return created


def load_signer(path: Path) -> NoteSigner:
    try:
        return NoteSigner.from_signer_key(path.read_text().strip())
    except FileNotFoundError:
        raise ConfigurationError(
            f"audit signing key not found at {path}; run `gateway init`"
        ) from None
    except (CheckpointError, ValueError) as exc:
        raise ConfigurationError(f"audit signing key at {path} is unreadable: {exc}") from exc
