"""The packed form of a bundle: a deterministic ``.tar.gz`` of the bundle directory.

Packing sorts entries and zeroes mtime, uid/gid and owner names (and the gzip header's
own mtime), so the same directory always packs to the same bytes. Unpacking never
touches the filesystem: members are read into memory, and anything that could escape
or alias the bundle (absolute paths, ``..``, links, devices) is refused.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from policies.errors import PolicyError

MAX_BUNDLE_BYTES = 16 * 1024 * 1024  # a policy bundle is text; refuse tar bombs


def read_directory(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` by POSIX relative path; links are refused."""
    if not root.is_dir():
        raise PolicyError("bundle directory not found", file=str(root))
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise PolicyError("symbolic links are not allowed in a bundle", file=rel)
        if path.is_file():
            files[rel] = path.read_bytes()
    return files


def pack_files(files: Mapping[str, bytes]) -> bytes:
    """Deterministic ``.tar.gz`` bytes of ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files, key=lambda p: p.encode()):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def pack_bundle(directory: Path, out_tar_gz: Path) -> Path:
    """Pack ``directory`` into ``out_tar_gz`` (deterministic) and return its path."""
    out_tar_gz.write_bytes(pack_files(read_directory(directory)))
    return out_tar_gz


def read_archive(path: Path) -> dict[str, bytes]:
    """The files of a packed bundle, in memory; unsafe members are refused."""
    display = path.name
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            return _members(tar, display)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PolicyError(f"cannot read bundle archive: {exc}", file=display) from exc


def _members(tar: tarfile.TarFile, display: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for member in tar.getmembers():
        name = member.name
        pure = PurePosixPath(name)
        if pure.is_absolute() or name.startswith("/") or "\\" in name:
            raise PolicyError(f"absolute path in archive: {name!r}", file=display)
        if ".." in pure.parts:
            raise PolicyError(f"path traversal in archive: {name!r}", file=display)
        if member.isdir():
            continue
        if not member.isreg():
            raise PolicyError(
                f"only regular files are allowed in a bundle archive: {name!r}", file=display
            )
        total += member.size
        if total > MAX_BUNDLE_BYTES:
            raise PolicyError("bundle archive too large", file=display)
        extracted = tar.extractfile(member)
        if extracted is None:
            raise PolicyError(f"unreadable archive member: {name!r}", file=display)
        rel = pure.as_posix().removeprefix("./")
        if rel in files:
            raise PolicyError(f"duplicate archive member: {name!r}", file=display)
        files[rel] = extracted.read()
    return files
