"""Why a model package was refused: one class per loader step, all `ModelPackageError`.

The loader's steps are numbered (see models.loader); each failure is one of
these, so the gateway, the CLI and the tests can tell a forged signature from
a missing key without parsing messages. Messages name files and key ids, never
key material or model bytes.
"""

from __future__ import annotations


class ModelPackageError(Exception):
    """A model package that must not be served. `step` names the loader step that refused."""

    step = "package"


class PackageUnreadableError(ModelPackageError):
    """Step 0: the package directory, a required file, or its JSON is missing or malformed."""

    step = "read"


class PlaintextModelError(ModelPackageError):
    """A plain .onnx where a signed package is required (allowed only by the unsafe dev setting)."""

    step = "read"


class UntrustedSignerError(ModelPackageError):
    """Step 1: no trusted model-signing key matches the package's signature."""

    step = "signature"


class SignatureError(ModelPackageError):
    """Step 1: the signature does not verify (forged, corrupted, or malformed)."""

    step = "signature"


class ContentMismatchError(ModelPackageError):
    """Step 1: a signed file differs from its signed digest (bit flip, truncation, swap)."""

    step = "signature"


class PolicyRefusedError(ModelPackageError):
    """Step 2: the policy does not allow this model name, or the version is below min_version."""

    step = "policy"


class KeyUnavailableError(ModelPackageError):
    """Step 3: the KEK that wrapped the data key is not in the keyring (deleted, other box)."""

    step = "unwrap"


class UnwrapError(ModelPackageError):
    """Step 3: the wrapped data key does not open (tampered dek.json or wrong KEK)."""

    step = "unwrap"


class DecryptError(ModelPackageError):
    """Step 4: AES-256-GCM refused the ciphertext (tampered, or bound to another manifest)."""

    step = "decrypt"


class PlaintextDigestError(ModelPackageError):
    """Step 5: the decrypted bytes are not the model the manifest names."""

    step = "digest"


class SessionError(ModelPackageError):
    """Step 6: onnxruntime cannot build a session from the bytes, or its signature differs."""

    step = "session"


class PackError(ModelPackageError):
    """`models pack` refused: invalid ONNX, or quantisation outside the holdout gate."""

    step = "pack"
