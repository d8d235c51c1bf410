"""Model packages from the attacker's side: every tampering is refused with its own error."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.datadir import MODEL_SIGNING_KEY
from models.demo import model_bytes
from models.drift import DECILE_KEYS, SHARE_KEYS
from models.features import FeatureStore
from models.loader import PolicyView
from models.ort import session_from_bytes
from models.package_errors import (
    ContentMismatchError,
    KeyUnavailableError,
    ModelPackageError,
    PackageUnreadableError,
    PackError,
    PlaintextModelError,
    PolicyRefusedError,
    SignatureError,
    UntrustedSignerError,
    UnwrapError,
)
from models.signing import create_signing_key, read_public_keys, sign_package
from models.stats import STAT_KEYS
from security.keyring import open_keyring
from tests.models.conftest import Box, flip_bit

ALLOW_DEMO = PolicyView(frozenset({"demo-ranker"}), lambda _name: "1")


def _scores(box: Box, ranker_run: Callable[..., dict[str, np.ndarray]]) -> np.ndarray:
    store = FeatureStore.load(box.data_dir / "demo/features.npz")
    feeds = store.inputs_for("u7", list(store.item_ids[:50]))
    out = ranker_run(feeds)
    return np.asarray(out["score"]).reshape(-1)


def test_init_package_loads_and_scores_like_the_plain_model(box: Box) -> None:
    registry = box.registry(policy=ALLOW_DEMO)
    loaded = registry.load("demo-ranker", "1")
    assert loaded.package is not None
    assert loaded.ranker.ref.digest == hashlib.sha256(model_bytes()).hexdigest()
    manifest_bytes = (box.package() / "manifest.json").read_bytes()
    assert loaded.package_digest == hashlib.sha256(manifest_bytes).hexdigest()
    plain = session_from_bytes(model_bytes())
    got = _scores(box, loaded.ranker.run_sync)
    store = FeatureStore.load(box.data_dir / "demo/features.npz")
    (expected,) = plain.run(["score"], store.inputs_for("u7", list(store.item_ids[:50])))
    np.testing.assert_array_equal(got, expected.reshape(-1))
    registry.close()


def test_package_holds_no_plaintext_and_a_complete_manifest(box: Box) -> None:
    plain = model_bytes()
    for path in box.package().iterdir():
        data = path.read_bytes()
        assert plain[1000:1064] not in data, path.name
    manifest = json.loads((box.package() / "manifest.json").read_text())
    assert manifest["name"] == "demo-ranker"
    assert manifest["version"] == "1"
    assert manifest["model"]["sha256"] == hashlib.sha256(plain).hexdigest()
    cipher = (box.package() / "model.onnx.enc").read_bytes()
    assert manifest["ciphertext"]["sha256"] == hashlib.sha256(cipher).hexdigest()
    assert [i["name"] for i in manifest["signature"]["inputs"]] == [
        "user_id",
        "item_id",
        "user_features",
        "item_features",
    ]
    assert manifest["training"]["name"] == "demo-ranker"
    assert manifest["encryption"]["algorithm"] == "AES-256-GCM"
    # dek.json holds only the wrapped key; its KEK id is a keyring id, not key material.
    dek = json.loads((box.package() / "dek.json").read_text())
    assert set(dek) == {"kek_id", "wrapped"}
    assert dek["kek_id"] in {k.id for k in box.keyring().entries()}


def test_feature_stats_follow_the_agreed_format(box: Box) -> None:
    stats = json.loads((box.package() / "manifest.json").read_text())["feature_stats"]
    assert set(stats) == {"user_id", "item_id", "user_features", "item_features"}
    drift_keys = (*DECILE_KEYS, *SHARE_KEYS)  # the drift gauges' reference bins
    for name, columns in (("user_id", 1), ("item_id", 1), ("user_features", 20)):
        assert set(stats[name]) == {*STAT_KEYS, *drift_keys}
        assert all(len(stats[name][k]) == columns for k in (*STAT_KEYS, *drift_keys))
        # Every column's bin shares are a distribution over the ten bins.
        totals = np.sum([stats[name][k] for k in SHARE_KEYS], axis=0)
        assert np.allclose(totals, 1.0, atol=1e-5)
    uf = stats["user_features"]
    assert all(
        lo <= q1 <= m <= q9 <= hi
        for lo, q1, m, q9, hi in zip(
            uf["min"], uf["q001"], uf["mean"], uf["q999"], uf["max"], strict=True
        )
    )
    assert stats["item_id"]["min"] == [0.0]
    assert stats["item_id"]["max"] == [1500.0]


def test_a_third_party_verifies_with_model_signings_own_verifier(box: Box) -> None:
    from model_signing import verifying

    pub = box.data_dir / "keys/model-signing.pub"
    verify = verifying.Config().use_elliptic_key_verifier(public_key=pub)
    verify.verify(box.package(), box.package() / "model.sig")
    flip_bit(box.package() / "model.onnx.enc", 4242)
    with pytest.raises(ValueError, match="mismatch"):
        verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(
            box.package(), box.package() / "model.sig"
        )


@pytest.mark.parametrize("offset", [0, 777, 150_000, -1])
def test_bit_flip_in_ciphertext_is_refused(box: Box, offset: int) -> None:
    flip_bit(box.package() / "model.onnx.enc", offset)
    with pytest.raises(ContentMismatchError, match=r"model\.onnx\.enc"):
        box.registry().load("demo-ranker", "1")


@pytest.mark.parametrize("offset", [10, 500, -3])
def test_bit_flip_in_manifest_is_refused(box: Box, offset: int) -> None:
    flip_bit(box.package() / "manifest.json", offset)
    with pytest.raises(ContentMismatchError, match=r"manifest\.json"):
        box.registry().load("demo-ranker", "1")


def test_bit_flip_in_signature_is_refused(box: Box) -> None:
    path = box.package() / "model.sig"
    bundle = json.loads(path.read_text())
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    path.write_text(json.dumps(bundle))
    with pytest.raises(SignatureError):
        box.registry().load("demo-ranker", "1")


def test_signed_payload_edited_is_refused(box: Box) -> None:
    """The attacker rewrites the signed digest list to match a modified ciphertext."""
    path = box.package() / "model.sig"
    bundle = json.loads(path.read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "00" * 32
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    path.write_text(json.dumps(bundle))
    with pytest.raises(SignatureError):
        box.registry().load("demo-ranker", "1")


def test_garbage_signature_is_refused(box: Box) -> None:
    (box.package() / "model.sig").write_text("not a bundle")
    with pytest.raises(SignatureError):
        box.registry().load("demo-ranker", "1")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b["dsseEnvelope"].update(signatures=[]),
        lambda b: b.update(verificationMaterial="x"),
        lambda b: b.update(dsseEnvelope=[]),
        lambda b: b["verificationMaterial"].update(publicKey=None),
    ],
    ids=["no-signatures", "material-not-object", "envelope-not-object", "no-public-key"],
)
def test_malformed_signature_bundles_are_refused_not_crashes(
    box: Box, mangle: Callable[[dict[str, object]], None]
) -> None:
    path = box.package() / "model.sig"
    bundle = json.loads(path.read_text())
    mangle(bundle)
    path.write_text(json.dumps(bundle))
    with pytest.raises(SignatureError):
        box.registry().load("demo-ranker", "1")


def test_package_resigned_by_an_untrusted_key_is_refused(box: Box, tmp_path: Path) -> None:
    """An attacker who can write the model directory re-signs a package with their own key."""
    create_signing_key(tmp_path / "evil.key", tmp_path / "evil.pub")
    sign_path = box.package() / "model.sig"
    sign_path.unlink()
    sign_package(box.package(), tmp_path / "evil.key")
    with pytest.raises(UntrustedSignerError):
        box.registry().load("demo-ranker", "1")
    # The same package is accepted once that key is trusted: the refusal was about trust.
    trusted = read_public_keys(tmp_path / "evil.pub", "evil")
    assert box.registry(trusted=trusted).load("demo-ranker", "1").package is not None


def test_wrong_kek_is_refused(box: Box) -> None:
    keyring = box.keyring()
    kek_id = keyring.current_key_id()
    key_file = box.data_dir / "keys" / "kek" / f"{kek_id}.key"
    key_file.write_bytes(os.urandom(32))  # same id, other key material
    with pytest.raises(UnwrapError):
        box.registry(keyring=open_keyring(box.data_dir / "keys")).load("demo-ranker", "1")


def test_missing_kek_is_refused(box: Box, tmp_path: Path) -> None:
    other = open_keyring(tmp_path / "other-keys", create=True)  # another box's keyring
    with pytest.raises(KeyUnavailableError):
        box.registry(keyring=other).load("demo-ranker", "1")
    kek = box.keyring().current_key_id()
    (box.data_dir / "keys" / "kek" / f"{kek}.key").unlink()
    with pytest.raises(KeyUnavailableError):
        box.registry(keyring=open_keyring(box.data_dir / "keys")).load("demo-ranker", "1")


def test_tampered_wrapped_key_is_refused(box: Box) -> None:
    path = box.package() / "dek.json"
    dek = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(dek["wrapped"]))
    raw[20] ^= 0x01
    dek["wrapped"] = base64.b64encode(bytes(raw)).decode()
    path.write_text(json.dumps(dek))
    with pytest.raises(UnwrapError):
        box.registry().load("demo-ranker", "1")


def test_wrapped_key_of_another_package_does_not_open(box: Box) -> None:
    """dek.json is unsigned; the wrap's associated data binds it to its own package."""
    box.pack("2")
    shutil.copy(box.package("2") / "dek.json", box.package("1") / "dek.json")
    with pytest.raises(UnwrapError):
        box.registry().load("demo-ranker", "1")


