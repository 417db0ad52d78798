"""One Dask worker per GPU: each worker process sees its own CUDA_VISIBLE_DEVICES (no GPU needed to check),
and placements this machine cannot give are refused in one line before any cluster or server starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from distributed import Client, get_worker

from flows.runner import RunnerChoice, local_gpu_cluster, visible_gpus
from hspace.errors import HSpaceError


def worker_environment() -> tuple[str, str | None]:
    return get_worker().name, os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize(
    ("listed", "expected"),
    [("5,7", ["5", "7"]), ("GPU-1a2b, 3", ["GPU-1a2b", "3"]), ("0,-1,2", ["0"]), ("", []), ("-1", [])],
)
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch, listed, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == expected


def test_each_worker_is_pinned_to_its_own_gpu(monkeypatch):
    # The parent's visible GPUs are 5 and 7: worker i must see only the i-th of them.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    gpus = RunnerChoice(workers="all").gpus()
    assert gpus == ["5", "7"]
    with local_gpu_cluster(gpus) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["5", "7"]
        # Tasks that ask for a GPU (as gpu_annotation does) run on a worker whose environment names one GPU.
        futures = [client.submit(worker_environment, pure=False, resources={"GPU": 1}) for _ in range(6)]
        by_worker = dict(client.gather(futures))
        assert set(by_worker.values()) <= {"5", "7"}
        assert all(name.endswith(gpu) for name, gpu in by_worker.items())


def test_the_cuda_task_runner_is_one_pinned_worker_per_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    runner = RunnerChoice(workers=2).task_runner("cuda")
    assert runner.cluster_class is local_gpu_cluster and runner.cluster_kwargs == {"gpus": ["0", "1"]}
    assert RunnerChoice(workers="all").task_runner("cuda").cluster_kwargs == {"gpus": ["0", "1", "2"]}


@pytest.mark.parametrize(
    ("choice", "device", "visible", "message"),
    [
        (RunnerChoice(workers=3), "cuda", "0,1", "--workers 3 with --device cuda needs 3 GPUs, but 2 are visible"),
        (RunnerChoice(workers="all"), "cuda", "", "no GPU is visible here"),
        (RunnerChoice(workers="all"), "cpu", "0", "with --device cpu give N"),
        (RunnerChoice(), "cuda", None, "torch finds no CUDA GPU on this machine"),
        (RunnerChoice(workers=2), "cuda:1", "0,1", "each worker sees only its own GPU, as cuda; give --device cuda"),
        (RunnerChoice(), "cuda:0", None, "torch finds no CUDA GPU on this machine"),
    ],
)
def test_placements_this_machine_cannot_give_are_refused(monkeypatch, choice, device, visible, message):
    import torch

    if "no CUDA GPU" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(HSpaceError, match=message):
        choice.check_device(device)


def test_a_hand_started_cluster_is_not_second_guessed():
    RunnerChoice(dask_address="tcp://10.0.0.1:8786").check_device("cuda")  # its workers know their GPUs


@pytest.mark.parametrize(
    ("extra", "visible", "message"),
    [
        (["--device", "cuda", "--workers", "3"], "0,1", "give --workers 2 or fewer"),
        (["--device", "cuda"], "0", "use --device cpu"),
        (["--workers", "0"], "0", "--workers must be a positive integer"),
        (["--workers"], "0", "with --device cpu give N"),
        (["--microbatch", "0"], "0", "microbatch must be a positive integer"),
        (["--precision", "fp8"], "0", "invalid choice: 'fp8'"),
    ],
)
def test_bad_placement_and_precision_on_the_command_line(tmp_path, extra, visible, message):
    """One line on stderr, a non-zero exit, nothing created (no server or cluster was started either: the
    command returns before the corpus, the first thing it would create, exists)."""
    import torch

    if "use --device cpu" in message and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    url = tmp_path / "c.zarr"
    build = ["corpus", "build", str(url), "--model", "tiny", "--samples", "4", "--steps", "2", "--batch", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *build, "--seed", "0", *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": visible, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
        timeout=120,
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not url.exists()
