"""``bench/bench_scale.py``: the dry scale run measures every stage with every field and sane values; bad
sizes and too little disk are refused in one line before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "bench_scale.py"
STAGES = ["corpus", "annotate", "pca", "supervised", "evaluate"]
FIELDS = {
    "command", "wall_s", "first_worker_s", "workers", "samples", "samples_per_s", "bytes_written", "mb_per_s_written",
    "bytes_read", "mb_per_s_read", "reads", "peak_rss_bytes", "peak_rss_driver_bytes", "peak_rss_worker_bytes",
}  # fmt: skip
DRY_NS, DRY_STEPS, H_VALUES = (16, 32), 3, 512 * 8 * 8


def bench(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the script starts its own server
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[dict, str]:
    """The JSON and stderr of one dry run: 10 `hspace` commands, 8 of them starting a 2-worker Dask cluster
    (about 5 minutes on 2 idle cores, 9 on busy ones)."""
    results = tmp_path_factory.mktemp("results")
    done = bench("--dry", "--results", str(results), timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    [path] = results.glob("scale-dry-*.json")
    written = json.loads(path.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == written  # one JSON object, also on stdout
    return written, done.stderr


@pytest.mark.slow
def test_every_stage_of_every_n_is_measured(dry):
    report, _ = dry
    assert report["settings"]["ns"] == list(DRY_NS) and report["settings"]["steps"] == DRY_STEPS
    assert list(report["runs"]) == [str(n) for n in DRY_NS]
    for n, run in report["runs"].items():
        assert list(run["stages"]) == STAGES
        for name, stage in run["stages"].items():
            assert set(stage) == FIELDS, name
            assert stage["wall_s"] > 0 and stage["samples"] > 0
            assert stage["samples_per_s"] == pytest.approx(stage["samples"] / stage["wall_s"])
            assert stage["mb_per_s_read"] == pytest.approx(stage["bytes_read"] / stage["wall_s"] / 1e6)
            assert (stage["bytes_read"] > 0) == (name != "corpus"), name
        corpus = run["stages"]["corpus"]
        assert corpus["samples"] == int(n) and corpus["bytes_written"] > int(n) * DRY_STEPS * H_VALUES
        assert run["stages"]["pca"]["bytes_read"] == run["h_bytes"]  # all of h, once
        assert not Path(run["corpus"]).exists()  # the temporary corpora are deleted


@pytest.mark.slow
def test_peak_memory_is_per_process(dry):
    report, _ = dry
    for run in report["runs"].values():
        for name, stage in run["stages"].items():
            assert 50 * 2**20 < stage["peak_rss_driver_bytes"] <= stage["peak_rss_bytes"] < 16 * 2**30, name
            if stage["workers"]:
                assert len(stage["peak_rss_worker_bytes"]) >= 2 and 0 < stage["first_worker_s"] < stage["wall_s"]
                assert min(stage["peak_rss_worker_bytes"]) > 50 * 2**20
                assert max(stage["peak_rss_worker_bytes"]) <= stage["peak_rss_bytes"]
        for name in ("corpus", "annotate", "pca"):
            assert run["stages"][name]["workers"] == 2


@pytest.mark.slow
def test_bytes_per_h_value_and_ratios(dry):
    report, stderr = dry
    for n, run in report["runs"].items():
        assert run["h_values"] == int(n) * DRY_STEPS * H_VALUES
        assert 1 < run["bytes_per_h_value"] < 8  # float16 h, compressed a little
        assert run["bytes_per_h_value"] == pytest.approx(run["h_bytes"] / run["h_values"])
    ratios = report["ratios"]
    assert ratios["between"] == list(DRY_NS) and ratios["time_goal"] == pytest.approx(2.2)
    for table in ("time", "peak_rss", "time_met", "peak_rss_met"):
        assert list(ratios[table]) == STAGES
    assert all(r > 0 for r in [*ratios["time"].values(), *ratios["peak_rss"].values()])
    assert "bytes per stored h value" in stderr and "3 steps, not the paper's 50" in stderr


@pytest.mark.slow
def test_extrapolation_to_the_paper(dry):
    report, stderr = dry
    extrapolation = report["extrapolation"]
    assert list(extrapolation["hours"]) == ["1", "8", "64"]
    for gpus, hours in extrapolation["hours"].items():
        assert list(hours) == STAGES and all(h > 0 for h in hours.values())
        assert extrapolation["bound_by"][gpus] == max(STAGES, key=hours.__getitem__)
    # The corpus is bound by U-Net FLOPs: 50,000 x 50 forwards of celebahq at the default 300 TFLOP/s.
    assert extrapolation["hours"]["1"]["corpus"] == pytest.approx(50_000 * 50 * 496_348_037_120 / 300e12 / 3600)
    assert extrapolation["hours"]["8"]["corpus"] == pytest.approx(extrapolation["hours"]["1"]["corpus"] / 8)
    assert set(extrapolation["measured_seconds"]) == set(STAGES)
    assert "extrapolated to 50,000 x 50 steps" in stderr and "bound by" in stderr


def test_too_little_disk_is_refused_in_one_line(tmp_path):
    done = bench("--n", "100000000", "200000000", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("bench_scale: the corpora need") and "GB free" in line
    assert list(tmp_path.iterdir()) == [] and not done.stdout


def test_an_existing_corpus_in_out_is_refused(tmp_path):
    (tmp_path / "scale-16x3.zarr").mkdir()
    done = bench("--dry", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 1 and "scale-16x3.zarr exists" in done.stderr


@pytest.mark.parametrize("arguments", [["--n", "1024"], ["--n", "2", "4"], ["--steps", "0"], ["--workers", "0"]])
def test_bad_sizes_are_usage_errors(arguments):
    done = bench(*arguments, timeout=120)
    assert done.returncode == 2 and "give at least two --n of 4 or more" in done.stderr
