"""Direction tasks: supervised directions from a corpus (eq. 11) and disentangled ones (eq. 12); directions
from DDIM-inverted real images (SM -F) are in :mod:`tasks.inversion`.

Each ``plan_*`` function checks every argument and opens everything it needs, and raises before any work
or write; the tasks run a plan and write its result last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.directions import disentangle, top_bottom
from hspace.errors import HSpaceError
from hspace.names import check_name
from hspace.sampler import initial_noise
from storage.annotations import find_annotator
from storage.corpus import Corpus
from storage.directions import (
    DirectionRecord,
    check_writable,
    new_record,
    read_direction,
    write_direction,
)
from tasks.corpus import corpus_model

DEFAULT_K = 100


# ----- supervised (eq. 11) from a corpus -----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SupervisedPlan:
    """Which corpus rows are positives and negatives, and the record the direction will carry."""

    url: str
    record: DirectionRecord
    positives: np.ndarray  # int64 row indices
    negatives: np.ndarray
    overwrite: bool


def plan_supervised(
    url: str,
    name: str,
    *,
    attribute: str | None = None,
    annotator: str | None = None,
    k: int = DEFAULT_K,
    threshold: float | None = None,
    positives: Sequence[int] | None = None,
    negatives: Sequence[int] | None = None,
    space: str = "h",
    overwrite: bool = False,
    made_by: str | None = None,
) -> SupervisedPlan:
    """Choose the examples of eq. 11: top-k vs bottom-k by an annotation, or explicit sample ids.

    Parameters
    ----------
    url : str
        The corpus.
    name : str
        The direction's name, ``directions/<name>``.
    attribute, annotator : str, optional
        Rank every sample by this annotation (``annotator`` may be left out when one annotator has it).
    k : int
        Top-k positives, bottom-k negatives; at most half the samples, so the two sets never overlap.
    threshold : float, optional
        A binary attribute: k drawn at random from the samples scoring above it and k from the rest (all
        of the smaller side when it has fewer), not the k most extreme (``hspace.directions.top_bottom``).
    positives, negatives : sequence of int, optional
        Explicit corpus row indices instead of an attribute (method ``examples``); the counts may differ.
    space : {"h", "xT"}
        eq. 11 in h_{T:1} (the paper's) or in x_T (Fig. 8a's comparison).
    overwrite, made_by
        Replace a stored direction of this name made another way: any (``overwrite``), or only one tagged
        with the same ``made_by`` (recorded in the parameters; see ``storage.directions.check_writable``).
    """
    check_name(name, "direction")
    corpus = Corpus.open(url, writable=True)
    explicit = positives is not None or negatives is not None
    if explicit:
        if positives is None or negatives is None:
            raise HSpaceError("give both --positives and --negatives (sample ids), or neither")
        if attribute is not None or threshold is not None:
            raise HSpaceError(
                "give either --attribute (top-k vs bottom-k, optionally --threshold) or "
                "--positives/--negatives, not both"
            )
        pos, neg = _sample_ids(corpus, positives, "positives"), _sample_ids(corpus, negatives, "negatives")
        both = sorted(set(pos.tolist()) & set(neg.tolist()))
        if both:
            raise HSpaceError(f"samples {both[:10]} are both positive and negative examples")
        method = "examples"
        parameters: dict[str, Any] = {}
    else:
        if attribute is None:
            raise HSpaceError("give --attribute (rank samples by an annotation) or --positives and --negatives")
        annotations = find_annotator(corpus, attribute, annotator)
        samples = corpus.spec.samples
        if not isinstance(k, int) or k <= 0:
            raise HSpaceError(f"--k must be a positive integer; got {k!r}")
        if threshold is None and k > samples // 2:
            raise HSpaceError(
                f"--k {k} is more than half of the corpus's {samples} samples, so the top-k and "
                f"bottom-k examples would overlap: use --k {samples // 2} or less, or a larger corpus"
            )
        pos, neg = top_bottom(annotations.scores(attribute), k, threshold=threshold)
        method = "supervised" if space == "h" else "supervised-xT"
        parameters = {
            "annotator": annotations.record.name,
            "attribute": attribute,
            "k": k,
            **({"threshold": float(threshold)} if threshold is not None else {}),
            "annotator_config": annotations.record.config,
        }
    # Row ids (and their order: best score first) make the choice reproducible and auditable.
    parameters = {
        **parameters,
        "positives": pos.tolist(),
        "negatives": neg.tolist(),
        **({"made_by": made_by} if made_by else {}),
    }
    _require_done(corpus, np.concatenate([pos, neg]))
    record = new_record(corpus, name, method=method, space=space, parameters=parameters)
    check_writable(corpus, record, overwrite=overwrite)
    return SupervisedPlan(url=url, record=record, positives=pos, negatives=neg, overwrite=overwrite)


def mean_h(corpus: Corpus, rows: np.ndarray) -> np.ndarray:
    """Mean h_{T:1} of some corpus rows, float64 (T, C, H, W), reading one shard at a time (never all of h)."""
    spec = corpus.spec
    rows = np.asarray(rows, dtype=np.int64)
    total = np.zeros((spec.steps, *spec.h_shape), dtype=np.float64)
    for shard in np.unique(rows // spec.shard_size):
        start, stop = spec.shard_range(int(shard))
        inside = rows[(rows >= start) & (rows < stop)] - start
        # h is stored as float16: sum in float64 so that thousands of rows lose nothing.
        total += corpus.read_h(slice(start, stop))[inside].astype(np.float64).sum(axis=0)
    return total / len(rows)


def mean_x_T(corpus: Corpus, rows: np.ndarray) -> np.ndarray:
    """Mean x_T of some corpus rows, float64 (3, S, S): regenerated exactly from their seeds."""
    spec = corpus.spec
    model = corpus_model(corpus)
    rows = np.asarray(rows, dtype=np.int64)
    total = np.zeros(spec.noise_shape, dtype=np.float64)
    for shard in np.unique(rows // spec.shard_size):
        start, stop = spec.shard_range(int(shard))
        seeds = corpus.read_seeds(slice(start, stop))[rows[(rows >= start) & (rows < stop)] - start]
        total += initial_noise(model, seeds.tolist()).double().sum(0).numpy()
    return total / len(rows)


@task(cache_policy=NO_CACHE, task_run_name="supervised-direction-{plan.record.name}")
def supervised_direction_task(plan: SupervisedPlan) -> dict[str, Any]:
    """eq. 11, v = mean(q+) - mean(q-) over the plan's rows, written as ``directions/<name>``; returns its summary."""
    corpus = Corpus.open(plan.url, writable=True)
    mean = mean_h if plan.record.space == "h" else mean_x_T
    return _store(corpus, plan.record, mean(corpus, plan.positives) - mean(corpus, plan.negatives), plan.overwrite)


