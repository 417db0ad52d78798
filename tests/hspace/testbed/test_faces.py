"""The procedural face testbed: determinism, the factor distribution, and that every factor shows where it should."""

from __future__ import annotations

import numpy as np
import pytest

from hspace.errors import HSpaceError
from hspace.testbed.faces import BINARY_FACTORS, FACTORS, render_dataset, render_faces, sample_factors

SIZE = 32
BASE = {
    "yaw": 0.0,
    "smile": 0.0,
    "eyes_open": 1.0,
    "glasses": 0.0,
    "hat": 0.0,
    "skin_tone": 0.5,
    "face_width": 0.5,
    "background": 0.5,
}

# Image regions at 32x32 as (row slice, column slice); they follow the geometry in faces.py.
ALL = (slice(None), slice(None))
TOP = (slice(0, 9), slice(None))  # hat crown and brim, hair
BELOW_HAT = (slice(13, SIZE), slice(None))
UPPER = (slice(0, SIZE // 2 - 2), slice(None))  # above the eyes: the mouth cannot reach it
EYES = (slice(13, 19), slice(None))
MOUTH = (slice(21, 29), slice(8, 24))
FACE_SIDES = (slice(10, 28), np.r_[4:10, 22:28])
FACE_MIDDLE = (slice(10, 28), slice(13, 19))
SKIN = (slice(18, 22), slice(9, 14))  # a cheek: no feature lands here whatever the yaw
CORNERS = (np.r_[0:3, 29:32][:, None], np.r_[0:3, 29:32][None, :])


def faces_with(name: str, low: float, high: float) -> np.ndarray:
    """The base face twice, ``name`` set to ``low`` then ``high``; float64 of shape (2, 3, SIZE, SIZE)."""
    factors = {key: np.full(2, value, dtype=np.float32) for key, value in BASE.items()}
    factors[name] = np.array([low, high], dtype=np.float32)
    return render_faces(factors, SIZE).astype(np.float64)


def test_render_dataset_is_deterministic_in_seed():
    images, factors = render_dataset(16, seed=3)
    again, factors_again = render_dataset(16, seed=3)
    assert np.array_equal(images, again)
    assert all(np.array_equal(factors[name], factors_again[name]) for name in FACTORS)
    other, _ = render_dataset(16, seed=4)
    assert not np.array_equal(images, other)


@pytest.mark.parametrize("size", [32, 16])
def test_shapes_and_dtypes(size):
    images, factors = render_dataset(5, seed=0, size=size)
    assert images.shape == (5, 3, size, size) and images.dtype == np.uint8
    assert set(factors) == set(FACTORS)
    assert all(v.shape == (5,) and v.dtype == np.float32 for v in factors.values())


def test_factor_ranges_correlation_and_independence():
    factors = sample_factors(20_000, np.random.default_rng(0))
    for name in BINARY_FACTORS:
        assert set(np.unique(factors[name])) <= {0.0, 1.0}
    for name, (low, high) in {
        "yaw": (-1, 1),
        "smile": (-1, 1),
        "skin_tone": (0, 1),
        "face_width": (0, 1),
        "background": (0, 1),
    }.items():
        v = factors[name]
        assert v.min() >= low and v.max() <= high
        # Uniform: spread over the whole range, not piled at one end.
        assert v.min() < low + 0.01 and v.max() > high - 0.01 and abs(v.mean() - (low + high) / 2) < 0.02
    glasses, hat = factors["glasses"] == 1, factors["hat"] == 1
    assert abs(glasses.mean() - 0.3) < 0.02 and abs(factors["eyes_open"].mean() - 0.5) < 0.02
    assert abs(hat[glasses].mean() - 0.7) < 0.03
    assert abs(hat[~glasses].mean() - 0.2) < 0.03
    # The glasses-hat link is the only dependence: every other pair is uncorrelated.
    correlation = np.corrcoef(np.stack([factors[name] for name in FACTORS]))
    hat_glasses = {FACTORS.index("hat"), FACTORS.index("glasses")}
    for i in range(len(FACTORS)):
        for j in range(i + 1, len(FACTORS)):
            if {i, j} != hat_glasses:
                assert abs(correlation[i, j]) < 0.05, (FACTORS[i], FACTORS[j], correlation[i, j])
    assert correlation[FACTORS.index("hat"), FACTORS.index("glasses")] > 0.3


# (factor, low, high, where it must change, where it must change much less)
VISIBILITY = [
    ("yaw", -1.0, 1.0, EYES, TOP),
    ("smile", -1.0, 1.0, MOUTH, UPPER),
    ("eyes_open", 0.0, 1.0, EYES, MOUTH),
    ("glasses", 0.0, 1.0, EYES, MOUTH),
    ("hat", 0.0, 1.0, TOP, BELOW_HAT),
    ("skin_tone", 0.0, 1.0, SKIN, CORNERS),
    ("face_width", 0.0, 1.0, FACE_SIDES, FACE_MIDDLE),
    ("background", 0.0, 1.0, CORNERS, SKIN),
]


@pytest.mark.parametrize(("name", "low", "high", "changed", "kept"), VISIBILITY, ids=[v[0] for v in VISIBILITY])
def test_each_factor_is_visible_where_it_should_be(name, low, high, changed, kept):
    before, after = faces_with(name, low, high)
    difference = np.abs(after - before).mean(axis=0)  # (SIZE, SIZE), grey levels
    assert difference.mean() > 1.5, f"{name} barely changes the image"
    assert difference[changed].mean() > 8.0, f"{name} barely changes its own region"
    assert difference[changed].mean() > 4 * difference[kept].mean() + 1e-9, f"{name} is not localised"


def test_factors_are_not_visible_when_unchanged():
    # The renderer is a pure function of the factors: equal factors, equal pixels.
    before, after = faces_with("yaw", 0.25, 0.25)
    assert np.array_equal(before, after)


def test_missing_factor_is_named():
    factors = sample_factors(2, np.random.default_rng(0))
    del factors["smile"]
    with pytest.raises(HSpaceError, match="smile"):
        render_faces(factors)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_count_must_be_a_positive_integer(n):
    with pytest.raises(HSpaceError, match="positive"):
        sample_factors(n, np.random.default_rng(0))
    with pytest.raises(HSpaceError, match="positive"):
        render_dataset(n, seed=0)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [("glasses", 0.5, "0 or 1"), ("yaw", 1.5, r"\[-1.0, 1.0\]"), ("background", np.nan, "background")],
)
def test_out_of_range_factors_are_rejected(name, value, match):
    factors = {key: np.full(2, v, dtype=np.float32) for key, v in BASE.items()}
    factors[name][1] = value
    with pytest.raises(HSpaceError, match=match):
        render_faces(factors)


def test_factor_lengths_must_agree():
    factors = {key: np.full(2, v, dtype=np.float32) for key, v in BASE.items()}
    factors["hat"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(HSpaceError, match="one length"):
        render_faces(factors)
    with pytest.raises(HSpaceError, match="size"):
        render_faces({key: np.full(1, v) for key, v in BASE.items()}, size=4)
