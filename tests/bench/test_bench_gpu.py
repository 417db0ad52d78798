"""``bench/bench_gpu.py --dry``: every part of the GPU benchmark runs on the CPU (tiny model) and reports sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "bench_gpu.py"
PARTS = {"authors", "ours", "precision", "jacobian", "text", "workers"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """The JSON of one dry run (about 1.5 minutes on 2 busy cores: a Prefect server and a Dask cluster start)."""
    out = tmp_path_factory.mktemp("results")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the script starts its own server for the pinned workers
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = out.glob("bench_gpu-dry-*.json")
    written = json.loads(path.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == written  # one JSON object, also on stdout
    return written


@pytest.mark.slow
def test_every_part_runs_without_error(report):
    assert set(report["parts"]) == PARTS
    assert report["failed"] == []
    assert not [name for name, part in report["parts"].items() if "error" in part]
    assert report["total_seconds"] >= sum(part["wall_seconds"] for part in report["parts"].values())


@pytest.mark.slow
def test_the_text_kind_is_timed_guided(report):
    text = report["parts"]["text"]
    assert text["model"] == "tiny-sd" and text["flops_per_step"] > 0
    assert [s["batch"] for s in text["settings"]] == report["sizes"]["text_batches"]
    assert all(s["samples_per_s"] > 0 and s["precision"] == "bf16" for s in text["settings"])


@pytest.mark.slow
def test_sampling_rates(report):
    authors = report["parts"]["authors"]
    assert authors["samples_per_s"] > 0
    assert authors["flops_per_forward"] > 0  # counted by FlopCounterMode: tiny is not in the table
    settings = report["parts"]["ours"]["settings"]
    sizes = report["sizes"]
    assert {(s["precision"], s["batch"]) for s in settings} == {
        (p, b) for p in sizes["precisions"] for b in sizes["batches"]
    }
    for setting in settings:
        assert setting["samples_per_s"] > 0
        assert setting["over_authors"] == pytest.approx(setting["samples_per_s"] / authors["samples_per_s"])
        # No GPU: no peak FLOP/s to compare with, no GPU memory.
        assert setting["utilisation"] is None and setting["peak_memory_bytes"] is None


@pytest.mark.slow
def test_precision_errors(report):
    errors = report["parts"]["precision"]["errors"]
    assert 0 < errors["bf16"]["h_rel_error_max"] < 0.1
    # fp16 keeps 3 more mantissa bits than bf16 and the tiny model's activations are far from its range limits.
    assert 0 < errors["fp16"]["h_rel_error_max"] < errors["bf16"]["h_rel_error_max"]
    assert errors["bf16"]["h_rel_error_mean"] <= errors["bf16"]["h_rel_error_max"]
    assert errors["bf16"]["image_abs_error_mean"] > 0
    # The CUDA fp32 settings do nothing on the CPU: every fp32 run is the reference, bit for bit.
    assert errors["fp32 tf32"]["h_rel_error_max"] == 0
    assert errors["fp32 torch default"]["h_rel_error_max"] == 0


@pytest.mark.slow
def test_jacobian_runs_report_their_accuracy(report):
    jacobian, sizes = report["parts"]["jacobian"], report["sizes"]
    assert set(jacobian["runs"]) == {"alg1", "alg2 b=1"}
    for label, run in jacobian["runs"].items():
        assert run["seconds"] > 0 and run["column_iterations"] > 0
        assert run["converged"] == (run["max_residual"] <= sizes["jacobian_tol"])
        assert 1 <= jacobian["max_iter"][label] <= sizes["jacobian_max_iter"]
    assert jacobian["equal_accuracy"] == all(run["converged"] for run in jacobian["runs"].values())


@pytest.mark.slow
def test_two_pinned_workers_write_the_same_bytes_as_one_process(report):
    workers = report["parts"]["workers"]
    assert len(workers["workers"]) == 2
    assert workers["files"] > 0
    assert workers["identical"] and workers["differing_files"] == []
    assert workers["h_max_abs_difference"] == 0
