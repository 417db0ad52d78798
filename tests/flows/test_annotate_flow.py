"""Annotating a corpus: storage layout, resumable flow, untrusted shards, annotator config, CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import tasks.annotate
from flows.annotate import annotate
from flows.runner import run_flow
from hspace.annotators import Annotator, load_annotator
from hspace.errors import HSpaceError
from storage.annotations import Annotations, AnnotatorRecord, list_annotators
from storage.corpus import Corpus
from tasks.annotate import annotate_shard, prepare_annotations

CORPUS = dict(model="tiny", samples=16, steps=4, eta=1.0, batch=4, seed=3, dtype="float16", device="cpu")


class MeanColour(Annotator):
    """A stand-in annotator whose scores a test can compute by hand: scaled mean of each colour channel."""

    attributes = ("red", "green", "blue")

    def __init__(self, scale: float = 1.0, label: str = "colour") -> None:
        self.scale, self.name = scale, label

    @property
    def config(self) -> dict:
        return {"scale": self.scale}

    def score(self, images: np.ndarray) -> np.ndarray:
        self.check_images(images)
        return (images.astype(np.float32).mean(axis=(2, 3)) * self.scale).astype(np.float32)


@pytest.fixture
def corpus_url(prefect_harness, corpus_factory, copy_corpus):
    """A fresh copy of the module's corpus for each test."""
    return copy_corpus(corpus_factory(**CORPUS))


@pytest.fixture
def colour_annotator(monkeypatch):
    """``load_annotator("colour", scale=...)`` gives :class:`MeanColour`; other names the real loader's."""
    real = tasks.annotate.load_annotator

    def load(name, **options):
        return MeanColour(**options) if name.startswith("colour") else real(name, **options)

    monkeypatch.setattr(tasks.annotate, "load_annotator", load)
    tasks.annotate.cached_annotator.cache_clear()
    yield
    tasks.annotate.cached_annotator.cache_clear()


def score_arrays(url: str, annotator: str) -> dict[str, np.ndarray]:
    annotations = Annotations.open(Corpus.open(url), annotator)
    return {a: annotations.group[a][:] for a in annotations.record.attributes}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hspace: error: ") and "\n" not in err, err
    return err


def test_scores_are_the_annotators_on_the_stored_images(corpus_url):
    info = run_flow(annotate, corpus_url, "testbed", progress=False)
    assert (info["shards"], info["shards_done"], info["waiting_for_corpus"]) == (4, 4, [])
    corpus = Corpus.open(corpus_url)
    expected = load_annotator("testbed").score(corpus.read_x0())  # all 16 at once: an independent batching
    annotations = Annotations.open(corpus, "testbed")
    assert annotations.record.attributes == load_annotator("testbed").attributes
    for column, attribute in enumerate(annotations.record.attributes):
        scores = annotations.scores(attribute)
        assert scores.dtype == np.float32 and scores.shape == (16,)
        np.testing.assert_allclose(scores, expected[:, column], rtol=1e-5, atol=1e-5)
    array = annotations.group["smile"]
    assert array.chunks == (4,) and annotations.group["done"].chunks == (1,)
    assert list_annotators(corpus) == ["testbed"]


def test_interrupted_run_then_rerun_equals_an_uninterrupted_run(corpus_url, tmp_path):
    whole = str(tmp_path / "whole.zarr")
    shutil.copytree(corpus_url, whole)
    run_flow(annotate, whole, "testbed", progress=False)

    # "Interrupted": shards 0 and 2 finished; shard 1 died between two attribute writes (flag not set).
    prepare_annotations(corpus_url, "testbed")
    for shard in (0, 2):
        assert annotate_shard.fn(corpus_url, shard, "testbed") == (shard, "written")
    group = Annotations.open(Corpus.open(corpus_url, writable=True), "testbed").group
    group["face"][4:8] = np.full(4, 99.0, dtype=np.float32)
    chunk = os.path.join(corpus_url, "annotations", "testbed", "smile", "c", "0")
    before = os.stat(chunk)

    info = run_flow(annotate, corpus_url, "testbed", progress=False)
    assert info["shards_done"] == 4 and info["missing_shards"] == []
    resumed, uninterrupted = score_arrays(corpus_url, "testbed"), score_arrays(whole, "testbed")
    for attribute in uninterrupted:
        assert np.array_equal(resumed[attribute], uninterrupted[attribute]), attribute
    assert not np.any(resumed["face"] == 99.0)
    after = os.stat(chunk)  # shard 0 was done: skipped, not rewritten (the store writes by rename)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert annotate_shard.fn(corpus_url, 0, "testbed") == (0, "already-done")


