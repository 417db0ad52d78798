"""Fig. 8a tasks: sample passes of the pool, find the directions, score passes of the edits, make the curve.

Each task rebuilds the same :class:`hspace.efficiency.EfficiencyPlan` from the spec (the model and annotator
are loaded once per process) and reopens the parts under the spec's ``out`` (:mod:`storage.efficiency`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.annotators.base import Annotator
from hspace.efficiency import (
    EfficiencyCurve,
    EfficiencyPlan,
    Keep,
    check_batch,
    evaluation_seeds,
    example_directions,
    plan_efficiency,
    pool_seeds,
    sample_pool,
    score_edits,
    summarize,
)
from hspace.errors import HSpaceError
from hspace.files import write_whole_files
from hspace.models import LoadedModel, check_precision
from hspace.render import png_bytes
from storage.efficiency import EfficiencyParts, check_record
from tasks.annotate import cached_annotator
from tasks.corpus import cached_model


@dataclass(frozen=True, kw_only=True)
class EfficiencySpec:
    """One Fig. 8a run (:func:`hspace.efficiency.sample_efficiency`'s arguments), its parts kept under ``out``.

    ``keep_above`` = (attribute, threshold): only pool samples scoring above it serve as examples (e.g.
    ``("face", 0.5)`` on the testbed); all by default. ``batch`` samples per U-Net pass; ``block`` samples
    per task, in whole passes (at least one): the curve is the same for any block, and is the single-process
    one with that batch.
    """

    out: str
    attribute: str
    counts: tuple[int, ...] = (2, 5, 10, 25, 50, 100)
    model: str = "testbed"
    annotator: str = "testbed"
    pool_samples: int = 512
    eval_samples: int = 64
    gamma_h: float = 1.0
    gamma_x: float = 1.0
    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    normalize: bool = True
    keep_above: tuple[str, float] | None = None
    precision: str = "fp32"
    device: str = "cpu"
    batch: int = 16
    block: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(int(n) for n in self.counts))
        for name in ("pool_samples", "eval_samples", "steps", "block"):
            if getattr(self, name) < 1:
                raise HSpaceError(f"--{_option(name)} must be a positive integer; got {getattr(self, name)}")
        check_batch(self.batch)
        if not 0.0 <= self.eta <= 1.0:
            raise HSpaceError(f"--eta must lie in [0, 1]; got {self.eta}")
        check_precision(self.precision)

    @property
    def passes_per_task(self) -> int:
        return max(1, self.block // self.batch)

    def keep(self) -> Keep | None:
        """``keep_above`` as :func:`hspace.efficiency.sample_efficiency`'s ``keep``."""
        if self.keep_above is None:
            return None
        attribute, threshold = self.keep_above
        return lambda scores: scores[attribute] > threshold


def _option(name: str) -> str:
    return {"pool_samples": "pool"}.get(name, name).replace("_", "-")


def efficiency_plan(spec: EfficiencySpec) -> tuple[LoadedModel, Annotator, EfficiencyPlan]:
    """The model and annotator (loaded once per process) and the checked plan of ``spec``."""
    annotator = cached_annotator(spec.annotator)
    if spec.keep_above is not None and spec.keep_above[0] not in annotator.attributes:
        raise HSpaceError(f"annotator {annotator.name!r} has no attribute {spec.keep_above[0]!r} to keep examples by")
    model = cached_model(spec.model, spec.device, spec.precision)
    plan = plan_efficiency(
        model,
        annotator,
        attribute=spec.attribute,
        gamma_h=spec.gamma_h,
        gamma_x=spec.gamma_x,
        steps=spec.steps,
        example_counts=spec.counts,
        pool_samples=spec.pool_samples,
        eval_samples=spec.eval_samples,
        eta=spec.eta,
        seed=spec.seed,
        normalize=spec.normalize,
    )
    return model, annotator, plan


def parts_record(spec: EfficiencySpec, plan: EfficiencyPlan) -> dict[str, Any]:
    """Every setting that fixes the parts' bits (JSON as stored): the plan's and those of the parts."""
    keep = None if spec.keep_above is None else [spec.keep_above[0], float(spec.keep_above[1])]
    extra = {"attribute": plan.attribute, "counts": list(plan.counts), "keep_above": keep, "batch": spec.batch}
    return json.loads(json.dumps({**plan.settings, **extra}))


def check_efficiency(spec: EfficiencySpec) -> None:
    """Refuse bad settings, or parts under ``out`` made with other ones, before anything is written."""
    _, _, plan = efficiency_plan(spec)
    check_record(spec.out, parts_record(spec, plan))


def open_parts(spec: EfficiencySpec) -> EfficiencyParts:
    """The parts of ``spec`` under its ``out``: made, or reopened (refused if made with other settings)."""
    model, annotator, plan = efficiency_plan(spec)
    return EfficiencyParts.create_or_open(
        spec.out,
        parts_record(spec, plan),
        h_shape=(spec.steps, *model.h_shape),
        attributes=len(plan.columns),
        rows=plan.edits,
    )


@task(cache_policy=NO_CACHE, task_run_name="efficiency-pool-passes-{passes}")
def sample_pool_passes(spec: EfficiencySpec, passes: list[int]) -> int:
    """Sample, capture and score ``passes`` of the pool and store each (its done flag last); the samples done."""
    model, annotator, plan = efficiency_plan(spec)
    parts = EfficiencyParts.open(spec.out)
    for p in passes:
        start, stop = parts.pass_range(p, plan.pool_samples)
        h, scores = sample_pool(model, annotator, plan, pool_seeds(plan, start, stop), batch=spec.batch)
        parts.write_pool(p, h, scores)
    return sum(stop - start for start, stop in (parts.pass_range(p, plan.pool_samples) for p in passes))


@task(cache_policy=NO_CACHE, task_run_name="efficiency-directions")
def find_directions(spec: EfficiencySpec) -> None:
    """eq. 11 per count from the stored pool (reading the examples' h only), stored unless stored already."""
    model, _, plan = efficiency_plan(spec)
    parts = EfficiencyParts.open(spec.out)
    if parts.directions() is None:
        parts.write_directions(example_directions(model, plan, parts.pool_scores(), parts.pool_h, keep=spec.keep()))


@task(cache_policy=NO_CACHE, task_run_name="efficiency-edits-passes-{passes}")
def score_edit_passes(spec: EfficiencySpec, passes: list[int]) -> int:
    """Score ``passes`` of the evaluation samples under every edit and store each; the samples done."""
    model, annotator, plan = efficiency_plan(spec)
    parts = EfficiencyParts.open(spec.out)
    directions = parts.directions()
    assert directions is not None  # the flow finds them before it scores edits
    for p in passes:
        start, stop = parts.pass_range(p, plan.eval_samples)
        seeds = evaluation_seeds(plan, start, stop)
        parts.write_edits(p, score_edits(model, annotator, plan, directions, seeds, batch=spec.batch))
    return sum(stop - start for start, stop in (parts.pass_range(p, plan.eval_samples) for p in passes))


@task(cache_policy=NO_CACHE, task_run_name="efficiency-curve")
def finish_efficiency(spec: EfficiencySpec) -> EfficiencyCurve:
    """The curve from every part (stored, the parts' last record), then written as efficiency.png/.md/.json."""
    _, _, plan = efficiency_plan(spec)
    parts = EfficiencyParts.open(spec.out)
    curve = parts.curve()
    if curve is None:
        directions = parts.directions()
        assert directions is not None  # the flow finds them before it finishes
        curve = summarize(plan, directions, parts.edit_scores())
        parts.write_curve(curve)
    write_whole_files(
        spec.out,
        {
            "efficiency.png": png_bytes(curve.plot()),
            "efficiency.md": curve.to_markdown().encode(),
            "efficiency.json": (json.dumps(curve.to_dict(), indent=1) + "\n").encode(),
        },
    )
    return curve
