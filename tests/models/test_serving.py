"""The gateway serves only verified packages, swaps them while serving, and survives rotation."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.cli.keys import key_references, rotate
from gateway.datadir import init_data_dir
from gateway.errors import ConfigurationError
from models.demo import model_bytes
from models.signing import create_signing_key, sign_package
from policies.data_policy import ModelSigner
from security.inspection.budget import Charge
from tests.models.conftest import Box, flip_bit

RANK = {"user_id": "u7", "item_ids": ["i1", "i7", "i19", "i250"]}
LOAD = "/v1/admin/models/demo-ranker/versions/{}/load"


def rank(client: TestClient, box: Box, user: str = "u7") -> dict[str, object]:
    response = client.post("/v1/rank", json={**RANK, "user_id": user}, headers=box.headers("demo"))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_tampered_package_at_start_is_not_ready_and_nothing_is_served(box: Box) -> None:
    flip_bit(box.package() / "model.onnx.enc", 99)
    with TestClient(create_app(box.settings())) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["not_ready"] == {
            "model:demo-ranker@1": "signature: ContentMismatchError"
        }
        refused = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:gateway:problem:model-not-ready"
        assert "model.onnx.enc" not in refused.text
        # OIP model readiness answers 503, and its audit record says the same.
        from audit.record import parse

        not_ready = client.get("/v2/models/demo-ranker/ready", headers=box.headers("demo"))
        assert (not_ready.status_code, not_ready.json()["ready"]) == (503, False)
        store = client.app.state.components.audit.store  # type: ignore[attr-defined]
        index = store.index_of(not_ready.headers["x-request-id"])
        assert parse(store.leaf(index).payload)["status"] == 503


def test_a_model_hot_loaded_after_a_refused_start_is_inspected(box: Box) -> None:
    # Stage 5's detector comes from the feature store, not the model: a gateway that
    # started without a model must still inspect the one an operator loads later.
    from audit.record import parse
    from models.features import load_arrays

    flip_bit(box.package() / "model.onnx.enc", 99)
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
        store = load_arrays(box.data_dir / "demo/features.npz")
        tensors = [
            ("user_id", "INT64", [1], [3]),
            ("item_id", "INT64", [1], [5]),
            ("user_features", "FP32", [1, 20], store["user_features"][3].tolist()),
            ("item_features", "FP32", [1, 20], store["item_features"][5].tolist()),
        ]
        body = {
            "inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in tensors]
        }
        # Raw tensors (every model input): the trusted scope.
        raw = {"Authorization": f"Bearer {box.token('demo', ('infer', 'infer:raw'))}"}
        infer = client.post("/v2/models/demo-ranker/infer", json=body, headers=raw)
        assert infer.status_code == 200, infer.text
        audit = client.app.state.components.audit.store
        record = parse(audit.leaf(audit.index_of(infer.headers["x-request-id"])).payload)
        assert record["inspection"] is not None
        assert record["model"]["version"] == "2"


def test_old_plaintext_data_dir_says_to_run_init_then_init_migrates_it(box: Box) -> None:
    shutil.rmtree(box.package())
    box.package().mkdir()
    (box.package() / "model.onnx").write_bytes(model_bytes())
    with TestClient(create_app(box.settings())) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["not_ready"]["model:demo-ranker@1"].startswith(
            "read: PlaintextModelError"
        )
    init_data_dir(box.data_dir)  # migrates: the committed plaintext becomes a package
    assert not (box.package() / "model.onnx").exists()
    assert (box.package() / "model.onnx.enc").is_file()
    with TestClient(create_app(box.settings())) as client:
        assert client.get("/readyz").status_code == 200


def test_init_refuses_to_touch_a_foreign_model_directory(box: Box) -> None:
    shutil.rmtree(box.package())
    box.package().mkdir()
    (box.package() / "model.onnx").write_bytes(b"someone else's model")
    with pytest.raises(ConfigurationError, match="not a model package"):
        init_data_dir(box.data_dir)
    assert (box.package() / "model.onnx").read_bytes() == b"someone else's model"


def test_plaintext_models_only_with_the_unsafe_dev_setting(box: Box) -> None:
    plain = box.data_dir / "plain.onnx"
    plain.write_bytes(model_bytes())
    unsafe = {"unsafe_allow_plaintext_model": True}
    with pytest.raises(ConfigurationError, match="only in dev mode"):
        create_app(box.settings(packages=unsafe, model={"path": str(plain)}))
    settings = box.settings(packages=unsafe, model={"path": str(plain)}, dev_mode=True)
    with TestClient(create_app(settings)) as client:
        model = rank(client, box)["model"]
        assert model == {"name": "demo-ranker", "version": "1"}  # no package digest: unpackaged


def test_hot_swap_loads_a_new_version_and_refusals_keep_the_last_good(box: Box) -> None:
    box.pack("2")
    box.pack("3")
    flip_bit(box.package("3") / "manifest.json", 40)
    with TestClient(create_app(box.settings())) as client:
        before = rank(client, box)["model"]
        assert isinstance(before, dict)
        assert before["version"] == "1"

        # Scope admin is required (the demo client has rank and infer only).
        denied = client.post(LOAD.format("2"), headers=box.headers("demo"))
        assert denied.status_code == 403

        swapped = client.post(LOAD.format("2"), headers=box.headers())
        assert swapped.status_code == 200, swapped.text
        digest2 = swapped.json()["loaded"]["package_digest"]
        after = rank(client, box)["model"]
        assert after == {"name": "demo-ranker", "version": "2", "package_digest": digest2}
        meta = client.get("/v2/models/demo-ranker", headers=box.headers()).json()
        assert meta["parameters"]["version"] == "2"
        assert meta["parameters"]["package_digest"] == digest2
        assert meta["versions"] == ["1", "2"]

        refused = client.post(LOAD.format("3"), headers=box.headers())
        assert refused.status_code == 422
        assert "signature" in refused.json()["detail"]
        missing = client.post(LOAD.format("9"), headers=box.headers())
        assert missing.status_code == 422
        assert rank(client, box)["model"] == after  # still the last good model
        assert client.get("/readyz").status_code == 200


def test_a_hot_swap_keeps_every_clients_stage_5_state(box: Box) -> None:
    # The swap rebuilds the pipelines; stage 5 (budgets, detector history, rate limits)
    # must survive it, or a swap would hand every client a fresh query budget.
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        inspection = client.app.state.components.inspection
        rank(client, box)
        assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
        rank(client, box)
        assert client.app.state.components.inspection is inspection
        spent = asyncio.run(
            inspection.budgets.spend_all(
                [Charge("c:-/demo", 0, limit=10**9, window_s=3600)], now=time.time()
            )
        )
        assert spent.used == 2 * len(RANK["item_ids"])
        assert client.get("/metrics").status_code == 200


def test_raising_min_version_by_policy_reload_stops_the_old_version_at_once(box: Box) -> None:
    # Anti-rollback must not wait for a restart: once the bundle says "at least 2",
    # version 1 is refused while it is still loaded, until an allowed version is loaded.
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        assert rank(client, box)["model"]["version"] == "1"  # type: ignore[index]
        box.edit_data_policy('min_version: "1"', 'min_version: "2"')
        reloaded = client.post("/v1/admin/policy/reload", headers=box.headers())
        assert reloaded.status_code == 200, reloaded.text
        refused = client.post("/v1/rank", json=RANK, headers=box.headers("demo"))
        assert refused.status_code == 503
        assert refused.json()["type"] == "urn:gateway:problem:model-not-ready"
        assert client.get("/readyz").status_code == 503
        assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
        assert rank(client, box)["model"]["version"] == "2"  # type: ignore[index]
        assert client.get("/readyz").status_code == 200


def test_requests_during_a_swap_all_succeed_on_one_version_or_the_other(box: Box) -> None:
    box.pack("2")
    with TestClient(create_app(box.settings())) as client:
        versions: list[str] = []
        failures: list[str] = []
        stop = threading.Event()
        headers = box.headers("demo")

        def hammer() -> None:
            while not stop.is_set():
                r = client.post("/v1/rank", json=RANK, headers=headers)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    versions.append(r.json()["model"]["version"])

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
            assert client.post(LOAD.format("1"), headers=box.headers()).status_code == 200
            assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert not failures
        assert set(versions) <= {"1", "2"}
        assert versions
        assert rank(client, box)["model"]["version"] == "2"  # type: ignore[index]


def test_rotation_keeps_models_and_audit_subjects_loadable(box: Box) -> None:
    box.pack("2")
    settings = box.settings()
    first_kek = box.keyring().current_key_id()
    with TestClient(create_app(settings)) as client:
        rank(client, box, user="u42")  # creates an audit subject key under the first KEK
        pseudonym_before = _pseudonym(client, box)

        report = rotate(settings, delete_retired=True)
        assert report.new_key != first_kek
        assert report.models == 2
        assert report.subjects >= 1
        assert first_kek in report.deleted
        assert not report.failures
        assert not (box.data_dir / "keys" / "kek" / f"{first_kek}.key").exists()
        assert set(key_references(settings)) == {report.new_key}

        # The running gateway keeps serving, hot-loads under the new KEK, and the
        # data subject keeps their pseudonym (same subject key, re-wrapped).
        assert client.post(LOAD.format("2"), headers=box.headers()).status_code == 200
        rank(client, box, user="u42")
        assert _pseudonym(client, box) == pseudonym_before
    # A fresh start with only the new KEK loads every package.
    with TestClient(create_app(box.settings())) as client:
        assert client.get("/readyz").status_code == 200
        rank(client, box, user="u42")
        assert _pseudonym(client, box) == pseudonym_before


def _pseudonym(client: TestClient, box: Box) -> str:
    """The subject pseudonym of the latest /v1/rank record."""
    components = client.app.state.components  # type: ignore[attr-defined]
    store = components.audit.store
    for index in range(store.size() - 1, -1, -1):
        leaf = store.leaf(index)
        record = json.loads(leaf.payload) if leaf.payload else {}
        if record.get("action") == "rank":
            return str(record["subject"])
    raise AssertionError("no rank record")


def test_delete_retired_keeps_a_key_that_still_wraps_something(box: Box) -> None:
    settings = box.settings()
    keyring = box.keyring()
    old = keyring.current_key_id()
    keyring.rotate()  # new KEK, but nothing re-wrapped yet
    from gateway.cli.keys import delete_unreferenced

    deleted, kept = delete_unreferenced(settings, box.keyring())
    assert deleted == []
    assert kept == {old: 1}
    assert box.registry().load("demo-ranker", "1").package is not None


def test_bundle_model_signers_are_trusted_signers(box: Box, tmp_path: Path) -> None:
    """A package signed by the ML team's key loads once the bundle names that key."""
    create_signing_key(tmp_path / "team.key", tmp_path / "team.pub")
    box.pack("2")
    (box.package("2") / "model.sig").unlink()
    sign_package(box.package("2"), tmp_path / "team.key")
    with TestClient(create_app(box.settings())) as client:
        refused = client.post(LOAD.format("2"), headers=box.headers())
        assert refused.status_code == 422
        assert "UntrustedSignerError" in refused.json()["detail"]
    pem = (tmp_path / "team.pub").read_text()
    indented = "\n".join("      " + line for line in pem.strip().splitlines())
    box.edit_data_policy(
        "model_signers: []", f"model_signers:\n  - name: ml-team\n    public_key: |\n{indented}"
    )
    with TestClient(create_app(box.settings())) as client:
        loaded = client.post(LOAD.format("2"), headers=box.headers())
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["loaded"]["signer"] == "policy:ml-team"


def test_model_signers_must_be_ec_pem_keys() -> None:
    with pytest.raises(ValueError, match="PEM"):
        ModelSigner(name="x", public_key=base64.b64encode(b"\1" * 32).decode())
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValueError, match="EC P-256"):
        ModelSigner(name="x", public_key=rsa_pem)
