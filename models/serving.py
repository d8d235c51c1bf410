"""Wiring between the settings, the policy bundle and the model registry.

`open_models` is what the app factory calls: it opens the keyring, builds the
registry and loads every version the gateway must serve (the configured one,
plus each A/B variant and the shadow version of the bundle). A version that
fails to load is reported not-ready with its typed reason; nothing else is
served in its place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigurationError
from gateway.metrics import Metrics
from gateway.settings import Settings
from models.loader import PolicyView, check_policy
from models.package_errors import ModelPackageError, PolicyRefusedError
from models.ranker import Ranker
from models.registry import LoadedModel, ModelRegistry
from models.signing import TrustedSigner, parse_public_key, read_public_keys
from security.keyring import keyring_from_settings

if TYPE_CHECKING:
    from policies.data_policy import DataPolicy

log = logging.getLogger("gateway.models")

ActivePolicy = Callable[[], "DataPolicy | None"]


def trusted_signers(settings: Settings, policy: ActivePolicy) -> Callable[[], list[TrustedSigner]]:
    """Config keys, the key file written by init, and the bundle's model_signers (re-read)."""
    cfg = settings.packages
    fixed: list[TrustedSigner] = []
    try:
        fixed += [parse_public_key(k, f"config#{i}") for i, k in enumerate(cfg.trusted_signer_keys)]
        key_file = settings.resolve(cfg.trusted_signer_keys_file)
        if key_file.is_file():
            fixed += read_public_keys(key_file, key_file.name)
    except (ValueError, OSError) as exc:
        raise ConfigurationError(f"trusted model-signing keys: {exc}") from exc

    def current() -> list[TrustedSigner]:
        data = policy()
        bundle = (
            []
            if data is None
            else [parse_public_key(s.public_key, f"policy:{s.name}") for s in data.model_signers]
        )
        return [*fixed, *bundle]

    return current


def policy_view(policy: ActivePolicy) -> Callable[[], PolicyView | None]:
    def current() -> PolicyView | None:
        data = policy()
        if data is None:
            return None
        allowed = frozenset(n for n, m in data.models.items() if not m.blocked)

        def minimum(name: str) -> str | None:
            found = data.model(name)
            return None if found is None else found.min_version

        return PolicyView(allowed_names=allowed, min_version=minimum)

    return current


def wanted_versions(settings: Settings, data: DataPolicy | None) -> list[str]:
    """The configured version first, then the bundle's variants and shadow version."""
    versions = [settings.model.version]
    model = None if data is None else data.model(settings.model.name)
    if model is not None:
        versions += [v.version for v in model.variants]
        if model.shadow_version is not None:
            versions.append(model.shadow_version)
    return list(dict.fromkeys(versions))


@dataclass
class OpenedModels:
    registry: ModelRegistry
    not_ready: dict[str, str] = field(default_factory=dict)


def not_ready_key(name: str, version: str) -> str:
    return f"model:{name}@{version}"


def open_models(
    settings: Settings,
    make_ranker: Callable[[str, str, bytes], Ranker],
    policy: ActivePolicy,
) -> OpenedModels:
    cfg = settings.model
    registry = ModelRegistry(
        settings.resolve(settings.packages.directory),
        trusted=trusted_signers(settings, policy),
        keyring=keyring_from_settings(settings),
        policy=policy_view(policy),
        make_ranker=make_ranker,
        max_bytes=settings.packages.max_package_bytes,
        retire_grace_s=settings.limits.request_timeout_s + 1,
    )
    opened = OpenedModels(registry)
    if settings.packages.unsafe_allow_plaintext_model:
        log.warning(
            "UNSAFE: serving the plaintext, unsigned model %s (packages."
            "unsafe_allow_plaintext_model, dev mode only)",
            settings.resolve(cfg.path),
        )
        path = settings.resolve(cfg.path)
        try:
            ranker = make_ranker(cfg.name, cfg.version, Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            opened.not_ready[not_ready_key(cfg.name, cfg.version)] = f"plaintext model: {exc}"
            return opened
        registry.adopt(LoadedModel(ranker, None))
        registry.activate(cfg.name, cfg.version)
        return opened
    for version in wanted_versions(settings, policy()):
        try:
            registry.load(cfg.name, version)
        except ModelPackageError as exc:
            reason = f"{exc.step}: {type(exc).__name__}: {exc}"
            opened.not_ready[not_ready_key(cfg.name, version)] = reason
            log.error("model %s %s refused at step %s: %s", cfg.name, version, exc.step, exc)
    if registry.get(cfg.name, cfg.version) is not None:
        registry.activate(cfg.name, cfg.version)
    return opened


async def load_missing_versions(
    registry: ModelRegistry, settings: Settings, data: DataPolicy | None, not_ready: dict[str, str]
) -> None:
    """After a policy reload: load the arms and shadow the new bundle names (not primary),
    and stop serving loaded versions the new bundle refuses (a raised `min_version` is
    anti-rollback now, not at the next restart). A refused primary sets
    `not_ready["model"]`: the caller rebuilds the pipelines so they refuse."""
    name = settings.model.name
    view = policy_view(lambda: data)()
    for loaded in registry.loaded():
        try:
            check_policy(loaded.name, loaded.version, view)
        except PolicyRefusedError as exc:
            reason = f"{exc.step}: {type(exc).__name__}: {exc}"
            not_ready[not_ready_key(loaded.name, loaded.version)] = reason
            log.error("model %s %s refused by the new policy: %s", loaded.name, loaded.version, exc)
            if registry.primary(loaded.name) is loaded:
                not_ready["model"] = reason
            elif (old := registry.unload(loaded.name, loaded.version)) is not None:
                registry.retire(old, registry.retire_grace_s)
    wanted = wanted_versions(settings, data)
    for key in [k for k in not_ready if k.startswith(f"model:{name}@")]:
        version = key.split("@", 1)[1]
        if version not in wanted and registry.get(name, version) is None:
            del not_ready[key]  # the bundle no longer asks for that version
    for version in wanted:
        if registry.get(name, version) is not None:
            continue
        try:
            await asyncio.to_thread(registry.load, name, version)
        except ModelPackageError as exc:
            not_ready[not_ready_key(name, version)] = f"{exc.step}: {type(exc).__name__}: {exc}"
            log.error("model %s %s refused at step %s: %s", name, version, exc.step, exc)
        else:
            not_ready.pop(not_ready_key(name, version), None)


def inference_observer(metrics: Metrics, name: str) -> Callable[[float, int], None]:
    seconds, rows = metrics.inference_observer(name)

    def observe(elapsed: float, n: int) -> None:
        seconds.observe(elapsed)
        rows.observe(n)

    return observe
