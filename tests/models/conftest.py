"""Model-package fixtures: a private data directory per test, real keys, the real demo model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.datadir import MODEL_SIGNING_KEY, InitReport, init_data_dir
from gateway.settings import Settings, load_settings
from models.demo import model_bytes
from models.demo_package import demo_stats
from models.loader import PolicyView
from models.pack import PackResult, pack_model
from models.ranker import Ranker
from models.registry import ModelRegistry
from models.signing import TrustedSigner, read_public_keys
from policies.bundle import rehash
from policies.signing import sign_bundle
from security.issuer import EmbeddedIssuer, load_signing_key
from security.keyring import LocalKeyring, open_keyring


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> InitReport:
    return init_data_dir(tmp_path_factory.mktemp("models-pristine") / "data")


@dataclass
class Box:
    """One initialised data directory that a test may damage at will."""

    report: InitReport

    @property
    def data_dir(self) -> Path:
        return self.report.data_dir

    @property
    def root(self) -> Path:
        return self.data_dir / "models"

    def settings(self, **overrides: object) -> Settings:
        return load_settings(data_dir=self.data_dir, config_file=self.report.config, **overrides)

    def keyring(self) -> LocalKeyring:
        return open_keyring(self.data_dir / "keys")

    def trusted(self) -> list[TrustedSigner]:
        return read_public_keys(self.data_dir / "keys/model-signing.pub", "init")

    def pack(self, version: str, *, blob: bytes | None = None, **options: object) -> PackResult:
        return pack_model(
            blob or model_bytes(),
            name="demo-ranker",
            version=version,
            root=self.root,
            keyring=self.keyring(),
            signing_key=self.data_dir / MODEL_SIGNING_KEY,
            **{"feature_stats": demo_stats(self.data_dir / "demo/features.npz"), **options},
        )

    def registry(
        self,
        *,
        keyring: LocalKeyring | None = None,
        trusted: list[TrustedSigner] | None = None,
        policy: PolicyView | None = None,
    ) -> ModelRegistry:
        return ModelRegistry(
            self.root,
            trusted=lambda: trusted if trusted is not None else self.trusted(),
            keyring=keyring or self.keyring(),
            policy=lambda: policy,
            make_ranker=lambda n, v, b: Ranker(name=n, version=v, model_bytes=b),
        )

    def token(self, client_id: str = "operator", scopes: tuple[str, ...] | None = None) -> str:
        settings = self.settings()
        issuer = EmbeddedIssuer(
            settings.issuer,
            issuer_url=settings.issuer_url,
            signing_key=load_signing_key(settings.resolve(settings.issuer.signing_key_file)),
        )
        client = issuer.client(client_id)
        assert client is not None
        return str(issuer.mint(client, scopes)["access_token"])

    def headers(self, client_id: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(client_id)}"}

    def package(self, version: str = "1") -> Path:
        return self.root / "demo-ranker" / version

    def edit_data_policy(self, old: str, new: str) -> None:
        """Change the installed bundle's data.yaml, rehash and re-sign it with the box's key."""
        bundle = self.data_dir / "policy"
        path = bundle / "data.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        (bundle / "bundle.sig").unlink()
        rehash(bundle)
        sign_bundle(bundle, (self.data_dir / "keys/policy-signing.key").read_text().strip())


@pytest.fixture
def box(pristine: InitReport, tmp_path: Path) -> Box:
    target = tmp_path / "data"
    shutil.copytree(pristine.data_dir, target)
    config = target / "gateway.toml"
    config.write_text(config.read_text().replace(str(pristine.data_dir), str(target)))
    return Box(InitReport(target, config, (), {}))


Flip = Callable[[Path, int], None]


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))
