"""PCA runs inside the corpus group (Sec. IV-A): ``pca/<run>/``, written step by step, signs aligned last.

``pca/<run>/`` (T corpus steps, k components, D = C * H * W):

========================  =========  =======  ============  =================================================
array                     shape      dtype    chunks        what
========================  =========  =======  ============  =================================================
components                (T, k, D)  float32  (1, k, D)     principal axes of vec(h_t), rows, raw signs
mean                      (T, D)     float32  (1, D)        per-step mean of vec(h_t)
explained_variance        (T, k)     float32  (1, k)
explained_variance_ratio  (T, k)     float32  (1, k)
n_samples                 (T,)       int64    (1,)          samples the step was fitted on
done                      (T,)       bool     (1,)          set only after that step's arrays are written
sign                      (T, k)     int8     (T, k)        +1/-1 per step and component (0 = not aligned)
========================  =========  =======  ============  =================================================

Only the run's ``steps`` are fitted; other rows stay at the fill value and are never read. One step's write
covers whole chunks of its own, so tasks of different steps may write concurrently (Zarr writes that cover
part of a chunk lose data under concurrent writers). ``sign`` is written by one task after every step is done:
the sign of a component is arbitrary per step, so directions concatenate components over t only after
alignment (Sec. IV-A). Run groups, names and refusals: :mod:`storage.runs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.pca_directions import pca_direction
from storage.corpus import Corpus
from storage.groups import array_at, check_shapes, read_array, read_flags
from storage.runs import (
    ArrayLayout,
    check_run_name,
    check_steps,
    create_arrays,
    create_or_open_run,
    h_dim,
    open_run,
    run_attrs,
)


@dataclass(frozen=True, kw_only=True)
class PCASpec:
    """The parameters of a PCA run (Sec. IV-A); reopening with any other value is an error.

    Attributes
    ----------
    components : int
        k, principal components per step.
    method : str
        The estimator (``hspace.pca.StreamingPCA`` method).
    steps : tuple of int
        Corpus step indices fitted, in sampling order.
    batch_size : int
        Rows per merge of the estimator (``StreamingPCA(batch_size=...)``), whatever the shard size.
    oversampling : int
        Rows kept beyond k by the ``"incremental"`` method (0 for ``"sklearn"``).
    corpus : dict
        The corpus settings (fingerprint, samples, steps, eta, ...), from :func:`storage.runs.corpus_settings`.
    package_version : str
        Recorded, not compared.
    """

    components: int
    method: str
    steps: tuple[int, ...]
    batch_size: int
    oversampling: int
    corpus: dict[str, Any]
    package_version: str

    def to_attrs(self) -> dict[str, Any]:
        return run_attrs("pca", self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> PCASpec:
        values = {f.name: attrs[f.name] for f in fields(cls)}
        return cls(**{**values, "steps": tuple(values["steps"])})


@dataclass(frozen=True, kw_only=True)
class PCAStep:
    """One fitted step of a PCA run, signs as fitted (not aligned).

    Attributes
    ----------
    components : ndarray of shape (k, D)
    mean : ndarray of shape (D,)
    explained_variance, explained_variance_ratio : ndarray of shape (k,)
    n_samples : int
    """

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_samples: int


class PCARun:
    """A PCA run in ``pca/<run>/`` of a corpus. Create with :meth:`create_or_open`, read with :meth:`open`."""

    def __init__(self, corpus: Corpus, run: str, group: zarr.Group, spec: PCASpec) -> None:
        self.corpus, self.run, self.group, self.spec = corpus, run, group, spec

    @classmethod
    def create_or_open(cls, corpus: Corpus, run: str, spec: PCASpec) -> PCARun:
        """Open the run for writing, creating it if absent; refuses other parameters (naming each one).

        ``corpus`` must be opened writable. Call from one process before fanning out the step tasks.
        """
        check_run_name(run)
        _check_spec(corpus, spec)
        group = create_or_open_run(
            corpus, "pca", run, spec.to_attrs(), lambda g: create_arrays(g, _layout(corpus, spec))
        )
        return cls(corpus, run, group, spec)

    @classmethod
    def open(cls, url: str, run: str, *, writable: bool = False) -> PCARun:
        """Open an existing run of the corpus at ``url``."""
        corpus = Corpus.open(url, writable=writable)
        group, attrs = open_run(corpus, "pca", run)
        return cls(corpus, run, group, PCASpec.from_attrs(attrs))

    # ----- resume state --------------------------------------------------------------------------
    def done_steps(self) -> np.ndarray:
        """Bool (T,) over corpus steps: which are fitted and written. An unreadable flag counts as not done."""
        return read_flags(array_at(self.group, "done"))

    def missing_steps(self) -> list[int]:
        """The run's steps that are not done, in order."""
        done = self.done_steps()
        return [t for t in self.spec.steps if not done[t]]

    def is_aligned(self) -> bool:
        """Signs written for every fitted step (and every fitted step done)."""
        if self.missing_steps():
            return False
        sign = read_array(self.group, "sign", list(self.spec.steps))
        return bool(np.isin(sign, (-1, 1)).all())

    # ----- writing -------------------------------------------------------------------------------
    def write_step(
        self,
        step: int,
        *,
        components: np.ndarray,
        mean: np.ndarray,
        explained_variance: np.ndarray,
        explained_variance_ratio: np.ndarray,
        n_samples: int,
    ) -> None:
        """Write one step's arrays (whole chunks of its own), then mark it done."""
        self._check_step(step)
        k, d = self.spec.components, h_dim(self.corpus)
        expected = {"components": (k, d), "mean": (d,), "explained_variance": (k,), "explained_variance_ratio": (k,)}
        given = {
            "components": components,
            "mean": mean,
            "explained_variance": explained_variance,
            "explained_variance_ratio": explained_variance_ratio,
        }
        check_shapes(f"PCA step {step}", given, expected)
        for name, value in given.items():
            array_at(self.group, name)[step] = np.asarray(value, dtype=np.float32)
        array_at(self.group, "n_samples")[step] = np.int64(n_samples)
        array_at(self.group, "done")[step] = True

    def write_signs(self, signs: np.ndarray) -> None:
        """Write +1/-1 of shape (len(steps), k), one row per fitted step, in one whole-array write."""
        steps = list(self.spec.steps)
        signs = np.asarray(signs)
        if signs.shape != (len(steps), self.spec.components) or not np.isin(signs, (-1, 1)).all():
            raise HSpaceError(f"signs must be +1/-1 of shape {(len(steps), self.spec.components)}; got {signs.shape}")
        if self.missing_steps():
            raise HSpaceError(f"PCA run {self.run!r}: steps {self.missing_steps()} are not done; align after all are")
        full = np.zeros((self.corpus.spec.steps, self.spec.components), dtype=np.int8)
        full[steps] = signs
        array_at(self.group, "sign")[...] = full

    # ----- reading -------------------------------------------------------------------------------
    def read_step(self, step: int) -> PCAStep:
        """One done step, signs as fitted."""
        self._check_step(step)
        if not self.done_steps()[step]:
            raise HSpaceError(f"PCA run {self.run!r}: step {step} is not done; rerun `hspace pca fit` to finish it")
        g = self.group
        return PCAStep(
            components=read_array(g, "components", step),
            mean=read_array(g, "mean", step),
            explained_variance=read_array(g, "explained_variance", step),
            explained_variance_ratio=read_array(g, "explained_variance_ratio", step),
            n_samples=int(read_array(g, "n_samples", step)),
        )

    def explained_variances(self) -> np.ndarray:
        """Explained variance of every component at every fitted step, float32 (len(steps), k), in one read
        (a read per step costs a round trip each on an object store); all steps must be done."""
        self._require_done()
        return read_array(self.group, "explained_variance", list(self.spec.steps))

    def read_components(self, indices: Sequence[int]) -> np.ndarray:
        """Raw components ``indices`` of every fitted step, float32 (len(steps), len(indices), D), signs as
        fitted, in one read (few components: what a direction needs); all steps must be done."""
        self._require_done()
        selection = (np.asarray(self.spec.steps, dtype=np.int64), np.asarray(indices, dtype=np.int64))
        return np.asarray(array_at(self.group, "components").get_orthogonal_selection(selection))

    def iter_components(self) -> Iterator[np.ndarray]:
        """Raw components (k, D) of each fitted step in turn, signs as fitted; all steps must be done. One step
        in memory at a time (all k of every step can exceed memory; :meth:`read_components` reads a few)."""
        self._require_done()
        for t in self.spec.steps:
            yield read_array(self.group, "components", t)

    def signs(self) -> np.ndarray:
        """+1/-1 of shape (len(steps), k); refuses a run that is not aligned."""
        self._require_complete()
        return read_array(self.group, "sign", list(self.spec.steps)).astype(np.int8)

    def explained_variance_ratio(self) -> np.ndarray:
        """(len(steps), k) for the done steps (rows of steps not done are NaN)."""
        done = self.done_steps()
        ratio = np.full((len(self.spec.steps), self.spec.components), np.nan, dtype=np.float32)
        for i, t in enumerate(self.spec.steps):
            if done[t]:
                ratio[i] = read_array(self.group, "explained_variance_ratio", t)
        return ratio

    def info(self) -> dict[str, Any]:
        """Parameters and progress as one JSON-ready dict (``hspace pca info --json``)."""
        ratio = self.explained_variance_ratio()
        done = self.done_steps()
        return {
            "url": self.corpus.url,
            "run": self.run,
            "components": self.spec.components,
            "method": self.spec.method,
            "batch_size": self.spec.batch_size,
            "oversampling": self.spec.oversampling,
            "steps": list(self.spec.steps),
            "steps_done": [t for t in self.spec.steps if done[t]],
            "steps_missing": self.missing_steps(),
            "complete": self.is_aligned(),
            "n_samples": [int(read_array(self.group, "n_samples", t)) if done[t] else None for t in self.spec.steps],
            "explained_variance_ratio": [None if np.isnan(r).any() else [float(x) for x in r] for r in ratio],
            "explained_variance_ratio_total": [None if np.isnan(r).any() else float(r.sum()) for r in ratio],
            "model": self.spec.corpus["model"],
            "fingerprint": self.spec.corpus["fingerprint"],
            "package_version": self.spec.package_version,
        }

    def _check_step(self, step: int) -> None:
        if step not in self.spec.steps:
            raise HSpaceError(f"step {step} is not one of PCA run {self.run!r}'s steps {list(self.spec.steps)}")

    def _require_done(self) -> None:
        missing = self.missing_steps()
        if missing:
            raise HSpaceError(
                f"PCA run {self.run!r} is not complete: steps {missing} are not done; rerun "
                f"`hspace pca fit {self.corpus.url} --run {self.run}` with the same settings"
            )

    def _require_complete(self) -> None:
        self._require_done()
        if not self.is_aligned():
            raise HSpaceError(
                f"PCA run {self.run!r} has every step but its signs are not aligned yet; rerun "
                f"`hspace pca fit {self.corpus.url} --run {self.run}` with the same settings"
            )


