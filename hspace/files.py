"""Files: one content hash and one atomic write for the whole project, and one way to open a URL's filesystem.

Object stores need no atomic write (a PUT is whole); see ``hspace.bank`` for those.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import fsspec

from hspace.errors import HSpaceError

BLOCK = 1 << 20
# fsspec backends that an hspace extra installs, by URL scheme.
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}


def url_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` (a path or an fsspec URL) and the path on it.

    Raises
    ------
    HSpaceError
        If the URL's backend is not installed (naming the extra that installs it) or the URL is malformed.
    """
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as error:
        scheme = url.split("://", 1)[0]
        if scheme in EXTRAS:
            package, extra = EXTRAS[scheme]
            raise HSpaceError(
                f"{url} needs {package}, which is not installed: pip install 'hspace[{extra}]'"
            ) from error
        raise HSpaceError(f"cannot open {url}: {error} (install the fsspec backend for {scheme}://)") from error
    except ValueError as error:
        raise HSpaceError(f"cannot open {url}: {error}") from error


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in blocks so a large file is never held whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write a file by ``write(staging)`` into a sibling staging file, fsync, then rename it over ``path``.

    A reader (or a rerun after a crash) sees either the old file or the whole new one, never a part: a file
    that exists is complete. The staging name is unique, so two writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(staging)
        with open(staging, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda staging: staging.write_bytes(data))
