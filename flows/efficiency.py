"""Flow ``sample_efficiency``: Fig. 8a as two fan-outs, the pool's passes then the edits' passes.

The pool (h_{T:1} captured, every attribute scored) is cut into U-Net passes of ``batch`` samples and the
passes not yet done into tasks of ``block`` samples; one task then finds eq. 11 per count from the stored
pool (reading only the examples' h); the evaluation samples, each with all its edits (h and x_T per count,
two random directions), are cut the same way. Every pass is stored under ``<out>/parts.zarr`` with its done
flag last (:mod:`storage.efficiency`), so a rerun after a crash computes only the missing ones, and the
passes fix the bits: the curve is the single-process one (``hspace.efficiency.sample_efficiency``, same
batch) for any block size, worker count or crash.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.evaluate import pass_blocks
from flows.runner import Progress, checked_by, submit_all
from hspace.efficiency import EfficiencyCurve
from storage.efficiency import EfficiencyParts
from tasks.efficiency import (
    EfficiencySpec,
    check_efficiency,
    find_directions,
    finish_efficiency,
    open_parts,
    sample_pool_passes,
    score_edit_passes,
)


def check_parameters(parameters: dict[str, Any]) -> None:
    """An unknown attribute, impossible counts or parts of other settings under ``out`` fail here, writing nothing."""
    check_efficiency(parameters["spec"])


@checked_by(check_parameters)
@flow(name="sample-efficiency", task_runner=ThreadPoolTaskRunner(max_workers=1))
def sample_efficiency(spec: EfficiencySpec, progress: bool = True) -> EfficiencyCurve:
    """Fig. 8a for ``spec``, resuming the parts under ``spec.out``; writes efficiency.png/.md/.json there."""
    parts = open_parts(spec)
    if parts.curve() is None:
        _run_passes(spec, parts, "pool", spec.pool_samples, sample_pool_passes, progress)
        find_directions(spec)
        _run_passes(spec, parts, "edits", spec.eval_samples, score_edit_passes, progress)
    curve = finish_efficiency(spec)
    create_markdown_artifact(
        markdown=curve.to_markdown(), key="efficiency", description="Fig. 8a: effect of eq. 11 vs examples n"
    )
    return curve


def _run_passes(
    spec: EfficiencySpec, parts: EfficiencyParts, stage: str, total: int, task: Task[..., int], progress: bool
) -> None:
    """The missing passes of ``stage`` as tasks of whole passes, followed by the bar ``efficiency <stage>``."""
    missing = parts.missing(stage)
    todo = sum(stop - start for start, stop in (parts.pass_range(p, total) for p in missing))
    bar = Progress(total=total, done=total - todo, unit="sample", desc=f"efficiency {stage}", show=progress)
    blocks = pass_blocks([(0, p) for p in missing], spec.passes_per_task)
    submit_all(task, [(spec, passes) for _, passes in blocks], bar, device=spec.device, weight=lambda done: done)
