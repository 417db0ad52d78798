"""Where a flow's tasks run, and running a flow there: threads, a local Dask cluster, or an existing one.

Every flow that fans tasks out is run the same way (:func:`run_flow`): its parameters are checked and its
store prepared first, so bad input fails in seconds and writes nothing before a server or cluster starts;
then the task runner is chosen, and a real Prefect server is started only when worker processes will
report to it (:func:`flows.server.prefect_api_for_workers`). Inside a flow, :func:`submit_all` submits one
task per item and follows them with a progress bar.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import dask
from prefect import Flow, Task
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm import tqdm

from flows.server import prefect_api_for_workers
from hspace.errors import HSpaceError

R = TypeVar("R")
F = TypeVar("F", bound=Flow)

# flow name -> its check: called by run_flow with the flow's parameters (defaults filled in).
_CHECKS: dict[str, Callable[[dict[str, Any]], object]] = {}


@dataclass(frozen=True, kw_only=True)
class RunnerChoice:
    """Threads in this process (default), a local Dask cluster of ``workers`` processes, or the Dask
    scheduler at ``dask_address``; checked when made."""

    threads: int = 1
    workers: int | None = None
    dask_address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.dask_address is not None:
            raise HSpaceError(
                "give either --workers (a local Dask cluster) or --dask-address (an existing one), not both"
            )
        if self.workers is not None and self.workers <= 0:
            raise HSpaceError(f"--workers must be a positive integer; got {self.workers}")
        if self.threads <= 0:
            raise HSpaceError(f"--threads must be a positive integer; got {self.threads}")

    @property
    def uses_processes(self) -> bool:
        """Whether tasks run in worker processes (which need a real Prefect server)."""
        return self.workers is not None or self.dask_address is not None

    def task_runner(self, device: str) -> TaskRunner[Any]:
        """The Prefect task runner; a local cluster for ``cuda`` advertises one GPU per worker."""
        if self.dask_address is not None:
            from prefect_dask import DaskTaskRunner

            return DaskTaskRunner(address=self.dask_address)
        if self.workers is not None:
            from prefect_dask import DaskTaskRunner

            cluster_kwargs: dict[str, Any] = {
                "n_workers": self.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
            if device.startswith("cuda"):
                cluster_kwargs["resources"] = {"GPU": 1}
            return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)
        return ThreadPoolTaskRunner(max_workers=self.threads)


@contextlib.contextmanager
def gpu_annotation(device: str) -> Iterator[None]:
    """Tasks submitted inside land only on Dask workers that advertise ``resources={"GPU": 1}`` (for cuda)."""
    if device.startswith("cuda"):
        with dask.annotate(resources={"GPU": 1}):
            yield
    else:
        yield


def checked_by(check: Callable[[dict[str, Any]], object]) -> Callable[[F], F]:
    """Register ``check(parameters)`` for a flow: :func:`run_flow` calls it before any server or cluster starts."""

    def register(flow: F) -> F:
        _CHECKS[flow.name] = check
        return flow

    return register


def run_flow(flow: Flow[..., R], /, *args: Any, runner: RunnerChoice | None = None, **parameters: Any) -> R:
    """Check, then run ``flow(*args, **parameters)`` with its tasks on ``runner`` (default: the flow's own runner).

    The flow's registered check (:func:`checked_by`) runs first, on the parameters with their defaults filled
    in. A local Prefect server is started for the run when worker processes will report to it: those of
    ``runner``, or of a :class:`RunnerChoice` parameter with which the flow places one of its stages.
    """
    bound = inspect.signature(flow.fn).bind(*args, **parameters)
    bound.apply_defaults()
    check = _CHECKS.get(flow.name)
    if check is not None:
        check(dict(bound.arguments))
    choices = [c for c in (runner, *bound.arguments.values()) if isinstance(c, RunnerChoice)]
    if runner is not None:
        flow = flow.with_options(task_runner=runner.task_runner(str(bound.arguments.get("device", "cpu"))))
    uses_processes = any(choice.uses_processes for choice in choices)
    with prefect_api_for_workers() if uses_processes else contextlib.nullcontext():
        return flow(*args, **parameters)


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress bar: ``total`` units, ``done`` of them before this run; hidden unless ``show``."""

    total: int
    done: int = 0
    unit: str = "step"
    desc: str = ""
    show: bool = True


def submit_all(
    task: Task[..., R],
    arguments: Iterable[tuple[Any, ...]],
    progress: Progress,
    *,
    device: str = "cpu",
    weight: Callable[[R], int] = lambda _: 1,
) -> list[R]:
    """Submit ``task(*a)`` for every ``a`` in ``arguments`` and wait for all; results in completion order.

    Each finished task advances the bar by ``weight(result)``; ``device`` cuda sends the tasks to GPU workers
    (:func:`gpu_annotation`).
    """
    futures = []
    for args in arguments:
        with gpu_annotation(device):
            futures.append(task.submit(*args))
    results = []
    with tqdm(
        total=progress.total, initial=progress.done, unit=progress.unit, desc=progress.desc, disable=not progress.show
    ) as bar:
        for future in as_completed(futures):
            result = future.result()
            bar.update(weight(result))
            results.append(result)
    return results
