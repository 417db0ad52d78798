"""The fit_pca flow and the PCA run storage: exact per-step PCA oracle, resume, refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import tasks.pca
from flows.pca import fit_pca
from flows.runner import run_flow
from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.pca_runs import PCARun, read_pca_directions
from storage.runs import list_runs
from tasks.pca import align_pca_run, fit_pca_step, prepare_pca

# 12 samples: the centred h span 11 directions, fewer than the k + p = 4 + 10 rows the estimator keeps,
# so its blocks of 4 rows lose nothing and the stored PCA must equal the exact one (up to rounding).
SAMPLES, STEPS, K = 12, 4, 4
FIT = dict(components=K, batch_size=4, progress=False)


@pytest.fixture
def url(corpus_factory, copy_corpus) -> str:
    return copy_corpus(corpus_factory(samples=SAMPLES, steps=STEPS, batch=4, seed=5))


def exact_pca(url: str, step: int):
    """numpy SVD of the centred h_t read back from the corpus (float64): the oracle."""
    h = Corpus.open(url).read_h(slice(None), step).reshape(SAMPLES, -1).astype(np.float64)
    mean = h.mean(0)
    _, s, vt = np.linalg.svd(h - mean, full_matrices=False)
    return mean, s, vt


def test_flow_stores_the_exact_per_step_pca_with_aligned_signs(prefect_harness, url):
    info = run_flow(fit_pca, url=url, **FIT)
    assert info["complete"] and info["steps_done"] == list(range(STEPS)) and info["n_samples"] == [SAMPLES] * STEPS
    pca = PCARun.open(url, "default")
    directions = read_pca_directions(url, "default")  # (k, T, C, H, W)
    assert directions.shape == (K, STEPS, 32, 8, 8)
    for t in range(STEPS):
        mean, s, vt = exact_pca(url, t)
        stored = pca.read_step(t)
        signs = np.sign(np.sum(stored.components * vt[:K], axis=1))
        np.testing.assert_allclose(stored.components * signs[:, None], vt[:K], atol=2e-5)
        np.testing.assert_allclose(stored.mean, mean, atol=1e-6)
        np.testing.assert_allclose(stored.explained_variance, s[:K] ** 2 / (SAMPLES - 1), rtol=1e-4)
        np.testing.assert_allclose(stored.explained_variance_ratio, s[:K] ** 2 / np.sum(s**2), rtol=1e-4)
        # The direction at step t is the same axis (up to sign) ...
        flat = directions[:, t].reshape(K, -1)
        np.testing.assert_allclose(np.abs(np.sum(flat * vt[:K], axis=1)), 1.0, atol=1e-5)
    # ... with signs aligned to the neighbouring step (align_signs), and step 0 as svd_flip (largest entry > 0).
    flat = directions.reshape(K, STEPS, -1)
    assert (np.einsum("jtd,jtd->jt", flat[:, 1:], flat[:, :-1]) > 0).all()
    assert (flat[np.arange(K), 0, np.abs(flat[:, 0]).argmax(1)] > 0).all()


def test_a_subset_of_steps_edits_only_there(prefect_harness, url):
    info = run_flow(fit_pca, url=url, steps=[1, 3], run="odd", **FIT)
    assert info["steps"] == [1, 3] and info["complete"]
    directions = read_pca_directions(url, "odd", [0])
    assert (directions[:, [0, 2]] == 0).all() and (directions[:, [1, 3]] != 0).any()
    assert list_runs(url, "pca") == ["odd"]


def test_a_run_killed_after_some_steps_resumes_to_the_same_bytes(prefect_harness, url, tmp_path, tree_bytes):
    shutil.copytree(url, tmp_path / "uninterrupted")
    run_flow(fit_pca, url=str(tmp_path / "uninterrupted"), **FIT)
    # The "killed" run: steps 0 and 2 written, then it died (no signs).
    prepare_pca(url, components=K, batch_size=4)
    for step in (2, 0):
        assert fit_pca_step.fn(url, "default", step) == step
    pca = PCARun.open(url, "default")
    assert pca.missing_steps() == [1, 3] and not pca.is_aligned()
    with pytest.raises(HSpaceError, match=r"not complete: steps \[1, 3\] are not done"):
        read_pca_directions(url, "default")
    info = run_flow(fit_pca, url=url, **FIT)
    assert info["complete"]
    assert tree_bytes(url, "pca") == tree_bytes(str(tmp_path / "uninterrupted"), "pca")


def test_a_step_whose_flag_is_not_set_is_not_trusted(prefect_harness, url, monkeypatch, tree_bytes):
    run_flow(fit_pca, url=url, **FIT)
    before = tree_bytes(url, "pca")
    pca = PCARun.open(url, "default", writable=True)
    pca.group["components"][2] = np.full(pca.group["components"].shape[1:], 9.0, dtype=np.float32)
    pca.group["done"][2] = False  # as if the task died between its data and its flag
    with pytest.raises(HSpaceError, match=r"steps \[2\] are not done"):
        read_pca_directions(url, "default")
    with pytest.raises(HSpaceError, match="step 2 is not done"):
        pca.read_step(2)
    assert PCARun.open(url, "default").info()["steps_missing"] == [2]
    fitted = []
    original = tasks.pca.fit_step

    def counting(corpus, step, *args, **kwargs):
        fitted.append(step)
        return original(corpus, step, *args, **kwargs)

    monkeypatch.setattr(tasks.pca, "fit_step", counting)
    run_flow(fit_pca, url=url, **FIT)
    assert fitted == [2]  # only the step not done was refitted
    assert tree_bytes(url, "pca") == before


def test_signs_not_written_make_the_run_incomplete(url):
    prepare_pca(url, components=K, batch_size=4)
    for step in range(STEPS):
        fit_pca_step.fn(url, "default", step)
    with pytest.raises(HSpaceError, match="signs are not aligned"):
        read_pca_directions(url, "default")
    align_pca_run.fn(url, "default")
    assert read_pca_directions(url, "default", [1]).shape == (1, STEPS, 32, 8, 8)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "-x", "x" * 65, "a b", "a..b"])
def test_run_names_that_are_not_safe_paths_are_refused_before_anything_is_written(url, name):
    with pytest.raises(HSpaceError, match="invalid run name"):
        prepare_pca(url, components=K, run=name)
    assert "pca" not in Corpus.open(url).group


def test_other_parameters_are_refused_with_the_differences_named(url):
    prepare_pca(url, components=K, batch_size=4)
    with pytest.raises(HSpaceError, match=r"components \(run: 4, requested: 3\)"):
        prepare_pca(url, components=3, batch_size=4)
    with pytest.raises(HSpaceError, match=r'method \(run: "incremental", requested: "sklearn"\).*oversampling'):
        prepare_pca(url, components=K, batch_size=4, method="sklearn")
    with pytest.raises(HSpaceError, match=r"steps \(run: \[0, 1, 2, 3\], requested: \[0, 1\]\)"):
        prepare_pca(url, components=K, batch_size=4, steps=[0, 1])
    assert PCARun.open(url, "default").spec.components == K  # the run is unchanged


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(components=0), "components must be a positive integer"),
        (dict(components=SAMPLES), r"components must lie in 1\.\.11"),
        (dict(components=K, steps=[4]), r"step 4 is out of range: the corpus has steps 0\.\.3"),
        (dict(components=K, steps=[1, 1]), "steps repeat"),
        (dict(components=K, method="svd"), "unknown PCA method 'svd'"),
        (dict(components=K, batch_size=2, method="sklearn"), "needs a batch size >= components"),
    ],
)
def test_bad_arguments_are_refused_before_the_run_is_created(url, arguments, message):
    with pytest.raises(HSpaceError, match=message):
        prepare_pca(url, **arguments)
    assert "pca" not in Corpus.open(url).group


def test_an_incomplete_corpus_is_refused(url):
    Corpus.open(url, writable=True).group["done"][1] = False
    with pytest.raises(HSpaceError, match=r"not complete \(1 of 3 shards missing\)"):
        prepare_pca(url, components=K)


def test_unknown_run_names_the_existing_ones(url):
    prepare_pca(url, components=K, run="mine")
    with pytest.raises(HSpaceError, match=r"no PCA run 'other' .*\(runs: mine\)"):
        PCARun.open(url, "other")
