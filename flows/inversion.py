"""Flow ``invert_images``: DDIM inversion of image folders (SM -F) as a fan-out of blocks of images, then one result.

The images (each folder sorted by name) are cut into U-Net passes of ``batch`` images and the passes not yet
done into tasks of ``block`` images; each task stores its images' x_T and h (``inversions/<key>`` in the
corpus, or next to ``--out``; a done flag per pass, set last), so a rerun after a crash inverts only the
missing passes. A final task reduces the stored images in image order into the x_T/h file or the eq. 11
direction, so the result is the single-process one for any block size, worker count or crash
(:mod:`tasks.inversion`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.evaluate import pass_blocks
from flows.runner import Progress, checked_by, submit_all
from tasks.inversion import DEFAULT_BLOCK, finish_inversion, inversion_parts, invert_passes, plan_invert


def check_inversion(parameters: dict[str, Any]) -> None:
    """Make the plan before Prefect starts, so that bad arguments fail in seconds and write nothing."""
    plan_invert(**{k: v for k, v in parameters.items() if k != "progress"})


@checked_by(check_inversion)
@flow(name="invert-images", task_runner=ThreadPoolTaskRunner(max_workers=1))
def invert_images(
    model: str,
    steps: int,
    images: str | None = None,
    positives: str | None = None,
    negatives: str | None = None,
    out: str | None = None,
    corpus: str | None = None,
    name: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    precision: str = "fp32",
    batch: int | None = None,
    block: int = DEFAULT_BLOCK,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """DDIM-invert real images: their x_T and h to ``out``, or eq. 11 on positives vs negatives (a direction).

    See :func:`tasks.inversion.plan_invert` for the argument combinations, ``batch`` and ``block``.
    """
    plan = plan_invert(
        model=model,
        steps=steps,
        images=images,
        positives=positives,
        negatives=negatives,
        out=out,
        corpus=corpus,
        name=name,
        device=device,
        precision=precision,
        overwrite=overwrite,
        batch=batch,
        block=block,
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance=guidance,
    )
    parts = inversion_parts(plan, create=True)
    missing = parts.missing()
    total = sum(parts.counts.values())
    todo = sum(stop - start for start, stop in (parts.pass_range(side, p) for side, p in missing))
    bar = Progress(total=total, done=total - todo, unit="image", desc="inversion", show=progress)
    blocks = pass_blocks(missing, plan.passes_per_task)
    submit_all(invert_passes, [(plan, side, passes) for side, passes in blocks], bar, device=device, weight=lambda n: n)
    return finish_inversion(plan)
