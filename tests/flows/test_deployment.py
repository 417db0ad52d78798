"""prefect.yaml: `prefect deploy` and a `process` worker run build_corpus against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

# A real Prefect server, `prefect deploy` and a worker in subprocesses.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, (args, result.stdout[-1500:], result.stderr[-1500:])
    return result


def test_prefect_yaml_deploys_and_a_process_worker_runs_it(prefect_server, tmp_path):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "HSPACE_ROOT": str(ROOT),
        "PREFECT_HOME": str(tmp_path / "home"),
    }
    out = tmp_path / "deployed.zarr"
    prefect("work-pool", "create", "hspace-process", "--type", "process", "--overwrite", env=env)
    prefect("--no-prompt", "deploy", "--name", "build-corpus", env=env)
    prefect(
        "deployment",
        "run",
        "build-corpus/build-corpus",
        "-p",
        "samples=8",
        "-p",
        "steps=4",
        "-p",
        "batch=4",
        "-p",
        f"out={out}",
        env=env,
    )
    prefect("worker", "start", "--pool", "hspace-process", "--run-once", env=env)
    assert zarr.open_group(str(out), mode="r")["done"][:].tolist() == [True, True]


def test_the_bank_rebuild_deploys_on_its_cron_schedule(prefect_server, tmp_path):
    import json

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "HSPACE_ROOT": str(ROOT),
        "PREFECT_HOME": str(tmp_path / "home"),
    }
    prefect("work-pool", "create", "hspace-process", "--type", "process", "--overwrite", env=env)
    prefect("--no-prompt", "deploy", "--name", "rebuild-bank", env=env)
    shown = prefect("deployment", "inspect", "rebuild-bank/rebuild-bank", "--output", "json", env=env).stdout
    deployment = json.loads(shown)
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * 1"]
    assert deployment["parameters"]["settings"]["model"] == "testbed"
