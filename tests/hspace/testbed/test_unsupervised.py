"""The unsupervised directions mean something on the trained testbed model (Sec. IV).

Oracles: the testbed annotator (trained on renders with known factors, checked in
tests/hspace/testbed/test_annotator.py) and the renderer's face geometry, not the code under test. Small versions of
``bench/bench_unsupervised_testbed.py`` (the full-size figures); thresholds come from measurements at these
exact settings (in the comments) with a margin, and each assertion fails for a direction that does nothing
(random baseline) or nothing local (unmasked Jacobian).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hspace.annotators import load_annotator
from hspace.directions import random_direction_like
from hspace.editing import change_maps
from hspace.jacobian import jacobian_directions, state_at_step
from hspace.models import load_model
from hspace.pca import StreamingPCA
from hspace.pca_directions import align_signs, pca_direction
from hspace.sampler import derive_seeds
from hspace.testbed import faces
from hspace.testbed.evaluate import generate
from hspace.testbed.faces import FACTORS, mouth_mask

STEPS = 10  # few steps keep the file fast; edits are weaker than at 50 steps (the bench's)
ETA = 1.0
GAMMAS = (-1.0, -0.5, 0.5, 1.0)  # in units of the corpus' mean |h_t| at each step
TOP = 2  # the top two components: both move skin tone, each far more than random (measured)


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed"), load_annotator("testbed")


def test_mouth_mask_covers_the_rendered_mouths_and_little_else():
    # Oracle: the renderer itself. Faces that differ only in smile differ only at the mouth.
    rng = np.random.default_rng(0)
    factors = faces.sample_factors(64, rng)
    images_a = faces.render_faces(factors).astype(int)
    factors_b = dict(factors, smile=-factors["smile"])
    images_b = faces.render_faces(factors_b).astype(int)
    changed = np.abs(images_a - images_b).max(axis=(0, 1)) > 0
    mask = mouth_mask(32)
    assert changed.any() and not (changed & ~mask).any()
    assert mask.mean() < 0.15  # the box of every mouth position: 18 x 8 of 32 x 32 pixels


def _pca_directions(h: torch.Tensor, k: int) -> torch.Tensor:
    """(k, T, C, H, W): component j of every step (Sec. IV-A), signs aligned across steps."""
    n, steps = h.shape[:2]
    components = np.stack([StreamingPCA(k).fit(h[:, t].reshape(n, -1)).components_ for t in range(steps)])
    aligned, _ = align_signs(components)
    return torch.stack([pca_direction(aligned, j, tuple(h.shape[2:])) for j in range(k)])


def test_top_pca_directions_move_a_factor_monotonically_and_far_more_than_random(testbed):
    model, annotator = testbed
    corpus = generate(model, annotator, derive_seeds(0, 0, 128), steps=STEPS, eta=ETA, capture=True)
    directions = _pca_directions(corpus.h, TOP)
    scale = corpus.h.flatten(2).norm(dim=2).mean(0)  # (T,): mean |h_t|, the unit of gamma

    seeds = derive_seeds(1, 0, 16)
    n = len(seeds)
    base = generate(model, annotator, seeds, steps=STEPS, eta=ETA)
    stds = {a: float(base.scores[a].std()) for a in FACTORS}
    generator = torch.Generator().manual_seed(0)
    edits: list[torch.Tensor] = []
    for unit in directions:
        v = unit * scale.view(-1, 1, 1, 1)
        r = random_direction_like(v, generator)
        edits += [g * v for g in GAMMAS] + [GAMMAS[-1] * r, -GAMMAS[-1] * r]
    per_direction = len(GAMMAS) + 2
    delta = torch.cat([e.expand(n, *e.shape) for e in edits])
    edited = generate(model, annotator, seeds * len(edits), steps=STEPS, eta=ETA, delta=delta)

    def scores(a: str, i: int) -> np.ndarray:
        return edited.scores[a][i * n : (i + 1) * n]

    found = []
    for j in range(TOP):
        first = j * per_direction
        best = None
        for a in FACTORS:
            # Mean score at gamma -1, -0.5, 0, 0.5, 1 (0: the unedited samples), in stds of the unedited samples.
            curve = (
                np.array(
                    [scores(a, first + i).mean() for i in range(2)]
                    + [base.scores[a].mean()]
                    + [scores(a, first + i).mean() for i in range(2, 4)]
                )
                / stds[a]
            )
            swing = abs(curve[-1] - curve[0]) / 2
            random = np.concatenate([np.abs(scores(a, first + 4 + i) - base.scores[a]) for i in range(2)]).mean()
            ratio = swing / max(random / stds[a], 1e-6)
            steps = np.diff(curve)
            monotone = (steps > 0).all() or (steps < 0).all()
            if monotone and (best is None or swing > best[1]):
                best = (a, swing, ratio)
        found.append((j, best))
    print("direction -> (factor, half swing in std, ratio to random):", found)
    for j, best in found:
        assert best is not None, f"PCA direction {j + 1} moves no factor monotonically"
        factor, swing, ratio = best
        assert swing >= 0.4, (j, best)  # measured 0.89, 1.28 std; ratios 5.7, 11.6 (seed 0 corpus)
        assert ratio >= 3.0, (j, best)


def test_masked_jacobian_direction_changes_the_mouth_region_more_than_the_unmasked(testbed):
    model, _ = testbed
    step, gamma = 8, 1.0
    mask = mouth_mask(model.image_shape[-1])
    inside = torch.from_numpy(mask)
    ratios: dict[tuple[str, str], list[float]] = {}
    for seed in derive_seeds(7, 0, 2):
        state = state_at_step(model, seed, steps=STEPS, step=step, eta=ETA)
        size = gamma * float(state.h_t.norm())
        deltas, labels = [], []
        for kind, m in (("masked", mask), ("unmasked", None)):
            # Only the top direction is used, so only it is computed: with k = 2 the second vector can take
            # hundreds of iterations when sigma_2 ~ sigma_3 (0.419 vs 0.414 for the second seed, masked, on
            # the 32,000-step weights), while sigma_1 / sigma_2 ~ 1.5 converges the first in a few.
            result = jacobian_directions(model, state.x_t, state.t, 1, mask=m)
            assert result.converged
            v = size * result.directions[0]
            everywhere = v.expand(STEPS, *v.shape).clone()  # found at one step, applied at all (Sec. IV-B)
            only_there = torch.zeros(STEPS, *model.h_shape)
            only_there[step] = v
            deltas += [everywhere, only_there]
            labels += [(kind, "all"), (kind, "step")]
        change = change_maps(model, seed, deltas, steps=STEPS, eta=ETA)
        for label, c in zip(labels, change, strict=True):
            ratios.setdefault(label, []).append(float(c[inside].mean() / c[~inside].mean()))
    mean = {label: float(np.mean(r)) for label, r in ratios.items()}
    print("mean inside/outside |pixel change|:", mean)
    # Measured on the 32,000-step weights: masked 2.32 (all steps) and 5.50 (its step only), unmasked 1.12 and
    # 1.46 (26,000 steps, k = 2: masked 1.93 / 3.79, unmasked 0.63 / 1.20); the bounds were set
    # on the 9,000-step model (masked 1.60 / 2.75, unmasked 1.39 / 1.33), where unmasked directions acted
    # on the mouth (14% of the image) too. Bounds below both models' figures.
    assert mean[("masked", "all")] >= 1.4
    assert mean[("masked", "all")] >= 1.1 * mean[("unmasked", "all")]
    assert mean[("masked", "step")] >= 2.2
    assert mean[("masked", "step")] >= 1.6 * mean[("unmasked", "step")]