# ----- disentangled (eq. 12) -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DisentanglePlan:
    """Which stored directions eq. 12 combines, and the record the result will carry."""

    url: str
    record: DirectionRecord
    source: str
    against: tuple[str, ...]
    keep_norm: bool
    overwrite: bool


def plan_disentangle(
    url: str,
    name: str,
    *,
    source: str,
    against: Sequence[str],
    keep_norm: bool = False,
    overwrite: bool = False,
    made_by: str | None = None,
) -> DisentanglePlan:
    """Check that ``source`` and every ``against`` direction exist, are complete and share one space
    (``overwrite``, ``made_by``: as for :func:`plan_supervised`)."""
    check_name(name, "direction")
    against = tuple(against)
    if not against:
        raise HSpaceError("give at least one direction to disentangle against (--against B,C)")
    if source in against:
        raise HSpaceError(f"cannot disentangle {source!r} against itself")
    if len(set(against)) != len(against):
        raise HSpaceError(f"--against names a direction twice: {list(against)}")
    if name in (source, *against):
        raise HSpaceError(f"--name {name!r} would replace one of its own inputs: choose another name")
    corpus = Corpus.open(url, writable=True)
    records = [read_direction(corpus, other)[1] for other in (source, *against)]
    spaces = {r.space for r in records}
    if len(spaces) != 1:
        raise HSpaceError(
            f"directions {', '.join(r.name + ' (' + r.space + ')' for r in records)} live in different "
            "spaces; disentangle h directions against h directions only"
        )
    record = new_record(
        corpus,
        name,
        method="disentangled",
        space=records[0].space,
        parameters={
            "from": source,
            "against": list(against),
            "keep_norm": bool(keep_norm),
            **({"made_by": made_by} if made_by else {}),
        },
    )
    check_writable(corpus, record, overwrite=overwrite)
    return DisentanglePlan(
        url=url, record=record, source=source, against=against, keep_norm=bool(keep_norm), overwrite=overwrite
    )


