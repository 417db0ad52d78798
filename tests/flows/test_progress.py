"""Progress of the stages: tqdm bars on stderr in the CLI, and Prefect progress artifacts read back from the API."""

from __future__ import annotations

import logging
import re
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

import flows.progress
from flows.cli import main
from flows.corpus import build_corpus
from flows.progress import ProgressArtifact, stage_progress, track
from flows.runner import Progress

CORPUS: dict[str, Any] = dict(model="tiny", samples=6, steps=2, eta=1.0, batch=2, seed=4, dtype="float16", device="cpu")


def run_artifacts(flow_run_id: UUID | None, key: str) -> list:
    """The artifacts with ``key`` of one flow run, read back through the Prefect client."""
    assert flow_run_id is not None
    artifact_filter = ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
    )
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=artifact_filter)


def flow_run_id() -> UUID:
    from prefect.runtime import flow_run

    return UUID(flow_run.id)


@pytest.fixture
def api_calls(monkeypatch) -> dict[str, list]:
    """Every create/update of a progress artifact made through :mod:`flows.progress` (still sent to the API)."""
    calls: dict[str, list] = {"create": [], "update": []}
    for name, real in (
        ("create", flows.progress.create_progress_artifact),
        ("update", flows.progress.update_progress_artifact),
    ):

        def record(*args, _name=name, _real=real, **kwargs):
            calls[_name].append(args)
            return _real(*args, **kwargs)

        monkeypatch.setattr(flows.progress, f"{name}_progress_artifact", record)
    return calls


def test_a_corpus_build_leaves_a_progress_artifact_at_100(prefect_harness, tmp_path, api_calls):
    state = build_corpus(out=str(tmp_path / "c.zarr"), **CORPUS, progress=False, return_state=True)
    assert state.is_completed()
    artifacts = run_artifacts(state.state_details.flow_run_id, "corpus-progress")
    assert len(artifacts) == 1
    assert artifacts[0].type == "progress" and artifacts[0].data == 100
    assert artifacts[0].description == "corpus: 6 of 6 samples"
    assert api_calls["create"] == [(0.0,)]  # created at 0, then updated to 100


def test_a_resumed_build_starts_its_artifact_at_the_done_fraction(prefect_harness, tmp_path, api_calls):
    url = str(tmp_path / "c.zarr")
    build_corpus(out=url, **{**CORPUS, "samples": 4}, progress=False)
    from storage.corpus import Corpus

    Corpus.open(url, writable=True).group["done"][1] = False  # shard 1 of 2 (samples 2, 3) to redo
    state = build_corpus(out=url, **{**CORPUS, "samples": 4}, progress=False, return_state=True)
    assert api_calls["create"][-1] == (50.0,)
    [artifact] = run_artifacts(state.state_details.flow_run_id, "corpus-progress")
    assert artifact.data == 100


def test_ten_thousand_units_make_a_handful_of_api_calls(prefect_harness, api_calls):
    @flow
    def many_units() -> UUID:
        with track(Progress(total=10_000, unit="shard", desc="many units", show=False)) as progress:
            for _ in range(10_000):
                progress.update(1)
        return flow_run_id()

    run_id = many_units()
    [artifact] = run_artifacts(run_id, "many-units-progress")
    assert artifact.data == 100 and artifact.description == "many units: 10,000 of 10,000 shards"
    # One create, one final update, and at most one update per second of the loop in between.
    assert len(api_calls["create"]) == 1 and 1 <= len(api_calls["update"]) <= 5


def test_the_throttle_sends_at_most_one_update_per_interval_and_per_percent(monkeypatch):
    sent: list[float] = []
    monkeypatch.setattr(flows.progress, "update_progress_artifact", lambda _id, percent, **_: sent.append(percent))
    now = [0.0]
    artifact = ProgressArtifact(uuid4(), 0.0, interval=1.0, clock=lambda: now[0])
    for done in range(1, 10_001):  # 10,000 units over 200 s: 1 per 20 ms
        now[0] += 0.02
        artifact.report(done / 100, "")
    assert 99 <= len(sent) <= 100  # one per whole percent (50 units = 1 s each)
    assert all(b - a >= 1 for a, b in zip(sent, sent[1:], strict=False))
    now[0] += 0.01
    artifact.report(100.0, "", force=True)
    assert sent[-1] == 100.0


