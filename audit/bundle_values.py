"""Typed readers of the values a bundle carries, for the verifier.

JSON, base64 hashes, proofs and opened records, each read strictly and each
failing with `BundleInvalid` at the step and place the caller names.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, TypeGuard

import orjson

from audit.bundle_format import MAX_PROOF, BundleInvalid
from audit.checkpoint import Checkpoint
from audit.merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion

__all__ = [
    "b64",
    "b64_hash",
    "included",
    "is_int",
    "is_optional_str",
    "parse_json",
    "proof_hashes",
    "record_text",
]


def parse_json(text: bytes | str, step: int, where: str, index: int | None = None) -> Any:
    # orjson is strict RFC 8259: no NaN or Infinity, no invalid UTF-8, no lone surrogates.
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BundleInvalid(step, where, f"not valid JSON: {exc}", index=index) from exc


def b64(value: object, step: int, where: str, index: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise BundleInvalid(step, where, "hash is not a base64 string", index=index)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleInvalid(step, where, "hash is not valid base64", index=index) from exc


def b64_hash(value: object, step: int, where: str, index: int | None = None) -> bytes:
    raw = b64(value, step, where, index)
    if len(raw) != HASH_SIZE:
        raise BundleInvalid(step, where, f"hash is {len(raw)} bytes, not {HASH_SIZE}", index=index)
    return raw


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_optional_str(value: object) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def proof_hashes(value: object, step: int, where: str, index: int) -> list[bytes]:
    if not isinstance(value, list) or len(value) > MAX_PROOF:
        raise BundleInvalid(step, where, "proof is not a list of at most 64 hashes", index=index)
    return [b64_hash(p, step, where, index) for p in value]


def record_text(entry: dict[str, Any], leaf: bytes, step: int, where: str, index: int) -> str:
    """The record's text, after checking it hashes to `leaf`."""
    text = entry["record"]
    if not isinstance(text, str):
        raise BundleInvalid(step, where, "record is not a string", index=index)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BundleInvalid(step, where, "record is not encodable as UTF-8", index=index) from exc
    if not hmac.compare_digest(leaf_hash(data), leaf):
        raise BundleInvalid(step, where, "record does not hash to its leaf hash", index=index)
    return text


def included(
    step: int,
    where: str,
    index: int,
    leaf: bytes,
    proof: object,
    checkpoint: Checkpoint,
) -> None:
    """The leaf hash is entry `index` of the checkpoint, by the proof carried with it."""
    hashes = proof_hashes(proof, step, where, index)
    try:
        verify_inclusion(leaf, index, checkpoint.size, hashes, checkpoint.root)
    except ProofError as exc:
        raise BundleInvalid(step, where, f"not in the checkpoint: {exc}", index=index) from exc
