"""A versioned policy bundle: Cedar policies, their schema, the data policy, its tests.

Layout (a directory, or the same packed as ``.tar.gz`` by ``pack_bundle``)::

    manifest.yaml              name, version (semver), description, content_hash
    policies.cedar             Cedar policies, each with an @id("...") annotation
    schema.cedarschema.json    Cedar JSON schema; policies are validated against it
    data.yaml                  typed data policy (policies.data_policy.DataPolicy)
    tests/*.yaml               test cases (policies.test_cases.CaseFile)
    bundle.sig                 optional Ed25519 signature over the content hash
    README.md                  optional, hashed like every other file

``load_bundle`` checks, in order, and refuses with one ``PolicyError`` naming the
file, line and key: (1) the manifest, (2) that only known files are present,
(3) the content hash (integrity before interpretation), (4) the data policy,
(5) the Cedar schema and policies, (6) model references, (7) test cases,
(8) the signature file's shape (``policies.signing`` verifies it against keys).

``python -m policies.bundle rehash DIR`` rewrites the manifest's content hash after
an edit; ``pack DIR OUT`` writes the packed form; ``test PATH`` runs the test cases.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from policies.archive import pack_bundle, read_archive, read_directory
from policies.cedar_engine import AttrValue, CedarEngine
from policies.content_hash import MANIFEST, SIGNATURE, content_hash
from policies.data_policy import DataPolicy
from policies.errors import PolicyError
from policies.manifest import Manifest
from policies.test_cases import CaseFile, LoadedCase, LoadedConsentCase
from policies.testing import run_tests
from policies.vocabulary import NAMESPACE
from policies.yaml_source import line_of, load_model

POLICIES = "policies.cedar"
SCHEMA = "schema.cedarschema.json"
DATA = "data.yaml"
REQUIRED = (POLICIES, SCHEMA, DATA)
OPTIONAL = frozenset({SIGNATURE, "README.md"})
_MODEL_LITERAL = re.compile(NAMESPACE + r'::Model::"((?:[^"\\]|\\.)*)"')

__all__ = ["BundleSignature", "PolicyBundle", "load_bundle", "pack_bundle"]


class BundleSignature(BaseModel):
    """``bundle.sig``: who signed (key id) and the base64 Ed25519 signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=r"^[0-9a-f]{8}$")
    signature: str = Field(min_length=1)


@dataclass(frozen=True, eq=False)
class PolicyBundle:
    name: str
    version: str
    description: str
    content_hash: str
    engine: CedarEngine
    data: DataPolicy
    tests: tuple[LoadedCase, ...]
    signature: BundleSignature | None
    source: Path
    consent_tests: tuple[LoadedConsentCase, ...] = ()

    def model_attrs(self, name: str, version: str | None = None) -> dict[str, AttrValue]:
        """The Cedar attributes of model ``name`` as this bundle's data policy sees it.

        The gateway passes these as ``AuthzRequest.resource_attrs`` so that policies
        such as ``forbid-blocked-model`` act on the data policy's ``blocked`` flag.
        """
        attrs: dict[str, AttrValue] = {"name": name}
        if version is not None:
            attrs["version"] = version
        model = self.data.model(name)
        if model is not None:
            attrs["blocked"] = model.blocked
        return attrs


def load_bundle(path: Path) -> PolicyBundle:
    """Load and validate the bundle at ``path`` (a directory or a ``.tar.gz``)."""
    files = read_archive(path) if path.is_file() else read_directory(path)
    return load_files(files, path)


def load_files(files: Mapping[str, bytes], source: Path) -> PolicyBundle:
    """Load a bundle from its files in memory (POSIX relative path → bytes)."""
    # 1. the manifest
    if MANIFEST not in files:
        raise PolicyError("missing bundle manifest", file=MANIFEST)
    manifest_text = _text(files, MANIFEST)
    manifest, manifest_node = load_model(manifest_text, MANIFEST, Manifest)

    # 2. only known files
    for name in sorted(files):
        if name == MANIFEST or name in REQUIRED or name in OPTIONAL or _is_test_file(name):
            continue
        raise PolicyError("unexpected file in bundle", file=name)
    for name in REQUIRED:
        if name not in files:
            raise PolicyError("missing required file", file=name)

    # 3. integrity before interpretation
    actual = content_hash(files)
    if actual != manifest.content_hash:
        raise PolicyError(
            f"content hash mismatch: manifest says {manifest.content_hash}, files hash to "
            f"{actual} (run `python -m policies.bundle rehash` after an intended edit)",
            file=MANIFEST,
            line=line_of(manifest_node, ("content_hash",)),
            key="content_hash",
        )

    # 4. data policy
    data, _ = load_model(_text(files, DATA), DATA, DataPolicy)

    # 5. Cedar schema and policies (parsed and validated once, here)
    engine = CedarEngine(_text(files, POLICIES), _text(files, SCHEMA))

    # 6. policies may only name models the data policy knows
    _check_policy_models(engine.policies_text, data)

    # 7. test cases
    tests, consent_tests = _load_tests(files, data)

    # 8. signature file shape
    signature = None
    if SIGNATURE in files:
        signature, _ = load_model(_text(files, SIGNATURE), SIGNATURE, BundleSignature)

    return PolicyBundle(
        name=manifest.name,
        version=manifest.version,
        description=manifest.description,
        content_hash=actual,
        engine=engine,
        data=data,
        tests=tests,
        signature=signature,
        source=source,
        consent_tests=consent_tests,
    )