@task(cache_policy=NO_CACHE, task_run_name="disentangle-direction-{plan.record.name}")
def disentangle_direction_task(plan: DisentanglePlan) -> dict[str, Any]:
    """eq. 12, v = [I - V (V^T V)^-1 V^T] v_0 (rescaled to |v_0| with ``keep_norm``), written as
    ``directions/<name>``; returns its summary."""
    corpus = Corpus.open(plan.url, writable=True)
    v0 = torch.from_numpy(read_direction(corpus, plan.source)[0])
    others = [torch.from_numpy(read_direction(corpus, other)[0]) for other in plan.against]
    direction = disentangle(v0.double(), [v.double() for v in others], keep_norm=plan.keep_norm).numpy()
    return _store(corpus, plan.record, direction, plan.overwrite)


def direction_summary(record: DirectionRecord, direction: np.ndarray) -> dict[str, Any]:
    """What a direction task returns: the record's name, method, space and shape, norms, and example counts."""
    norms = np.linalg.norm(direction.reshape(direction.shape[0], -1), axis=1) if record.space == "h" else None
    return {
        "name": record.name,
        "method": record.method,
        "space": record.space,
        "shape": list(record.shape),
        "norm": float(np.linalg.norm(direction)),
        **({"per_step_norm": [round(float(n), 6) for n in norms]} if norms is not None else {}),
        "parameters": {k: v for k, v in record.parameters.items() if k not in ("positives", "negatives")},
        "positives": len(record.parameters.get("positives", []))
        if record.method != "inverted"
        else len(record.parameters["positive_files"]),
        "negatives": len(record.parameters.get("negatives", []))
        if record.method != "inverted"
        else len(record.parameters["negative_files"]),
    }


# ----- private helpers ---------------------------------------------------------------------------
def _sample_ids(corpus: Corpus, ids: Sequence[int], what: str) -> np.ndarray:
    ids = list(ids)
    if not ids:
        raise HSpaceError(f"--{what} lists no sample ids")
    bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < corpus.spec.samples]
    if bad:
        raise HSpaceError(f"--{what}: {bad[:5]} are not sample ids of this corpus (0..{corpus.spec.samples - 1})")
    if len(set(ids)) != len(ids):
        raise HSpaceError(f"--{what} lists a sample id twice")
    return np.asarray(ids, dtype=np.int64)


def _require_done(corpus: Corpus, rows: np.ndarray) -> None:
    """Refuse examples from corpus shards that are not done: their h are not trusted."""
    done = corpus.done_shards()
    shards = sorted({int(s) for s in np.unique(rows // corpus.spec.shard_size) if not done[int(s)]})
    if shards:
        raise HSpaceError(
            f"examples lie in corpus shards {shards[:10]} that are not generated yet: finish the corpus "
            f"with `hspace corpus build {corpus.url} ...` first"
        )


def _store(corpus: Corpus, record: DirectionRecord, direction: np.ndarray, overwrite: bool) -> dict[str, Any]:
    """Write ``directions/<name>`` (float32) and return its summary (from the unrounded values)."""
    write_direction(corpus, record, direction.astype(np.float32), overwrite=overwrite)
    return direction_summary(record, direction)
