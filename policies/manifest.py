"""``manifest.yaml``: what the bundle is called, which version, and its content hash."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Semantic Versioning 2.0.0, the regex the spec itself recommends.
SEMVER = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = Field(pattern=SEMVER)
    description: str = ""
    content_hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