def test_a_shard_whose_flag_is_not_set_is_not_trusted(corpus_url):
    run_flow(annotate, corpus_url, "testbed", progress=False)
    good = score_arrays(corpus_url, "testbed")["smile"]
    annotations = Annotations.open(Corpus.open(corpus_url, writable=True), "testbed")
    annotations.group["done"][2] = False
    annotations.group["smile"][8:12] = np.zeros(4, dtype=np.float32)
    with pytest.raises(HSpaceError, match=r"shards 2 of 4 are not annotated.*hspace annotate .* --annotator testbed"):
        annotations.scores("smile")
    run_flow(annotate, corpus_url, "testbed", progress=False)
    assert np.array_equal(Annotations.open(Corpus.open(corpus_url), "testbed").scores("smile"), good)


def test_corpus_shards_not_generated_are_skipped_then_annotated_later(corpus_url):
    corpus = Corpus.open(corpus_url, writable=True)
    corpus.group["done"][3] = False  # as if the build were still running
    info = run_flow(annotate, corpus_url, "testbed", progress=False)
    assert info["waiting_for_corpus"] == [3] and info["missing_shards"] == [3]
    with pytest.raises(HSpaceError, match="finish the corpus"):
        Annotations.open(Corpus.open(corpus_url), "testbed").scores("yaw")
    corpus.group["done"][3] = True  # the build finished
    info = run_flow(annotate, corpus_url, "testbed", progress=False)
    assert info["shards_done"] == 4 and info["waiting_for_corpus"] == []


def test_another_annotator_config_is_refused_naming_the_difference(corpus_url, colour_annotator):
    run_flow(annotate, corpus_url, "colour", {"scale": 1.0}, progress=False)
    before = score_arrays(corpus_url, "colour")
    x0 = Corpus.open(corpus_url).read_x0()
    np.testing.assert_allclose(before["green"], x0[:, 1].astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)
    with pytest.raises(HSpaceError, match=r"config\.scale \(stored: 1\.0, this annotator: 2\.0\)"):
        run_flow(annotate, corpus_url, "colour", {"scale": 2.0}, progress=False)
    after = score_arrays(corpus_url, "colour")
    assert all(np.array_equal(before[a], after[a]) for a in before)


def test_names_that_become_paths_are_validated():
    for bad in ("../up", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(HSpaceError, match="invalid .* name"):
            AnnotatorRecord(name=bad, attributes=("a",))
    with pytest.raises(HSpaceError, match="invalid .* name"):
        AnnotatorRecord(name="ok", attributes=("a/b",))
    with pytest.raises(HSpaceError, match="name of the progress flags"):
        AnnotatorRecord(name="ok", attributes=("done",))
    with pytest.raises(HSpaceError, match="twice"):
        AnnotatorRecord(name="ok", attributes=("a", "a"))


def test_cli_annotate_prints_json_and_is_idempotent(corpus_url, cli, capsys):
    assert cli("annotate", corpus_url, "--annotator", "testbed", "--json", "--no-progress") == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["annotator"], info["shards_done"], info["missing_shards"]) == ("testbed", 4, [])
    assert cli("annotate", corpus_url, "--annotator", "testbed", "--json", "--no-progress") == 0
    assert json.loads(capsys.readouterr().out)["shards_done"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--annotator", "nope"], "unknown annotator 'nope'"),
        (["--annotator", "colour", "--option", "label=../evil"], "invalid annotator name '../evil'"),
        (["--annotator", "testbed", "--option", "size=3"], "does not take"),
        (["--annotator", "testbed", "--option", "novalue"], "--option takes KEY=VALUE"),
        (["--annotator", "testbed", "--workers", "0"], "--workers must be a positive integer"),
    ],
)
def test_cli_bad_input_fails_with_one_line_and_writes_nothing(corpus_url, cli, capsys, colour_annotator, args, message):
    assert cli("annotate", corpus_url, *args, "--no-progress") == 1
    assert message in error_line(capsys)
    assert not os.path.exists(os.path.join(corpus_url, "annotations"))


def test_cli_missing_corpus_fails_and_creates_nothing(tmp_path, cli, capsys):
    assert cli("annotate", str(tmp_path / "none.zarr"), "--annotator", "testbed") == 1
    assert "no corpus at" in error_line(capsys)
    assert not (tmp_path / "none.zarr").exists()
