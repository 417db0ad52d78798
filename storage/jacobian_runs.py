"""Jacobian runs inside the corpus group (Sec. IV-B): ``jacobian/<run>/``, one cell per (sample id, step).

``jacobian/<run>/`` (n sample ids, m steps, k directions, h of shape (C, H, W), images (3, S, S)):

===============  ======================  =======  =========================  ====================================
array            shape                   dtype    chunks                     what
===============  ======================  =======  =========================  ====================================
singular_values  (n, m, k)               float32  (1, 1, k)                  sigma_1 >= ... >= sigma_k of J_t
directions       (n, m, k, C, H, W)      float32  (1, 1, k, C, H, W)         right singular vectors (h-space)
image_changes    (n, m, k, 3, S, S)      float32  (1, 1, k, 3, S, S)         left singular vectors (eps space)
residuals        (n, m, k)               float32  (1, 1, k)                  certificates (hspace.jacobian)
iterations       (n, m)                  int64    (1, 1)
converged        (n, m)                  bool     (1, 1)
done             (n, m)                  bool     (1, 1)                     set last, per (sample id, step)
mask             (S, S)                  uint8    one chunk                  M of eq. 10 (only when masked)
===============  ======================  =======  =========================  ====================================

Each cell is written in whole chunks of its own, so tasks of different cells may write concurrently. Run
groups, names and refusals: :mod:`storage.runs`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.groups import array_at, check_shapes, new_array, read_array, read_flags
from storage.runs import (
    ArrayLayout,
    check_run_name,
    check_steps,
    create_arrays,
    create_or_open_run,
    open_run,
    run_attrs,
)


@dataclass(frozen=True, kw_only=True)
class JacobianSpec:
    """The parameters of a Jacobian run (Sec. IV-B); reopening with any other value is an error.

    Attributes
    ----------
    sample_ids : tuple of int
        Corpus sample indices (sample i's seed derives from the corpus base seed).
    steps : tuple of int
        Corpus step indices (sampling order) at which J_t is taken.
    k : int
    algorithm : str
        ``"batched"`` (Alg. 1) or ``"sequential"`` (Alg. 2).
    block : int or None
        b of Alg. 2.
    mask_sha256 : str or None
        sha256 of the binary mask (uint8 0/1, shape (S, S)) of eq. 10, or None.
    tol : float
    max_iter : int
    precision : str
        The U-Net's dtype J_t was taken in (``hspace.models.PRECISIONS``; runs made before precisions existed
        read as fp32, see :data:`storage.runs.ADDED_PARAMETERS`).
    corpus : dict
        The corpus settings, from :func:`storage.runs.corpus_settings`.
    package_version : str
        Recorded, not compared.
    """

    sample_ids: tuple[int, ...]
    steps: tuple[int, ...]
    k: int
    algorithm: str
    block: int | None
    mask_sha256: str | None
    tol: float
    max_iter: int
    precision: str
    corpus: dict[str, Any]
    package_version: str

    def to_attrs(self) -> dict[str, Any]:
        return run_attrs("jacobian", self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> JacobianSpec:
        values = {f.name: attrs[f.name] for f in fields(cls)}
        return cls(**{**values, "sample_ids": tuple(values["sample_ids"]), "steps": tuple(values["steps"])})


@dataclass(frozen=True, kw_only=True)
class JacobianCell:
    """What :func:`hspace.jacobian.jacobian_directions` found for one (sample id, step).

    Attributes
    ----------
    singular_values : ndarray of shape (k,)
    directions : ndarray of shape (k, C, H, W)
    image_changes : ndarray of shape (k, 3, S, S)
    residuals : ndarray of shape (k,)
    iterations : int
    converged : bool
    """

    singular_values: np.ndarray
    directions: np.ndarray
    image_changes: np.ndarray
    residuals: np.ndarray
    iterations: int
    converged: bool


class JacobianRun:
    """A Jacobian run in ``jacobian/<run>/`` of a corpus."""

    def __init__(self, corpus: Corpus, run: str, group: zarr.Group, spec: JacobianSpec) -> None:
        self.corpus, self.run, self.group, self.spec = corpus, run, group, spec

    @classmethod
    def create_or_open(
        cls, corpus: Corpus, run: str, spec: JacobianSpec, mask: np.ndarray | None = None
    ) -> JacobianRun:
        """Open the run for writing, creating it if absent; refuses other parameters (naming each one).

        ``mask`` (S, S) uint8 0/1 must match ``spec.mask_sha256`` (:func:`mask_sha256`).
        """
        check_run_name(run)
        _check_spec(corpus, spec, mask)
        group = create_or_open_run(
            corpus, "jacobian", run, spec.to_attrs(), lambda g: _create_arrays(g, corpus, spec, mask)
        )
        return cls(corpus, run, group, spec)

    @classmethod
    def open(cls, url: str, run: str, *, writable: bool = False) -> JacobianRun:
        """Open an existing run of the corpus at ``url``."""
        corpus = Corpus.open(url, writable=writable)
        group, attrs = open_run(corpus, "jacobian", run)
        return cls(corpus, run, group, JacobianSpec.from_attrs(attrs))

    def index(self, sample_id: int, step: int) -> tuple[int, int]:
        """Row and column of (sample id, step) in the run's arrays."""
        if sample_id not in self.spec.sample_ids:
            raise HSpaceError(
                f"sample {sample_id} is not in Jacobian run {self.run!r} (samples {list(self.spec.sample_ids)})"
            )
        if step not in self.spec.steps:
            raise HSpaceError(f"step {step} is not in Jacobian run {self.run!r} (steps {list(self.spec.steps)})")
        return self.spec.sample_ids.index(sample_id), self.spec.steps.index(step)

    def done(self) -> np.ndarray:
        """Bool (n sample ids, m steps). An unreadable flag counts as not done."""
        return read_flags(array_at(self.group, "done"))

    def missing(self) -> list[tuple[int, int]]:
        """(sample id, step) pairs not done, sample-major."""
        done = self.done()
        return [
            (s, t) for i, s in enumerate(self.spec.sample_ids) for j, t in enumerate(self.spec.steps) if not done[i, j]
        ]

    def mask(self) -> np.ndarray | None:
        """M of eq. 10 as uint8 (S, S) with values 0/1, or None."""
        return read_array(self.group, "mask", ...) if "mask" in self.group else None

    def write(self, sample_id: int, step: int, cell: JacobianCell) -> None:
        """Write one (sample id, step): whole chunks of its own, then mark it done."""
        i, j = self.index(sample_id, step)
        spec, k = self.corpus.spec, self.spec.k
        expected = {
            "singular_values": (k,),
            "directions": (k, *spec.h_shape),
            "image_changes": (k, *spec.noise_shape),
            "residuals": (k,),
        }
        check_shapes(f"Jacobian ({sample_id}, {step})", {name: getattr(cell, name) for name in expected}, expected)
        for name in expected:
            array_at(self.group, name)[i, j] = np.asarray(getattr(cell, name), dtype=np.float32)
        array_at(self.group, "iterations")[i, j] = np.int64(cell.iterations)
        array_at(self.group, "converged")[i, j] = bool(cell.converged)
        array_at(self.group, "done")[i, j] = True

    def read(self, sample_id: int, step: int) -> JacobianCell:
        """One done (sample id, step); refuses one that is not done."""
        i, j = self.index(sample_id, step)
        if not self.done()[i, j]:
            raise HSpaceError(
                f"Jacobian run {self.run!r}: sample {sample_id} at step {step} is not done; rerun "
                f"`hspace jacobian` with the same settings to finish it"
            )
        values = {
            name: read_array(self.group, name, (i, j))
            for name in ("singular_values", "directions", "image_changes", "residuals", "iterations", "converged")
        }
        return JacobianCell(
            singular_values=values["singular_values"],
            directions=values["directions"],
            image_changes=values["image_changes"],
            residuals=values["residuals"],
            iterations=int(values["iterations"]),
            converged=bool(values["converged"]),
        )

    def info(self) -> dict[str, Any]:
        """Parameters, progress and the singular values found, JSON-ready (``hspace jacobian --json``)."""
        done = self.done()
        cells = []
        for i, s in enumerate(self.spec.sample_ids):
            for j, t in enumerate(self.spec.steps):
                entry: dict[str, Any] = {"sample": s, "step": t, "done": bool(done[i, j])}
                if done[i, j]:
                    cell = self.read(s, t)
                    entry.update(
                        singular_values=[float(x) for x in cell.singular_values],
                        residuals=[float(x) for x in cell.residuals],
                        iterations=cell.iterations,
                        converged=cell.converged,
                    )
                cells.append(entry)
        spec = self.spec
        return {
            "url": self.corpus.url,
            "run": self.run,
            "samples": list(spec.sample_ids),
            "steps": list(spec.steps),
            "k": spec.k,
            "algorithm": spec.algorithm,
            "block": spec.block,
            "mask_sha256": spec.mask_sha256,
            "tol": spec.tol,
            "max_iter": spec.max_iter,
            "precision": spec.precision,
            "done": int(done.sum()),
            "missing": len(self.missing()),
            "model": spec.corpus["model"],
            "fingerprint": spec.corpus["fingerprint"],
            "results": cells,
        }


