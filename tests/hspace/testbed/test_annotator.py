"""The testbed annotator: shipped weights checked on load, accurate on held-out renders, never unpickled."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from hspace.annotators import load_annotator
from hspace.errors import HSpaceError
from hspace.testbed.annotator import ATTRIBUTES, DEFAULT_WEIGHTS, TestbedAnnotator
from hspace.testbed.augment import NEGATIVE_KINDS, make_negatives
from hspace.testbed.faces import BINARY_FACTORS, render_dataset
from hspace.testbed.train_annotator import evaluate_annotator, train_annotator


@pytest.fixture(scope="module")
def annotator() -> TestbedAnnotator:
    return load_annotator("testbed")


@pytest.fixture(scope="module")
def held_out(annotator) -> dict:
    # A seed neither training (32-bit hashes of (seed, step)) nor the card's report (20250101) used.
    return evaluate_annotator(annotator, faces=1000, negatives=1000, seed=777)


def test_faces_and_non_faces_are_told_apart(held_out):
    assert held_out["face_recall"] >= 0.98
    assert held_out["face_recall_noisy"] >= 0.95
    assert held_out["negative_rejection"] >= 0.95
    assert min(held_out["negative_rejection_by_kind"].values()) >= 0.85


def test_factors_are_read_from_renders(held_out):
    for name in BINARY_FACTORS:
        assert held_out["binary_accuracy"][name] >= 0.95, name
    for name, r2 in held_out["r2"].items():
        assert r2 >= 0.9, name


def test_scores_follow_the_renderer_labels_directly(annotator):
    # An independent check of the report's arithmetic: correlation with the true factor, computed here.
    images, factors = render_dataset(300, seed=4242)
    scores = annotator.scores_by_attribute(images)
    for name in ("yaw", "smile", "skin_tone"):
        assert np.corrcoef(scores[name], factors[name])[0, 1] >= 0.95, name
    assert scores["face"].min() > 0.5


def test_larger_renders_are_resized_and_score_alike(annotator):
    small, _ = render_dataset(64, seed=5)
    large, _ = render_dataset(64, seed=5, size=64)
    a, b = annotator.score(small), annotator.score(large)
    assert a.shape == b.shape == (64, len(ATTRIBUTES))
    assert np.median(np.abs(a - b)) < 0.05


def test_bad_images_are_a_clear_error(annotator):
    with pytest.raises(HSpaceError, match="uint8"):
        annotator.score(np.zeros((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(HSpaceError, match="uint8"):
        annotator.score(np.zeros((2, 32, 32), dtype=np.uint8))


def test_damaged_or_missing_weights_are_refused(tmp_path):
    copy = tmp_path / "annotator.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, copy)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), copy.with_suffix(".json"))
    assert TestbedAnnotator.load(copy).score(render_dataset(2, seed=0)[0]).shape == (2, len(ATTRIBUTES))
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x10
    copy.write_bytes(bytes(data))
    with pytest.raises(HSpaceError, match="damaged"):
        TestbedAnnotator.load(copy)
    copy.with_suffix(".json").unlink()
    with pytest.raises(HSpaceError, match="missing"):
        TestbedAnnotator.load(copy)


def test_unknown_annotator_names_the_known_ones():
    with pytest.raises(HSpaceError, match="testbed"):
        load_annotator("celeba-classifier")


def test_training_is_deterministic_and_save_load_round_trips(tmp_path):
    from hspace.testbed.train_annotator import save_annotator

    with torch.random.fork_rng(devices=[]):
        net_a, report = train_annotator(3, 11, batch=16, eval_faces=8, eval_negatives=8)
        net_b, _ = train_annotator(3, 11, batch=16, eval_faces=8, eval_negatives=8)
    for (key, a), (_, b) in zip(net_a.state_dict().items(), net_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    card = save_annotator(net_a, report, tmp_path / "a.safetensors", command="test")
    assert card["attributes"] == list(ATTRIBUTES)
    images = render_dataset(4, seed=1)[0]
    np.testing.assert_array_equal(
        TestbedAnnotator.load(tmp_path / "a.safetensors").score(images), TestbedAnnotator(net_a).score(images)
    )


def test_every_negative_kind_renders():
    rng = np.random.default_rng(0)
    for kind in NEGATIVE_KINDS:
        images = make_negatives(3, rng, [kind])
        assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8, kind
    with pytest.raises(HSpaceError, match="subset"):
        make_negatives(1, rng, ["cats"])
