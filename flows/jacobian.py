"""Flow ``jacobian_directions``: one task per (sample id, step) of a Jacobian run (Sec. IV-B, Alg. 1-2)."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.corpus import _gpu_annotation, task_runner
from flows.server import prefect_api_for_workers
from storage.corpus import Corpus
from storage.results import JacobianRun, read_mask_png
from tasks.jacobian import compute_jacobian, prepare_jacobian

PREPARE_ARGUMENTS = ("sample_ids", "steps", "k", "run", "algorithm", "block", "tol", "max_iter")


def _prepare(url: str, mask_png: str | None, **arguments: Any) -> JacobianRun:
    image_shape = Corpus.open(url).spec.image_shape
    mask = None if mask_png is None else read_mask_png(mask_png, image_shape[1:])
    return prepare_jacobian(url, mask=mask, **arguments)


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
    progress: bool = True,
) -> dict[str, Any]:
    """Find the top-k Jacobian directions of every missing (sample id, step) of run ``run``; return its info.

    ``mask_png``: a PNG of the image region for the masked Jacobian (eq. 9-10): white = region, resized to
    the image size by nearest neighbour, binarised at 128 (:func:`storage.results.read_mask_png`).
    """
    jacobian = _prepare(url, mask_png, sample_ids=sample_ids, steps=steps, k=k, run=run, algorithm=algorithm,
                        block=block, tol=tol, max_iter=max_iter)
    missing = jacobian.missing()
    futures = []
    for sample_id, step in missing:
        with _gpu_annotation(device):
            futures.append(compute_jacobian.submit(url, run, sample_id, step, device))
    total = len(jacobian.spec.sample_ids) * len(jacobian.spec.steps)
    with tqdm(total=total, initial=total - len(missing), unit="step", desc=f"jacobian {run}",
              disable=not progress) as bar:
        for future in as_completed(futures):
            future.result()
            bar.update(1)
    return JacobianRun.open(url, run).info()


def run_jacobian_directions(*, workers: int | None = None, dask_address: str | None = None, threads: int = 1,
                            **arguments: Any) -> dict[str, Any]:
    """Run :func:`jacobian_directions` on the chosen task runner; worker processes get a real Prefect server.

    The arguments and the corpus are checked (and the run created) before any server or cluster starts.
    """
    device = arguments.get("device", "cpu")
    runner = task_runner(workers=workers, dask_address=dask_address, device=device, threads=threads)
    _prepare(arguments["url"], arguments.get("mask_png"),
             **{k: v for k, v in arguments.items() if k in PREPARE_ARGUMENTS})
    uses_processes = workers is not None or dask_address is not None
    server = prefect_api_for_workers() if uses_processes else contextlib.nullcontext()
    with server:
        return jacobian_directions.with_options(task_runner=runner)(**arguments)
