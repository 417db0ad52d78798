"""Unsupervised directions stored inside the corpus group: PCA runs and Jacobian runs (Sec. IV).

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
covers whole chunks of its own, so tasks of different steps may write concurrently (environment.md: Zarr
writes must cover whole chunks). ``sign`` is written by one task after every step is done (method.md: the
sign of a component is arbitrary per step; directions concatenate components over t only after alignment).

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

Each run group has an ``hspace`` attribute with its parameters and ``initialized`` (true once every array
exists). Reopening a run with other parameters is an error that names each difference. Run names become
paths, so they are validated (:func:`hspace.names.check_name`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.names import check_name
from hspace.pca_directions import pca_direction
from storage.corpus import NOT_COMPARED, Corpus, _differences, _short

RESULTS_SCHEMA_VERSION = 1


def check_run_name(run: str) -> str:
    """Return ``run`` if it is a valid run name (it becomes a path inside the corpus group)."""
    return check_name(run, "run")


def corpus_settings(corpus: Corpus) -> dict[str, Any]:
    """The corpus settings a result depends on (all but the package version), JSON-ready."""
    return {k: v for k, v in corpus.spec.to_attrs().items() if k not in NOT_COMPARED}


# ----- PCA -------------------------------------------------------------------------------------------
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
        The corpus settings (fingerprint, samples, steps, eta, ...), from :func:`corpus_settings`.
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
        return json.loads(json.dumps({"kind": "pca", "schema_version": RESULTS_SCHEMA_VERSION, **asdict(self)}))

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
        _check_pca_spec(corpus, spec)
        group = _create_or_open_run(corpus, "pca", run, spec.to_attrs(), lambda g: _create_pca_arrays(g, corpus, spec))
        return cls(corpus, run, group, spec)

    @classmethod
    def open(cls, url: str, run: str, *, writable: bool = False) -> PCARun:
        """Open an existing run of the corpus at ``url``."""
        corpus = Corpus.open(url, writable=writable)
        group, attrs = _open_run(corpus, "pca", run)
        return cls(corpus, run, group, PCASpec.from_attrs(attrs))

    # ----- resume state --------------------------------------------------------------------------
    def done_steps(self) -> np.ndarray:
        """Bool (T,) over corpus steps: which are fitted and written. An unreadable flag counts as not done."""
        return _read_flags(self.group["done"])

    def missing_steps(self) -> list[int]:
        """The run's steps that are not done, in order."""
        done = self.done_steps()
        return [t for t in self.spec.steps if not done[t]]

    def is_aligned(self) -> bool:
        """Signs written for every fitted step (and every fitted step done)."""
        if self.missing_steps():
            return False
        sign = self.group["sign"][list(self.spec.steps)]
        return bool(np.isin(sign, (-1, 1)).all())

    # ----- writing -------------------------------------------------------------------------------
    def write_step(self, step: int, *, components: np.ndarray, mean: np.ndarray, explained_variance: np.ndarray,
                   explained_variance_ratio: np.ndarray, n_samples: int) -> None:
        """Write one step's arrays (whole chunks of its own), then mark it done."""
        self._check_step(step)
        k, d = self.spec.components, _dim(self.corpus)
        expected = {"components": (k, d), "mean": (d,), "explained_variance": (k,),
                    "explained_variance_ratio": (k,)}
        given = {"components": components, "mean": mean, "explained_variance": explained_variance,
                 "explained_variance_ratio": explained_variance_ratio}
        for name, array in given.items():
            if tuple(np.shape(array)) != expected[name]:
                raise HSpaceError(f"PCA step {step}: {name} has shape {tuple(np.shape(array))}, "
                                  f"expected {expected[name]}")
        for name, array in given.items():
            self.group[name][step] = np.asarray(array, dtype=np.float32)
        self.group["n_samples"][step] = np.int64(n_samples)
        self.group["done"][step] = True

    def write_signs(self, signs: np.ndarray) -> None:
        """Write +1/-1 of shape (len(steps), k), one row per fitted step, in one whole-array write."""
        steps = list(self.spec.steps)
        signs = np.asarray(signs)
        if signs.shape != (len(steps), self.spec.components) or not np.isin(signs, (-1, 1)).all():
            raise HSpaceError(f"signs must be +1/-1 of shape {(len(steps), self.spec.components)}; got "
                              f"{signs.shape}")
        if self.missing_steps():
            raise HSpaceError(f"PCA run {self.run!r}: steps {self.missing_steps()} are not done; align after all are")
        full = np.zeros((self.corpus.spec.steps, self.spec.components), dtype=np.int8)
        full[steps] = signs
        self.group["sign"][...] = full

    # ----- reading -------------------------------------------------------------------------------
    def read_step(self, step: int) -> PCAStep:
        """One done step, signs as fitted."""
        self._check_step(step)
        if not self.done_steps()[step]:
            raise HSpaceError(f"PCA run {self.run!r}: step {step} is not done; rerun `hspace pca fit` to finish it")
        g = self.group
        return PCAStep(components=g["components"][step], mean=g["mean"][step],
                       explained_variance=g["explained_variance"][step],
                       explained_variance_ratio=g["explained_variance_ratio"][step],
                       n_samples=int(g["n_samples"][step]))

    def iter_components(self, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Raw components of each fitted step in turn, (k, D) or (len(indices), D), signs as fitted; all steps
        must be done. One step in memory at a time."""
        self._require_done()
        for t in self.spec.steps:
            components = self.group["components"][t]
            yield components if indices is None else components[list(indices)]

    def signs(self) -> np.ndarray:
        """+1/-1 of shape (len(steps), k); refuses a run that is not aligned."""
        self._require_complete()
        return self.group["sign"][list(self.spec.steps)].astype(np.int8)

    def explained_variance_ratio(self) -> np.ndarray:
        """(len(steps), k) for the done steps (rows of steps not done are NaN)."""
        done = self.done_steps()
        ratio = np.full((len(self.spec.steps), self.spec.components), np.nan, dtype=np.float32)
        for i, t in enumerate(self.spec.steps):
            if done[t]:
                ratio[i] = self.group["explained_variance_ratio"][t]
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
            "n_samples": [int(self.group["n_samples"][t]) if done[t] else None for t in self.spec.steps],
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
            raise HSpaceError(f"PCA run {self.run!r} is not complete: steps {missing} are not done; rerun "
                              f"`hspace pca fit {self.corpus.url} --run {self.run}` with the same settings")

    def _require_complete(self) -> None:
        self._require_done()
        if not self.is_aligned():
            raise HSpaceError(f"PCA run {self.run!r} has every step but its signs are not aligned yet; rerun "
                              f"`hspace pca fit {self.corpus.url} --run {self.run}` with the same settings")


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
    for i, (t, components) in enumerate(zip(pca.spec.steps, pca.iter_components(indices))):
        aligned = (components * signs[i, indices, None])[None]  # (1, n, D): this step alone
        for j in range(len(indices)):
            directions[j, t] = pca_direction(aligned, j, spec.h_shape).numpy()[0]
    return directions


def list_runs(url: str, kind: str) -> list[str]:
    """Names of the runs of one kind (``"pca"`` or ``"jacobian"``) in the corpus at ``url``."""
    corpus = Corpus.open(url)
    if kind not in corpus.group:
        return []
    return sorted(name for name, _ in corpus.group[kind].groups())


# ----- Jacobian --------------------------------------------------------------------------------------
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
    corpus : dict
        The corpus settings, from :func:`corpus_settings`.
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
    corpus: dict[str, Any]
    package_version: str

    def to_attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps({"kind": "jacobian", "schema_version": RESULTS_SCHEMA_VERSION,
                                      **asdict(self)}))

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
    def create_or_open(cls, corpus: Corpus, run: str, spec: JacobianSpec,
                       mask: np.ndarray | None = None) -> JacobianRun:
        """Open the run for writing, creating it if absent; refuses other parameters (naming each one).

        ``mask`` (S, S) uint8 0/1 must match ``spec.mask_sha256`` (:func:`mask_sha256`).
        """
        check_run_name(run)
        _check_jacobian_spec(corpus, spec, mask)
        group = _create_or_open_run(corpus, "jacobian", run, spec.to_attrs(),
                                    lambda g: _create_jacobian_arrays(g, corpus, spec, mask))
        return cls(corpus, run, group, spec)

    @classmethod
    def open(cls, url: str, run: str, *, writable: bool = False) -> JacobianRun:
        corpus = Corpus.open(url, writable=writable)
        group, attrs = _open_run(corpus, "jacobian", run)
        return cls(corpus, run, group, JacobianSpec.from_attrs(attrs))

    def index(self, sample_id: int, step: int) -> tuple[int, int]:
        """Row and column of (sample id, step) in the run's arrays."""
        if sample_id not in self.spec.sample_ids:
            raise HSpaceError(f"sample {sample_id} is not in Jacobian run {self.run!r} (samples "
                              f"{list(self.spec.sample_ids)})")
        if step not in self.spec.steps:
            raise HSpaceError(f"step {step} is not in Jacobian run {self.run!r} (steps {list(self.spec.steps)})")
        return self.spec.sample_ids.index(sample_id), self.spec.steps.index(step)

    def done(self) -> np.ndarray:
        """Bool (n sample ids, m steps). An unreadable flag counts as not done."""
        return _read_flags(self.group["done"])

    def missing(self) -> list[tuple[int, int]]:
        """(sample id, step) pairs not done, sample-major."""
        done = self.done()
        return [(s, t) for i, s in enumerate(self.spec.sample_ids) for j, t in enumerate(self.spec.steps)
                if not done[i, j]]

    def mask(self) -> np.ndarray | None:
        """M of eq. 10 as uint8 (S, S) with values 0/1, or None."""
        return self.group["mask"][...] if "mask" in self.group else None

    def write(self, sample_id: int, step: int, cell: JacobianCell) -> None:
        """Write one (sample id, step): whole chunks of its own, then mark it done."""
        i, j = self.index(sample_id, step)
        spec, k = self.corpus.spec, self.spec.k
        expected = {"singular_values": (k,), "directions": (k, *spec.h_shape),
                    "image_changes": (k, *spec.image_shape), "residuals": (k,)}
        for name, shape in expected.items():
            if tuple(np.shape(getattr(cell, name))) != shape:
                raise HSpaceError(f"Jacobian ({sample_id}, {step}): {name} has shape "
                                  f"{tuple(np.shape(getattr(cell, name)))}, expected {shape}")
        for name in expected:
            self.group[name][i, j] = np.asarray(getattr(cell, name), dtype=np.float32)
        self.group["iterations"][i, j] = np.int64(cell.iterations)
        self.group["converged"][i, j] = bool(cell.converged)
        self.group["done"][i, j] = True

    def read(self, sample_id: int, step: int) -> JacobianCell:
        """One done (sample id, step); refuses one that is not done."""
        i, j = self.index(sample_id, step)
        if not self.done()[i, j]:
            raise HSpaceError(f"Jacobian run {self.run!r}: sample {sample_id} at step {step} is not done; rerun "
                              f"`hspace jacobian` with the same settings to finish it")
        g = self.group
        return JacobianCell(singular_values=g["singular_values"][i, j], directions=g["directions"][i, j],
                            image_changes=g["image_changes"][i, j], residuals=g["residuals"][i, j],
                            iterations=int(g["iterations"][i, j]), converged=bool(g["converged"][i, j]))

    def info(self) -> dict[str, Any]:
        """Parameters, progress and the singular values found, JSON-ready (``hspace jacobian --json``)."""
        done = self.done()
        cells = []
        for i, s in enumerate(self.spec.sample_ids):
            for j, t in enumerate(self.spec.steps):
                entry: dict[str, Any] = {"sample": s, "step": t, "done": bool(done[i, j])}
                if done[i, j]:
                    cell = self.read(s, t)
                    entry.update(singular_values=[float(x) for x in cell.singular_values],
                                 residuals=[float(x) for x in cell.residuals], iterations=cell.iterations,
                                 converged=cell.converged)
                cells.append(entry)
        spec = self.spec
        return {"url": self.corpus.url, "run": self.run, "samples": list(spec.sample_ids), "steps": list(spec.steps),
                "k": spec.k, "algorithm": spec.algorithm, "block": spec.block, "mask_sha256": spec.mask_sha256,
                "tol": spec.tol, "max_iter": spec.max_iter, "done": int(done.sum()), "missing": len(self.missing()),
                "model": spec.corpus["model"], "fingerprint": spec.corpus["fingerprint"], "results": cells}


def read_jacobian_directions(url: str, run: str, sample_id: int, step: int,
                             indices: Sequence[int] | None = None) -> np.ndarray:
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


def read_mask_png(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """M of eq. 10 from a PNG (white = region): uint8 (S, S) of 0/1.

    The picture is read as grey levels, resized to ``image_size`` (height, width) by nearest neighbour and
    binarised at 128. It must be a PNG with the image's aspect ratio and at least one white pixel.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HSpaceError(f"cannot read the mask {path}: {error.strerror or error}") from error
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise HSpaceError(f"the mask {path} is not a readable image: give a PNG (white = region)") from error
    if picture.format != "PNG":
        raise HSpaceError(f"the mask {path} is a {picture.format} file; give a PNG (white = region)")
    height, width = image_size
    if picture.width * height != picture.height * width:
        raise HSpaceError(f"the mask {path} is {picture.width}x{picture.height} but the images are {width}x{height}: "
                          "give a mask of the same aspect ratio (it is resized by nearest neighbour)")
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        picture = picture.convert("RGBA").convert("L")  # alpha dropped: the grey level is what counts
    grey = np.asarray(picture.convert("L").resize((width, height), Image.NEAREST))
    mask = (grey >= 128).astype(np.uint8)
    if not mask.any():
        raise HSpaceError(f"the mask {path} has no white pixel at {width}x{height}: mark the region in white")
    return mask


# ----- private helpers -------------------------------------------------------------------------------
def _dim(corpus: Corpus) -> int:
    return int(np.prod(corpus.spec.h_shape))


def _read_flags(done: zarr.Array) -> np.ndarray:
    try:
        return np.asarray(done[...], dtype=bool)
    except Exception:  # a flag chunk damaged by a crash: read flag by flag, trust none that fails
        flags = np.zeros(done.shape, dtype=bool)
        for index in np.ndindex(*done.shape):
            try:
                flags[index] = bool(done[index])
            except Exception:
                flags[index] = False
        return flags


def _check_steps(corpus: Corpus, steps: Sequence[int]) -> None:
    total = corpus.spec.steps
    if not steps:
        raise HSpaceError("give at least one step")
    bad = [t for t in steps if not 0 <= t < total]
    if bad:
        raise HSpaceError(f"step {bad[0]} is out of range: the corpus has steps 0..{total - 1} (sampling order)")
    if len(set(steps)) != len(steps):
        raise HSpaceError(f"steps repeat: {list(steps)}")


def _check_pca_spec(corpus: Corpus, spec: PCASpec) -> None:
    _check_steps(corpus, spec.steps)
    limit = min(corpus.spec.samples - 1, _dim(corpus))
    if not 1 <= spec.components <= limit:
        raise HSpaceError(f"components must lie in 1..{limit} (fewer than the corpus's {corpus.spec.samples} "
                          f"samples, whose centred h span at most n - 1 directions, and at most dim h = "
                          f"{_dim(corpus)}); got {spec.components}")


def _check_jacobian_spec(corpus: Corpus, spec: JacobianSpec, mask: np.ndarray | None) -> None:
    _check_steps(corpus, spec.steps)
    if not spec.sample_ids:
        raise HSpaceError("give at least one sample id")
    bad = [s for s in spec.sample_ids if not 0 <= s < corpus.spec.samples]
    if bad:
        raise HSpaceError(f"sample {bad[0]} is out of range: the corpus has samples 0..{corpus.spec.samples - 1}")
    if len(set(spec.sample_ids)) != len(spec.sample_ids):
        raise HSpaceError(f"sample ids repeat: {list(spec.sample_ids)}")
    if mask_sha256(mask) != spec.mask_sha256:
        raise HSpaceError("the mask does not match the run's mask checksum")
    if mask is not None and tuple(mask.shape) != tuple(corpus.spec.image_shape[1:]):
        raise HSpaceError(f"mask has shape {tuple(mask.shape)}; expected {tuple(corpus.spec.image_shape[1:])}")


def _create_or_open_run(corpus: Corpus, kind: str, run: str, attrs: dict[str, Any], create_arrays: Any) -> zarr.Group:
    """The run group, created (arrays, then ``initialized``) or checked against ``attrs``."""
    parent = corpus.group.require_group(kind)
    if run in parent:
        group = parent[run]
        existing = dict(group.attrs.get("hspace", {}))
        if existing:
            _check_same_run(corpus.url, kind, run, existing, attrs)
            if existing.get("initialized", False):
                return group
    else:
        group = parent.create_group(run)
    group.attrs.update({"hspace": {**attrs, "initialized": False}})
    create_arrays(group)
    group.attrs.update({"hspace": {**attrs, "initialized": True}})
    return group


def _open_run(corpus: Corpus, kind: str, run: str) -> tuple[zarr.Group, dict[str, Any]]:
    check_run_name(run)
    what = "PCA" if kind == "pca" else "Jacobian"
    command = "hspace pca fit" if kind == "pca" else "hspace jacobian"
    if kind not in corpus.group or run not in corpus.group[kind]:
        known = sorted(name for name, _ in corpus.group[kind].groups()) if kind in corpus.group else []
        raise HSpaceError(f"no {what} run {run!r} in {corpus.url} (runs: {', '.join(known) or 'none'}); "
                          f"create it with `{command}`")
    group = corpus.group[kind][run]
    attrs = dict(group.attrs.get("hspace", {}))
    if attrs.get("kind") != kind or attrs.get("schema_version") != RESULTS_SCHEMA_VERSION:
        raise HSpaceError(f"{corpus.url}/{kind}/{run} is not a {what} run this hspace can read")
    if not attrs.get("initialized", False):
        raise HSpaceError(f"{what} run {run!r} was not fully created; rerun `{command}` with the same settings")
    return group, attrs


def _check_same_run(url: str, kind: str, run: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    ignored = ("package_version", "initialized")
    differing = [
        f"{name} (run: {_short(a)}, requested: {_short(b)})"
        for key in sorted(old.keys() | new.keys()) if key not in ignored
        for name, a, b in _differences(key, old.get(key), new.get(key))
    ]
    if differing:
        what = "PCA" if kind == "pca" else "Jacobian"
        raise HSpaceError(f"{what} run {run!r} in {url} was made with other settings: {'; '.join(differing)}. "
                          "Use the same settings to resume it, or another run name (--run; --pca-run of rebuild-bank)")


def _create_pca_arrays(group: zarr.Group, corpus: Corpus, spec: PCASpec) -> None:
    t, k, d = corpus.spec.steps, spec.components, _dim(corpus)
    arrays = {
        "components": ((t, k, d), "float32", (1, k, d), ("step", "component", "feature")),
        "mean": ((t, d), "float32", (1, d), ("step", "feature")),
        "explained_variance": ((t, k), "float32", (1, k), ("step", "component")),
        "explained_variance_ratio": ((t, k), "float32", (1, k), ("step", "component")),
        "n_samples": ((t,), "int64", (1,), ("step",)),
        "done": ((t,), "bool", (1,), ("step",)),
        "sign": ((t, k), "int8", (t, k), ("step", "component")),
    }
    for name, (shape, dtype, chunks, dims) in arrays.items():
        group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, dimension_names=dims,
                           overwrite=True)


def _create_jacobian_arrays(group: zarr.Group, corpus: Corpus, spec: JacobianSpec, mask: np.ndarray | None) -> None:
    n, m, k = len(spec.sample_ids), len(spec.steps), spec.k
    h_shape, image_shape = corpus.spec.h_shape, corpus.spec.image_shape
    h_dims, image_dims = ("h_channel", "h_height", "h_width"), ("image_channel", "image_height", "image_width")
    cell = ("sample", "step")
    arrays = {
        "singular_values": ((n, m, k), "float32", (1, 1, k), (*cell, "direction")),
        "directions": ((n, m, k, *h_shape), "float32", (1, 1, k, *h_shape), (*cell, "direction", *h_dims)),
        "image_changes": ((n, m, k, *image_shape), "float32", (1, 1, k, *image_shape),
                          (*cell, "direction", *image_dims)),
        "residuals": ((n, m, k), "float32", (1, 1, k), (*cell, "direction")),
        "iterations": ((n, m), "int64", (1, 1), cell),
        "converged": ((n, m), "bool", (1, 1), cell),
        "done": ((n, m), "bool", (1, 1), cell),
    }
    for name, (shape, dtype, chunks, dims) in arrays.items():
        group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, dimension_names=dims,
                           overwrite=True)
    if mask is not None:
        stored = group.create_array("mask", shape=mask.shape, dtype="uint8", chunks=mask.shape,
                                    dimension_names=("image_height", "image_width"), overwrite=True)
        stored[...] = mask.astype(np.uint8)