def read_jacobian_directions(
    url: str, run: str, sample_id: int, step: int, indices: Sequence[int] | None = None
) -> np.ndarray:
    """Directions found for one (sample id, step): float32 (len(indices), C, H, W), unit norm, largest
    singular value first. Found at one step, they are applied at all steps (Sec. IV-B)."""
    cell = JacobianRun.open(url, run).read(sample_id, step)
    k = len(cell.singular_values)
    indices = list(range(k)) if indices is None else [int(j) for j in indices]
    bad = [j for j in indices if not 0 <= j < k]
    if bad:
        raise HSpaceError(f"Jacobian run {run!r} has directions 0..{k - 1}; got {bad[0]}")
    return cell.directions[indices]


def mask_sha256(mask: np.ndarray | None) -> str | None:
    """sha256 of a binary mask as uint8 0/1 (with its shape), or None."""
    if mask is None:
        return None
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    return hashlib.sha256(json.dumps(list(mask.shape)).encode() + mask.tobytes()).hexdigest()


def _check_spec(corpus: Corpus, spec: JacobianSpec, mask: np.ndarray | None) -> None:
    check_steps(corpus, spec.steps)
    if not spec.sample_ids:
        raise HSpaceError("give at least one sample id")
    bad = [s for s in spec.sample_ids if not 0 <= s < corpus.spec.samples]
    if bad:
        raise HSpaceError(f"sample {bad[0]} is out of range: the corpus has samples 0..{corpus.spec.samples - 1}")
    if len(set(spec.sample_ids)) != len(spec.sample_ids):
        raise HSpaceError(f"sample ids repeat: {list(spec.sample_ids)}")
    if mask_sha256(mask) != spec.mask_sha256:
        raise HSpaceError("the mask does not match the run's mask checksum")
    if mask is not None and tuple(mask.shape) != tuple(corpus.spec.noise_shape[1:]):
        raise HSpaceError(f"mask has shape {tuple(mask.shape)}; expected {tuple(corpus.spec.noise_shape[1:])}")