def _is_test_file(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return len(parts) == 2 and parts[0] == "tests" and parts[1].endswith((".yaml", ".yml"))


def _text(files: Mapping[str, bytes], name: str) -> str:
    try:
        return files[name].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"not UTF-8 text (byte {exc.start})", file=name) from exc


def _check_policy_models(text: str, data: DataPolicy) -> None:
    for match in _MODEL_LITERAL.finditer(text):
        if match.group(1) not in data.models:
            line = text.count("\n", 0, match.start()) + 1
            raise PolicyError(
                f"unknown model {match.group(1)!r} (not in {DATA})", file=POLICIES, line=line
            )


def _load_tests(
    files: Mapping[str, bytes], data: DataPolicy
) -> tuple[tuple[LoadedCase, ...], tuple[LoadedConsentCase, ...]]:
    loaded: list[LoadedCase] = []
    consent: list[LoadedConsentCase] = []
    names: dict[str, str] = {}
    for name in sorted(n for n in files if _is_test_file(n)):
        case_file, node = load_model(_text(files, name), name, CaseFile)
        for index, consent_case in enumerate(case_file.consent_cases):
            line = line_of(node, ("consent_cases", index))
            if consent_case.name in names:
                raise PolicyError(
                    f"duplicate test case name (also in {names[consent_case.name]})",
                    file=name,
                    line=line,
                    key=f"consent_cases[{index}].name",
                )
            names[consent_case.name] = name
            consent.append(LoadedConsentCase(case=consent_case, file=name, line=line))
        for index, case in enumerate(case_file.cases):
            line = line_of(node, ("cases", index))
            if case.name in names:
                raise PolicyError(
                    f"duplicate test case name (also in {names[case.name]})",
                    file=name,
                    line=line,
                    key=f"cases[{index}].name",
                )
            names[case.name] = name
            resource = case.request.resource
            if resource.type == "Model" and resource.id not in data.models:
                loc = ("cases", index, "request", "resource", "id")
                raise PolicyError(
                    f"unknown model {resource.id!r} (not in {DATA})",
                    file=name,
                    line=line_of(node, loc),
                    key=f"cases[{index}].request.resource.id",
                )
            loaded.append(LoadedCase(case=case, file=name, line=line))
    return tuple(loaded), tuple(consent)


def rehash(directory: Path) -> str:
    """Recompute the content hash of ``directory`` and write it into its manifest."""
    files = read_directory(directory)
    digest = content_hash(files)
    manifest_path = directory / MANIFEST
    text = manifest_path.read_text(encoding="utf-8") if manifest_path.exists() else ""
    pattern = re.compile(r"^content_hash:.*$", re.MULTILINE)
    line = f'content_hash: "{digest}"'
    if pattern.search(text):
        text = pattern.sub(line, text, count=1)
    else:
        text = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    manifest_path.write_text(text, encoding="utf-8")
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.bundle")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("rehash", help="rewrite manifest content_hash").add_argument("dir")
    pack = commands.add_parser("pack", help="write the deterministic .tar.gz")
    pack.add_argument("dir")
    pack.add_argument("out")
    commands.add_parser("test", help="load a bundle and run its tests").add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "rehash":
            print(rehash(Path(args.dir)))
        elif args.command == "pack":
            load_bundle(Path(args.dir))  # never pack a bundle that does not load
            print(pack_bundle(Path(args.dir), Path(args.out)))
        else:
            report = run_tests(load_bundle(Path(args.path)))
            print(report.render())
            return 0 if report.passed else 1
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
