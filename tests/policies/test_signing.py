"""Ed25519 bundle signatures: signed by a trusted key, and nothing else, verifies."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.bundle import load_bundle
from policies.errors import PolicyError
from policies.signing import key_id, public_key_of, sign_bundle, verify_bundle_signature


def new_private_key() -> str:
    return base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()


def test_sign_and_verify(bundle_dir: Path) -> None:
    private = new_private_key()
    public = public_key_of(private)
    sign_bundle(bundle_dir, private)
    bundle = load_bundle(bundle_dir)
    assert bundle.signature is not None
    assert verify_bundle_signature(bundle, [new_private_key_public(), public]) == key_id(public)
    assert len(key_id(public)) == 8


def new_private_key_public() -> str:
    return public_key_of(new_private_key())


def test_signing_does_not_change_the_content_hash(bundle_dir: Path) -> None:
    before = load_bundle(bundle_dir).content_hash
    sign_bundle(bundle_dir, new_private_key())
    assert load_bundle(bundle_dir).content_hash == before


def test_unsigned_bundle_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(PolicyError, match=r"^bundle.sig: bundle is not signed$"):
        verify_bundle_signature(load_bundle(bundle_dir), [new_private_key_public()])


def test_untrusted_key_is_refused(bundle_dir: Path) -> None:
    private = new_private_key()
    sign_bundle(bundle_dir, private)
    kid = key_id(public_key_of(private))
    with pytest.raises(PolicyError, match=rf"bundle.sig: key_id: signed by untrusted key {kid}"):
        verify_bundle_signature(load_bundle(bundle_dir), [new_private_key_public()])


def test_signature_over_other_content_is_refused(bundle_dir: Path) -> None:
    private = new_private_key()
    sig = sign_bundle(bundle_dir, private)
    # Re-sign a different bundle state, then restore the files: the signature is stale.
    other = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private))
    forged = base64.b64encode(other.sign(b"sha256:" + b"0" * 64)).decode()
    kid = key_id(public_key_of(private))
    sig.write_text(f'key_id: "{kid}"\nsignature: "{forged}"\n')
    with pytest.raises(PolicyError, match=r"bundle.sig: signature: bad signature"):
        verify_bundle_signature(load_bundle(bundle_dir), [public_key_of(private)])


def test_garbage_signature_is_refused(bundle_dir: Path) -> None:
    private = new_private_key()
    sig = sign_bundle(bundle_dir, private)
    kid = key_id(public_key_of(private))
    sig.write_text(f'key_id: "{kid}"\nsignature: "not base64 at all!"\n')
    with pytest.raises(PolicyError, match=r"bad signature"):
        verify_bundle_signature(load_bundle(bundle_dir), [public_key_of(private)])


def test_malformed_signature_file_is_refused_at_load(bundle_dir: Path) -> None:
    (bundle_dir / "bundle.sig").write_text("key_id: nothex\nsignature: abc\n")
    with pytest.raises(PolicyError, match=r"^bundle.sig:1: key_id: String should match"):
        load_bundle(bundle_dir)


def test_bad_key_material_is_refused() -> None:
    with pytest.raises(PolicyError, match="raw 32-byte"):
        key_id(base64.b64encode(b"short").decode())
