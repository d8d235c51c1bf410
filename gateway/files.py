"""Private files: created owner-only, durable, never through a planted symlink.

Two ways to write, and nothing else in the project writes a file it relies on:
`write_private` creates a new file and refuses anything already there;
`replace_private` replaces a file in one step (a temporary file in the same
directory, fsync, rename, fsync of the directory), so a crash leaves either the
old content or the new, never a mix.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], None]


def write_private(path: Path, data: bytes | Writer) -> None:
    """Create `path` with mode 0600 (parents 0700); FileExistsError if anything is there.

    O_EXCL makes creation atomic and refuses an existing file or symlink, so a
    key is never silently replaced and never written where an attacker points.
    `data` is the content, or a callable that writes it to the open file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            # Durable before anyone relies on it: `keys rotate --delete-retired` shreds the
            # old key right after writing the new one, and a crash must not leave neither.
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def replace_private(path: Path, data: bytes | Writer) -> None:
    """Replace (or create) `path` atomically and durably, mode 0600.

    The temporary name is random and created with O_EXCL in the target's own
    directory, so the rename never crosses a file system and never follows a
    planted link; it is removed if writing fails.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    write_private(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
