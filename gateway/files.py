"""Secret files: created owner-only, never overwritten, never through a planted symlink."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (parents 0700); FileExistsError if anything is there.

    O_EXCL makes creation atomic and refuses an existing file or symlink, so a
    key is never silently replaced and never written where an attacker points.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        # Durable before anyone relies on it: `keys rotate --delete-retired` shreds the
        # old key right after writing the new one, and a crash must not leave neither.
        handle.flush()
        os.fsync(handle.fileno())
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
