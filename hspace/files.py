"""Files: one content hash and one atomic write for the whole project, and one way to open a URL's filesystem.

Object stores need no atomic write (a PUT is whole); see ``hspace.bank`` for those. An object store that stops
answering for a while (a restart, a network blip) is waited for: every request is retried with backoff
(:func:`storage_options`), and one still failing after that is one line naming the URL (:func:`reachable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from hspace.errors import HSpaceError

BLOCK = 1 << 20
# fsspec backends that an hspace extra installs, by URL scheme.
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3")}
# Attempts per S3 request (botocore's 'standard' retries: a random wait of up to min(2**i, 20) s before retry i),
# so that an endpoint down for 10-20 s is waited for (about a minute on average, at most two, before giving up).
S3_MAX_ATTEMPTS = 10


def storage_options(url: str) -> dict[str, Any]:
    """The fsspec options hspace opens ``url`` with (for s3://: retries, no listing cache); the same for Zarr stores.

    The retry mode and attempts are botocore's, set here only where the user set none: ``AWS_RETRY_MODE`` and
    ``AWS_MAX_ATTEMPTS``, or ``retry_mode`` and ``max_attempts`` in the AWS config file's profile, win.
    Listings are not cached: workers and other runs write the corpus and the bank while a process holds its
    filesystem, and s3fs's listing cache never sees their writes (a listing made before a group or a bank
    version existed would hide it for as long as the process lives).
    """
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in EXTRAS:
        return {}
    try:
        import botocore.exceptions  # type: ignore[import-untyped]
        import botocore.session  # type: ignore[import-untyped]
    except ImportError:  # url_filesystem names the extra to install
        return {}
    try:
        profile = botocore.session.Session().get_scoped_config()
    except botocore.exceptions.ProfileNotFound:  # s3fs refuses it when it opens the URL
        profile = {}
    retries = {
        key: value
        for key, value, env, name in (
            ("mode", "standard", "AWS_RETRY_MODE", "retry_mode"),
            ("total_max_attempts", S3_MAX_ATTEMPTS, "AWS_MAX_ATTEMPTS", "max_attempts"),
        )
        if env not in os.environ and name not in profile
    }
    return {"use_listings_cache": False, **({"config_kwargs": {"retries": retries}} if retries else {})}


def url_filesystem(url: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` (a path or an fsspec URL) and the path on it.

    It is opened with :func:`storage_options` and ``options`` (e.g. ``asynchronous=True``).

    Raises
    ------
    HSpaceError
        If the URL's backend is not installed (naming the extra that installs it) or the URL is malformed.
    """
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url), **options)
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


@contextlib.contextmanager
def reachable(url: str) -> Iterator[None]:
    """Raise a connection failure that outlived the retries of :func:`storage_options` as one line naming ``url``.

    Raises
    ------
    HSpaceError
        If the body fails because the store at ``url`` could not be reached (refused, dropped, timed out).
    """
    try:
        yield
    except Exception as error:
        if not _is_connection_failure(error):
            raise
        raise HSpaceError(
            f"cannot reach {url} ({error}), still after retrying: check that its endpoint is up and reachable "
            "(for s3://: AWS_ENDPOINT_URL; AWS_MAX_ATTEMPTS sets how long to retry), then rerun the same command "
            "to resume"
        ) from error


def _is_connection_failure(error: BaseException) -> bool:
    try:
        from botocore.exceptions import ConnectionError, HTTPClientError
    except ImportError:
        return False
    return isinstance(error, ConnectionError | HTTPClientError)


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


def is_url(url: str) -> bool:
    """Whether ``url`` names a remote store (``s3://...``) rather than a local path (``file://`` is local)."""
    return "://" in url and not url.startswith("file://")


def put_whole(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one file whole: locally by write, fsync, rename; elsewhere as one object (atomic PUT)."""
    if isinstance(fs, LocalFileSystem):
        atomic_write_bytes(path, data)
    else:
        fs.pipe_file(path, data)


def write_whole_files(folder: str, files: dict[str, bytes]) -> list[str]:
    """Write each of ``files`` (name -> bytes) whole into ``folder`` (a path or an fsspec URL), in the given order,
    so that the last one present marks them all written; returns their paths (URLs for a URL folder)."""
    fs, root = url_filesystem(folder)
    base = folder.rstrip("/")
    with reachable(folder):
        for name, data in files.items():
            put_whole(fs, f"{root.rstrip('/')}/{name}", data)
    return [f"{base}/{name}" for name in files]


# How long a signed link in a report (a Prefect artifact) stays valid: S3's longest, 7 days.
LINK_SECONDS = 7 * 24 * 3600


def browser_link(url: str) -> str | None:
    """An address a browser, e.g. the Prefect UI showing an artifact, can load ``url`` from: an http(s) URL as it is,
    a signed URL where the store signs them (s3://, valid :data:`LINK_SECONDS`), None for a local file (a page
    served over http may not load file:// addresses) or a store that cannot sign."""
    if url.startswith(("http://", "https://")):
        return url
    if not is_url(url):
        return None
    fs, path = url_filesystem(url)
    try:
        with reachable(url):
            return str(fs.sign(path, expiration=LINK_SECONDS))
    except NotImplementedError:
        return None
