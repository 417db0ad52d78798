"""What every hspace member of a corpus shares: settings compared on reopening, done flags, checked writes.

The corpus, its annotations, directions and runs are each written by many tasks and reopened by reruns.
Each records the settings that fix its content and refuses other ones, naming every differing leaf; each
marks its units of work done in flags of their own, read so that a damaged flag never counts as done.
Nodes are reached through :func:`array_at` and :func:`group_at`, which say which kind they return.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from hspace.errors import HSpaceError


def describe_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, labels: tuple[str, str], keys: Iterable[str] | None = None
) -> list[str]:
    """``"name (<old label>: value, <new label>: value)"`` for each differing leaf of ``keys`` (default: ``new``'s).

    A nested dict is compared key by key, so a config mismatch names the key inside it (``config.scale``).
    """
    old_label, new_label = labels
    return [
        f"{name} ({old_label}: {_short(a)}, {new_label}: {_short(b)})"
        for key in (new.keys() if keys is None else keys)
        for name, a, b in _differences(key, old.get(key), new.get(key))
    ]


def read_flags(array: zarr.Array) -> np.ndarray:
    """Bool flags of a done array, any shape; a flag whose chunk cannot be read (a crash mid-write) is not set."""
    try:
        return np.asarray(array[...], dtype=bool)
    except Exception:  # read flag by flag, trust none that fails
        flags = np.zeros(array.shape, dtype=bool)
        for index in np.ndindex(*array.shape):
            try:
                flags[index] = bool(array[index])
            except Exception:
                flags[index] = False
        return flags


class ShardFlags:
    """The resume state of a member that marks each finished shard in its ``done`` array (corpus, annotations)."""

    group: zarr.Group

    def done_shards(self) -> np.ndarray:
        """Bool (n_shards,): which shards are complete. An unreadable flag counts as not done."""
        return read_flags(array_at(self.group, "done"))

    def missing_shards(self) -> list[int]:
        return [int(k) for k in np.flatnonzero(~self.done_shards())]


def check_shapes(where: str, arrays: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a write whose arrays do not have the expected shapes, before any of them is written."""
    for name, shape in expected.items():
        given = tuple(np.shape(arrays[name]))
        if given != tuple(shape):
            raise HSpaceError(f"{where}: {name} has shape {given}, expected {tuple(shape)}")


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    """The array at ``path`` in ``group`` (zarr types ``group[path]`` as either kind of node)."""
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise HSpaceError(f"{group.store_path}/{path} is a group where hspace keeps an array; remove it")
    return node


def group_at(group: zarr.Group, path: str) -> zarr.Group:
    """The group at ``path`` in ``group`` (zarr types ``group[path]`` as either kind of node)."""
    node = group[path]
    if not isinstance(node, zarr.Group):
        raise HSpaceError(f"{group.store_path}/{path} is an array where hspace keeps a group; remove it")
    return node


# Every chunk's bytes end in their crc32c (issue 19): a damaged chunk is a read error, never wrong numbers.
# zstd at level 0 is Zarr's default compressor; only the checksum is added.
CHECKSUMMED = (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def new_array(parent: zarr.Group, name: str, **options: Any) -> zarr.Array:
    """``parent.create_array(name, **options)`` with checksummed chunks: every hspace array is made here."""
    return parent.create_array(name, compressors=CHECKSUMMED, **options)


def read_array(group: zarr.Group, path: str, index: Any = ...) -> np.ndarray:
    """``group[path][index]`` as an ndarray (0-d for a single element)."""
    return np.asarray(array_at(group, path)[index])


def json_attrs(node: zarr.Group | zarr.Array, key: str) -> dict[str, Any]:
    """The JSON object under attribute ``key`` (a copy), or an empty dict where there is none."""
    value = node.attrs.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _differences(name: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """(dotted name, old, new) for each differing leaf."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for key in sorted(old.keys() | new.keys())
            for d in _differences(f"{name}.{key}", old.get(key), new.get(key))
        ]
    return [] if old == new else [(name, old, new)]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unreadable(array: zarr.Array, region: tuple[slice | int, ...]) -> str | None:
    """Why reading ``array[region]`` fails its checksum or decoding (:func:`_damage_reason`), or None where it reads."""
    try:
        array[region]
    except (ValueError, RuntimeError) as error:
        return _damage_reason(error)
    return None


def _damage_reason(error: Exception) -> str:
    """Why a chunk failed to read, in a few words (Zarr's crc32c message quotes both checksums' bytes)."""
    text = str(error) or type(error).__name__
    return "its checksum does not match its bytes" if "checksum" in text.lower() else text


class DamagedChunk(HSpaceError):
    """A chunk of a corpus array that fails its checksum: names the array, the shard and its samples."""

    def __init__(self, url: str, array: str, shard: int, samples: tuple[int, int], reason: str) -> None:
        self.url, self.array, self.shard, self.samples = url, array, shard, samples
        super().__init__(
            f"damaged data in the corpus at {url}: array {array!r}, shard {shard} (samples {samples[0]}.."
            f"{samples[1] - 1}) ({reason}); run `hspace corpus verify {url} --repair`, then `hspace corpus build` "
            "with the same settings to regenerate it"
        )
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str, int, tuple[int, int], str]]:
        # Raised in Dask workers and sent to the client: rebuilt from its parts, not from its message.
        return type(self), (self.url, self.array, self.shard, self.samples, self.reason)
