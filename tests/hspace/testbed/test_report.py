"""The pass rule of the testbed report (>= 1 std, >= 3x random, >= 90% faces), on hand-written figures."""

from __future__ import annotations

from hspace.testbed.evaluate import STILL_A_FACE, passing_gamma, to_markdown


def _entry(change: float, random: float, faces: float) -> dict:
    return {"direction": {"change_in_std": change, "face_rate": faces}, "random": {"abs_change_in_std": random}}


def test_passing_gamma_is_the_smallest_gamma_meeting_every_condition():
    result = {
        "gammas": {
            "0.5": _entry(0.9, 0.01, 1.0),  # too small an effect
            "1.0": _entry(1.2, 0.5, 1.0),  # under 3x random
            "2.0": _entry(1.5, 0.1, 0.85),  # too few faces for the absolute rule, enough vs an 0.8 base
            "4.0": _entry(2.0, 0.1, 0.95),  # passes both
        }
    }
    assert passing_gamma(result, STILL_A_FACE) == 4.0
    assert passing_gamma(result, STILL_A_FACE * 0.8) == 2.0
    assert passing_gamma({"gammas": {"1.0": _entry(-3.0, 0.0, 1.0)}}, 0.0) is None  # wrong sign never passes


def test_markdown_side_effect_counts_only_pairs_that_stay_faces():
    # Hand-written figures: over all edits glasses moves most (non-faces score anything), over the pairs that
    # stay faces hat does; the table must name hat, at the largest gamma that has face pairs (1.0, not 2.0).
    # A factor with no face pair says n/a.
    direction = {
        "change_in_std": 1.5,
        "abs_change_in_std": 1.5,
        "face_rate": 0.5,
        "others_in_std": {"glasses": 2.0, "hat": -0.4},
        "others_in_std_faces": {"glasses": 0.1, "hat": -0.4},
    }
    broken = {**direction, "others_in_std_faces": None}
    random = {"abs_change_in_std": 0.1}
    figures = {
        "model": "testbed",
        "fingerprint": "0123456789abcdef",
        "steps": 50,
        "eta": 1.0,
        "seed": 0,
        "annotator": "testbed",
        "quality": {
            "face_rate": 0.8,
            "n": 8,
            "distances": {"yaw": {"value": 0.1, "measure": "W1", "samples": 0.2, "data": 0.1}},
        },
        "supervised": {
            "k": 2,
            "corpus_samples": 8,
            "eval_samples": 4,
            "base_face_rate": 0.8,
            "factors": {
                "yaw": {
                    "std": 1.0,
                    "gammas": {
                        "1.0": {"direction": direction, "random": random},
                        "2.0": {"direction": broken, "random": random},
                    },
                    "passes_at_gamma": None,
                    "passes_at_gamma_vs_base": None,
                },
                "smile": {
                    "std": 1.0,
                    "gammas": {"1.0": {"direction": broken, "random": random}},
                    "passes_at_gamma": None,
                    "passes_at_gamma_vs_base": None,
                },
            },
        },
        "h_swap": {"pairs": 4, "face_rate": 1.0, "factors": {"yaw": {"pairs_that_differ": 3, "follows_h_donor": 1.0}}},
        "per_step_r2": {"train": 6, "test": 2, "r2": {"yaw": [0.1, 0.5, 0.9, 0.95]}},
    }
    # The supervised table's rows are the ones whose cells read "change / random / faces".
    rows = {
        line.split("|")[1].strip(): line
        for line in to_markdown(figures).splitlines()
        if line.startswith("| ") and " / " in line
    }
    assert rows["yaw"].rstrip().endswith("| hat -0.40 (gamma 1.0) |")
    assert rows["smile"].rstrip().endswith("| n/a |")
