"""The Table I evaluation and the Fig. 8a curve: aggregation against a hand replay with the sampler, and the
semantics of supervised and disentangled directions on the trained testbed model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hspace.annotators.base import Annotator
from hspace.directions import disentangled_set, per_step_norm, random_direction_like
from hspace.efficiency import sample_efficiency
from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationResult, evaluate_directions
from hspace.sampler import derive_seeds, sample, to_uint8
from hspace.scoring import generate

SLOW = os.environ.get("HSPACE_SLOW") == "1"


class Brightness(Annotator):
    """Scores that are a known function of the pixels: mean brightness and mean red, in [0, 1]."""

    name = "brightness"
    attributes = ("brightness", "red")

    def score(self, images: np.ndarray) -> np.ndarray:
        self.check_images(images)
        pixels = images.astype(np.float64) / 255
        return np.stack([pixels.mean(axis=(1, 2, 3)), pixels[:, 0].mean(axis=(1, 2))], axis=1).astype(np.float32)


def _brightness(images: torch.Tensor) -> np.ndarray:
    return to_uint8(images).numpy().astype(np.float64).mean(axis=(1, 2, 3)) / 255


STEPS = 4


@pytest.fixture(scope="module")
def tiny_directions(tiny) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "h-dir": torch.randn(STEPS, *tiny.h_shape, generator=g),
        "x-dir": torch.randn(tiny.image_shape, generator=g),
    }


@pytest.fixture(scope="module")
def tiny_result(tiny, tiny_directions) -> EvaluationResult:
    return evaluate_directions(
        tiny,
        Brightness(),
        tiny_directions,
        gamma={"h-dir": 3.0, "x-dir": 0.5},
        steps=STEPS,
        samples=3,
        repeats=2,
        seed=5,
        batch=64,
    )


def test_the_matrix_is_a_replay_of_the_sampler_by_hand(tiny, tiny_directions, tiny_result):
    """Each cell is mean(brightness(edited) - brightness(unedited)) over the repeat's samples, recomputed here
    with hspace.sampler.sample one direction at a time; the random rows use random_direction_like."""
    v_h, v_x = tiny_directions["h-dir"], tiny_directions["x-dir"]
    generator = torch.Generator().manual_seed(5)
    random_h = random_direction_like(v_h, generator)
    random_x = random_direction_like(v_x.unsqueeze(0), generator)[0]
    assert torch.allclose(random_x.norm(), v_x.norm())
    edits = [
        dict(delta=3.0 * v_h),
        dict(noise_delta=0.5 * v_x),
        dict(delta=3.0 * random_h),
        dict(noise_delta=0.5 * random_x),
    ]
    by_hand = np.zeros((2, 4))
    unedited = []
    for r in range(2):
        seeds = derive_seeds(5, 3 * r, 3 * r + 3)
        plain = _brightness(sample(tiny, seeds, steps=STEPS, capture=False).images)
        unedited.append(plain)
        for d, edit in enumerate(edits):
            by_hand[r, d] = (_brightness(sample(tiny, seeds, steps=STEPS, capture=False, **edit).images) - plain).mean()
    assert tiny_result.rows == ("h-dir", "x-dir", "random(h-dir)", "random(x-dir)")
    assert tiny_result.attributes == ("brightness", "red")
    assert tiny_result.effects.shape == (2, 4, 2)
    # Whole-batch passes round differently from one-at-a-time ones (~1e-5), which could flip a uint8 pixel
    # (5e-6 of a sample's brightness each); the edits move brightness by far more, so this can fail.
    atol = 2e-5
    assert np.abs(by_hand).min() > 20 * atol
    np.testing.assert_allclose(tiny_result.effects[:, :, 0], by_hand, atol=atol)
    np.testing.assert_allclose(tiny_result.mean()[:, 0], by_hand.mean(0), atol=atol)
    np.testing.assert_allclose(tiny_result.std()[:, 0], by_hand.std(0, ddof=1), atol=2 * atol)
    np.testing.assert_allclose(tiny_result.scale[0], np.concatenate(unedited).std(), atol=atol)
    np.testing.assert_allclose(tiny_result.mean("std"), tiny_result.mean() / tiny_result.scale, rtol=1e-9)


def test_outputs_csv_markdown_json_and_heatmap(tiny_result):
    data = json.loads(json.dumps(tiny_result.to_dict()))
    again = EvaluationResult.from_dict(data)
    assert again.rows == tiny_result.rows and np.array_equal(again.effects, tiny_result.effects)
    assert data["settings"]["kinds"] == {"h-dir": "h", "x-dir": "x_T"}
    lines = tiny_result.to_csv().splitlines()
    assert lines[0] == "direction,attribute,mean,std,mean_in_std,std_in_std,abs_mean"
    assert len(lines) == 1 + 4 * 2
    first = lines[1].split(",")
    assert first[:2] == ["h-dir", "brightness"] and float(first[2]) == pytest.approx(tiny_result.mean()[0, 0], rel=1e-5)
    markdown = tiny_result.to_markdown()
    assert "| direction | brightness | red |" in markdown and markdown.count("**") == 2 * 4
    picture = tiny_result.heatmap()
    assert picture.mode == "RGB" and picture.width > 100 and picture.height > 4 * 18


def test_bad_input_is_refused(tiny, tiny_directions):
    annotator = Brightness()
    with pytest.raises(HSpaceError, match="expected an h direction"):
        evaluate_directions(
            tiny, annotator, {"v": tiny_directions["h-dir"][:2]}, gamma=1.0, steps=STEPS, samples=1, repeats=1
        )
    with pytest.raises(HSpaceError, match="no attribute 'smile'"):
        evaluate_directions(tiny, annotator, tiny_directions, gamma=1.0, steps=STEPS, attributes=["smile"])
    with pytest.raises(HSpaceError, match="no value for direction"):
        evaluate_directions(tiny, annotator, tiny_directions, gamma={"h-dir": 1.0}, steps=STEPS)
    with pytest.raises(HSpaceError, match="random baseline"):
        evaluate_directions(
            tiny,
            annotator,
            {"v": tiny_directions["h-dir"], "random(v)": tiny_directions["h-dir"]},
            gamma=1.0,
            steps=STEPS,
        )
    with pytest.raises(HSpaceError, match="example counts must lie in 1..4"):
        sample_efficiency(
            tiny,
            annotator,
            attribute="brightness",
            gamma_h=1.0,
            gamma_x=1.0,
            steps=STEPS,
            example_counts=(2, 5),
            pool_samples=8,
        )


def test_sample_efficiency_is_eq_11_replayed_by_hand(tiny):
    """Pool, top/bottom, eq. 11 in h and in x_T (x_T drawn here from the seeds' own generators),
    normalisation to the largest n, edits: all recomputed with the sampler."""
    annotator, counts, seed, batch = Brightness(), (1, 2, 4), 3, 64
    curve = sample_efficiency(
        tiny,
        annotator,
        attribute="brightness",
        gamma_h=4.0,
        gamma_x=1.0,
        steps=STEPS,
        example_counts=counts,
        pool_samples=8,
        eval_samples=3,
        eta=0.0,
        seed=seed,
        batch=batch,
    )
    pool_seeds = derive_seeds(seed, 0, 8)
    pool = sample(tiny, pool_seeds, steps=STEPS, eta=0.0, microbatch=batch)
    x_T = torch.cat(
        [torch.randn((1, *tiny.image_shape), generator=torch.Generator().manual_seed(s)) for s in pool_seeds]
    )
    order = np.argsort(_brightness(pool.images))
    v_h = {n: pool.h[order[-n:]].mean(0) - pool.h[order[:n]].mean(0) for n in counts}
    v_x = {n: x_T[order[-n:]].mean(0) - x_T[order[:n]].mean(0) for n in counts}
    eval_seeds = derive_seeds(seed, 8, 11)
    plain = _brightness(sample(tiny, eval_seeds, steps=STEPS, eta=0.0, capture=False).images)
    for i, n in enumerate(counts):
        h = v_h[n] * (per_step_norm(v_h[4]) / per_step_norm(v_h[n])).view(-1, 1, 1, 1)
        x = v_x[n] * v_x[4].norm() / v_x[n].norm()
        edited_h = _brightness(sample(tiny, eval_seeds, steps=STEPS, eta=0.0, delta=4.0 * h, capture=False).images)
        edited_x = _brightness(
            sample(tiny, eval_seeds, steps=STEPS, eta=0.0, noise_delta=1.0 * x, capture=False).images
        )
        assert curve.effect_h[i] == pytest.approx((edited_h - plain).mean(), abs=2e-5)
        assert curve.effect_x[i] == pytest.approx((edited_x - plain).mean(), abs=2e-5)
        cosine = float((v_x[n] * v_x[4]).sum() / (v_x[n].norm() * v_x[4].norm()))
        assert curve.cosine_x[i] == pytest.approx(cosine, abs=1e-5)
    generator = torch.Generator().manual_seed(seed)
    random_h = random_direction_like(v_h[4], generator)
    random_x = random_direction_like(v_x[4].unsqueeze(0), generator)[0]
    for (effect, _), edit in (
        (curve.random_h, dict(delta=4.0 * random_h)),
        (curve.random_x, dict(noise_delta=1.0 * random_x)),
    ):
        edited = _brightness(sample(tiny, eval_seeds, steps=STEPS, eta=0.0, capture=False, **edit).images)
        assert effect == pytest.approx((edited - plain).mean(), abs=2e-5)
    assert np.abs(curve.effect_h).max() > 1e-3 and np.abs(curve.effect_x).max() > 1e-3
    assert curve.cosine_h[-1] == pytest.approx(1.0) and curve.counts == counts
    json.dumps(curve.to_dict())
    assert "| n | effect h | effect x_T |" in curve.to_markdown()
    assert curve.plot().size == (480, 300)


# ------------------------------------------------------------------------------------------ the testbed


def _testbed_directions(model, annotator, *, pool: int, steps: int, factors, seed: int = 0):
    """eq. 11 from the top quarter vs bottom quarter of the pool's faces (factor scores of non-faces mean
    nothing; a binary factor's quarter drawn from each side of 0.5, as ``rebuild-bank`` does), plus glasses
    and hat disentangled from each other and smile from skin tone (eq. 12), as eq. 12 leaves them
    (``glasses-perp-hat``) and rescaled to the original's norm (``glasses-perp-hat-rescaled``)."""
    from hspace.directions import supervised_direction, top_bottom

    samples = generate(model, annotator, derive_seeds(seed, 0, pool), steps=steps, capture=True)
    faces = np.flatnonzero(samples.scores["face"] > 0.5)
    k = len(faces) // 4
    directions = {}
    for f in factors:
        top, bottom = top_bottom(samples.scores[f][faces], k, threshold=annotator.class_thresholds.get(f))
        directions[f] = supervised_direction(samples.h[faces[top]], samples.h[faces[bottom]])
    # The deliberate correlation (glasses, hat), and smile against skin tone, which the 9,000-step model
    # entangled (each one's direction moved the other by ~0.8 std; in Table I the 16,000-step one: +0.30
    # smile -> skin; the 20,000-step one: +0.01 smile -> skin, +0.60 skin -> smile) though the data does not.
    pairs = {
        name: others
        for name, others in {"glasses": ["hat"], "hat": ["glasses"], "smile": ["skin_tone"]}.items()
        if name in factors and set(others) <= set(factors)
    }
    rescaled = disentangled_set(directions, pairs, keep_norm=True)
    labels = [f"{name}-perp-{'-'.join(others)}" for name, others in pairs.items()]
    return disentangled_set(directions, pairs) | {f"{label}-rescaled": rescaled[label] for label in labels}, k


@pytest.fixture(scope="module")
def testbed():
    from hspace.annotators import load_annotator
    from hspace.models import load_model

    return load_model("testbed"), load_annotator("testbed")


def _check_disentanglement(result: EvaluationResult) -> None:
    """Eq. 12 at a small size: the disentangled glasses direction cuts the change of hat by >= 50% and keeps
    >= 80% of its own effect, compared at the same edit size: eq. 12 shortens the direction by the part it
    removes, and the paper's conditional manipulation follows Shen et al. (InterFaceGAN), whose
    ``project_boundary`` (genforce/interfacegan, utils/manipulator.py) renormalises the projected direction
    to unit norm like its inputs. The unrescaled row is in the table too."""
    hat, hat_perp = result.effect("glasses", "hat"), result.effect("glasses-perp-hat-rescaled", "hat")
    own, own_perp = result.effect("glasses", "glasses"), result.effect("glasses-perp-hat-rescaled", "glasses")
    assert own > 0 and hat > 0, "the glasses direction raises glasses and, by the correlation, hat"
    assert abs(hat_perp) <= 0.5 * hat
    assert own_perp >= 0.8 * own


def test_testbed_glasses_disentangled_from_hat(testbed):
    """The acceptance check at a small size (the full one: HSPACE_SLOW=1, below): pool 128, 20 steps, k = 30,
    gamma 1, 16 samples. Measured (32,000-step weights, glasses drawn from each class; score units): the eq. 11
    glasses direction raises the correlated hat far more than glasses (hat +0.555, every edit wearing a hat;
    glasses +0.108); rescaled to its norm, eq. 12 raises glasses more (+0.23) and turns the hat change to
    -0.09 (an 84% cut in size); unrescaled, glasses +0.25 and hat -0.09. At pool 96, this test's size until
    the 32,000-step weights (on the 20,000-step ones: k = 17, hat +0.49 -> -0.08), the 32,000-step model
    gives k = 22 and its disentangled direction overshoots to hat -0.34 (glasses +0.07 -> +0.26), beyond the
    50% bound: the direction from 22 examples is too noisy at 20 steps. Deterministic on this torch build; a model or
    sampler change moves these figures, not the bounds."""
    model, annotator = testbed
    directions, _ = _testbed_directions(model, annotator, pool=128, steps=20, factors=("glasses", "hat"))
    chosen = {name: directions[name] for name in ("glasses", "glasses-perp-hat", "glasses-perp-hat-rescaled")}
    result = evaluate_directions(
        model,
        annotator,
        chosen,
        gamma=1.0,
        steps=20,
        samples=16,
        repeats=1,
        seed=1,
        random_baseline=False,
        attributes=("glasses", "hat"),
    )
    print(result.to_markdown())
    assert result.effect("glasses", "hat") > 0.1, "the correlation: the glasses direction raises hat"
    _check_disentanglement(result)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="full-size Table I on the testbed (~10 min on 2 cores): HSPACE_SLOW=1")
