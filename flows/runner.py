"""Where a flow's tasks run, and running a flow there: threads, a local Dask cluster, or an existing one.

Every flow that fans tasks out is run the same way (:func:`run_flow`): its parameters are checked and its
store prepared first, so bad input fails in seconds and writes nothing before a server or cluster starts;
then the task runner is chosen, and a real Prefect server is started only when worker processes will
report to it (:func:`flows.server.prefect_api_for_workers`). Inside a flow, :func:`submit_all` submits one
task per item and follows them with a progress bar and artifact (:mod:`flows.progress`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import dask
from prefect import Flow, Task
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.progress import Progress, track
from flows.server import prefect_api_for_workers
from hspace.errors import HSpaceError

if TYPE_CHECKING:
    from distributed import SpecCluster

R = TypeVar("R")
F = TypeVar("F", bound=Flow)
ALL_GPUS = "all"  # --workers without a number: one worker per visible GPU

# flow name -> its check: called by run_flow with the flow's parameters (defaults filled in).
_CHECKS: dict[str, Callable[[dict[str, Any]], object]] = {}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA names them in ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs).

    Read from ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA stops at the first invalid entry, e.g. ``-1``),
    else every device torch counts; neither initialises CUDA, so worker processes started later still can.
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    gpus = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        gpus.append(entry)
    return gpus


def local_gpu_cluster(gpus: Sequence[str]) -> SpecCluster:
    """A local Dask cluster of one single-threaded worker process per entry of ``gpus``, each pinned to that GPU.

    Each worker's nanny sets ``CUDA_VISIBLE_DEVICES`` to its GPU before the worker process starts, so CUDA
    in that process sees one device, ``cuda`` (= ``cuda:0``) is its own GPU, and every flow that runs the
    U-Net places itself without knowing about it. Each worker advertises ``resources={"GPU": 1}``, which
    :func:`gpu_annotation` asks for. (dask-cuda's ``LocalCUDACluster`` does the same, but needs NVML and
    real GPUs even to start, so it could not be tested here; this is plain ``distributed``.)
    """
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{i}-{gpu}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": gpu}},
        }
        for i, gpu in enumerate(gpus)
    }
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


@dataclass(frozen=True, kw_only=True)
class RunnerChoice:
    """Threads in this process (default), a local Dask cluster of ``workers`` processes, or the Dask
    scheduler at ``dask_address``; checked when made, and against the device by :meth:`check_device`.

    With ``device="cuda"`` a local cluster has one worker per GPU, each pinned to its own
    (:func:`local_gpu_cluster`); ``workers="all"`` uses every visible GPU.
    """

    threads: int = 1
    workers: int | Literal["all"] | None = None
    dask_address: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.dask_address is not None:
            raise HSpaceError(
                "give either --workers (a local Dask cluster) or --dask-address (an existing one), not both"
            )
        if self.workers != ALL_GPUS and self.workers is not None and self.workers <= 0:
            raise HSpaceError(f"--workers must be a positive integer; got {self.workers}")
        if self.threads <= 0:
            raise HSpaceError(f"--threads must be a positive integer; got {self.threads}")

    @property
    def uses_processes(self) -> bool:
        """Whether tasks run in worker processes (which need a real Prefect server)."""
        return self.workers is not None or self.dask_address is not None

    def gpus(self) -> list[str]:
        """The GPUs of a local cluster's workers, one each (for ``device="cuda"``)."""
        gpus = visible_gpus()
        if self.workers == ALL_GPUS:
            return gpus
        if self.workers is None or self.workers > len(gpus):
            raise HSpaceError(
                f"--workers {self.workers} with --device cuda needs {self.workers} GPUs, but {len(gpus)} "
                f"{'is' if len(gpus) == 1 else 'are'} visible here: give --workers {len(gpus)} or fewer, "
                "or --workers alone for one per GPU"
            )
        return gpus[: self.workers]

    def check_device(self, device: str) -> None:
        """Refuse, before any cluster or server starts, a placement this machine cannot give ``device``."""
        if not device.startswith("cuda"):
            if self.workers == ALL_GPUS:
                raise HSpaceError("--workers without a number means one worker per GPU: with --device cpu give N")
            return
        if self.dask_address is not None:
            return  # the workers are elsewhere: only they know their GPUs
        if self.workers is not None and device != "cuda":
            raise HSpaceError(
                f"--device {device} with --workers: each worker sees only its own GPU, as cuda; give --device cuda"
            )
        if self.workers is not None and not self.gpus():
            raise HSpaceError("--device cuda with --workers, but no GPU is visible here: use --device cpu")
        import torch

        if not torch.cuda.is_available():
            raise HSpaceError(
                f"--device cuda, but torch finds no CUDA GPU on this machine (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda or 'not built in'}): use --device cpu, or run on a GPU machine"
            )

    def task_runner(self, device: str) -> TaskRunner[Any]:
        """The Prefect task runner; a local cluster for ``cuda`` has one pinned worker per GPU."""
        if self.dask_address is not None:
            from prefect_dask import DaskTaskRunner

            return DaskTaskRunner(address=self.dask_address)
        if self.workers is not None:
            from prefect_dask import DaskTaskRunner

            if device.startswith("cuda"):
                return DaskTaskRunner(cluster_class=local_gpu_cluster, cluster_kwargs={"gpus": self.gpus()})
            cluster_kwargs: dict[str, Any] = {
                "n_workers": self.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
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
    device = _device(bound.arguments)
    choices = [c for c in (runner, *bound.arguments.values()) if isinstance(c, RunnerChoice)]
    for choice in choices or [RunnerChoice()]:
        choice.check_device(device)
    check = _CHECKS.get(flow.name)
    if check is not None:
        check(dict(bound.arguments))
    if runner is not None:
        flow = flow.with_options(task_runner=runner.task_runner(device))
    uses_processes = any(choice.uses_processes for choice in choices)
    with prefect_api_for_workers() if uses_processes else contextlib.nullcontext():
        return flow(*args, **parameters)


def _device(parameters: dict[str, Any]) -> str:
    """Where a flow runs its models: its ``device`` parameter, or that of its settings object."""
    if "device" in parameters:
        return str(parameters["device"])
    devices = {str(v.device) for v in parameters.values() if isinstance(getattr(v, "device", None), str)}
    return devices.pop() if len(devices) == 1 else "cpu"


def submit_all(
    task: Task[..., R],
    arguments: Iterable[tuple[Any, ...]],
    progress: Progress,
    *,
    device: str = "cpu",
    weight: Callable[[R], int] = lambda _: 1,
) -> list[R]:
    """Submit ``task(*a)`` for every ``a`` in ``arguments`` and wait for all; results in completion order.

    Each finished task advances the progress (:func:`flows.progress.track`: a bar, and the run's progress
    artifact) by ``weight(result)``; ``device`` cuda sends the tasks to GPU workers
    (:func:`gpu_annotation`).
    """
    futures = []
    for args in arguments:
        with gpu_annotation(device):
            futures.append(task.submit(*args))
    results = []
    with track(progress) as tracker:
        for future in as_completed(futures):
            result = future.result()
            tracker.update(weight(result))
            results.append(result)
    return results
