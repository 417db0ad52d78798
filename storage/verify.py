"""Reading back every chunk of a corpus, and repairing what a rebuild regenerates (issue 19).

:func:`verify` reads every chunk of every array: the samples' arrays ``h``, ``x0`` and ``seed`` shard by
shard, each ``done`` flag alone, ``timestep``, and every array of the results (annotations, PCA and
Jacobian runs, directions, evaluations, inversions) chunk by chunk. A chunk is damaged when it fails its
crc32c (``storage.groups.CHECKSUMMED``) or cannot be decoded.

:func:`repair` then makes the next ``hspace corpus build`` with the same settings regenerate exactly the
damaged shards: it clears their ``done`` flags (a damaged flag is rewritten as not done; a damaged
``timestep`` is rewritten from the settings). Results are never rewritten here: those that may hold what
the damaged shards held, and damaged ones, are marked stale (:meth:`storage.corpus.Corpus.mark_stale`):
``corpus info`` lists them, reading them is refused, and ``hspace rebuild-bank`` recomputes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zarr

from storage.corpus import Corpus
from storage.groups import array_at, unreadable

# Result groups whose members do not depend on the corpus's samples: inversions hold the user's images'.
INDEPENDENT = ("inversions",)


@dataclass(frozen=True)
class Damage:
    """One damaged chunk (or shard of the samples' arrays), and what repairs it."""

    array: str
    where: str
    reason: str
    repair: str
    shard: int | None = None


def verify(
    corpus: Corpus, results: list[tuple[str, zarr.Array]], advance: Callable[[int], None] = lambda n: None
) -> list[Damage]:
    """Every damaged chunk of ``corpus`` and of its ``results`` (:func:`result_arrays`), in array order;
    ``advance(1)`` after each shard, then after each result array (for a progress bar)."""
    spec, found = corpus.spec, []
    for shard in range(spec.n_shards):
        start, stop = spec.shard_range(shard)
        for name in spec.data_arrays:
            reason = corpus.damage(name, shard)
            if reason is not None:
                found.append(Damage(name, f"shard {shard} (samples {start}..{stop - 1})", reason, "rebuild", shard))
        reason = unreadable(array_at(corpus.group, "done"), (slice(shard, shard + 1),))
        if reason is not None:
            found.append(Damage("done", f"shard {shard}'s flag", reason, "rebuild", shard))
        advance(1)
    reason = unreadable(array_at(corpus.group, "timestep"), (slice(None),))
    if reason is not None:
        found.append(Damage("timestep", "all steps", reason, "rewrite"))
    for path, array in results:
        for chunk in _chunks(array):
            reason = unreadable(array, chunk)
            if reason is not None:
                where = "chunk " + ", ".join(f"{s.start}:{s.stop}" for s in chunk)
                found.append(Damage(path, where, reason, "recompute"))
        advance(1)
    return found


def repair(corpus: Corpus, damaged: list[Damage]) -> dict[str, Any]:
    """Clear the done flags of the damaged shards, rewrite a damaged ``timestep``, mark stale the results that
    may hold the damaged data and the damaged results; ``corpus`` must be writable. Returns what was done."""
    shards = sorted({d.shard for d in damaged if d.shard is not None})
    done = array_at(corpus.group, "done")
    for shard in shards:
        done[shard] = False  # also rewrites a damaged flag's chunk
    if any(d.array == "timestep" for d in damaged):
        array_at(corpus.group, "timestep")[:] = np.asarray(corpus.spec.timesteps, dtype=np.int64)
    data_shards = sorted({d.shard for d in damaged if d.array in corpus.spec.data_arrays and d.shard is not None})
    stale: dict[str, str] = {}
    if data_shards:
        reason = f"made from corpus shards {_ranges(data_shards)}, since found damaged"
        stale |= {member: reason for member in result_members(corpus.group) if not member.startswith(INDEPENDENT)}
    for d in damaged:
        if d.repair == "recompute":
            stale[_member(d.array)] = f"{d.array} was found damaged ({d.where})"
    corpus.mark_stale(stale)
    return {
        "shards_to_rebuild": shards,
        "timestep_rewritten": any(d.array == "timestep" for d in damaged),
        "stale": sorted(stale),
    }


def to_json(damage: Damage) -> dict[str, Any]:
    return asdict(damage)


def result_members(group: zarr.Group) -> list[str]:
    """The results stored in the corpus, as ``<kind>/<name>`` (an annotation, a run, a direction, ...)."""
    return sorted(path for path, _ in group.members(max_depth=1) if path.count("/") == 1)


# ----- private helpers ---------------------------------------------------------------------------
def result_arrays(group: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """Every array of the results in the corpus group (below a ``<kind>/`` group), by path, sorted."""
    members = sorted(group.members(max_depth=None), key=lambda item: item[0])
    return [(path, node) for path, node in members if isinstance(node, zarr.Array) and "/" in path]


def _member(path: str) -> str:
    return "/".join(path.split("/")[:2])


def _chunks(array: zarr.Array) -> Iterator[tuple[slice, ...]]:
    """The region of each (inner) chunk of ``array``."""
    starts = [range(0, size, chunk) for size, chunk in zip(array.shape, array.chunks, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(corner, array.chunks, array.shape, strict=True))


def _ranges(values: list[int]) -> str:
    """``0-2, 5`` for [0, 1, 2, 5] (sorted, distinct)."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