def test_version_below_policy_minimum_is_refused(box: Box) -> None:
    policy = PolicyView(frozenset({"demo-ranker"}), lambda _name: "2")
    with pytest.raises(PolicyRefusedError, match="min_version"):
        box.registry(policy=policy).load("demo-ranker", "1")
    box.pack("10")  # numeric order: 10 > 2
    assert box.registry(policy=policy).load("demo-ranker", "10").version == "10"


@pytest.mark.parametrize(("version", "minimum"), [("v9", "v10"), ("1a", "2"), ("dev", "100")])
def test_versions_that_are_not_numbers_cannot_pass_a_floor(
    box: Box, version: str, minimum: str
) -> None:
    # Text parts once sorted above every number: "dev" >= "100" let an old model back in.
    box.pack(version)
    policy = PolicyView(frozenset({"demo-ranker"}), lambda _name: minimum)
    with pytest.raises(PolicyRefusedError, match="dotted numbers"):
        box.registry(policy=policy).load("demo-ranker", version)


def test_model_name_outside_the_policy_is_refused(box: Box) -> None:
    policy = PolicyView(frozenset({"other-model"}), lambda _name: None)
    with pytest.raises(PolicyRefusedError, match="not in the policy"):
        box.registry(policy=policy).load("demo-ranker", "1")


