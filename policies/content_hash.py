"""The bundle's one content hash, recorded in every audit record.

Canonical form (stable across platforms and archive formats):

* every regular file of the bundle except the top-level ``manifest.yaml`` (which
  holds the hash) and ``bundle.sig`` (which signs it);
* sorted by POSIX relative path, compared as UTF-8 bytes;
* SHA-256 over, for each file in turn: the path's UTF-8 bytes, one 0x00 byte, the
  content length as 8-byte big-endian unsigned integer, then the content.

The NUL separator and the length prefix make the encoding injective: no two
different file sets produce the same byte stream. Rendered ``sha256:<64 hex>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

MANIFEST = "manifest.yaml"
SIGNATURE = "bundle.sig"
UNHASHED = frozenset({MANIFEST, SIGNATURE})


def content_hash(files: Mapping[str, bytes]) -> str:
    """``sha256:<hex>`` over ``files`` (POSIX relative path → bytes), canonical form above."""
    digest = hashlib.sha256()
    for path in sorted((p for p in files if p not in UNHASHED), key=lambda p: p.encode()):
        content = files[path]
        digest.update(path.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(len(content).to_bytes(8, "big"))
        digest.update(content)
    return f"sha256:{digest.hexdigest()}"
