"""Local files: one content hash and one atomic write for the whole project.

Object stores need no atomic write (a PUT is whole); see ``hspace.bank`` for those.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

BLOCK = 1 << 20


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
