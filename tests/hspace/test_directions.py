"""Directions: eq. 12 against numpy's least squares, and x_T edits against diffusers' own DDIM pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from hspace.directions import (
    disentangle,
    disentangled_set,
    norm_preserving_noise_delta,
    per_step_norm,
    random_direction_like,
    supervised_direction,
    top_bottom,
)
from hspace.errors import HSpaceError
from hspace.sampler import initial_noise, sample

SHAPE = (4, 3, 2, 2)  # (T, C, H, W)
STEPS = 8


def _directions(k: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), [torch.randn(SHAPE, generator=g) for _ in range(k)]


def _lstsq_projection(v0: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """[I - V (V^T V)^-1 V^T] v0 by hand: the least-squares coefficients of v0 on V, subtracted."""
    v = np.stack([o.ravel() for o in others], axis=1).astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(v, v0.ravel().astype(np.float64), rcond=None)
    return (v0.ravel() - v @ coefficients).reshape(v0.shape)


# ---------------------------------------------------------------------------------------------- eq. 12


@pytest.mark.parametrize("k", [1, 2, 5])
def test_disentangle_equals_the_least_squares_projection(k):
    v0, others = _directions(k)
    result = disentangle(v0, others)
    assert result.shape == v0.shape and result.dtype == v0.dtype
    expected = _lstsq_projection(v0.numpy(), [o.numpy() for o in others])
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-5)
    # Orthogonal to every other direction (flattened over all steps) and idempotent.
    for other in others:
        assert abs(float((result.double() * other.double()).sum())) <= 1e-4 * float(other.norm() * v0.norm())
    assert torch.allclose(disentangle(result, others), result, atol=1e-5)
    # A stacked (k, T, C, H, W) tensor is the same as a list.
    assert torch.allclose(disentangle(v0, torch.stack(others)), result)


def test_one_other_direction_is_the_papers_formula():
    v0, (v1,) = _directions(1, seed=3)
    # Sec. V: v_{0 perp 1} = v_0 - <v_0, v_1> / |v_1|^2 v_1
    by_hand = v0.double() - (v0.double() * v1.double()).sum() / (v1.double() ** 2).sum() * v1.double()
    assert torch.allclose(disentangle(v0, [v1]).double(), by_hand, atol=1e-6)


def test_a_direction_already_orthogonal_is_unchanged_and_one_in_the_span_vanishes():
    v0, others = _directions(2, seed=4)
    inside = 2.0 * others[0] - 0.5 * others[1]
    assert float(disentangle(inside, others).norm()) <= 1e-5 * float(inside.norm())
    orthogonal = disentangle(v0, others)
    assert torch.allclose(disentangle(orthogonal, others), orthogonal, atol=1e-6)
    assert torch.equal(disentangle(v0, []), v0)


def test_per_step_projection_is_orthogonal_at_every_step():
    v0, others = _directions(2, seed=5)
    result = disentangle(v0, others, per_step=True)
    for t in range(SHAPE[0]):
        expected = _lstsq_projection(v0[t].numpy(), [o[t].numpy() for o in others])
        np.testing.assert_allclose(result[t].numpy(), expected, atol=1e-5)
    # It removes more than the global projection (k numbers per step instead of k in all).
    assert float(result.norm()) < float(disentangle(v0, others).norm())


def test_disentangle_refuses_bad_input():
    v0, others = _directions(2, seed=6)
    with pytest.raises(HSpaceError, match="directions must share one shape"):
        disentangle(v0, [others[0][:2]])
    with pytest.raises(HSpaceError, match=r"others must have shape \(k, \*v0.shape\)"):
        disentangle(v0, torch.stack(others)[:, :2])
    with pytest.raises(HSpaceError, match="linearly dependent: direction 2"):
        disentangle(v0, [others[0], others[1], 3.0 * others[0] - others[1]])
    with pytest.raises(HSpaceError, match="linearly dependent: direction 1 is zero"):
        disentangle(v0, [others[0], torch.zeros(SHAPE)])
    with pytest.raises(HSpaceError, match="linearly dependent at step 0"):
        twin = others[1].clone()
        twin[0] = others[0][0]
        disentangle(v0, [others[0], twin], per_step=True)
    small = torch.randn(3)
    with pytest.raises(HSpaceError, match="space of dimension 3"):
        disentangle(small, [torch.randn(3) for _ in range(4)])
    with pytest.raises(HSpaceError, match="NaN or inf"):
        disentangle(v0, [others[0] * float("nan")])


def test_disentangled_set_names_and_errors():
    v0, (v1, v2) = _directions(2, seed=7)
    out = disentangled_set({"glasses": v0, "hat": v1, "age": v2}, {"glasses": ["hat"], "hat": ["glasses", "age"]})
    assert list(out) == ["glasses", "hat", "age", "glasses-perp-hat", "hat-perp-glasses-age"]
    assert torch.equal(out["glasses-perp-hat"], disentangle(v0, [v1]))
    assert torch.equal(out["hat-perp-glasses-age"], disentangle(v1, [v0, v2]))
    kept = disentangled_set({"glasses": v0, "hat": v1}, {"glasses": ["hat"]}, keep_norm=True)["glasses-perp-hat"]
    assert torch.allclose(kept.norm(), v0.norm(), rtol=1e-5)
    assert abs(float((kept.double() * v1.double()).sum())) <= 1e-4 * float(kept.norm() * v1.norm())
    # Per step: every step keeps its own norm and is orthogonal to the other direction's step.
    step_kept = disentangle(v0, [v1], per_step=True, keep_norm=True)
    assert torch.allclose(step_kept.flatten(1).norm(dim=1), v0.flatten(1).norm(dim=1), rtol=1e-5)
    dots = (step_kept.double() * v1.double()).flatten(1).sum(1)
    assert dots.abs().max() <= 1e-4 * float(v0.norm() * v1.norm())
    with pytest.raises(HSpaceError, match="no direction named 'smile'"):
        disentangled_set({"glasses": v0}, {"glasses": ["smile"]})
    with pytest.raises(HSpaceError, match="against itself"):
        disentangled_set({"glasses": v0}, {"glasses": ["glasses"]})


# ---------------------------------------------------------------------------------------------- eq. 11


def test_supervised_direction_is_the_mean_difference_for_h_and_for_x_T():
    g = torch.Generator().manual_seed(8)
    for shape in (SHAPE, (3, 16, 16)):
        pos, neg = torch.randn(5, *shape, generator=g), torch.randn(5, *shape, generator=g)
        by_hand = sum(pos[i] - neg[i] for i in range(5)) / 5
        assert torch.allclose(supervised_direction(pos, neg), by_hand, atol=1e-6)
    top, bottom = top_bottom(np.array([0.3, 0.9, 0.1, 0.5, 0.7]), 2)
    assert list(top) == [1, 4] and list(bottom) == [2, 0]


def test_top_bottom_with_a_threshold_draws_from_each_class_not_the_extremes():
    # A binary attribute whose classifier is more confident on samples without a second, correlated
    # attribute (the testbed's glasses vs hat): the extremes carry the confound, a draw from the class does not.
    rng = np.random.default_rng(3)
    n = 2000
    label, confound = rng.random(n) < 0.25, rng.random(n) < 0.3
    scores = np.where(label, 0.99, 0.01) + 0.005 * confound + rng.normal(0, 1e-4, n)
    top, bottom = top_bottom(scores, 200)
    assert confound[bottom].mean() < 0.05  # the old selection's bias, which the test must be able to see
    positives, negatives = top_bottom(scores, 200, threshold=0.5, seed=1)
    assert len(positives) == len(negatives) == 200 and len(set(positives) | set(negatives)) == 400
    assert label[positives].all() and not label[negatives].any()
    assert abs(confound[negatives].mean() - confound[~label].mean()) < 0.08
    assert abs(confound[positives].mean() - confound[label].mean()) < 0.08
    assert list(scores[positives]) == sorted(scores[positives], reverse=True)
    assert list(scores[negatives]) == sorted(scores[negatives])
    again = top_bottom(scores, 200, threshold=0.5, seed=1)
    assert np.array_equal(again[0], positives) and np.array_equal(again[1], negatives)
    # The smaller class caps the count; an empty class or a threshold outside the scores is an error.
    few = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.05])
    positives, negatives = top_bottom(few, 5, threshold=0.5)
    assert sorted(positives) == [0, 1] and len(negatives) == 2 and (few[negatives] <= 0.5).all()
    with pytest.raises(HSpaceError, match="no sample scores above the threshold 0.95"):
        top_bottom(few, 2, threshold=0.95)
    with pytest.raises(HSpaceError, match="positive integer"):
        top_bottom(few, 0, threshold=0.5)


def test_random_direction_matches_the_per_step_norm():
    v0, _ = _directions(0, seed=9)
    random = random_direction_like(v0, torch.Generator().manual_seed(0))
    assert torch.allclose(per_step_norm(random), per_step_norm(v0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- x_T edits


def test_initial_noise_is_the_pipelines_first_draw(tiny):
    seeds = [3, 4, 5]
    # DDIMPipeline draws x_T with randn_tensor over one generator per sample.
    expected = randn_tensor((3, *tiny.image_shape), generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(initial_noise(tiny, seeds), expected)
    with pytest.raises(HSpaceError, match="at least one seed"):
        initial_noise(tiny, [])


def test_the_sampler_starts_from_initial_noise(tiny):
    # With eta = 0 (no z_t), moving sample a's x_T onto sample b's reproduces sample b; if initial_noise
    # were not the sampler's x_T this would fail.
    a, b = 21, 22
    shift = initial_noise(tiny, [b])[0] - initial_noise(tiny, [a])[0]
    moved = sample(tiny, [a], steps=STEPS, eta=0.0, noise_delta=shift, capture=False).images
    target = sample(tiny, [b], steps=STEPS, eta=0.0, capture=False).images
    # x_a + (x_b - x_a) differs from x_b by an ulp, which 8 steps of a random-weights model amplify to
    # ~2e-5; another x_T would differ by O(1).
    assert (moved - target).abs().max() <= 1e-4
    # Cancelling x_T makes every seed start at 0: identical deterministic samples.
    zeroed = sample(tiny, [a, b], steps=STEPS, eta=0.0, noise_delta=-initial_noise(tiny, [a, b]), capture=False)
    assert torch.equal(zeroed.images[0], zeroed.images[1])


def test_zero_noise_delta_changes_nothing_bitwise(tiny):
    plain = sample(tiny, [1, 2], steps=STEPS, eta=1.0)
    zero = sample(tiny, [1, 2], steps=STEPS, eta=1.0, noise_delta=torch.zeros(tiny.image_shape))
    assert torch.equal(plain.images, zero.images) and torch.equal(plain.h, zero.h)


def test_noise_delta_equals_diffusers_pipeline_started_from_the_edited_x_T(tiny, monkeypatch):
    """diffusers' DDIMPipeline, with its x_T draw wrapped to add the delta, runs its own loop and its own
    z_t draws (eta = 1) from the same generators: our edit keeps the z_t and edits only x_T."""
    import diffusers.pipelines.ddim.pipeline_ddim as pipeline_module

    seeds = [5, 6]
    delta = torch.randn((2, *tiny.image_shape), generator=torch.Generator().manual_seed(1))

    def edited_x_T(shape, generator=None, device=None, dtype=None, **kwargs):
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype, **kwargs) + delta

    monkeypatch.setattr(pipeline_module, "randn_tensor", edited_x_T)
    pipeline = DDIMPipeline(unet=tiny.unet, scheduler=DDPMScheduler.from_config(tiny.scheduler_config))
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=2,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        eta=1.0,
        num_inference_steps=STEPS,
        output_type="pt",
    ).images
    ours = sample(tiny, seeds, steps=STEPS, eta=1.0, noise_delta=delta, microbatch=2, capture=False).images
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - sample(tiny, seeds, steps=STEPS, eta=1.0, capture=False).images).abs().max() > 1e-2
    with pytest.raises(HSpaceError, match="noise_delta has shape"):
        sample(tiny, seeds, steps=STEPS, noise_delta=delta[:, :2])


def test_norm_preserving_noise_delta_keeps_each_norm():
    g = torch.Generator().manual_seed(2)
    noise, v = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    delta = norm_preserving_noise_delta(noise, 2.0 * v)
    edited = noise + delta
    assert torch.allclose(edited.flatten(1).norm(dim=1), noise.flatten(1).norm(dim=1), rtol=1e-5)
    # Still along x_T + 2 v: the same ray.
    ray = noise + 2.0 * v
    cosine = (edited.flatten(1) * ray.flatten(1)).sum(1) / (edited.flatten(1).norm(dim=1) * ray.flatten(1).norm(dim=1))
    assert torch.allclose(cosine, torch.ones(3), atol=1e-5)
    with pytest.raises(HSpaceError, match="delta has shape"):
        norm_preserving_noise_delta(noise, v[:2])
