"""The distributed evaluation (Table I as (repeat, block) tasks): the same bits as the single-process
``hspace.evaluate.evaluate_directions`` for any block size, runner or crash, and only missing passes rerun."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import tasks.evaluate as evaluate_tasks
from flows.evaluate import evaluate_directions as evaluate_flow
from flows.evaluate import pass_blocks
from flows.runner import RunnerChoice, run_flow
from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationResult, evaluate_directions
from storage.corpus import Corpus
from storage.directions import new_record, write_direction
from storage.evaluations import stored_evaluation
from tasks.annotate import cached_annotator
from tasks.corpus import corpus_model
from tasks.evaluate import EvaluationSpec

CORPUS = dict(model="tiny", samples=8, steps=3, eta=1.0, batch=8, seed=2)
NAMES = ("up", "across")
# 5 samples in passes of 2: passes of 2, 2 and 1 samples per repeat, 6 passes in all.
SETTINGS = dict(names=NAMES, supervised=NAMES, gamma=2.0, samples=5, repeats=2, seed=7, batch=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: bits depend on the thread count


@pytest.fixture(scope="module")
def with_directions(corpus_factory, tmp_path_factory) -> str:
    """A tiny corpus holding two random h directions, ``up`` and ``across``."""
    url = str(tmp_path_factory.mktemp("evaluate") / "c.zarr")
    shutil.copytree(corpus_factory(**CORPUS), url)
    corpus = Corpus.open(url, writable=True)
    generator = torch.Generator().manual_seed(11)
    for name in NAMES:
        record = new_record(corpus, name, method="examples", space="h", parameters={})
        write_direction(corpus, record, torch.randn(record.shape, generator=generator).numpy())
    return url


@pytest.fixture
def url(with_directions, copy_corpus) -> str:
    return copy_corpus(with_directions)


@pytest.fixture(scope="module")
def reference(with_directions, one_thread) -> EvaluationResult:
    """The single-process evaluation, from the library call with the corpus's directions, model and annotator.

    On one torch thread, as the tests' flows (and Dask's workers) run: the CPU kernels' reductions, and so the
    last bits, depend on the thread count.
    """
    corpus = Corpus.open(with_directions)
    directions = {name: torch.from_numpy(corpus.group[f"directions/{name}"][...]) for name in NAMES}
    return evaluate_directions(
        corpus_model(corpus),
        cached_annotator("testbed"),
        directions,
        gamma=2.0,
        steps=3,
        samples=5,
        repeats=2,
        eta=1.0,
        seed=7,
        batch=2,
    )


def stored(url: str, key: str) -> EvaluationResult:
    result = stored_evaluation(Corpus.open(url), key)
    assert result is not None
    return result


def assert_same_bits(result: EvaluationResult, reference: EvaluationResult) -> None:
    assert result.rows == reference.rows == ("up", "across", "random(up)", "random(across)")
    assert result.attributes == reference.attributes
    for name in ("effects", "abs_effects", "scale"):
        assert np.array_equal(getattr(result, name), getattr(reference, name)), name
    assert result.settings == reference.settings
    assert np.abs(reference.effects).max() > 0  # the edits move the scores: the comparison is not of zeros


@pytest.mark.parametrize(("block", "threads"), [(2, 1), (4, 2), (100, 1)])
def test_any_block_size_and_thread_count_gives_the_single_process_bits(prefect_harness, url, reference, block, threads):
    spec = EvaluationSpec(url=url, block=block, **SETTINGS)
    key = run_flow(evaluate_flow, spec, runner=RunnerChoice(threads=threads), progress=False)
    assert_same_bits(stored(url, key), reference)


def test_a_crash_between_blocks_then_a_rerun_scores_only_the_missing_passes(
    prefect_harness, url, reference, monkeypatch
):
    spec = EvaluationSpec(url=url, block=2, **SETTINGS)  # one pass per task, run in order on one thread
    real = evaluate_tasks.score_samples
    calls: list[int] = []

    def dies_after_two(*args, **kwargs):
        calls.append(len(args[3]))
        if len(calls) > 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_tasks, "score_samples", dies_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        run_flow(evaluate_flow, spec, progress=False)
    key, parts = evaluate_tasks.open_parts(spec)
    assert parts is not None and stored_evaluation(Corpus.open(url), key) is None
    assert parts.missing() == [(0, 2), (1, 0), (1, 1), (1, 2)]

    calls.clear()
    monkeypatch.setattr(evaluate_tasks, "score_samples", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    run_flow(evaluate_flow, spec, progress=False)
    assert calls == [1, 2, 2, 1]  # the four missing passes' samples, nothing else
    assert_same_bits(stored(url, key), reference)

    calls.clear()
    assert run_flow(evaluate_flow, spec, progress=False) == key and calls == []  # the stored result is reused


@pytest.mark.slow
def test_a_two_worker_dask_cluster_gives_the_single_process_bits(use_prefect_server, url, reference):
    spec = EvaluationSpec(url=url, block=2, **SETTINGS)
    key = run_flow(evaluate_flow, spec, runner=RunnerChoice(workers=2), progress=False)
    assert_same_bits(stored(url, key), reference)


def test_pass_blocks_cut_each_repeat_into_tasks_of_whole_passes():
    missing = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 0)]
    assert pass_blocks(missing, 2) == [(0, [0, 1]), (0, [2]), (1, [1, 2]), (2, [0])]
    assert pass_blocks(missing, 1) == [(r, [p]) for r, p in missing]
    assert EvaluationSpec(url="x", block=5, **SETTINGS).passes_per_task == 2  # whole passes of 2 samples
    assert EvaluationSpec(url="x", block=1, **SETTINGS).passes_per_task == 1  # at least one


def test_the_cli_shows_a_bar_and_prints_the_table(prefect_harness, url, cli, capsys, tmp_path):
    code = cli(
        "evaluate", url, "--directions", "up,across", "--gamma", "2", "--samples", "5", "--repeats", "2",
        "--seed", "7", "--batch", "2", "--block", "2", "--report", str(tmp_path / "report"), "--json",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert "evaluation" in err and "10/10" in err and "sample" in err  # the tqdm bar, on stderr
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["effects"] == stored(url, printed["key"]).effects.tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--block", "0"), "--block must be a positive integer; got 0"),
        (("--batch", "-1"), "batch (samples per U-Net pass) must be a positive integer; got -1"),
        (("--directions", "up,nope"), "no direction 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(prefect_harness, url, cli, capsys, tree_bytes, args, message):
    before = tree_bytes(url)
    base = {"--directions": "up,across", "--samples": "5", "--repeats": "2"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    code = cli("evaluate", url, *[x for kv in base.items() for x in kv])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1, err
    assert tree_bytes(url) == before


def test_a_rerun_with_another_batch_is_refused_while_parts_are_stored(prefect_harness, url, monkeypatch):
    spec = EvaluationSpec(url=url, block=2, **SETTINGS)
    key, parts = evaluate_tasks.open_parts(spec)
    assert parts is not None and len(parts.missing()) == 6
    other = EvaluationSpec(url=url, block=2, **{**SETTINGS, "batch": 3})
    with pytest.raises(HSpaceError, match=r"partly done with batch 2 .* rerun with --batch 2 \(was given 3\)"):
        evaluate_tasks.open_parts(other)
