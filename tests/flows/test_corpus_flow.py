"""The build_corpus flow under Prefect: threads (test harness) and a 2-worker Dask cluster (real server)."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from flows.corpus import build_corpus
from flows.runner import RunnerChoice, gpu_annotation, run_flow
from hspace.errors import HSpaceError
from hspace.sampler import derive_seeds, sample, to_uint8
from storage.corpus import Corpus

ARGS = dict(model="tiny", samples=6, steps=8, eta=1.0, batch=4, seed=1, dtype="float16", device="cpu", progress=False)


def shard_file(url: str, array: str, shard: int) -> str:
    suffix = {"h": f"{shard}/0/0/0/0", "x0": f"{shard}/0/0/0", "seed": f"{shard}", "done": f"{shard}"}[array]
    return f"{url}/{array}/c/{suffix}"


def test_threads_flow_builds_a_corpus_whose_samples_regenerate_from_their_seeds(prefect_harness, tmp_path, tiny):
    url = str(tmp_path / "c")
    info = run_flow(build_corpus, out=url, **ARGS)
    assert (info["samples_done"], info["shards_done"], info["shards"]) == (6, 2, 2)
    corpus = Corpus.open(url)
    seeds = corpus.read_seeds()
    assert list(seeds) == derive_seeds(1, 0, 6)
    for i in (1, 5):  # one in the full shard, one in the short last shard
        again = sample(tiny, [int(seeds[i])], steps=8, eta=1.0)
        assert np.array_equal(corpus.read_x0(slice(i, i + 1)), to_uint8(again.images).numpy())
        assert np.array_equal(corpus.read_h(slice(i, i + 1)), again.h.numpy().astype(np.float16))


def test_rerun_writes_only_missing_shards(prefect_harness, tmp_path, tree_bytes):
    import os

    url = str(tmp_path / "c")
    run_flow(build_corpus, out=url, **{**ARGS, "samples": 12})
    before = tree_bytes(tmp_path / "c")
    stats = {k: os.stat(shard_file(url, "h", k)) for k in range(3)}
    Corpus.open(url, writable=True).group["done"][1] = False  # as if shard 1 had not finished
    info = run_flow(build_corpus, out=url, **{**ARGS, "samples": 12})
    assert info["shards_done"] == 3
    for k in (0, 2):  # untouched: same inode and mtime (the store writes by rename, so a rewrite would show)
        now = os.stat(shard_file(url, "h", k))
        assert (now.st_ino, now.st_mtime_ns) == (stats[k].st_ino, stats[k].st_mtime_ns)
    assert os.stat(shard_file(url, "h", 1)).st_ino != stats[1].st_ino
    assert tree_bytes(tmp_path / "c") == before


@pytest.mark.slow
def test_dask_local_cluster_with_two_workers_gives_the_same_bytes(use_prefect_server, tmp_path, tree_bytes):
    run_flow(build_corpus, runner=RunnerChoice(workers=2), out=str(tmp_path / "dask"), **ARGS)
    run_flow(build_corpus, out=str(tmp_path / "threads"), **ARGS)
    dask_files, thread_files = tree_bytes(tmp_path / "dask"), tree_bytes(tmp_path / "threads")
    assert "h/c/1/0/0/0/0" in dask_files
    assert dask_files == thread_files


def test_gpu_tasks_are_annotated_with_a_gpu_resource():
    with gpu_annotation("cuda"):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}
    with gpu_annotation("cpu"):
        assert "resources" not in dask.get_annotations()


def test_task_runner_choices_and_refusals():
    assert type(RunnerChoice().task_runner("cpu")).__name__ == "ThreadPoolTaskRunner"
    local = RunnerChoice(workers=3).task_runner("cpu")
    assert local.cluster_kwargs["n_workers"] == 3 and "resources" not in local.cluster_kwargs
    assert RunnerChoice(dask_address="tcp://10.0.0.1:8786").task_runner("cpu").address == "tcp://10.0.0.1:8786"
    with pytest.raises(HSpaceError, match="either --workers .* or --dask-address"):
        RunnerChoice(workers=2, dask_address="tcp://x:1")
    with pytest.raises(HSpaceError, match="--workers must be a positive integer"):
        RunnerChoice(workers=0)


def test_a_server_that_cannot_start_says_how_to_start_one(monkeypatch):
    import flows.server

    monkeypatch.setattr(flows.server.sys, "executable", "/bin/false")
    with (
        pytest.raises(HSpaceError, match="could not start a local Prefect server.*prefect server start"),
        flows.server.local_prefect_server(),
    ):
        pass