def test_an_unreachable_api_is_logged_and_the_stage_goes_on(prefect_harness, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise ConnectionError("the server went away")

    monkeypatch.setattr(flows.progress, "update_progress_artifact", refuse)

    @flow
    def stage() -> int:
        with track(Progress(total=3, desc="refused", show=False)) as progress:
            for _ in range(3):
                progress.update(1)
        return progress.done

    with caplog.at_level(logging.WARNING, logger="flows.progress"):
        assert stage() == 3
    assert [r.getMessage() for r in caplog.records if r.name == "flows.progress"] == [
        "progress artifact not updated (ConnectionError: the server went away); the run goes on"
    ]


def test_outside_a_prefect_run_there_is_only_the_bar(monkeypatch, capfd):
    monkeypatch.setattr(flows.progress, "create_progress_artifact", pytest.fail)
    with track(Progress(total=2, unit="block", desc="notebook")) as progress:
        progress.update(2)
    assert re.search(r"notebook: 100%\|.*\| 2/2 ", capfd.readouterr().err)


def test_stage_progress_shows_stage_i_of_n_in_one_artifact(prefect_harness, capfd):
    seen: list[tuple[float, str]] = []

    @flow(name="parent-flow")
    def parent() -> UUID:
        for i, name in enumerate(["corpus", "pca", "publish"], start=1):
            with stage_progress("parent-flow", i, 3, name):
                [artifact] = run_artifacts(flow_run_id(), "parent-flow-stages")
                seen.append((round(artifact.data, 1), artifact.description))
        return flow_run_id()

    [artifact] = run_artifacts(parent(), "parent-flow-stages")
    assert seen == [
        (0.0, "parent-flow: stage 1 of 3: corpus"),
        (33.3, "parent-flow: stage 2 of 3: pca"),
        (66.7, "parent-flow: stage 3 of 3: publish"),
    ]
    assert (artifact.data, artifact.description) == (100, "parent-flow: stage 3 of 3: publish (done)")
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "stage" in line] == [d for _, d in seen]


def test_a_failed_stage_leaves_the_artifact_where_it_started(prefect_harness):
    @flow(name="failing-parent")
    def parent() -> None:
        with stage_progress("failing-parent", 1, 2, "corpus", show=False):
            pass
        with stage_progress("failing-parent", 2, 2, "evaluate", show=False):
            raise RuntimeError("evaluation failed")

    state = parent(return_state=True)
    assert state.is_failed()
    [artifact] = run_artifacts(state.state_details.flow_run_id, "failing-parent-stages")
    assert (artifact.data, artifact.description) == (50, "failing-parent: stage 2 of 2: evaluate")


@pytest.mark.parametrize(("i", "n"), [(0, 3), (4, 3)])
def test_stage_numbers_out_of_range_are_refused(i, n):
    with pytest.raises(ValueError, match=f"stage {i} of {n}"), stage_progress("f", i, n, "x", show=False):
        pass


@pytest.mark.parametrize(
    ("command", "label", "total"),
    [
        (["corpus", "build", "{new}", "--model", "tiny", "--samples", "4", "--steps", "2", "--batch", "2",
          "--seed", "0"], "corpus", "4/4"),
        (["annotate", "{url}", "--annotator", "testbed"], "annotate testbed", "6/6"),
        (["pca", "fit", "{url}", "--components", "2", "--run", "main"], "pca main", "2/2"),
        (["jacobian", "{url}", "--sample", "0,1", "--step", "1", "--k", "1", "--max-iter", "2", "--run", "j"],
         "jacobian j", "2/2"),
    ],
    ids=["corpus", "annotate", "pca", "jacobian"],
)  # fmt: skip
def test_cli_stages_print_a_bar_named_after_the_stage(
    prefect_harness, corpus_factory, copy_corpus, tmp_path, capfd, command, label, total
):
    url = copy_corpus(corpus_factory(**CORPUS))
    arguments = [a.format(url=url, new=tmp_path / "new.zarr") for a in command]
    capfd.readouterr()
    assert main(arguments) == 0
    assert re.search(rf"(^|\r){re.escape(label)}: 100%\|.*\| {total} ", capfd.readouterr().err, re.MULTILINE)