def read_pca_directions(url: str, run: str, indices: Sequence[int] | None = None) -> np.ndarray:
    """PCA directions of a complete run: float32 (len(indices), T, C, H, W), signs aligned (Sec. IV-A).

    Direction j is the concatenation over t of component j at step t, times its aligned sign. Steps the run
    did not fit are zero (an edit along it changes h only at the fitted steps). Refuses a run that is not
    complete (a step not done, or signs not aligned).
    """
    pca = PCARun.open(url, run)
    k = pca.spec.components
    indices = list(range(k)) if indices is None else [int(j) for j in indices]
    bad = [j for j in indices if not 0 <= j < k]
    if bad:
        raise HSpaceError(f"PCA run {run!r} has components 0..{k - 1}; got {bad[0]}")
    signs = pca.signs()  # refuses an incomplete run
    spec = pca.corpus.spec
    directions = np.zeros((len(indices), spec.steps, *spec.h_shape), dtype=np.float32)
    for i, (t, components) in enumerate(zip(pca.spec.steps, pca.read_components(indices), strict=True)):
        aligned = (components * signs[i, indices, None])[None]  # (1, n, D): this step alone
        for j in range(len(indices)):
            directions[j, t] = pca_direction(aligned, j, spec.h_shape).numpy()[0]
    return directions


def _check_spec(corpus: Corpus, spec: PCASpec) -> None:
    check_steps(corpus, spec.steps)
    limit = min(corpus.spec.samples - 1, h_dim(corpus))
    if not 1 <= spec.components <= limit:
        raise HSpaceError(
            f"components must lie in 1..{limit} (fewer than the corpus's {corpus.spec.samples} "
            f"samples, whose centred h span at most n - 1 directions, and at most dim h = "
            f"{h_dim(corpus)}); got {spec.components}"
        )


def _layout(corpus: Corpus, spec: PCASpec) -> ArrayLayout:
    t, k, d = corpus.spec.steps, spec.components, h_dim(corpus)
    return {
        "components": ((t, k, d), "float32", (1, k, d), ("step", "component", "feature")),
        "mean": ((t, d), "float32", (1, d), ("step", "feature")),
        "explained_variance": ((t, k), "float32", (1, k), ("step", "component")),
        "explained_variance_ratio": ((t, k), "float32", (1, k), ("step", "component")),
        "n_samples": ((t,), "int64", (1,), ("step",)),
        "done": ((t,), "bool", (1,), ("step",)),
        "sign": ((t, k), "int8", (t, k), ("step", "component")),
    }
