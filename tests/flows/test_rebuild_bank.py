"""The rebuild_bank flow end to end on `tiny`: what it publishes equals the stages' own stored results, a
rerun publishes nothing new, and a crash before publishing is finished by the rerun with the same bank."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tasks.bank as bank_tasks
from flows.bank import RebuildSettings, rebuild_bank
from flows.cli import main
from flows.runner import run_flow
from hspace.bank import list_versions, load_bank
from hspace.directions import top_bottom
from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.directions import read_direction

ARGS = dict(
    model="tiny",
    samples=16,
    steps=4,
    eta=1.0,
    batch=8,
    seed=3,
    annotator="testbed",
    attributes=["smile", "hat"],
    k=4,
    thresholds={},
    disentangle={"smile": ["hat"]},
    pca_components=2,
    pca_directions=1,
    gamma=2.0,
    eval_samples=4,
    repeats=2,
)
# thresholds={} / --thresholds none: the tiny model's images are not faces, so the testbed annotator's hat
# probability need not straddle 0.5; the top-k selection keeps eq. 11 checkable by hand. The default is
# test_threshold_plan's.


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: bits depend on the thread count


def test_rebuild_publishes_evaluated_directions_and_a_rerun_publishes_nothing_new(
    prefect_harness, tmp_path, tree_bytes
):
    corpus_url, bank_url = str(tmp_path / "c.zarr"), str(tmp_path / "bank")
    result = run_flow(
        rebuild_bank,
        settings=RebuildSettings(bank=bank_url, corpus=corpus_url, report=str(tmp_path / "report"), **ARGS),
    )
    assert result["directions"] == ["smile", "hat", "smile-disentangled", "pca-0"]
    bank = load_bank(bank_url)
    corpus = Corpus.open(corpus_url)
    assert bank.fingerprint == corpus.spec.fingerprint and bank.steps == 4

    # eq. 11 by hand from the corpus: top-4 vs bottom-4 samples by the stored smile score.
    scores = corpus.group["annotations/testbed/smile"][:]
    h = corpus.read_h().astype(np.float64)
    top, bottom = top_bottom(scores, 4)
    smile = h[top].mean(0) - h[bottom].mean(0)
    assert np.allclose(bank.tensor("smile").numpy(), smile, atol=1e-5)
    hat_top, hat_bottom = top_bottom(corpus.group["annotations/testbed/hat"][:], 4)
    hat = (h[hat_top].mean(0) - h[hat_bottom].mean(0)).ravel()
    # eq. 12 by hand: smile minus its projection on hat.
    expected = smile.ravel() - (smile.ravel() @ hat) / (hat @ hat) * hat
    assert np.allclose(bank.tensor("smile-disentangled").numpy().ravel(), expected, atol=1e-5)
    # PCA direction 0 at step t: the top right singular vector of the centred h_t, times its std.
    for t in range(4):
        x = h[:, t].reshape(16, -1)
        x = x - x.mean(0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        got = bank.tensor("pca-0")[t].double().ravel().numpy()
        assert abs(abs(got @ vt[0]) - s[0] / np.sqrt(15)) < 1e-3 * s[0]
    # Every direction carries its evaluation row (Table I) and its random twin's.
    for name in result["directions"]:
        evaluation = bank[name].evaluation
        assert set(evaluation) >= {"effect", "random", "attributes"} and len(evaluation["effect"]["mean"]) == 9
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"evaluation.csv", "evaluation.md", "evaluation.png"}

    before = tree_bytes(tmp_path / "bank")
    again = run_flow(rebuild_bank, settings=RebuildSettings(bank=bank_url, corpus=corpus_url, **ARGS))
    assert again["version"] == result["version"] and again["evaluation"] == result["evaluation"]
    assert tree_bytes(tmp_path / "bank") == before
    assert len(list_versions(bank_url)) == 1


def test_a_crash_before_publishing_is_finished_by_the_rerun(prefect_harness, tmp_path, monkeypatch):
    corpus_url, bank_url = str(tmp_path / "c.zarr"), str(tmp_path / "bank")
    reference = run_flow(
        rebuild_bank,
        settings=RebuildSettings(bank=str(tmp_path / "reference"), corpus=str(tmp_path / "ref.zarr"), **ARGS),
    )

    def crash(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(bank_tasks, "publish", crash)
    with pytest.raises(Exception, match="disk went away"):
        run_flow(rebuild_bank, settings=RebuildSettings(bank=bank_url, corpus=corpus_url, **ARGS))
    monkeypatch.undo()
    result = run_flow(rebuild_bank, settings=RebuildSettings(bank=bank_url, corpus=corpus_url, **ARGS))
    assert result["evaluation"] == reference["evaluation"]  # same directions and settings: same key
    ours, theirs = load_bank(bank_url), load_bank(str(tmp_path / "reference"))
    for name in reference["directions"]:
        assert torch.equal(ours.tensor(name), theirs.tensor(name))
        assert ours[name].evaluation == theirs[name].evaluation


def test_after_a_repair_rebuild_bank_recomputes_the_stale_results_to_the_same_bank(
    prefect_harness, tmp_path, tree_bytes, capsys
):
    """Issue 19: a damaged h chunk, `corpus verify --repair`, then `rebuild-bank`: the shard is regenerated, every
    result made from the corpus is recomputed (none is stale after), and the bank's content is unchanged."""
    corpus_url, bank_url = str(tmp_path / "c.zarr"), str(tmp_path / "bank")
    settings = RebuildSettings(bank=bank_url, corpus=corpus_url, **ARGS)
    first = run_flow(rebuild_bank, settings=settings)
    corpus_before, bank_before = tree_bytes(corpus_url, "h"), tree_bytes(bank_url)
    chunk = next(p for p in (tmp_path / "c.zarr" / "h" / "c" / "1").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 4
    chunk.write_bytes(bytes(data))

    assert main(["corpus", "verify", corpus_url, "--repair", "--no-progress", "--json"]) == 1
    stale = set(json.loads(capsys.readouterr().out)["stale"])
    assert {"annotations/testbed", f"pca/{settings.pca_run_name}", "directions/smile"} <= stale
    assert any(member.startswith("evaluations/") for member in stale)

    again = run_flow(rebuild_bank, settings=settings)
    assert "removed stale results" in capsys.readouterr().err
    assert Corpus.open(corpus_url).stale() == {}
    assert main(["corpus", "verify", corpus_url, "--no-progress"]) == 0
    assert tree_bytes(corpus_url, "h") == corpus_before
    assert again["version"] == first["version"] and tree_bytes(bank_url) == bank_before
    assert len(list_versions(bank_url)) == 1


def test_cli_rebuild_and_evaluate(prefect_harness, tmp_path, capsys):
    corpus_url, bank_url = str(tmp_path / "c.zarr"), str(tmp_path / "bank")
    argv = [
        "rebuild-bank",
        bank_url,
        "--corpus",
        corpus_url,
        "--model",
        "tiny",
        "--samples",
        "16",
        "--steps",
        "4",
        "--batch",
        "8",
        "--attributes",
        "smile,hat",
        "--k",
        "4",
        "--pca-components",
        "2",
        "--pca-directions",
        "1",
        "--eval-samples",
        "4",
        "--repeats",
        "2",
        "--disentangle",
        "smile:hat",
        "--keep-norm",
        "--thresholds",
        "none",
        "--json",
    ]
    assert main(argv) == 0
    published = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert published["directions"] == ["smile", "hat", "smile-disentangled", "pca-0"]
    # --keep-norm: eq. 12's result rescaled to the norm of the original smile direction.
    bank = load_bank(bank_url)
    smile, hat = (bank.tensor(n).double().ravel() for n in ("smile", "hat"))
    expected = smile - (smile @ hat) / (hat @ hat) * hat
    expected = expected * smile.norm() / expected.norm()
    assert torch.allclose(bank.tensor("smile-disentangled").double().ravel(), expected, atol=1e-5)
    assert (
        main(
            [
                "evaluate",
                corpus_url,
                "--directions",
                "smile,pca-0",
                "--pca-run",
                "bank",
                "--samples",
                "4",
                "--repeats",
                "2",
                "--gamma",
                "2",
                "--report",
                str(tmp_path / "ev"),
                "--json",
            ]
        )
        == 0
    )
    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert table["rows"] == ["smile", "pca-0", "random(smile)", "random(pca-0)"]
    assert (tmp_path / "ev" / "evaluation.png").exists()

    # Other settings: the rebuild replaces its own directions (k 3), and other PCA settings take another run.
    other = [
        *argv[: argv.index("--k")],
        "--k",
        "3",
        "--pca-components",
        "3",
        "--pca-run",
        "bank3",
        *argv[argv.index("--pca-directions") :],
    ]
    assert main(other) == 0
    capsys.readouterr()
    assert load_bank(bank_url)["smile"].parameters["k"] == 3
    assert load_bank(bank_url)["smile"].parameters["made_by"] == "rebuild-bank"
    # A direction the user stored under one of the rebuild's names is never replaced: refused before any work.
    assert (
        main(
            [
                "directions",
                "supervised",
                corpus_url,
                "--name",
                "hat",
                "--positives",
                "0,1",
                "--negatives",
                "2,3",
                "--overwrite",
            ]
        )
        == 0
    )
    capsys.readouterr()
    versions = list_versions(bank_url)
    assert main(other) == 1
    err = capsys.readouterr().err
    assert "already has a direction 'hat' made another way" in err and "made itself" in err, err
    stored = read_direction(Corpus.open(corpus_url), "hat")[1]
    assert stored.method == "examples" and stored.parameters["positives"] == [0, 1]
    assert list_versions(bank_url) == versions


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "{c}", "--directions", "pca-0"], "give --pca-run"),
        (["evaluate", "{c}", "--directions", "nosuch"], "nosuch"),
        (["evaluate", "{c}", "--directions", "smile", "--samples", "0"], "--samples must be a positive"),
        (["rebuild-bank", "{b}", "--corpus", "{c}", "--model", "tiny", "--disentangle", "glasses"], "A:B"),
        (["rebuild-bank", "{b}", "--corpus", "{c}", "--model", "tiny", "--thresholds", "hat"], "A=T"),
        (
            ["rebuild-bank", "{b}", "--corpus", "{c}", "--model", "tiny", "--thresholds", "beard=0.5"],
            "thresholds name ['beard']",
        ),
    ],
)
def test_bad_input_fails_with_one_line(prefect_harness, tmp_path, capsys, argv, message):
    corpus_url = str(tmp_path / "c.zarr")
    if argv[0] == "evaluate":
        from flows.corpus import build_corpus

        run_flow(
            build_corpus,
            out=corpus_url,
            model="tiny",
            samples=8,
            steps=2,
            eta=1.0,
            batch=8,
            seed=0,
            dtype="float16",
            device="cpu",
            progress=False,
        )
    argv = [a.format(c=corpus_url, b=str(tmp_path / "bank")) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bank").exists()


def test_threshold_plan():
    from flows.bank import threshold_plan

    # The testbed annotator's binary factors split at 0.5 by default; another annotator's scores have no
    # default split; explicit ones must name built attributes.
    assert threshold_plan("testbed", ["smile", "glasses", "hat"], None) == {"glasses": 0.5, "hat": 0.5}
    assert threshold_plan("clip", ["glasses"], None) == {}
    assert threshold_plan("testbed", ["glasses"], {}) == {}
    assert threshold_plan("clip", ["glasses"], {"glasses": 0.3}) == {"glasses": 0.3}
    with pytest.raises(HSpaceError, match=r"thresholds name \['hat'\]"):
        threshold_plan("testbed", ["glasses"], {"hat": 0.5})
