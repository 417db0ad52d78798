"""``bench/bench_serve.py --dry``: the latency benchmark of ``hspace serve`` runs end to end on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "bench_serve.py"


def test_the_dry_run_reports_both_runs(tmp_path):
    out = tmp_path / "serve.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    sequential, concurrent = report["sequential"], report["concurrent"]
    assert (sequential["clients"], concurrent["clients"]) == (1, 8)
    assert sequential["requests"] == concurrent["requests"] == 10
    # One client never has a second edit waiting: one call per request, each of one seed.
    assert (sequential["model_calls"], sequential["largest_batch"]) == (10, 1)
    assert 1 <= concurrent["model_calls"] <= 10 and 1 <= concurrent["largest_batch"] <= 8
    for part in (sequential, concurrent):
        assert 0 < part["p50_s"] <= part["p95_s"] and part["requests_per_s"] > 0
    assert report["p50_ratio"] == concurrent["p50_s"] / sequential["p50_s"]
    assert "concurrent / sequential: p50" in done.stderr
