"""The `hspace` command: bad input, info, the demo, and a build killed with SIGKILL then resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from flows.cli import main

BUILD = [
    "corpus",
    "build",
    "--model",
    "tiny",
    "--samples",
    "6",
    "--steps",
    "4",
    "--batch",
    "4",
    "--seed",
    "0",
    "--no-progress",
]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hspace: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--samples", "0"], "samples must be a positive integer"),
        (["--samples", "-3"], "samples must be a positive integer"),
        (["--batch", "0"], "batch must be a positive integer"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--eta", "1.5"], "eta must lie in"),
        (["--eta", "-0.5"], "eta must lie in"),
        (["--eta", "0,1"], "eta has 2 values but there are 4 steps"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--workers", "0"], "--workers must be a positive integer"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_create_nothing(tmp_path, capsys, change, message):
    out = tmp_path / "c"
    assert main([*BUILD, str(out), *change]) == 1
    assert message in error_line(capsys)
    assert not out.exists()


def test_model_without_mid_block_fails_cleanly(tmp_path, capsys, no_mid_block_model):
    assert main([*BUILD, "--model", no_mid_block_model, str(tmp_path / "c")]) == 1
    assert "has no mid_block" in error_line(capsys)
    assert not (tmp_path / "c").exists()


def test_existing_corpus_with_other_settings_is_refused_and_untouched(prefect_harness, tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main([*BUILD, out]) == 0
    capsys.readouterr()
    group = zarr.open_group(out, mode="r")
    done, h = group["done"][:], group["h"][:]
    assert main([*BUILD, out, "--steps", "5", "--eta", "0"]) == 1
    err = error_line(capsys)
    assert "steps (corpus: 4, requested: 5)" in err and "eta (corpus: [1.0, 1.0, 1.0, 1.0]" in err
    assert np.array_equal(group["done"][:], done) and np.array_equal(group["h"][:], h)


@pytest.mark.parametrize("kind", ["under_a_file", "foreign_group", "corrupted_group", "non_empty_folder"])
def test_bad_output_locations_fail_cleanly(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "under_a_file":
        out.write_text("a file")
        out = out / "corpus"
        expected = "cannot create a corpus at"
    elif kind == "foreign_group":
        zarr.open_group(str(out), mode="w", attributes={"owner": "someone else"})
        expected = "not an hspace corpus"
    elif kind == "corrupted_group":
        out.mkdir()
        (out / "zarr.json").write_text("{ not json")
        expected = "damaged Zarr group"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expected = "exists and is not an hspace corpus"
    before = sorted(p.name for p in out.parent.rglob("*"))
    assert main([*BUILD, str(out)]) == 1
    assert expected in error_line(capsys)
    assert sorted(p.name for p in out.parent.rglob("*")) == before


@pytest.mark.slow
def test_console_script_exit_codes(tmp_path):
    bad = run_cli(*BUILD, str(tmp_path / "c"), "--samples", "0")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "hspace: error: samples must be a positive integer; got 0"
    ]
    usage = run_cli("corpus", "build", "--samples", "3")
    assert usage.returncode == 2 and "required" in usage.stderr
    missing = run_cli("corpus", "info", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no corpus at" in missing.stderr


def test_info_json_has_the_contract_fields(prefect_harness, tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main([*BUILD, out, "--dtype", "float32"]) == 0
    capsys.readouterr()
    assert main(["corpus", "info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {
        k: info[k]
        for k in ("samples", "samples_done", "shards", "shards_done", "steps", "eta", "h_shape", "h_dtype", "model")
    } == {
        "samples": 6,
        "samples_done": 6,
        "shards": 2,
        "shards_done": 2,
        "steps": 4,
        "eta": 1.0,
        "h_shape": [32, 8, 8],
        "h_dtype": "float32",
        "model": "tiny",
    }
    assert len(info["fingerprint"]) == 64
    assert info["bytes"] == sum(p.stat().st_size for p in (tmp_path / "c").rglob("*") if p.is_file())


def test_demo_runs_the_pipeline_and_draws_samples_edits_and_the_evaluation(prefect_harness, tmp_path, capsys):
    from PIL import Image

    from hspace.bank import load_bank

    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--samples", "8", "--steps", "3", "--batch", "4", "--eval-samples", "2"]) == 0
    )
    picture = Image.open(out / "samples.png")
    assert picture.mode == "RGB" and picture.width >= 3 * 32
    bank = load_bank(str(out / "bank"))
    # yaw, smile, eyes_open, glasses, hat, glasses-disentangled, pca-0, pca-1: one row each, 3 seeds x 5 gammas.
    assert len(bank.names) == 8
    edits = Image.open(out / "edits.png")
    assert edits.height > 8 * 64 and edits.width > 15 * 64
    assert (out / "evaluation.png").exists() and "| direction |" in (out / "evaluation.md").read_text()
    printed = capsys.readouterr().out
    assert f"edits.png: {out / 'edits.png'}" in printed and "version v0001" in printed


@pytest.mark.slow
def test_build_killed_with_sigkill_then_rerun_equals_an_uninterrupted_build(use_prefect_server, tmp_path):
    args = [
        "corpus",
        "build",
        "--model",
        "tiny",
        "--samples",
        "24",
        "--steps",
        "50",
        "--batch",
        "2",
        "--seed",
        "5",
        "--no-progress",
    ]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args, str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    done = np.zeros(12, dtype=bool)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(Exception):  # not created yet
            done = zarr.open_group(str(killed), mode="r")["done"][:]
        if done.sum() >= 2:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= done.sum() < 12, f"the build was not caught part-way: done={done}, {process.stderr.read()}"
    finished = [k for k in range(12) if done[k]]
    stats = {k: os.stat(killed / "h" / "c" / str(k) / "0" / "0" / "0" / "0") for k in finished}

    resumed = run_cli(*args, str(killed))
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = run_cli(*args, str(clean))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    for k in finished:  # no finished shard written twice
        now = os.stat(killed / "h" / "c" / str(k) / "0" / "0" / "0" / "0")
        assert (now.st_ino, now.st_mtime_ns) == (stats[k].st_ino, stats[k].st_mtime_ns)
    a, b = zarr.open_group(str(killed), mode="r"), zarr.open_group(str(clean), mode="r")
    for name in ("h", "x0", "seed", "done", "timestep"):
        assert a[name][:].tobytes() == b[name][:].tobytes(), name
    assert dict(a.attrs) == dict(b.attrs)


@pytest.mark.slow
def test_workers_without_an_api_url_start_and_stop_their_own_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *BUILD, str(tmp_path / "c"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "database is locked" not in result.stderr
    assert zarr.open_group(str(tmp_path / "c"), mode="r")["done"][:].all()
