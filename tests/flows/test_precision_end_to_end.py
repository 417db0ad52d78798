"""Precision through the pipeline on `tiny` (CPU): fp32 results bitwise as before precisions existed; bf16
and fp16 end to end (corpus -> annotate -> supervised -> evaluate -> bank -> edit); recorded precisions that
refuse a resume in another; stored results (evaluations, Jacobian and PCA runs) never mixed across
precisions, and those made before precisions existed read as fp32.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from flows.bank import RebuildSettings, rebuild_bank
from flows.evaluate import evaluate_directions
from flows.runner import run_flow
from hspace.bank import load_bank
from hspace.editing import edit, edit_grid
from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.directions import new_record, write_direction
from storage.evaluations import evaluation_key, stored_evaluation
from storage.groups import group_at, json_attrs
from storage.jacobian_runs import JacobianRun
from tasks.evaluate import EvaluationSpec
from tasks.jacobian import prepare_jacobian
from tasks.pca import prepare_pca

# Produced by the code at commit 246eaab (before precisions existed): `git worktree add /tmp/old 246eaab`, then
# with this venv and PYTHONPATH=/tmp/old, prepare_corpus(model="tiny", samples=4, steps=4, eta=1.0, batch=2,
# seed=0, dtype="float16", device="cpu") and generate_shard.fn for each missing shard; sha256 of
# Corpus.read_h().tobytes() and read_x0().tobytes(); and of edit_grid(load_model("tiny"), [0, 1], [v],
# [-2.0, 0.0, 2.0], steps=4, eta=1.0).tobytes() with v = torch.randn(4, *h_shape,
# generator=torch.Generator().manual_seed(0)).
OLD_H_SHA256 = "a9f2d11ff283d059291e0a05b3d6cd2d8eaf8f90012619d0604edfae8f99ca27"
OLD_X0_SHA256 = "5c0fae5dec28548e6a66463e8d51f972d15aa0dd0f72f8d39dae9181bb9def26"
OLD_EDIT_SHA256 = "0d3561fe1585c717c6b0beacf8ef2fb262b5a3b31c8d075485ab164eb4ca0209"

CORPUS = dict(samples=8, steps=3, batch=4, seed=0)
REBUILD = dict(
    model="tiny",
    eta=1.0,
    annotator="testbed",
    attributes=["smile"],
    k=2,
    thresholds={},
    disentangle={},
    pca_components=0,
    gamma=2.0,
    eval_samples=2,
    repeats=2,
    **CORPUS,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: bits depend on the thread count


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_fp32_results_are_bitwise_those_from_before_precisions(corpus_factory, tiny):
    corpus = Corpus.open(corpus_factory(samples=4, steps=4, batch=2, seed=0))
    assert corpus.spec.precision == "fp32"
    assert sha256(corpus.read_h()) == OLD_H_SHA256
    assert sha256(corpus.read_x0()) == OLD_X0_SHA256
    v = torch.randn(4, *tiny.h_shape, generator=torch.Generator().manual_seed(0))
    assert sha256(edit_grid(tiny, [0, 1], [v], [-2.0, 0.0, 2.0], steps=4, eta=1.0)) == OLD_EDIT_SHA256


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_end_to_end(prefect_harness, tmp_path, corpus_factory, tiny, precision):
    corpus_url, bank_url = str(tmp_path / "c.zarr"), str(tmp_path / "bank")
    settings = RebuildSettings(bank=bank_url, corpus=corpus_url, precision=precision, **REBUILD)
    result = run_flow(rebuild_bank, settings=settings)
    corpus = Corpus.open(corpus_url)
    assert corpus.spec.precision == precision

    # The corpus: finite h, close to the fp32 corpus of the same seeds, but not the same bits.
    h, reference = corpus.read_h().astype(np.float32), Corpus.open(corpus_factory(**CORPUS)).read_h()
    assert np.isfinite(h).all() and not np.array_equal(h, reference)
    assert np.linalg.norm(h - reference) < 0.1 * np.linalg.norm(reference)

    # The evaluation ran in the corpus's precision; its key is not the fp32 one.
    evaluation = stored_evaluation(corpus, result["evaluation"])
    assert evaluation is not None and np.isfinite(evaluation.mean()).all()
    fp32_key = evaluate_smile(corpus_url, settings, precision="fp32")
    assert fp32_key != result["evaluation"]
    fp32_result = stored_evaluation(Corpus.open(corpus_url), fp32_key)
    assert fp32_result is not None and not np.array_equal(fp32_result.mean(), evaluation.mean())

    # The bank records the precision, and edit runs in it unless told.
    bank = load_bank(bank_url)
    assert bank.precision == precision
    assert json.loads(bank.notes or "{}")["rebuild_settings"]["precision"] == precision
    images = edit(tiny, [100, 101], {"smile": 2.0}, bank)
    assert (images == edit(tiny.at_precision(precision), [100, 101], {"smile": 2.0}, bank)).all()
    in_fp32 = edit(tiny, [100, 101], {"smile": 2.0}, bank, precision="fp32")
    assert (images != in_fp32).any() and abs(images.astype(int) - in_fp32.astype(int)).mean() < 8

    # The recorded precision refuses a resume in another one, naming it, before anything is written.
    before = sorted(p.name for p in tmp_path.rglob("*"))
    resumed_as_fp32 = RebuildSettings(bank=bank_url, corpus=corpus_url, **REBUILD)
    with pytest.raises(HSpaceError, match=rf"precision \(corpus: \"?{precision}\"?, requested: \"?fp32"):
        run_flow(rebuild_bank, settings=resumed_as_fp32)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def evaluate_smile(url: str, settings: RebuildSettings, **changes) -> str:
    """The key of the evaluation flow's run on the corpus's ``smile`` direction, as rebuild-bank evaluates."""
    arguments = dict(
        annotator=settings.annotator,
        gamma=settings.gamma,
        samples=settings.eval_samples,
        repeats=settings.repeats,
        seed=settings.eval_seed,
    )
    spec = EvaluationSpec(url=url, names=("smile",), supervised=("smile",), **(arguments | changes))
    return run_flow(evaluate_directions, spec, progress=False)


def test_fp32_evaluations_keep_their_keys_and_other_precisions_get_their_own(
    prefect_harness, corpus_factory, copy_corpus
):
    url = copy_corpus(corpus_factory(**CORPUS))
    corpus = Corpus.open(url, writable=True)
    tensor = np.random.default_rng(0).standard_normal((3, 32, 8, 8)).astype(np.float32)
    record = new_record(corpus, "smile", method="examples", space="h", parameters={})
    write_direction(corpus, record, tensor)
    settings = RebuildSettings(bank="b", corpus=url, **REBUILD)
    key = evaluate_smile(url, settings, repeats=1)
    # The key the same evaluation had before precisions existed: its settings had no precision.
    spec = corpus.spec
    old = {"annotator": "testbed", "options": "{}", "gamma": 2.0, "samples": 2, "repeats": 1, "seed": 1}
    old |= {"steps": 3, "eta": list(spec.eta), "fingerprint": spec.fingerprint}
    assert key == evaluation_key({"smile": tensor}, old)
    bf16_key = evaluate_smile(url, settings, repeats=1, precision="bf16")
    assert bf16_key != key
    stored = json_attrs(group_at(Corpus.open(url).group, f"evaluations/{bf16_key}"), "settings")
    assert stored["precision"] == "bf16"


def test_jacobian_runs_record_their_precision(corpus_factory, copy_corpus):
    url = copy_corpus(corpus_factory(precision="bf16", samples=2, steps=2, batch=2, seed=0))
    # bf16's rounding leaves residuals near 5e-3: the default tolerance (1e-3) is refused, naming the fixes.
    with pytest.raises(
        HSpaceError, match=r"bf16 U-Net cannot reach --tol 0.001.*--tol 0.01 or more, or --precision fp32"
    ):
        prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="r")
    run = prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="r", tol=0.01)
    assert run.spec.precision == "bf16"  # the corpus's, by default
    with pytest.raises(HSpaceError, match=r"precision \(run: \"bf16\", requested: \"fp32\"\)"):
        prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="r", precision="fp32", tol=0.01)
    assert prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="r32", precision="fp32").spec.precision == "fp32"


def test_runs_made_before_precisions_existed_resume_as_fp32(corpus_factory, copy_corpus):
    url = copy_corpus(corpus_factory(samples=2, steps=2, batch=2, seed=0))
    prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="j")
    prepare_pca(url, components=1, run="p")
    # Make them as hspace wrote them before: no precision in the Jacobian run, no precision or microbatch in
    # the corpus settings either run recorded, nor in the corpus's own.
    corpus = Corpus.open(url, writable=True)
    for path in ("jacobian/j", "pca/p"):
        group = group_at(corpus.group, path)
        attrs = json_attrs(group, "hspace")
        attrs.pop("precision", None)
        for key in ("precision", "microbatch"):
            attrs["corpus"].pop(key)
        group.attrs.update({"hspace": attrs})
    attrs = json_attrs(corpus.group, "hspace")
    del attrs["precision"], attrs["microbatch"]
    corpus.group.attrs.update({"hspace": attrs})

    assert JacobianRun.open(url, "j").spec.precision == "fp32"
    assert prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="j").spec.precision == "fp32"
    assert prepare_pca(url, components=1, run="p").spec.components == 1
    with pytest.raises(HSpaceError, match=r"precision \(run: \"fp32\", requested: \"fp16\"\)"):
        prepare_jacobian(url, sample_ids=[0], steps=[1], k=2, run="j", precision="fp16")


@pytest.mark.parametrize(
    "argv",
    [
        ["rebuild-bank", "{out}/bank", "--corpus", "{out}/c.zarr", "--model", "tiny"],
        ["demo", "--out", "{out}/demo", "--model", "tiny"],
        ["evaluate", "{out}/c.zarr", "--directions", "smile", "--report", "{out}/report"],
        ["edit", "{out}/c.zarr", "--pca", "main", "--directions", "0", "--out", "{out}/e.png"],
        ["jacobian", "{out}/c.zarr", "--sample", "0", "--step", "0", "--k", "1"],
        ["directions", "invert", "--model", "tiny", "--steps", "2", "--images", "{out}", "--out", "{out}/i.st"],
        ["efficiency", "--model", "tiny", "--out", "{out}/eff"],
    ],
)
def test_an_unknown_precision_is_a_usage_error_that_names_the_choices(cli, capsys, tmp_path, argv):
    out = tmp_path / "work"
    out.mkdir()
    with pytest.raises(SystemExit) as exit_:
        cli(*[a.format(out=out) for a in argv], "--precision", "fp8")
    assert exit_.value.code != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --precision: invalid choice: 'fp8' (choose from 'fp32', 'bf16', 'fp16')" in error, error
    assert list(out.iterdir()) == []


def test_rebuild_settings_check_precision_and_microbatch():
    with pytest.raises(HSpaceError, match="precision must be one of fp32, bf16, fp16; got 'fp8'"):
        RebuildSettings(bank="b", corpus="c", precision="fp8")
    with pytest.raises(HSpaceError, match="microbatch must be a positive integer"):
        RebuildSettings(bank="b", corpus="c", microbatch=0)
    # Recorded where not the value every bank before them was built with, so that those publish nothing new.
    assert "precision" not in RebuildSettings(bank="b", corpus="c").record()
    assert "microbatch" not in RebuildSettings(bank="b", corpus="c").record()
    recorded = RebuildSettings(bank="b", corpus="c", precision="bf16", microbatch=4).record()
    assert recorded["precision"] == "bf16" and recorded["microbatch"] == 4
