"""Flow ``build_corpus``: fan the missing shards of a corpus out over threads or Dask workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask
from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm import tqdm

from flows.server import prefect_api_for_workers
from hspace.errors import HSpaceError
from tasks.corpus import generate_shard, prepare_corpus


@contextlib.contextmanager
def _gpu_annotation(device: str) -> Iterator[None]:
    # GPU tasks land only on Dask workers that advertise resources={"GPU": 1} (design.md).
    if device.startswith("cuda"):
        with dask.annotate(resources={"GPU": 1}):
            yield
    else:
        yield


@flow(name="build-corpus", task_runner=ThreadPoolTaskRunner(max_workers=1))
def build_corpus(
    model: str,
    samples: int,
    steps: int,
    out: str,
    eta: float | list[float] = 1.0,
    batch: int = 8,
    seed: int = 0,
    dtype: str = "float16",
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Generate every missing shard of the corpus at ``out`` and return its info."""
    corpus = prepare_corpus(out=out, model=model, samples=samples, steps=steps, eta=eta, batch=batch, seed=seed,
                            dtype=dtype, device=device)
    missing = corpus.missing_shards()
    futures = []
    for shard in missing:
        with _gpu_annotation(device):
            futures.append(generate_shard.submit(out, shard, model, device))
    done_before = samples - sum(stop - start for start, stop in map(corpus.spec.shard_range, missing))
    with tqdm(total=samples, initial=done_before, unit="sample", desc="corpus", disable=not progress) as bar:
        for future in as_completed(futures):
            start, stop = corpus.spec.shard_range(future.result())
            bar.update(stop - start)
    return corpus.info()


def task_runner(*, workers: int | None, dask_address: str | None, device: str, threads: int = 1) -> TaskRunner:
    """Threads by default; a Dask LocalCluster of ``workers`` processes; or an existing Dask scheduler."""
    if workers is not None and dask_address is not None:
        raise HSpaceError("give either --workers (a local Dask cluster) or --dask-address (an existing one), not both")
    if dask_address is not None:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers is not None:
        if workers <= 0:
            raise HSpaceError(f"--workers must be a positive integer; got {workers}")
        from prefect_dask import DaskTaskRunner

        cluster_kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None}
        if device.startswith("cuda"):
            cluster_kwargs["resources"] = {"GPU": 1}
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)
    if threads <= 0:
        raise HSpaceError(f"--threads must be a positive integer; got {threads}")
    return ThreadPoolTaskRunner(max_workers=threads)


def run_build_corpus(*, workers: int | None = None, dask_address: str | None = None, threads: int = 1,
                     **arguments: Any) -> dict[str, Any]:
    """Run :func:`build_corpus` on the chosen task runner; worker processes get a real Prefect server."""
    device = arguments.get("device", "cpu")
    runner = task_runner(workers=workers, dask_address=dask_address, device=device, threads=threads)
    # Fail on bad arguments, an unknown model or a mismatching corpus before any server or cluster starts.
    prepare_corpus(**{k: v for k, v in arguments.items() if k != "progress"})
    uses_processes = workers is not None or dask_address is not None
    server = prefect_api_for_workers() if uses_processes else contextlib.nullcontext()
    with server:
        return build_corpus.with_options(task_runner=runner)(**arguments)
