"""The pass rule of the testbed report (issue 3's acceptance), on hand-written figures."""

from __future__ import annotations

from hspace.testbed.evaluate import STILL_A_FACE, passing_gamma


def _entry(change: float, random: float, faces: float) -> dict:
    return {"direction": {"change_in_std": change, "face_rate": faces},
            "random": {"abs_change_in_std": random}}


def test_passing_gamma_is_the_smallest_gamma_meeting_every_condition():
    result = {"gammas": {
        "0.5": _entry(0.9, 0.01, 1.0),   # too small an effect
        "1.0": _entry(1.2, 0.5, 1.0),    # under 3x random
        "2.0": _entry(1.5, 0.1, 0.85),   # too few faces for the absolute rule, enough vs an 0.8 base
        "4.0": _entry(2.0, 0.1, 0.95),   # passes both
    }}
    assert passing_gamma(result, STILL_A_FACE) == 4.0
    assert passing_gamma(result, STILL_A_FACE * 0.8) == 2.0
    assert passing_gamma({"gammas": {"1.0": _entry(-3.0, 0.0, 1.0)}}, 0.0) is None  # wrong sign never passes
