"""Evaluation tasks (Table I): score some passes of the evaluation samples, then summarize every pass.

Each task reopens what it needs from storage (the corpus's directions, the model, the annotator) and rebuilds
the same :class:`hspace.evaluate.EvaluationPlan`, so a task takes only the spec, the key and its passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.conditioning import Conditioning, parse_conditioning
from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationPlan, check_batch, evaluation_seeds, plan_evaluation, score_samples, summarize
from hspace.models import LoadedModel, check_precision, precision_entry
from storage.corpus import Corpus
from storage.evaluations import EVALUATIONS, EvaluationParts, evaluation_key, stored_evaluation, write_evaluation
from storage.groups import group_at
from tasks.annotate import cached_annotator, options_key
from tasks.bank import gather_directions
from tasks.corpus import corpus_model


@dataclass(frozen=True, kw_only=True)
class EvaluationSpec:
    """One evaluation of directions of the corpus at ``url`` (names: supervised ones and ``pca-<j>``).

    ``samples`` x ``repeats`` fresh samples (seeds from ``seed``) edited along every direction at ``gamma``;
    ``precision`` is the U-Net's (default: the corpus's). ``batch`` samples per U-Net pass, each with all
    its edits; ``block`` samples per task, in whole passes (at least one): the result is the same for any
    block, and is the single-process one (:func:`hspace.evaluate.evaluate_directions`) with that batch.
    """

    url: str
    names: tuple[str, ...]
    supervised: tuple[str, ...]
    pca_run: str | None = None
    pca_directions: int = 0
    annotator: str = "testbed"
    annotator_options: dict[str, Any] | None = None
    gamma: float = 1.0
    samples: int = 100
    repeats: int = 10
    seed: int = 1
    precision: str | None = None
    batch: int = 8
    block: int = 32
    device: str = "cpu"
    # A text-conditional corpus's conditioning to sample with (Conditioning.record()); None: the corpus's own,
    # edits added in both guidance passes.
    conditioning: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "supervised", tuple(self.supervised))
        if not self.names:
            raise HSpaceError("an evaluation needs at least one direction")
        for name in ("samples", "repeats", "block"):
            if getattr(self, name) < 1:
                raise HSpaceError(f"--{name} must be a positive integer; got {getattr(self, name)}")
        check_batch(self.batch)
        if self.precision is not None:
            check_precision(self.precision)

    @property
    def passes_per_task(self) -> int:
        return max(1, self.block // self.batch)


def evaluation_inputs(spec: EvaluationSpec) -> tuple[Corpus, dict[str, np.ndarray], dict[str, Any], str]:
    """The corpus, the directions (name -> (T, C, H, W)), the settings that key the result, and the key."""
    corpus = Corpus.open(spec.url)
    found = gather_directions(
        spec.url, supervised=list(spec.supervised), pca_run=spec.pca_run, pca_directions=spec.pca_directions
    )
    missing = [name for name in spec.names if name not in found]
    if missing:
        raise HSpaceError(f"no direction {', '.join(map(repr, missing))} among those gathered from {spec.url}")
    tensors = {name: found[name][0] for name in spec.names}
    c = corpus.spec
    if len(set(c.eta)) != 1:
        raise HSpaceError("the evaluation samples with one eta for every step; this corpus has per-step eta")
    settings = {
        "annotator": spec.annotator,
        "options": options_key(spec.annotator_options),
        "gamma": spec.gamma,
        "samples": spec.samples,
        "repeats": spec.repeats,
        "seed": spec.seed,
        "steps": c.steps,
        "eta": list(c.eta),
        "fingerprint": c.fingerprint,
        **precision_entry(spec.precision or c.precision),
        # Only for text-conditional corpora, so that every other evaluation keeps its key.
        **({} if c.conditioning is None else {"conditioning": evaluation_conditioning(spec, corpus).record()}),
    }
    return corpus, tensors, settings, evaluation_key(tensors, settings)


def evaluation_conditioning(spec: EvaluationSpec, corpus: Corpus) -> Conditioning | None:
    """What the evaluation samples with: the spec's conditioning, else the corpus's (None if unconditional)."""
    recorded = corpus.spec.conditioning
    given = spec.conditioning
    if given is not None and recorded is None:
        raise HSpaceError(f"the corpus at {spec.url} is of an unconditional model: leave out the prompt and guidance")
    return parse_conditioning(**(given or {}), recorded=recorded)


def evaluation_plan(
    spec: EvaluationSpec, corpus: Corpus, tensors: dict[str, np.ndarray]
) -> tuple[LoadedModel, Any, EvaluationPlan]:
    """The model (loaded once per process), the annotator and the plan of every part of this evaluation."""
    model = corpus_model(corpus, spec.device, spec.precision).conditioned(evaluation_conditioning(spec, corpus))
    scorer = cached_annotator(spec.annotator, options_key(spec.annotator_options))
    plan = plan_evaluation(
        model,
        scorer,
        {n: torch.from_numpy(t) for n, t in tensors.items()},
        gamma=spec.gamma,
        steps=corpus.spec.steps,
        samples=spec.samples,
        repeats=spec.repeats,
        eta=corpus.spec.eta[0],
        seed=spec.seed,
    )
    return model, scorer, plan


def open_parts(spec: EvaluationSpec) -> tuple[str, EvaluationParts | None]:
    """The key, and the parts still to fill (None where the result is stored already)."""
    corpus, tensors, settings, key = evaluation_inputs(spec)
    if stored_evaluation(corpus, key) is not None:
        return key, None
    rows = 1 + 2 * len(tensors)  # the unedited sample, each direction and its random twin
    columns = len(cached_annotator(spec.annotator, options_key(spec.annotator_options)).attributes)
    writable = Corpus.open(spec.url, writable=True)
    shape = (spec.repeats, spec.samples, rows, columns)
    return key, EvaluationParts.create_or_open(writable, key, settings, shape=shape, batch=spec.batch)


@task(cache_policy=NO_CACHE, task_run_name="evaluate-repeat-{repeat}-passes-{passes}")
def evaluate_passes(spec: EvaluationSpec, key: str, repeat: int, passes: list[int]) -> int:
    """Score ``passes`` of ``repeat`` and store each (its done flag last); returns the samples scored."""
    corpus, tensors, _, found_key = evaluation_inputs(spec)
    if found_key != key:
        raise HSpaceError(f"the directions of {spec.url} changed during evaluation {key}: rerun the evaluation")
    model, scorer, plan = evaluation_plan(spec, corpus, tensors)
    parts = EvaluationParts(group_at(Corpus.open(spec.url, writable=True).group, f"{EVALUATIONS}/{key}"))
    scored = 0
    for p in passes:
        start, stop = parts.pass_range(p)
        seeds = evaluation_seeds(plan, repeat, start, stop)
        parts.write(repeat, p, score_samples(model, scorer, plan, seeds, batch=spec.batch))
        scored += stop - start
    return scored


@task(cache_policy=NO_CACHE, task_run_name="summarize-evaluation")
def finish_evaluation(spec: EvaluationSpec, key: str) -> None:
    """Summarize every pass into the Table I result and store it (the key's complete record, written last)."""
    corpus, tensors, settings, _ = evaluation_inputs(spec)
    _, _, plan = evaluation_plan(spec, corpus, tensors)
    writable = Corpus.open(spec.url, writable=True)
    parts = EvaluationParts(group_at(writable.group, f"{EVALUATIONS}/{key}"))
    write_evaluation(writable, key, settings, summarize(plan, parts.read()))
