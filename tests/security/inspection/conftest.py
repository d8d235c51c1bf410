"""Inspection fixtures: the real feature store, real detectors, a real Redis when running."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.datadir import InitReport, init_data_dir
from gateway.settings import Settings
from models.features import load_arrays
from policies.bundle import rehash
from policies.data_policy import DetectionPolicy
from security.inspection.detector import Detector
from security.inspection.state import DetectorState, MemoryState
from security.inspection.wiring import build_detector

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def arrays(settings: Settings) -> dict[str, NDArray[Any]]:
    return load_arrays(settings.resolve(settings.model.features_path))


@pytest.fixture
def make_detector(settings: Settings) -> Callable[..., Detector]:
    def make(state: DetectorState | None = None) -> Detector:
        return build_detector(settings, state if state is not None else MemoryState())

    return make


def policy(**changes: Any) -> DetectionPolicy:
    return DetectionPolicy(**changes)


def row(arrays: dict[str, NDArray[Any]], user: int, item: int) -> dict[str, NDArray[Any]]:
    """One OIP row exactly as a well-behaved client sends it: the store's features."""
    return {
        "user_id": np.array([user], dtype=np.int64),
        "item_id": np.array([item], dtype=np.int64),
        "user_features": arrays["user_features"][user : user + 1].astype(np.float32),
        "item_features": arrays["item_features"][item : item + 1].astype(np.float32),
    }


def rows(arrays: dict[str, NDArray[Any]], user: int, items: list[int]) -> dict[str, NDArray[Any]]:
    idx = np.asarray(items)
    return {
        "user_id": np.full(len(items), user, dtype=np.int64),
        "item_id": idx.astype(np.int64),
        "user_features": np.repeat(arrays["user_features"][user : user + 1], len(items), axis=0),
        "item_features": arrays["item_features"][idx].astype(np.float32),
    }


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis, or a loud skip naming why."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"REDIS AT {REDIS_URL} UNREACHABLE ({exc}): Redis-backed state untested")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def signed_bundle(report: InitReport, target: Path, old: str, new: str) -> Path:
    """A copy of the data dir's bundle with data.yaml edited, rehashed and signed."""
    from policies.signing import sign_bundle

    bundle = Path(shutil.copytree(report.data_dir / "policy", target))
    data = bundle / "data.yaml"
    text = data.read_text()
    assert old in text, old
    data.write_text(text.replace(old, new, 1))
    (bundle / "bundle.sig").unlink()
    rehash(bundle)
    sign_bundle(bundle, (report.data_dir / "keys" / "policy-signing.key").read_text().strip())
    return bundle


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> InitReport:
    return init_data_dir(tmp_path_factory.mktemp("insp") / "gw")


@pytest.fixture(scope="session")
def store(report: InitReport) -> dict[str, Any]:
    return load_arrays(report.data_dir / "demo" / "features.npz")
