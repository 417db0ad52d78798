"""The build_corpus flow under Prefect: threads (test harness) and a 2-worker Dask cluster (real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest

from flows.cli import main
from flows.corpus import build_corpus
from flows.runner import RunnerChoice, gpu_annotation, run_flow
from hspace.errors import HSpaceError
from hspace.sampler import derive_seeds, sample, to_uint8
from storage.corpus import Corpus
from tasks.corpus import corpus_model, generate_shards, prepare_corpus, sample_shard, write_behind

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


# ----- writes that overlap compute ---------------------------------------------------------------------------
def test_write_behind_overlaps_each_write_with_the_next_production_and_holds_two_at_most():
    writing, held, most_held, order = threading.Event(), [0], [0], []

    def produce(item: int) -> int:
        if item == 1:  # produced while item 0 is being written: write(0) waits for this
            assert writing.wait(10), "item 1 was not produced during item 0's write"
        held[0] += 1
        most_held[0] = max(most_held[0], held[0])
        order.append(f"produce {item}")
        return item * 10

    def write(item: int, produced: int) -> None:
        order.append(f"write {item}")
        if item == 0:
            writing.set()
            time.sleep(0.2)
        assert produced == item * 10
        held[0] -= 1

    write_behind(range(4), produce, write)
    assert [o for o in order if o.startswith("write")] == [f"write {i}" for i in range(4)]
    assert order.index("produce 1") > order.index("write 0")
    assert most_held[0] == 2


def test_write_behind_raises_a_failed_write_and_stops_producing():
    produced = []

    def write(item: int, _: int) -> None:
        if item == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_behind(range(6), lambda i: produced.append(i) or i, write)
    assert produced == [0, 1, 2]  # item 2 was under way when write 1 failed; nothing after it


def test_overlapped_writes_give_the_bytes_of_writing_after_each_shard(tmp_path, tree_bytes):
    settings = {k: v for k, v in ARGS.items() if k != "progress"} | {"samples": 10, "batch": 3}
    overlapped, sequential = str(tmp_path / "overlapped"), str(tmp_path / "sequential")
    prepare_corpus(out=overlapped, **settings)
    generate_shards.fn(overlapped, [0, 1, 2, 3], "cpu")
    corpus = prepare_corpus(out=sequential, **settings)
    model = corpus_model(corpus)
    for shard in range(4):
        corpus.write_shard(shard, **sample_shard(corpus, model, shard))
    assert tree_bytes(tmp_path / "overlapped") == tree_bytes(tmp_path / "sequential")


def test_a_write_that_raises_fails_its_task_and_leaves_its_shard_not_done(prefect_harness, tmp_path, monkeypatch):
    url = str(tmp_path / "c")
    write_shard = Corpus.write_shard

    def fail_on_shard_1(self, shard, **arrays):
        if shard == 1:
            raise RuntimeError("codec failure on shard 1")
        write_shard(self, shard, **arrays)

    monkeypatch.setattr(Corpus, "write_shard", fail_on_shard_1)
    with pytest.raises(RuntimeError, match="codec failure on shard 1"):
        run_flow(build_corpus, out=url, **{**ARGS, "samples": 12, "batch": 3})
    done = Corpus.open(url).done_shards()  # one task per shard here; the flow stops at the first failure
    assert done[0] and not done[1]
    monkeypatch.setattr(Corpus, "write_shard", write_shard)
    assert run_flow(build_corpus, out=url, **{**ARGS, "samples": 12, "batch": 3})["shards_done"] == 4


KILL_DURING_WRITE = """
import os, signal, sys
import zarr.storage
set_key = zarr.storage.LocalStore.set
async def set_then_die(self, key, value):
    if key.startswith("x0/c/2/"):  # shard 2's h is written, its x0 and done flag are not
        os.kill(os.getpid(), signal.SIGKILL)
    await set_key(self, key, value)
zarr.storage.LocalStore.set = set_then_die
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_write_then_a_rerun_gives_the_uninterrupted_corpus(tmp_path, tree_bytes):
    build = ["corpus", "build", "--model", "tiny", "--samples", "10", "--steps", "6", "--batch", "2", "--seed", "3"]
    build += ["--no-progress"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    run = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, *build, str(killed)], env=env, timeout=300)
    assert run.returncode == -signal.SIGKILL
    done = Corpus.open(str(killed)).done_shards()
    assert list(done[:3]) == [True, True, False] and (killed / "h" / "c" / "2").exists()
    for url in (killed, clean):
        assert main([*build, str(url)]) == 0
    assert tree_bytes(killed) == tree_bytes(clean)


def test_write_behind_raises_the_write_error_when_sampling_fails_too():
    def produce(item: int) -> int:
        if item == 1:
            raise ValueError("sampling failed")
        return item

    def write(item: int, _: int) -> None:
        raise OSError("disk full")  # an I/O error: what the task's retry condition retries

    with pytest.raises(OSError, match="disk full") as raised:
        write_behind(range(3), produce, write)
    assert isinstance(raised.value.__cause__, ValueError)


def test_the_demo_resumes_a_corpus_made_before_its_microbatch_default(tmp_path):
    from flows.cli_demo import DEMO_MICROBATCH, _microbatch

    old = tmp_path / "corpus.zarr"
    prepare_corpus(out=str(old), **{k: v for k, v in ARGS.items() if k != "progress"})  # microbatch null
    assert _microbatch(None, old) is None
    assert _microbatch(None, tmp_path / "new.zarr") == DEMO_MICROBATCH == 32
    assert _microbatch(4, old) == 4