@pytest.mark.parametrize("name", ["model.onnx.enc", "manifest.json"])
def test_truncated_signed_file_is_refused(box: Box, name: str) -> None:
    path = box.package() / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ContentMismatchError):
        box.registry().load("demo-ranker", "1")


@pytest.mark.parametrize(
    ("name", "error"),
    [("dek.json", UnwrapError), ("model.sig", SignatureError)],
)
def test_truncated_unsigned_file_is_refused(
    box: Box, name: str, error: type[ModelPackageError]
) -> None:
    path = box.package() / name
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(error):
        box.registry().load("demo-ranker", "1")


@pytest.mark.parametrize("name", ["model.sig", "dek.json", "manifest.json", "model.onnx.enc"])
def test_missing_file_is_refused(box: Box, name: str) -> None:
    (box.package() / name).unlink()
    with pytest.raises(PackageUnreadableError, match=name.replace(".", r"\.")):
        box.registry().load("demo-ranker", "1")


def test_package_copied_under_another_version_is_refused(box: Box) -> None:
    """A signed v1 renamed to v3 must not pass for v3 (the manifest names its version)."""
    shutil.copytree(box.package("1"), box.package("3"))
    with pytest.raises(PackageUnreadableError, match="expected demo-ranker 3"):
        box.registry().load("demo-ranker", "3")


def test_extra_and_plaintext_files_are_refused(box: Box) -> None:
    (box.package() / "notes.txt").write_text("hi")
    with pytest.raises(PackageUnreadableError, match="not signed"):
        box.registry().load("demo-ranker", "1")
    (box.package() / "notes.txt").unlink()
    (box.package() / "model.onnx").write_bytes(model_bytes())
    with pytest.raises(PlaintextModelError, match="gateway init"):
        box.registry().load("demo-ranker", "1")


def test_pack_refuses_invalid_onnx_and_existing_versions(box: Box) -> None:
    with pytest.raises(PackError, match="not a valid ONNX"):
        box.pack("5", blob=b"\x08\x07garbage")
    with pytest.raises(PackError, match="never overwritten"):
        box.pack("1")
    with pytest.raises(PackError, match="must match"):
        box.pack("../escape")
    assert not (box.root / "demo-ranker" / "5").exists()
    assert not list(box.package().parent.glob(".*packing*"))


def test_pack_without_signing_key_is_refused(box: Box) -> None:
    (box.data_dir / MODEL_SIGNING_KEY).unlink()
    with pytest.raises(PackError, match="signing key"):
        box.pack("6")


LOAD_AND_SCAN = """
import os, sys
from pathlib import Path
from gateway.settings import load_settings
from gateway.app import create_app
from fastapi.testclient import TestClient
data, config = Path(sys.argv[1]), Path(sys.argv[2])
settings = load_settings(data_dir=data, config_file=config)
with TestClient(create_app(settings)) as client:
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
print("loaded")
"""


def test_no_plaintext_model_byte_on_disk_after_loading(box: Box, tmp_path: Path) -> None:
    """Serve from the package in a fresh process; then no file under the data dir or the
    process's temp dir holds any 64-byte window of the plaintext model."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SCAN, str(box.data_dir), str(box.report.config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plain = model_bytes()
    probes = [plain[i : i + 64] for i in range(0, len(plain) - 64, len(plain) // 50)]
    scanned = 0
    for root in (box.data_dir, tmp):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                scanned += 1
                assert not any(p in data for p in probes), f"plaintext model bytes in {path}"
    assert scanned > 10  # the scan saw the data directory (keys, packages, audit db)


def test_stats_keep_only_model_inputs_and_reach_the_loaded_model(box: Box) -> None:
    stats = {
        "user_id": {k: [0.0] for k in STAT_KEYS},
        "not_an_input": {k: [1.0] for k in STAT_KEYS},
    }
    result = box.pack("2", feature_stats=stats)
    assert set(result.manifest["feature_stats"]) == {"user_id"}
    loaded = box.registry().load("demo-ranker", "2")
    assert loaded.feature_stats == {"user_id": {k: [0.0] for k in STAT_KEYS}}
