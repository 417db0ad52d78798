"""The bank's files through fsspec: version folders, writing a version whole, listing versions, ``latest``.

Why a version is revealed only after it is verified, and how that differs between a local filesystem and
an object store, is in :mod:`hspace.bank`.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from hspace.bank.manifest import NAME, SCHEMA_VERSION, check_name, parse_manifest, sha256_hex
from hspace.errors import HSpaceError
from hspace.files import put_whole, url_filesystem


def open_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``url`` and the path of the bank's root on it."""
    url = os.fspath(url)
    if not url:
        raise HSpaceError("the bank URL is empty: give a path or an fsspec URL")
    fs, root = url_filesystem(url)
    return fs, root.rstrip("/") or root


def version_dir(root: str, version: str) -> str:
    """The folder of one version."""
    return f"{root}/versions/{version}"


def read_file(fs: fsspec.AbstractFileSystem, path: str, url: str) -> bytes:
    """The bytes of one file of the bank at ``url``; HSpaceError if it is missing."""
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise HSpaceError(f"bank {url}: {path} is missing; restore it or republish the version") from None


def write_export(fs: fsspec.AbstractFileSystem, files: dict[str, bytes]) -> None:
    """Write the files of an export (path -> bytes), each whole."""
    for path, data in files.items():
        put_whole(fs, path, data)


def write_version(
    fs: fsspec.AbstractFileSystem, root: str, url: str, version: str, files: dict[str, bytes], manifest: bytes
) -> None:
    """Write, verify and reveal one version: tensor files first, manifest.json last (see :mod:`hspace.bank`)."""
    target = version_dir(root, version)
    local = isinstance(fs, LocalFileSystem)
    folder = f"{root}/versions/.staging-{uuid.uuid4().hex}" if local else target
    try:
        for name, data in files.items():
            put_whole(fs, f"{folder}/{name}", data)
        for name, data in files.items():
            if sha256_hex(fs.cat_file(f"{folder}/{name}")) != sha256_hex(data):
                raise HSpaceError(
                    f"bank {url}: {folder}/{name} did not read back as written; check the storage and publish again"
                )
        put_whole(fs, f"{folder}/manifest.json", manifest)
        if local:
            try:
                os.rename(folder, target)  # atomic; refuses a non-empty target
            except OSError as error:
                raise HSpaceError(
                    f"bank {url}: cannot publish version {version}: {target} exists ({error}); another "
                    "publish made it (rerun to get the next version) or remove it if it has no "
                    "manifest.json"
                ) from error
    finally:
        if local and os.path.isdir(folder):
            fs.rm(folder, recursive=True)


def read_manifest(fs: fsspec.AbstractFileSystem, root: str, version: str, url: str) -> dict[str, Any]:
    """The checked manifest of one version."""
    where = f"bank {url} version {version}: manifest.json"
    manifest = parse_manifest(read_file(fs, f"{version_dir(root, version)}/manifest.json", url), where)
    if manifest.get("version") != version:
        raise HSpaceError(f"{where} names version {manifest.get('version')!r}; the bank was changed by hand")
    return manifest


def scan(fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(version, manifest or None if damaged) of every folder with a manifest, oldest first."""
    versions = f"{root}/versions"
    if not fs.isdir(versions):
        return []
    found: list[tuple[str, dict[str, Any] | None]] = []
    for path in fs.ls(versions, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not NAME.match(name) or ".." in name or not fs.exists(f"{versions}/{name}/manifest.json"):
            continue  # staging folders, folders of a publish cut short on an object store, strays
        try:
            found.append((name, read_manifest(fs, root, name, root)))
        except HSpaceError:
            found.append((name, None))
    return sorted(found, key=lambda entry: ("" if entry[1] is None else "1" + entry[1]["created"], entry[0]))


def read_latest(fs: fsspec.AbstractFileSystem, root: str, url: str) -> dict[str, Any]:
    """The ``latest`` pointer, checked: ``{"schema_version", "version", "manifest_sha256"}``."""
    if not fs.exists(f"{root}/latest"):
        versions = [name for name, _ in scan(fs, root)]
        if not versions:
            raise HSpaceError(f"no direction bank at {url}: publish one (hspace.bank.publish or `hspace bank publish`)")
        raise HSpaceError(
            f"bank {url} has versions {versions} but no latest pointer (a publish was cut short): rerun "
            "the publish, or load a version by name"
        )
    try:
        pointer = json.loads(read_file(fs, f"{root}/latest", url))
        check_name(pointer["version"], "version")
        if not isinstance(pointer.get("manifest_sha256"), str):
            raise ValueError("no manifest_sha256")
    except (HSpaceError, ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise HSpaceError(
            f"bank {url}: the latest pointer is damaged ({error}); rerun the last publish to rewrite it"
        ) from error
    return pointer


def point_latest(fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
    """Point ``latest`` at the newest complete version (by ``created``), unless it already does."""
    complete = [(name, manifest) for name, manifest in scan(fs, root) if manifest is not None]
    if not complete:
        raise HSpaceError(f"bank {url} has no readable version to point latest at")
    name, manifest = complete[-1]
    pointer = {"schema_version": SCHEMA_VERSION, "version": name, "manifest_sha256": manifest["manifest_sha256"]}
    if fs.exists(f"{root}/latest"):
        try:
            if json.loads(fs.cat_file(f"{root}/latest")) == pointer:
                return
        except (ValueError, UnicodeDecodeError):
            pass  # a damaged pointer is rewritten
    put_whole(fs, f"{root}/latest", (json.dumps(pointer) + "\n").encode())


def list_versions(url: str) -> list[str]:
    """Names of the published versions (those with a manifest), oldest first (by ``created``).

    Versions whose manifest is damaged are listed first, in name order (their time cannot be trusted).
    """
    fs, root = open_fs(url)
    return [name for name, _ in scan(fs, root)]


def latest_version(url: str) -> str | None:
    """The version ``latest`` names, or None when the bank has no ``latest`` yet."""
    fs, root = open_fs(url)
    if not fs.exists(f"{root}/latest"):
        return None
    return read_latest(fs, root, url)["version"]