def test_testbed_table_one_full_size(testbed):
    model, annotator = testbed
    factors = ("yaw", "smile", "eyes_open", "glasses", "hat", "skin_tone")
    steps = int(os.environ.get("HSPACE_STEPS", "50"))
    directions, k = _testbed_directions(
        model, annotator, pool=int(os.environ.get("HSPACE_POOL", "256")), steps=steps, factors=factors
    )
    result = evaluate_directions(
        model,
        annotator,
        directions,
        gamma=float(os.environ.get("HSPACE_GAMMA", "0.5")),
        steps=steps,
        samples=int(os.environ.get("HSPACE_SAMPLES", "32")),
        repeats=int(os.environ.get("HSPACE_REPEATS", "3")),
        seed=1,
        progress=lambda message: print(message, flush=True),
    )
    out = Path(os.environ.get("HSPACE_OUT", "hspace-table1"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text(result.to_markdown("std") + "\n" + result.to_markdown())
    (out / "table1.csv").write_text(result.to_csv())
    (out / "table1.json").write_text(json.dumps(result.to_dict(), indent=1))
    result.heatmap().save(out / "table1.png")
    print(result.to_markdown("std"))
    mean = result.mean("std")
    for f in factors:  # each supervised direction changes its own factor most (in stds of the unedited scores)
        row = mean[result.rows.index(f)]
        others = [abs(row[j]) for j, a in enumerate(result.attributes) if a not in (f, "face")]
        assert row[result.attributes.index(f)] > max(others), f
    _check_disentanglement(result)
