"""Builds the policy in force from the settings (the composition root calls this)."""

from __future__ import annotations

from gateway.errors import ConfigurationError
from gateway.settings import Settings
from policies.errors import PolicyError
from policies.in_force import PolicyInForce, ScopeTablePolicy
from policies.manager import PolicyManager


def open_policy(settings: Settings) -> PolicyInForce:
    """The configured bundle (signed, tested), or the dev-only scope table."""
    cfg = settings.policy
    if cfg.engine != "cedar":
        return ScopeTablePolicy(settings.model.name)
    keys = list(cfg.trusted_keys)
    key_file = settings.resolve(cfg.trusted_keys_file)
    try:
        if key_file.is_file():
            keys += [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
        manager = PolicyManager(
            settings.resolve(cfg.bundle), trusted_keys=keys, allow_unsigned=settings.dev_mode
        )
        if cfg.shadow_bundle is not None:
            manager.set_shadow(settings.resolve(cfg.shadow_bundle))
    except (PolicyError, OSError) as exc:
        # No earlier bundle exists to fall back to: refuse to start rather than guess.
        raise ConfigurationError(f"policy bundle refused: {exc}") from exc
    return manager
