"""The h-space corpus: one Zarr v3 group per model and sampler settings (docs/design.md).

Layout (N samples, T steps, shards of b samples):

==========  ==================  =======  ==============================================  ====================
array       shape               dtype    chunks / shards                                 dimension_names
==========  ==================  =======  ==============================================  ====================
h           (N, T, C, H, W)     f2/f4    chunk (b, 1, C, H, W), shard (b, T, C, H, W)     sample, step, h_*
x0          (N, 3, S, S)        uint8    chunk (b, 3, S, S)                               sample, image_*
seed        (N,)                int64    chunk (b,)                                       sample
done        (n_shards,)         bool     chunk (1,)                                       shard
timestep    (T,)                int64    one chunk                                        step
==========  ==================  =======  ==============================================  ====================

A shard is the unit of work, of resume and of retry: it is written in one whole-shard write per array
(Zarr writes that cover part of a shard lose data under concurrent writers), and only then
is ``done[k]`` set, in a chunk of its own. Data of a shard that is not done is never trusted: a rerun
rewrites it. The group attribute ``hspace`` holds the settings; ``initialized`` turns true only after
every array exists, so a crash during creation is repaired by the next open.

Every chunk ends in its crc32c (schema version 2, ``storage.groups.CHECKSUMMED``): a damaged chunk is a
:class:`DamagedChunk` error naming the array, the shard and its samples, never wrong numbers;
``storage/verify.py`` finds them all and repairs them. Version 1 corpora (no chunk checksums) still open.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import zarr
import zarr.errors

from hspace.errors import HSpaceError
from hspace.files import reachable, url_filesystem
from storage.corpus_spec import ADDED_SETTINGS, NOT_COMPARED, SCHEMA_VERSION, UNCHECKSUMMED_VERSION, CorpusSpec
from storage.groups import (
    DamagedChunk,
    ShardFlags,
    array_at,
    check_shapes,
    describe_differences,
    json_attrs,
    new_array,
    read_array,
    unreadable,
)
from storage.stores import corpus_store

# Group attribute: results that may not match the samples any more (``storage/verify.py``), path -> why.
STALE = "hspace_stale"


class Corpus(ShardFlags):
    """An opened corpus. Create or resume one with :meth:`create_or_open`, read one with :meth:`open`.

    Resume state: :meth:`done_shards`, :meth:`missing_shards` (:class:`storage.groups.ShardFlags`).
    """

    def __init__(self, url: str, group: zarr.Group, spec: CorpusSpec) -> None:
        self.url, self.group, self.spec = url, group, spec

    # ----- opening -----------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, url: str, spec: CorpusSpec) -> Corpus:
        """Open the corpus at ``url`` for writing, creating it if nothing is there.

        Raises
        ------
        HSpaceError
            If the path holds something that is not an hspace corpus, a damaged group, or a corpus
            with other settings (the message names every differing field), or cannot be written.
        """
        existing = _read_spec_attrs(url, must_exist=False)
        if existing is None:
            _refuse_non_empty(url)
            group = _create_group(url, spec)
        else:
            _check_same(url, existing, spec)
            group = zarr.open_group(corpus_store(url, read_only=False), mode="r+")
            if not existing.get("initialized", False):
                _create_arrays(group, spec)
        return cls(url, group, spec)

    @classmethod
    def open(cls, url: str, *, writable: bool = False) -> Corpus:
        """Open an existing corpus with the settings it records (read-only unless ``writable``)."""
        attrs = _read_spec_attrs(url, must_exist=True)
        assert attrs is not None
        if not attrs.get("initialized", False):
            raise HSpaceError(f"{url} is a corpus whose creation did not finish: rerun `hspace corpus build`")
        group = zarr.open_group(corpus_store(url, read_only=not writable), mode="r+" if writable else "r")
        return cls(url, group, CorpusSpec.from_attrs(attrs))

    @property
    def checksummed(self) -> bool:
        """Whether every chunk carries a crc32c (schema version 2; version 1 corpora do not)."""
        return json_attrs(self.group, "hspace").get("schema_version") != UNCHECKSUMMED_VERSION

    # ----- writing -----------------------------------------------------------------------------
    def write_shard(
        self, shard: int, *, h: np.ndarray, x0: np.ndarray, seeds: np.ndarray, latents: np.ndarray | None = None
    ) -> None:
        """Write all T steps of one shard's samples in one write per array, then mark it done. ``latents``: the
        final latents, given exactly when the corpus stores them."""
        start, stop = self.spec.shard_range(shard)
        n = stop - start
        data = {"h": h, "x0": x0, "seed": seeds, **({} if latents is None else {"latents": latents})}
        expected = {
            "h": (n, self.spec.steps, *self.spec.h_shape),
            "x0": (n, *self.spec.image_shape),
            "seed": (n,),
            **({"latents": (n, *self.spec.noise_shape)} if self.spec.latents else {}),
        }
        check_shapes(f"shard {shard}", data, expected)
        dtypes: dict[str, Any] = {"h": self.spec.h_dtype, "x0": "uint8", "seed": "int64", "latents": "float32"}
        for name in self.spec.data_arrays:
            array_at(self.group, name)[start:stop] = data[name].astype(dtypes[name], copy=False)
        array_at(self.group, "done")[shard] = True

    # ----- reading -----------------------------------------------------------------------------
    def read_h(self, samples: slice = slice(None), step: int | None = None) -> np.ndarray:
        """h of some samples: (n, T, C, H, W), or (n, C, H, W) at one step (touches one chunk per shard)."""
        return self._read("h", samples, () if step is None else (step,))

    def read_x0(self, samples: slice = slice(None)) -> np.ndarray:
        return self._read("x0", samples)

    def read_latents(self, samples: slice = slice(None)) -> np.ndarray:
        """The final latents (float32), of a corpus built with ``latents`` (a latent model's, ``--latents``)."""
        if not self.spec.latents:
            raise HSpaceError(f"the corpus at {self.url} does not store latents: build one with --latents")
        return self._read("latents", samples)

    def read_seeds(self, samples: slice = slice(None)) -> np.ndarray:
        return self._read("seed", samples)

    def _read(self, name: str, samples: slice, rest: tuple[int, ...] = ()) -> np.ndarray:
        """``name[samples, *rest]``; a chunk that fails its checksum (or cannot be decoded) is a
        :class:`DamagedChunk` naming the first damaged shard in the range, found by reading shard by shard."""
        try:
            return read_array(self.group, name, (samples, *rest))
        except (ValueError, RuntimeError) as error:
            start, stop, _ = samples.indices(self.spec.samples)
            first, last = start // self.spec.shard_size, -(-stop // self.spec.shard_size)
            for shard in range(first, min(last, self.spec.n_shards)):
                damaged = self.damage(name, shard, rest)
                if damaged is not None:
                    raise DamagedChunk(self.url, name, shard, self.spec.shard_range(shard), damaged) from error
            raise

    def damage(self, name: str, shard: int, rest: tuple[int, ...] = ()) -> str | None:
        """Why reading shard ``shard`` of array ``name`` (h, x0 or seed) fails, or None where it reads."""
        start, stop = self.spec.shard_range(shard)
        return unreadable(array_at(self.group, name), (slice(start, stop), *rest))

    def read_member_attrs(
        self, path: str, *, node_type: type, key: str, version: int, what: str
    ) -> dict[str, Any] | None:
        """The hspace attributes (under ``key``) of the member at ``path`` (an annotation group, a direction
        array, ...), or None where there is none; refuses a member of another kind or schema version."""
        try:
            node = self.group[path]
        except KeyError:
            return None
        self.refuse_if_stale(path)
        attrs = node.attrs.get(key) if isinstance(node, node_type) else None
        if not isinstance(attrs, dict):
            raise HSpaceError(f"{self.url}/{path} is not {what}; remove it")
        if attrs.get("schema_version") != version:
            raise HSpaceError(
                f"{path} of {self.url} has schema version {attrs.get('schema_version')}; this hspace "
                f"reads version {version}"
            )
        return attrs

    # ----- stale results ----------------------------------------------------------------------
    def stale(self) -> dict[str, str]:
        """Results (``<kind>/<name>``) marked stale by ``hspace corpus verify --repair``, with why."""
        return {str(k): str(v) for k, v in json_attrs(self.group, STALE).items()}

    def mark_stale(self, members: dict[str, str]) -> None:
        if members:
            self.group.attrs.update({STALE: {**self.stale(), **members}})

    def refuse_if_stale(self, member: str) -> None:
        """Refuse to read or resume a stale result: it may hold data of damaged, since regenerated shards."""
        why = self.stale().get(member)
        if why is not None:
            raise HSpaceError(
                f"{member} of the corpus at {self.url} is stale ({why}): `hspace rebuild-bank` recomputes it, "
                f"or remove {self.url}/{member} and rerun the command that made it"
            )

    def drop_stale(self) -> list[str]:
        """Remove the stale results (``corpus`` writable), so that the stages that make them run again."""
        stale = self.stale()
        for member in stale:
            if member in self.group:
                del self.group[member]
        if stale:
            self.group.attrs.update({STALE: {}})
        return sorted(stale)

    def bytes_on_disk(self) -> int:
        fs, path = url_filesystem(self.url)
        with reachable(self.url):
            return int(fs.du(path, total=True))

    def info(self) -> dict[str, Any]:
        """Settings and progress, as one JSON-ready dict (``hspace corpus info --json``)."""
        done = self.done_shards()
        samples_done = sum(
            stop - start for start, stop in (self.spec.shard_range(int(k)) for k in np.flatnonzero(done))
        )
        spec = self.spec
        return {
            "url": self.url,
            "model": spec.model,
            "fingerprint": spec.fingerprint,
            "scheduler_class": spec.scheduler_class,
            "samples": spec.samples,
            "samples_done": int(samples_done),
            "samples_missing": spec.samples - int(samples_done),
            "batch": spec.shard_size,
            "shards": spec.n_shards,
            "shards_done": int(done.sum()),
            "steps": spec.steps,
            "timesteps": list(spec.timesteps),
            "eta": list(spec.eta) if len(set(spec.eta)) > 1 else spec.eta[0],
            "h_shape": list(spec.h_shape),
            "h_dtype": spec.h_dtype,
            "precision": spec.precision,
            "microbatch": spec.microbatch,
            "image_shape": list(spec.image_shape),
            # The latent kinds' settings, only where they apply (a pixel corpus's info is what it was).
            **({} if spec.latent_shape is None else {"latent_shape": list(spec.latent_shape)}),
            **({} if spec.conditioning is None else {"conditioning": spec.conditioning}),
            **({} if spec.prompts is None else {"prompts": f"{len(spec.prompts)} (one per sample)"}),
            **({"latents": True} if spec.latents else {}),
            "seed": spec.base_seed,
            "package_version": spec.package_version,
            "checksummed": self.checksummed,
            "stale": self.stale(),
            "bytes": self.bytes_on_disk(),
        }


# ----- private helpers ---------------------------------------------------------------------------
def _read_spec_attrs(url: str, *, must_exist: bool) -> dict[str, Any] | None:
    """The ``hspace`` group attribute at ``url``; None if nothing is there (and that is allowed)."""
    fs, path = url_filesystem(url)
    try:
        with reachable(url):
            exists = fs.exists(f"{path}/zarr.json")
    except PermissionError as error:
        raise HSpaceError(
            f"cannot read {url}: access refused ({error}); check the credentials this process uses for it "
            "(for s3://: AWS_ACCESS_KEY_ID / AWS_PROFILE) and its permissions"
        ) from error
    if not exists:
        if must_exist:
            raise HSpaceError(f"no corpus at {url}: build one with `hspace corpus build {url} ...`")
        return None
    try:
        with reachable(url):
            metadata = json.loads(fs.cat_file(f"{path}/zarr.json"))
    except (ValueError, UnicodeDecodeError) as error:
        raise HSpaceError(
            f"{url} holds a damaged Zarr group ({path}/zarr.json is not valid JSON: {error}); "
            "remove it or choose another corpus location"
        ) from error
    if metadata.get("node_type") != "group" or metadata.get("zarr_format") != 3:
        raise HSpaceError(f"{url} is a Zarr {metadata.get('node_type', 'node')}, not an hspace corpus group")
    attrs = metadata.get("attributes", {}).get("hspace")
    if not isinstance(attrs, dict):
        raise HSpaceError(f"{url} is a Zarr group but not an hspace corpus; choose another corpus location")
    version = attrs.get("schema_version")
    if version not in (UNCHECKSUMMED_VERSION, SCHEMA_VERSION):
        raise HSpaceError(
            f"{url} has corpus schema version {version}; this hspace reads versions {UNCHECKSUMMED_VERSION} and "
            f"{SCHEMA_VERSION}"
        )
    if version == UNCHECKSUMMED_VERSION:
        _note_unchecksummed(url)
    return {**ADDED_SETTINGS, **attrs}


_NOTED: set[str] = set()


def _note_unchecksummed(url: str) -> None:
    """One line per corpus and process: its chunks carry no checksums (schema version 1)."""
    if url not in _NOTED:
        _NOTED.add(url)
        print(
            f"hspace: note: the corpus at {url} was written before chunk checksums (schema version 1): damage to "
            "its chunks may go unseen; `hspace corpus verify` finds what fails to decode",
            file=sys.stderr,
        )


def _refuse_non_empty(url: str) -> None:
    fs, path = url_filesystem(url)
    try:
        with reachable(url):
            taken = fs.exists(path) and (not fs.isdir(path) or fs.ls(path))
    except PermissionError as error:
        raise HSpaceError(f"cannot read {url}: {error}") from error
    if taken:
        raise HSpaceError(f"{url} exists and is not an hspace corpus: choose another corpus location or remove it")


def _check_same(url: str, attrs: dict[str, Any], spec: CorpusSpec) -> None:
    wanted = spec.to_attrs()
    differing = describe_differences(
        attrs, wanted, labels=("corpus", "requested"), keys=[key for key in wanted if key not in NOT_COMPARED]
    )
    if differing:
        raise HSpaceError(
            f"the corpus at {url} was built with other settings: {'; '.join(differing)}. "
            "Use the same settings to resume it, or another corpus location for a new corpus"
        )


def _create_group(url: str, spec: CorpusSpec) -> zarr.Group:
    attrs = {**spec.to_attrs(), "initialized": False}
    try:
        group = zarr.open_group(corpus_store(url, read_only=False), mode="w-", attributes={"hspace": attrs})
    except (OSError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as error:
        raise HSpaceError(f"cannot create a corpus at {url}: {error}") from error
    _create_arrays(group, spec)
    return group


def _create_arrays(group: zarr.Group, spec: CorpusSpec) -> None:
    """Create (or recreate, after a crash during creation) every array, then mark the group ready."""
    b, n = spec.shard_size, spec.samples
    channels, height, width = spec.image_shape
    new_array(
        group,
        "h",
        shape=(n, spec.steps, *spec.h_shape),
        dtype=spec.h_dtype,
        chunks=(b, 1, *spec.h_shape),
        shards=(b, spec.steps, *spec.h_shape),
        dimension_names=("sample", "step", "h_channel", "h_height", "h_width"),
        overwrite=True,
    )
    new_array(
        group,
        "x0",
        shape=(n, channels, height, width),
        dtype="uint8",
        chunks=(b, channels, height, width),
        dimension_names=("sample", "image_channel", "image_height", "image_width"),
        overwrite=True,
    )
    new_array(group, "seed", shape=(n,), dtype="int64", chunks=(b,), dimension_names=("sample",), overwrite=True)
    if spec.latents:
        new_array(
            group,
            "latents",
            shape=(n, *spec.noise_shape),
            dtype="float32",
            chunks=(b, *spec.noise_shape),
            dimension_names=("sample", "latent_channel", "latent_height", "latent_width"),
            overwrite=True,
        )
    new_array(
        group,
        "done",
        shape=(spec.n_shards,),
        dtype="bool",
        chunks=(1,),
        fill_value=False,
        dimension_names=("shard",),
        overwrite=True,
    )
    timestep = new_array(
        group,
        "timestep",
        shape=(spec.steps,),
        dtype="int64",
        chunks=(spec.steps,),
        dimension_names=("step",),
        overwrite=True,
    )
    timestep[:] = np.asarray(spec.timesteps, dtype=np.int64)
    group.attrs.update({"hspace": {**spec.to_attrs(), "initialized": True}})
