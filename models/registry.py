"""The model registry: verified packages loaded into sessions, one primary version per name.

Loading (verify, decrypt, session) runs off the event loop; making a version
primary is one reference assignment under a lock, so a request sees either the
old model or the new one, never a mix. A replaced session is closed only after
a grace period, so requests already running on it finish there.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from models.loader import (
    DEFAULT_MAX_BYTES,
    PolicyView,
    VerifiedPackage,
    check_session_signature,
    verify_package,
)
from models.package_errors import PackageUnreadableError, SessionError
from models.package_format import NAME_PATTERN, version_key
from models.ranker import _ORT_INPUT_ERRORS, Ranker
from models.signing import TrustedSigner
from security import KeyProvider

log = logging.getLogger("gateway.models")

MakeRanker = Callable[[str, str, bytes], Ranker]
# onnxruntime's load errors (bad graph) and ours (bad options).
_SESSION_ERRORS: tuple[type[BaseException], ...] = (*_ORT_INPUT_ERRORS, ValueError)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    ranker: Ranker
    # None only for a plaintext model admitted by the unsafe dev setting.
    package: VerifiedPackage | None

    @property
    def name(self) -> str:
        return self.ranker.ref.name

    @property
    def version(self) -> str:
        return self.ranker.ref.version

    @property
    def package_digest(self) -> str | None:
        return None if self.package is None else self.package.package_digest

    @property
    def feature_stats(self) -> dict[str, dict[str, list[float]]]:
        """The package's input statistics (models/stats.py format); {} when unpackaged."""
        if self.package is None:
            return {}
        stats: dict[str, dict[str, list[float]]] = self.package.manifest.get("feature_stats") or {}
        return stats

    def describe(self) -> dict[str, object]:
        info: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "model_digest": f"sha256:{self.ranker.ref.digest}",
            "package_digest": (
                f"sha256:{self.package_digest}" if self.package_digest else "unpackaged"
            ),
            "execution_providers": list(self.ranker.providers),
        }
        if self.package is not None:
            info["signer"] = self.package.signer
            info["kek_id"] = self.package.kek_id
            info["quantization"] = (self.package.manifest.get("quantization") or {}).get("mode")
        return info


class ModelRegistry:
    def __init__(
        self,
        root: Path,
        *,
        trusted: Callable[[], Iterable[TrustedSigner]],
        keyring: KeyProvider,
        policy: Callable[[], PolicyView | None],
        make_ranker: MakeRanker,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retire_grace_s: float = 30.0,
    ) -> None:
        self.root = root
        # How long a replaced session stays open for requests already running on it.
        self.retire_grace_s = retire_grace_s
        self._trusted = trusted
        self._keyring = keyring
        self._policy = policy
        self._make_ranker = make_ranker
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._primary: dict[str, LoadedModel] = {}

    # -- loading (blocking: call from a thread) --------------------------------------------

    def verify(self, name: str, version: str) -> VerifiedPackage:
        """Steps 0-5 without building a session (`gateway models verify`)."""
        package, _plaintext = self._verified(name, version)
        return package

    def _verified(self, name: str, version: str) -> tuple[VerifiedPackage, bytes]:
        for label, value in (("name", name), ("version", version)):
            if not NAME_PATTERN.match(value):
                # Not quoted: a client chose it (the admin API's path), logs must not echo it.
                raise PackageUnreadableError(f"model {label} is not a valid path component")
        return verify_package(
            self.root / name / version,
            trusted=list(self._trusted()),
            keyring=self._keyring,
            policy=self._policy(),
            expected=(name, version),
            max_bytes=self._max_bytes,
        )

    def load(self, name: str, version: str) -> LoadedModel:
        """Verify, decrypt and build the session; the model is then available, not primary."""
        loaded = self.build(name, version)
        self.register(loaded)
        return loaded

    def build(self, name: str, version: str) -> LoadedModel:
        """Verify, decrypt and build the session, without making it available: the caller
        records the change first, then `register`s it (or closes its session)."""
        package, plaintext = self._verified(name, version)
        try:
            ranker = self._make_ranker(name, version, plaintext)
        except _SESSION_ERRORS as exc:
            raise SessionError(f"onnxruntime refused {name} {version}: {exc}") from None
        finally:
            # The plaintext lives only as long as session creation needs it.
            del plaintext
        try:
            check_session_signature(
                package,
                [s.as_oip() for s in ranker.inputs],
                [s.as_oip() for s in ranker.outputs],
            )
        except SessionError:
            ranker.close()
            raise
        ranker.ref = dataclasses.replace(ranker.ref, package_digest=package.package_digest)
        return LoadedModel(ranker, package)

    def register(self, loaded: LoadedModel) -> None:
        """Make a built model available (not primary); a replaced non-primary one retires."""
        key = (loaded.name, loaded.version)
        with self._lock:
            previous = self._loaded.get(key)
            self._loaded[key] = loaded
        if previous is not None and previous is not self._primary.get(loaded.name):
            self.retire(previous, self.retire_grace_s)

    def adopt(self, loaded: LoadedModel) -> None:
        """Register a model built elsewhere (the unsafe plaintext path)."""
        with self._lock:
            self._loaded[(loaded.name, loaded.version)] = loaded

    # -- serving ---------------------------------------------------------------------------

    def activate(self, name: str, version: str) -> LoadedModel | None:
        """Make a loaded version primary; returns the one it replaced."""
        with self._lock:
            loaded = self._loaded.get((name, version))
            if loaded is None:
                raise KeyError(f"{name} {version} is not loaded")
            previous = self._primary.get(name)
            self._primary[name] = loaded
        return previous if previous is not loaded else None

    def primary(self, name: str) -> LoadedModel | None:
        return self._primary.get(name)

    def get(self, name: str, version: str) -> LoadedModel | None:
        return self._loaded.get((name, version))

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._loaded.values(), key=lambda m: (m.name, version_key(m.version)))

    def on_disk(self) -> list[tuple[str, str]]:
        """Every `<name>/<version>` directory under the model root (packaged or not)."""
        found: list[tuple[str, str]] = []
        if not self.root.is_dir():
            return found
        for name_dir in sorted(self.root.iterdir()):
            if not name_dir.is_dir() or not NAME_PATTERN.match(name_dir.name):
                continue
            versions = [
                v.name for v in name_dir.iterdir() if v.is_dir() and NAME_PATTERN.match(v.name)
            ]
            found += [(name_dir.name, v) for v in sorted(versions, key=version_key)]
        return found

    def unload(self, name: str, version: str) -> LoadedModel | None:
        with self._lock:
            loaded = self._loaded.get((name, version))
            if loaded is None or self._primary.get(name) is loaded:
                return None
            del self._loaded[(name, version)]
        return loaded

    def retire(self, old: LoadedModel, grace_s: float) -> None:
        """Close a replaced model's session once requests already on it are done."""

        def close() -> None:
            log.info("closing replaced model %s %s", old.name, old.version)
            old.ranker.close()

        if grace_s <= 0:
            threading.Thread(target=close, name="model-retire", daemon=True).start()
        else:
            timer = threading.Timer(grace_s, close)
            timer.daemon = True
            timer.start()

    def close(self) -> None:
        with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
            self._primary.clear()
        for model in models:
            model.ranker.close()
