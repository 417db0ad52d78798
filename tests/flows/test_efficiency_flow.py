"""The distributed Fig. 8a curve (pool and edits as tasks of whole passes): the same bits as the single-process
``hspace.efficiency.sample_efficiency`` for any block size, runner or crash, and only missing passes rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tasks.efficiency as efficiency_tasks
from flows.efficiency import sample_efficiency as efficiency_flow
from flows.runner import RunnerChoice, run_flow
from hspace.efficiency import EfficiencyCurve, sample_efficiency
from hspace.errors import HSpaceError
from storage.efficiency import EfficiencyParts
from tasks.annotate import cached_annotator
from tasks.corpus import cached_model
from tasks.efficiency import EfficiencySpec

# A pool of 12 in passes of 2 (6 passes; 10 of them wear a "hat" > 0.5 on the tiny model with seed 3), 5
# evaluation samples (passes of 2, 2 and 1), each with 9 edits: h and x_T for n = 1, 2, 4 and two random.
SETTINGS = dict(
    model="tiny", attribute="smile", counts=(1, 2, 4), pool_samples=12, eval_samples=5, gamma_h=4.0, gamma_x=1.0,
    steps=3, eta=0.0, seed=3, keep_above=("hat", 0.5), batch=2,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: bits depend on the thread count


def library_curve(keep_above: tuple[str, float] | None = ("hat", 0.5)) -> EfficiencyCurve:
    """The single-process curve, on one torch thread (as the flows' tasks and Dask's workers run here)."""
    s = {**SETTINGS, "keep_above": keep_above}
    return sample_efficiency(
        cached_model("tiny", "cpu"),
        cached_annotator("testbed"),
        attribute=s["attribute"],
        gamma_h=s["gamma_h"],
        gamma_x=s["gamma_x"],
        steps=s["steps"],
        example_counts=s["counts"],
        pool_samples=s["pool_samples"],
        eval_samples=s["eval_samples"],
        eta=s["eta"],
        seed=s["seed"],
        keep=EfficiencySpec(out="-", **s).keep(),
        batch=s["batch"],
    )


@pytest.fixture(scope="module")
def reference(one_thread) -> EfficiencyCurve:
    return library_curve()


def assert_same_bits(curve: EfficiencyCurve, reference: EfficiencyCurve) -> None:
    assert curve.to_dict() == reference.to_dict()  # every float, exactly
    assert curve.settings["usable_pool_samples"] == 10
    assert np.abs(reference.effect_h).max() > 0 and np.abs(reference.effect_x).max() > 0  # not a comparison of zeros


@pytest.mark.parametrize(("block", "threads"), [(2, 1), (4, 2), (100, 1)])
def test_any_block_size_and_thread_count_gives_the_single_process_bits(
    prefect_harness, tmp_path, reference, block, threads
):
    spec = EfficiencySpec(out=str(tmp_path / "fig8a"), block=block, **SETTINGS)
    curve = run_flow(efficiency_flow, spec, runner=RunnerChoice(threads=threads), progress=False)
    assert_same_bits(curve, reference)
    stored = json.loads((tmp_path / "fig8a" / "efficiency.json").read_text())
    assert stored == json.loads(json.dumps(reference.to_dict()))


def test_a_crash_then_a_rerun_computes_only_the_missing_passes(prefect_harness, tmp_path, reference, monkeypatch):
    spec = EfficiencySpec(out=str(tmp_path / "fig8a"), block=2, **SETTINGS)  # one pass per task, in order
    real_pool, real_edits = efficiency_tasks.sample_pool, efficiency_tasks.score_edits
    pool_calls: list[list[int]] = []
    edit_calls: list[list[int]] = []

    def pool(*args, **kwargs):
        pool_calls.append(args[3])
        return real_pool(*args, **kwargs)

    def edits_dying_after_one(*args, **kwargs):
        edit_calls.append(args[4])
        if len(edit_calls) > 1:
            raise RuntimeError("killed")
        return real_edits(*args, **kwargs)

    monkeypatch.setattr(efficiency_tasks, "sample_pool", pool)
    monkeypatch.setattr(efficiency_tasks, "score_edits", edits_dying_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        run_flow(efficiency_flow, spec, progress=False)
    parts = EfficiencyParts.open(spec.out)
    assert len(pool_calls) == 6 and parts.missing("pool") == [] and parts.directions() is not None
    assert parts.missing("edits") == [1, 2] and parts.curve() is None

    pool_calls.clear()
    edit_calls.clear()
    monkeypatch.setattr(efficiency_tasks, "score_edits", lambda *a, **k: edit_calls.append(a[4]) or real_edits(*a, **k))
    assert_same_bits(run_flow(efficiency_flow, spec, progress=False), reference)
    assert pool_calls == [] and [len(seeds) for seeds in edit_calls] == [2, 1]  # the two missing passes only

    edit_calls.clear()
    assert_same_bits(run_flow(efficiency_flow, spec, progress=False), reference)  # the stored curve
    assert pool_calls == [] and edit_calls == []


def test_a_pool_crash_leaves_its_done_passes_and_the_directions_read_only_the_examples(
    prefect_harness, tmp_path, reference, monkeypatch
):
    spec = EfficiencySpec(out=str(tmp_path / "fig8a"), block=4, **SETTINGS)  # two passes per task
    real = efficiency_tasks.sample_pool
    calls: list[int] = []

    def dies_on_the_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(efficiency_tasks, "sample_pool", dies_on_the_fourth)
    with pytest.raises(RuntimeError, match="killed"):
        run_flow(efficiency_flow, spec, progress=False)
    # Tasks of passes [0, 1], [2, 3], [4, 5]: the second dies after storing pass 2, the third runs on.
    assert EfficiencyParts.open(spec.out).missing("pool") == [3]

    read: list[np.ndarray] = []
    real_read = EfficiencyParts.pool_h
    monkeypatch.setattr(EfficiencyParts, "pool_h", lambda self, rows: read.append(rows) or real_read(self, rows))
    calls.clear()
    monkeypatch.setattr(efficiency_tasks, "sample_pool", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert_same_bits(run_flow(efficiency_flow, spec, progress=False), reference)
    assert calls == [1]  # pass 3 alone
    assert len(read) == 1 and len(read[0]) == 8  # the top 4 and the bottom 4 of the 10 usable, not the pool


@pytest.mark.slow
def test_a_two_worker_dask_cluster_gives_the_single_process_bits(use_prefect_server, tmp_path, reference):
    spec = EfficiencySpec(out=str(tmp_path / "fig8a"), block=2, **SETTINGS)
    assert_same_bits(run_flow(efficiency_flow, spec, runner=RunnerChoice(workers=2), progress=False), reference)


CLI = (
    "efficiency", "--model", "tiny", "--attribute", "smile", "--counts", "1,2,4", "--pool", "12",
    "--eval-samples", "5", "--steps", "3", "--gamma-h", "4", "--gamma-x", "1", "--seed", "3", "--batch", "2",
    "--block", "4", "--all-examples",
)  # fmt: skip


def test_the_cli_shows_a_bar_per_stage_and_writes_the_library_curve(prefect_harness, cli, capsys, tmp_path):
    out = tmp_path / "fig8a"
    assert cli(*CLI, "--out", out, "--json") == 0
    captured = capsys.readouterr()
    assert "efficiency pool" in captured.err and "12/12" in captured.err  # the tqdm bars, on stderr
    assert "efficiency edits" in captured.err and "5/5" in captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    expected = json.loads(json.dumps(library_curve(keep_above=None).to_dict()))
    assert {k: v for k, v in printed.items() if k != "files"} == expected
    assert json.loads((out / "efficiency.json").read_text()) == expected
    assert sorted(p.name for p in out.iterdir()) == ["efficiency.json", "efficiency.md", "efficiency.png", "parts.zarr"]


def test_a_rerun_with_other_settings_is_refused_in_one_line(prefect_harness, cli, capsys, tmp_path, tree_bytes):
    out = tmp_path / "fig8a"
    spec = EfficiencySpec(out=str(out), block=2, **SETTINGS)
    efficiency_tasks.open_parts(spec)  # parts made, nothing computed
    before = tree_bytes(out)
    code = cli(*CLI, "--gamma-h", "2", "--batch", "3", "--out", out)
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "holds an efficiency run with other settings" in err and "gamma_h (stored: 4.0, given: 2.0)" in err
    assert "batch (stored: 2, given: 3)" in err and "keep_above" in err
    assert tree_bytes(out) == before
    with pytest.raises(HSpaceError, match="other settings: seed"):
        efficiency_tasks.open_parts(EfficiencySpec(out=str(out), block=2, **{**SETTINGS, "seed": 4}))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--block", "0"), "--block must be a positive integer; got 0"),
        (("--batch", "-1"), "batch (samples per U-Net pass) must be a positive integer; got -1"),
        (("--pool", "0"), "--pool must be a positive integer; got 0"),
        (("--counts", "1,7"), "example counts must lie in 1..6"),
        (("--attribute", "wings"), "has no attribute 'wings'"),
        (("--eta", "2"), "--eta must lie in [0, 1]; got 2.0"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(prefect_harness, cli, capsys, tmp_path, args, message):
    out = tmp_path / "fig8a"
    code = cli(*CLI, *args, "--out", out)
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_too_few_examples_kept_is_one_line_naming_the_fix(prefect_harness, cli, capsys, tmp_path):
    args = [a for a in CLI if a != "--all-examples"]  # the testbed annotator sees no face on the tiny model
    code = cli(*args, "--no-progress", "--out", tmp_path / "fig8a")
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "pass `keep`" in err and "enlarge the pool" in err, err
