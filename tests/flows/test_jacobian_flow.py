"""The jacobian_directions flow and the Jacobian run storage: a direct call as oracle, resume, masks, refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import flows.jacobian
import tasks.corpus
import tasks.jacobian
from flows.runner import run_flow
from hspace.errors import HSpaceError
from hspace.images import read_mask_png
from hspace.jacobian import jacobian_directions, state_at_step
from hspace.sampler import derive_seeds
from storage.corpus import Corpus
from storage.jacobian_runs import JacobianRun, mask_sha256, read_jacobian_directions
from tasks.corpus import corpus_spec
from tasks.jacobian import prepare_jacobian

STEPS, SEED = 4, 7
# Few iterations keep the test fast; the oracle is a direct call with the same settings.
ITER = 4
RUN = dict(sample_ids=[1, 3], steps=[0, 2], k=3, max_iter=ITER, progress=False)


@pytest.fixture
def url(tmp_path, tiny) -> str:
    # Jacobian directions need the corpus's settings (model, seed, steps, eta), not its h: no shard is built.
    spec = corpus_spec(tiny, samples=6, steps=STEPS, eta=(1.0,) * STEPS, batch=3, seed=SEED, dtype="float16")
    Corpus.create_or_open(str(tmp_path / "corpus"), spec)
    return str(tmp_path / "corpus")


def direct(tiny, sample_id: int, step: int, k: int, mask=None):
    seed = derive_seeds(SEED, sample_id, sample_id + 1)[0]
    state = state_at_step(tiny, seed, steps=STEPS, step=step, eta=1.0)
    return jacobian_directions(tiny, state.x_t, state.t, k, mask=mask, max_iter=ITER)


def write_png(path, array: np.ndarray, format: str = "PNG") -> str:
    Image.fromarray(array).save(path, format=format)
    return str(path)


def test_flow_stores_what_jacobian_directions_returns(prefect_harness, url, tiny):
    info = run_flow(flows.jacobian.jacobian_directions, url=url, **RUN)
    assert (info["done"], info["missing"], len(info["results"])) == (4, 0, 4)
    run = JacobianRun.open(url, "default")
    for sample_id, step in ((3, 2), (1, 0)):
        expected = direct(tiny, sample_id, step, 3)
        cell = run.read(sample_id, step)
        np.testing.assert_allclose(cell.singular_values, expected.singular_values.numpy(), rtol=1e-6)
        np.testing.assert_allclose(cell.directions, expected.directions.numpy(), atol=1e-6)
        np.testing.assert_allclose(cell.image_changes, expected.image_changes.numpy(), atol=1e-6)
        np.testing.assert_allclose(cell.residuals, expected.residuals.numpy(), atol=1e-6)
        assert (cell.iterations, cell.converged) == (expected.iterations, expected.converged)
    v = read_jacobian_directions(url, "default", 3, 2, [2, 0])
    np.testing.assert_allclose(v, direct(tiny, 3, 2, 3).directions.numpy()[[2, 0]], atol=1e-6)
    assert run.group["directions"].chunks == (1, 1, 3, 32, 8, 8)


def test_done_cells_are_skipped_and_a_cell_not_done_is_redone(prefect_harness, url, monkeypatch):
    run_flow(flows.jacobian.jacobian_directions, url=url, **RUN)
    chunk = os.path.join(url, "jacobian", "default", "directions", "c", "0", "1", "0", "0", "0", "0")
    before = os.stat(chunk)
    JacobianRun.open(url, "default", writable=True).group["done"][1, 0] = False  # sample 3, step 0
    with pytest.raises(HSpaceError, match="sample 3 at step 0 is not done"):
        read_jacobian_directions(url, "default", 3, 0)
    found = []
    original = tasks.jacobian.find_cell

    def counting(jacobian, sample_id, step, **kwargs):
        found.append((sample_id, step))
        return original(jacobian, sample_id, step, **kwargs)

    monkeypatch.setattr(tasks.jacobian, "find_cell", counting)
    info = run_flow(flows.jacobian.jacobian_directions, url=url, **RUN)
    assert found == [(3, 0)] and info["done"] == 4
    after = os.stat(chunk)  # sample 1 at step 2 was not rewritten (the store writes by rename)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_masked_run_stores_its_mask_and_equals_a_masked_direct_call(prefect_harness, url, tiny, tmp_path):
    picture = np.zeros((32, 32), dtype=np.uint8)
    picture[:, :16] = 255  # left half white, twice the image size
    png = write_png(tmp_path / "mask.png", picture)
    info = run_flow(
        flows.jacobian.jacobian_directions,
        url=url,
        sample_ids=[2],
        steps=[1],
        k=2,
        run="left",
        mask_png=png,
        max_iter=ITER,
        progress=False,
    )
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 1
    assert info["mask_sha256"] == mask_sha256(mask)
    run = JacobianRun.open(url, "left")
    assert np.array_equal(run.mask(), mask)
    expected = direct(tiny, 2, 1, 2, mask=mask)
    np.testing.assert_allclose(run.read(2, 1).directions, expected.directions.numpy(), atol=1e-6)
    changes = run.read(2, 1).image_changes
    assert np.abs(changes[..., 8:]).max() == 0  # eq. 10: eps outside the mask does not count


def test_other_parameters_are_refused_with_the_differences_named(url):
    prepare_jacobian(url, sample_ids=[1], steps=[0], k=3, run="r")
    with pytest.raises(HSpaceError, match=r"k \(run: 3, requested: 2\)"):
        prepare_jacobian(url, sample_ids=[1], steps=[0], k=2, run="r")
    with pytest.raises(HSpaceError, match=r"sample_ids \(run: \[1\], requested: \[1, 2\]\)"):
        prepare_jacobian(url, sample_ids=[1, 2], steps=[0], k=3, run="r")
    with pytest.raises(HSpaceError, match="mask_sha256"):
        prepare_jacobian(url, sample_ids=[1], steps=[0], k=3, run="r", mask=np.ones((16, 16), dtype=np.uint8))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(sample_ids=[6]), r"sample 6 is out of range: the corpus has samples 0\.\.5"),
        (dict(steps=[4]), r"step 4 is out of range: the corpus has steps 0\.\.3"),
        (dict(k=0), r"k must lie in 1\.\.2048"),
        (dict(algorithm="lanczos"), "algorithm must be 'batched'"),
        (dict(block=2), "block .* applies only to algorithm='sequential'"),
        (dict(algorithm="sequential", block=4), r"block \(b of Alg. 2\) must lie in 1\.\.k"),
        (dict(run="../up"), "invalid run name"),
        (dict(tol=0.0), "tol must be a positive number"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(url, arguments, message):
    with pytest.raises(HSpaceError, match=message):
        prepare_jacobian(url, **{"sample_ids": [1], "steps": [0], "k": 3, "run": "r", **arguments})
    assert "jacobian" not in Corpus.open(url).group


def test_corpus_model_refuses_other_weights(url, monkeypatch, tiny):
    import dataclasses

    other = dataclasses.replace(tiny, fingerprint="0" * 64)
    monkeypatch.setattr(tasks.corpus, "cached_model", lambda name, device, precision: other)
    with pytest.raises(HSpaceError, match="differ from those the corpus was built with"):
        tasks.corpus.corpus_model(Corpus.open(url))


def test_mask_png_is_resized_by_nearest_and_binarised_at_128(tmp_path):
    picture = np.zeros((8, 8), dtype=np.uint8)
    picture[:4, :] = 128  # top half exactly at the threshold: inside
    picture[4:, :4] = 127  # just below: outside
    mask = read_mask_png(write_png(tmp_path / "m.png", picture), (16, 16))
    expected = np.zeros((16, 16), dtype=np.uint8)
    expected[:8] = 1
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[3, 5] = 255
    assert np.argwhere(read_mask_png(write_png(tmp_path / "rgb.png", rgb), (16, 16))).tolist() == [[3, 5]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_png(d / "m.jpg", np.full((16, 16), 255, np.uint8), "JPEG"), "is a JPEG file; give a PNG"),
        (lambda d: write_png(d / "m.png", np.full((16, 32), 255, np.uint8)), "give a mask of the same aspect ratio"),
        (lambda d: write_png(d / "m.png", np.zeros((16, 16), np.uint8)), "has no white pixel"),
        (lambda d: (d / "m.png").write_bytes(b"not a png") and str(d / "m.png"), "is not a readable image"),
        (lambda d: str(d / "missing.png"), "cannot read the mask"),
    ],
)
def test_bad_masks_are_refused_clearly(tmp_path, make, message):
    with pytest.raises(HSpaceError, match=message):
        read_mask_png(make(tmp_path), (16, 16))
