"""Flow ``fit_pca``: one task per step of a PCA run (Sec. IV-A), then sign alignment across steps."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.corpus import _gpu_annotation, task_runner
from flows.server import prefect_api_for_workers
from storage.results import PCARun
from tasks.pca import align_pca_run, fit_pca_step, prepare_pca


@flow(name="fit-pca", task_runner=ThreadPoolTaskRunner(max_workers=1))
def fit_pca(
    url: str,
    components: int,
    run: str = "default",
    steps: list[int] | None = None,
    method: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit every missing step of PCA run ``run`` on the corpus at ``url``, align signs, return its info."""
    pca = prepare_pca(url, components=components, run=run, steps=steps, method=method, batch_size=batch_size)
    missing = pca.missing_steps()
    futures = []
    for step in missing:
        with _gpu_annotation(device):
            futures.append(fit_pca_step.submit(url, run, step, device))
    total = len(pca.spec.steps)
    with tqdm(total=total, initial=total - len(missing), unit="step", desc=f"pca {run}", disable=not progress) as bar:
        for future in as_completed(futures):
            future.result()
            bar.update(1)
    # Signs only after every step is written (one writer of the sign array).
    align_pca_run.submit(url, run).result()
    return PCARun.open(url, run).info()


def run_fit_pca(*, workers: int | None = None, dask_address: str | None = None, threads: int = 1,
                **arguments: Any) -> dict[str, Any]:
    """Run :func:`fit_pca` on the chosen task runner; worker processes get a real Prefect server.

    The arguments, the corpus and the run are checked (and the run created) before any server or cluster
    starts.
    """
    device = arguments.get("device", "cpu")
    runner = task_runner(workers=workers, dask_address=dask_address, device=device, threads=threads)
    prepare_pca(arguments["url"], **{k: v for k, v in arguments.items()
                                      if k in ("components", "run", "steps", "method", "batch_size")})
    uses_processes = workers is not None or dask_address is not None
    server = prefect_api_for_workers() if uses_processes else contextlib.nullcontext()
    with server:
        return fit_pca.with_options(task_runner=runner)(**arguments)
