"""The demo recommender end to end: generator, feature store, committed model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import ConfigurationError, UnknownItems
from models.demo import DemoInstall, install_demo, load_card, model_bytes
from models.demo.data import DemoData, generate
from models.demo.evaluate import auc, evaluate, score_heldout
from models.demo.features_build import FeatureTables, build_tables
from models.features import FeatureStore
from models.ort import session_from_bytes


@pytest.fixture(scope="session")
def card() -> dict[str, object]:
    return load_card()


@pytest.fixture(scope="session")
def data(card: dict[str, object]) -> DemoData:
    seed = card["seed"]
    assert isinstance(seed, int)
    return generate(seed)


@pytest.fixture(scope="session")
def tables(data: DemoData) -> FeatureTables:
    return build_tables(data)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> DemoInstall:
    return install_demo(tmp_path_factory.mktemp("gateway-data"))


@pytest.fixture(scope="session")
def store(installed: DemoInstall) -> FeatureStore:
    return FeatureStore.load(installed.feature_store)


@pytest.fixture(scope="session")
def metrics(data: DemoData, tables: FeatureTables) -> dict[str, float]:
    return evaluate(model_bytes(), data, tables)


def test_generator_is_deterministic(data: DemoData, card: dict[str, object]) -> None:
    again = generate(data.seed)
    assert again.digest() == data.digest()
    card_data = card["data"]
    assert isinstance(card_data, dict)
    assert card_data["data_digest"] == data.digest()


def test_regenerated_store_matches_card(tables: FeatureTables, card: dict[str, object]) -> None:
    features = card["features"]
    assert isinstance(features, dict)
    assert tables.digest() == features["store_digest"]
    assert features["user"] == list(tables.user_feature_names)
    assert features["item"] == list(tables.item_feature_names)


def test_install_writes_files_and_is_idempotent(installed: DemoInstall) -> None:
    assert installed.feature_store.is_file()
    assert hashlib.sha256(model_bytes()).hexdigest() == installed.model_sha256
    # The plaintext model is never copied: init packages it (tests/models/test_packages.py).
    assert not list(installed.feature_store.parent.parent.rglob("*.onnx"))
    assert json.loads(installed.model_card.read_text()) == load_card()
    assert FeatureStore.load(installed.feature_store).digest == installed.feature_digest

    started = time.perf_counter()
    again = install_demo(installed.feature_store.parent.parent)
    assert not again.created
    assert again == dataclasses.replace(installed, created=False)
    assert time.perf_counter() - started < 5.0


def test_model_beats_popularity(metrics: dict[str, float]) -> None:
    assert metrics["model_auc"] > metrics["popularity_auc"] + 0.03
    assert metrics["model_auc"] > metrics["item_ctr_auc"]


def test_card_auc_matches_recomputed(metrics: dict[str, float], card: dict[str, object]) -> None:
    evaluation = card["evaluation"]
    assert isinstance(evaluation, dict)
    for key in ("model_auc", "popularity_auc", "item_ctr_auc", "cold_start_auc"):
        assert evaluation[key] == pytest.approx(metrics[key], abs=1e-6)
    assert card["model_sha256"] == hashlib.sha256(model_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
        ([0, 1, 1, 0], [0.1, 0.4, 0.35, 0.8], 0.5),
        ([0, 1], [0.3, 0.3], 0.5),
        ([0, 0, 1], [0.2, 0.5, 0.5], 0.75),
    ],
)
def test_auc_hand_cases(labels: list[int], scores: list[float], expected: float) -> None:
    assert auc(labels, scores) == pytest.approx(expected)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="positive and one negative"):
        auc([1, 1], [0.2, 0.3])


def test_inputs_for_shapes_and_dtypes(store: FeatureStore) -> None:
    items = ["i1", "i7", "i1500", "i7"]
    inputs = store.inputs_for("u42", items)
    assert set(inputs) == {"user_id", "item_id", "user_features", "item_features"}
    assert inputs["user_id"].dtype == np.int64
    assert inputs["user_id"].tolist() == [42] * 4
    assert inputs["item_id"].dtype == np.int64
    assert inputs["item_id"].tolist() == [1, 7, 1500, 7]
    assert inputs["user_features"].dtype == np.float32
    assert inputs["user_features"].shape == (4, store.n_user_features)
    assert inputs["user_features"].flags.c_contiguous
    assert inputs["item_features"].dtype == np.float32
    assert inputs["item_features"].shape == (4, store.n_item_features)
    assert np.array_equal(inputs["item_features"][1], inputs["item_features"][3])
    assert store.n_users == 3000
    assert store.n_items == 1500
    assert store.known_user("u42")
    assert not store.known_user("u0")


def test_unknown_user_is_cold_start(store: FeatureStore, tables: FeatureTables) -> None:
    inputs = store.inputs_for("someone-new", ["i3", "i4"])
    assert inputs["user_id"].tolist() == [0, 0]
    assert np.array_equal(inputs["user_features"], np.repeat(tables.user_features[:1], 2, axis=0))


def test_unknown_items_are_pointed_at_by_position(store: FeatureStore) -> None:
    with pytest.raises(UnknownItems) as info:
        store.inputs_for("u1", ["i2", "nope", "i9999", "i3"])
    assert info.value.positions == [1, 2]
    assert "nope" not in str(info.value)


def test_empty_candidate_list(store: FeatureStore) -> None:
    inputs = store.inputs_for("u1", [])
    assert inputs["item_features"].shape == (0, store.n_item_features)


def test_session_scores_match_evaluate(
    store: FeatureStore, data: DemoData, tables: FeatureTables
) -> None:
    expected = score_heldout(model_bytes(), data, tables)
    session = session_from_bytes(model_bytes())
    assert [i.name for i in session.get_inputs()] == [
        "user_id",
        "item_id",
        "user_features",
        "item_features",
    ]
    assert [o.name for o in session.get_outputs()] == ["score"]
    # The held-out rows of one user, scored through the runtime feature store.
    user = int(data.test.user[0])
    rows = np.flatnonzero(data.test.user == user)
    inputs = store.inputs_for(data.user_ids[user], [data.item_ids[i] for i in data.test.item[rows]])
    (scores,) = session.run(["score"], inputs)
    assert scores.shape == (rows.size,)
    np.testing.assert_allclose(scores, expected[rows], rtol=0, atol=1e-6)
    assert np.all((scores > 0) & (scores < 1))


def test_committed_model_is_small() -> None:
    assert len(model_bytes()) < 2 * 1024 * 1024


def test_store_has_no_pickles(installed: DemoInstall) -> None:
    with np.load(installed.feature_store, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_install_refuses_mismatched_store(tmp_path: Path) -> None:
    card = load_card()
    card["features"]["store_digest"] = "0" * 64
    with pytest.raises(ConfigurationError, match="does not match the model card"):
        install_demo(tmp_path, card=card)
    assert not (tmp_path / "demo" / "features.npz").exists()


def test_store_load_rejects_tampering(installed: DemoInstall, tmp_path: Path) -> None:
    with np.load(installed.feature_store, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["item_features"] = arrays["item_features"].copy()
    arrays["item_features"][5, 0] += 1.0
    tampered = tmp_path / "features.npz"
    np.savez(tampered, allow_pickle=False, **arrays)
    with pytest.raises(ValueError, match="digest mismatch"):
        FeatureStore.load(tampered)
