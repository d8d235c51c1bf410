"""The bundle's zip archive, for the verifier: steps 1 (the archive) and 2 (the manifest).

Holds the open zip, the members step 1 found and the digests step 2 read from
the manifest, and reads members for the later steps: small ones whole (their
size was bounded in step 1), the two line files one bounded line at a time,
their digests checked once the last line is read.
"""

from __future__ import annotations

import hashlib
import hmac
import zipfile
import zlib
from collections.abc import Generator
from typing import Any

import orjson

from audit.bundle_format import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    FILTER_KEYS,
    MANIFEST,
    MAX_LINE,
    MEMBERS,
    MIB,
    OPTIONAL,
    PREVIOUS,
    REQUIRED,
    STREAMED,
    BundleInvalid,
)
from audit.bundle_values import is_int, is_optional_str, parse_json

__all__ = ["ZIP_ERRORS", "BundleArchive"]

# zipfile and zlib report a damaged archive through all of these.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)


class _Digest:
    """SHA-256 and size of a streamed member, compared with the manifest once it is read."""

    def __init__(self, name: str, expected: dict[str, Any]) -> None:
        self.name = name
        self._expected = expected
        self._sha = hashlib.sha256()
        self._size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self._size += len(data)

    def check(self) -> None:
        if self._size != self._expected.get("size") or not hmac.compare_digest(
            self._sha.hexdigest(), self._expected["sha256"]
        ):
            raise BundleInvalid(2, self.name, "SHA-256 or size differs from the manifest")