def _create_arrays(group: zarr.Group, corpus: Corpus, spec: JacobianSpec, mask: np.ndarray | None) -> None:
    n, m, k = len(spec.sample_ids), len(spec.steps), spec.k
    h_shape, image_shape = corpus.spec.h_shape, corpus.spec.noise_shape
    h_dims, image_dims = ("h_channel", "h_height", "h_width"), ("image_channel", "image_height", "image_width")
    cell = ("sample", "step")
    layout: ArrayLayout = {
        "singular_values": ((n, m, k), "float32", (1, 1, k), (*cell, "direction")),
        "directions": ((n, m, k, *h_shape), "float32", (1, 1, k, *h_shape), (*cell, "direction", *h_dims)),
        "image_changes": (
            (n, m, k, *image_shape),
            "float32",
            (1, 1, k, *image_shape),
            (*cell, "direction", *image_dims),
        ),
        "residuals": ((n, m, k), "float32", (1, 1, k), (*cell, "direction")),
        "iterations": ((n, m), "int64", (1, 1), cell),
        "converged": ((n, m), "bool", (1, 1), cell),
        "done": ((n, m), "bool", (1, 1), cell),
    }
    create_arrays(group, layout)
    if mask is not None:
        stored = new_array(
            group,
            "mask",
            shape=mask.shape,
            dtype="uint8",
            chunks=mask.shape,
            dimension_names=("image_height", "image_width"),
            overwrite=True,
        )
        stored[...] = mask.astype(np.uint8)
