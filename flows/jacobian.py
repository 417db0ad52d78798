"""Flow ``jacobian_directions``: one task per (sample id, step) of a Jacobian run (Sec. IV-B, Alg. 1-2)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from hspace.images import read_mask_png
from storage.corpus import Corpus
from storage.jacobian_runs import JacobianRun
from tasks.jacobian import compute_jacobian, prepare_jacobian


def _prepare(url: str, mask_png: str | None, **arguments: Any) -> JacobianRun:
    image_shape = Corpus.open(url).spec.noise_shape
    mask = None if mask_png is None else read_mask_png(mask_png, image_shape[1:])
    return prepare_jacobian(url, mask=mask, **arguments)


def check_jacobian_directions(parameters: dict[str, Any]) -> None:
    """The arguments and the corpus are checked here (and the run created)."""
    _prepare(
        parameters["url"],
        parameters["mask_png"],
        **{
            k: parameters[k]
            for k in ("sample_ids", "steps", "k", "run", "algorithm", "block", "tol", "max_iter", "precision")
        },
    )


@checked_by(check_jacobian_directions)
@flow(name="jacobian-directions", task_runner=ThreadPoolTaskRunner(max_workers=1))
def jacobian_directions(
    url: str,
    sample_ids: list[int],
    steps: list[int],
    k: int,
    run: str = "default",
    algorithm: str = "batched",
    block: int | None = None,
    mask_png: str | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    device: str = "cpu",
    precision: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Find the top-k Jacobian directions of every missing (sample id, step) of run ``run``; return its info.

    ``mask_png``: a PNG of the image region for the masked Jacobian (eq. 9-10): white = region, resized to
    the image size by nearest neighbour, binarised at 128 (:func:`hspace.images.read_mask_png`). ``precision``:
    the U-Net's (default: the corpus's), a parameter of the run.
    """
    jacobian = _prepare(
        url,
        mask_png,
        sample_ids=sample_ids,
        steps=steps,
        k=k,
        run=run,
        algorithm=algorithm,
        block=block,
        tol=tol,
        max_iter=max_iter,
        precision=precision,
    )
    missing = jacobian.missing()
    total = len(jacobian.spec.sample_ids) * len(jacobian.spec.steps)
    bar = Progress(total=total, done=total - len(missing), unit="cell", desc=f"jacobian {run}", show=progress)
    submit_all(
        compute_jacobian, [(url, run, sample_id, step, device) for sample_id, step in missing], bar, device=device
    )
    return JacobianRun.open(url, run).info()