class BundleArchive:
    """An open bundle: its members checked (step 1), its manifest read (step 2)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._zip = archive
        self._names: set[str] = set()
        self._members: dict[str, Any] = {}

    def holds(self, name: str) -> bool:
        """The archive has this member (known once step 1 ran)."""
        return name in self._names

    # -- reading members ------------------------------------------------------

    def read(self, step: int, name: str) -> bytes:
        """A small member, whole (its size was bounded in step 1)."""
        try:
            return self._zip.read(name)
        except ZIP_ERRORS as exc:
            raise BundleInvalid(step, name, f"unreadable: {exc}") from exc

    def text(self, step: int, name: str) -> str:
        try:
            return self.read(step, name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleInvalid(step, name, "not UTF-8") from exc

    def lines(self, step: int, name: str) -> Generator[tuple[int, bytes], None, None]:
        """(line number, line) of a line member, one bounded line at a time; the member's
        digest is checked against the manifest once the last line is read."""
        digest = _Digest(name, self._members[name])
        number = 0
        tail = b""
        # Large reads split here: zipfile's own readline peeks a few bytes at a time,
        # which costs more than everything else a line needs.
        for chunk in self._chunks(step, name):
            digest.update(chunk)
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                number += 1
                if len(line) >= MAX_LINE:
                    raise BundleInvalid(step, f"{name} line {number}", "line too long")
                yield number, line
            if len(tail) >= MAX_LINE:
                raise BundleInvalid(step, f"{name} line {number + 1}", "line too long")
        if tail:
            raise BundleInvalid(step, f"{name} line {number + 1}", "unterminated line")
        digest.check()

    def _chunks(self, step: int, name: str) -> Generator[bytes, None, None]:
        try:
            with self._zip.open(name) as handle:
                while chunk := handle.read(MIB):
                    yield chunk
        except ZIP_ERRORS as exc:
            raise BundleInvalid(step, name, f"unreadable: {exc}") from exc

    # -- 1. the archive -------------------------------------------------------

    def step1_archive(self) -> None:
        infos = self._zip.infolist()
        self._refuse_other_versions(infos)
        for info in infos:
            name = info.filename
            if name.startswith("/") or "\\" in name or ".." in name.split("/") or "/" in name:
                raise BundleInvalid(1, repr(name), "member name is a path, not a flat name")
            if name not in MEMBERS:
                raise BundleInvalid(1, repr(name), "unexpected member")
            if name in self._names:
                raise BundleInvalid(1, name, "duplicate member")
            self._names.add(name)
            if info.flag_bits & 0x1:
                raise BundleInvalid(1, name, "member is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BundleInvalid(1, name, f"unsupported compression {info.compress_type}")
            if info.file_size > MEMBERS[name]:
                raise BundleInvalid(1, name, f"{info.file_size} bytes, over {MEMBERS[name]}")
        missing = sorted(REQUIRED - self._names)
        if missing:
            raise BundleInvalid(1, ", ".join(missing), "required member missing")
        optional = self._names & OPTIONAL
        if optional and optional != OPTIONAL:
            raise BundleInvalid(
                1, ", ".join(sorted(optional)), "previous.note and consistency.json come together"
            )

    def _refuse_other_versions(self, infos: list[zipfile.ZipInfo]) -> None:
        """A bundle of another format version has other members: say that, rather than
        that its members are unexpected (the manifest is read again, fully, in step 2)."""
        manifests = [info for info in infos if info.filename == MANIFEST]
        if len(manifests) != 1 or manifests[0].file_size > MEMBERS[MANIFEST]:
            return
        try:
            manifest = orjson.loads(self._zip.read(manifests[0]))
        except (orjson.JSONDecodeError, *ZIP_ERRORS):
            return
        if isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT:
            _check_version(manifest.get("version"))

    # -- 2. manifest and digests ----------------------------------------------

    def step2_manifest(self) -> dict[str, Any]:
        manifest = parse_json(self.read(2, MANIFEST), 2, MANIFEST)
        if not isinstance(manifest, dict):
            raise BundleInvalid(2, MANIFEST, "not a JSON object")
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleInvalid(2, MANIFEST, "not an audit bundle")
        _check_version(manifest.get("version"))
        if not _well_typed(manifest):
            raise BundleInvalid(2, MANIFEST, "missing or mistyped fields")
        span, flt = manifest["range"], manifest["filter"]
        if not span["start"] <= span["end"] <= manifest["checkpoint_size"]:
            raise BundleInvalid(2, MANIFEST, "range is not inside the checkpoint")
        if flt["from_ms"] > flt["to_ms"]:
            raise BundleInvalid(2, MANIFEST, "time range is empty or negative")
        if (manifest["previous_size"] is None) != (PREVIOUS not in self._names):
            raise BundleInvalid(2, MANIFEST, "previous_size disagrees with previous.note")
        self._check_members(manifest.get("members"))
        return manifest

    def _check_members(self, members: object) -> None:
        """Every member but the manifest is listed with its digest; the small ones match
        it now, the streamed ones as steps 4 and 6 read them."""
        if not isinstance(members, dict) or set(members) != self._names - {MANIFEST}:
            raise BundleInvalid(2, MANIFEST, "member list differs from the archive's members")
        for name in sorted(members):
            entry = members[name]
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
                raise BundleInvalid(2, MANIFEST, f"no digest for {name}")
            self._members[name] = entry
            if name in STREAMED:
                continue  # checked as steps 4 and 6 read it, without a second pass
            digest, size = self._digest(name)
            if size != entry.get("size") or not hmac.compare_digest(digest, entry["sha256"]):
                raise BundleInvalid(2, name, "SHA-256 or size differs from the manifest")

    def _digest(self, name: str) -> tuple[str, int]:
        sha = hashlib.sha256()
        size = 0
        try:
            with self._zip.open(name) as handle:
                while chunk := handle.read(MIB):
                    sha.update(chunk)
                    size += len(chunk)
        except ZIP_ERRORS as exc:
            raise BundleInvalid(2, name, f"unreadable: {exc}") from exc
        return sha.hexdigest(), size


def _check_version(version: object) -> None:
    if version != BUNDLE_VERSION:
        raise BundleInvalid(
            2,
            MANIFEST,
            f"bundle format version {version!r}; this verifier reads version "
            f"{BUNDLE_VERSION} only (use the gateway release that wrote the bundle)",
        )


def _well_typed(manifest: dict[str, Any]) -> bool:
    """The manifest's fields are there, with their types (values are checked after)."""
    return (
        isinstance(manifest.get("origin"), str)
        and is_int(manifest.get("checkpoint_size"))
        and is_int(manifest.get("records"))
        and (manifest.get("previous_size") is None or is_int(manifest["previous_size"]))
        and _filter_well_typed(manifest.get("filter"))
        and _range_well_typed(manifest.get("range"))
    )


def _filter_well_typed(flt: object) -> bool:
    return (
        isinstance(flt, dict)
        and set(flt) == FILTER_KEYS
        and is_int(flt["from_ms"])
        and is_int(flt["to_ms"])
        and is_optional_str(flt["client_id"])
        and is_optional_str(flt["subject"])
        and is_optional_str(flt["tenant"])
        and isinstance(flt["tenant_scoped"], bool)
        and (flt["tenant"] is None or flt["tenant_scoped"])
    )


def _range_well_typed(span: object) -> bool:
    return (
        isinstance(span, dict)
        and set(span) == {"start", "end"}
        and is_int(span["start"])
        and is_int(span["end"])
    )
