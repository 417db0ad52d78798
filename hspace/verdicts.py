"""A verdict per bank direction, from the Table I row the bank stores with it (issue 20).

Users of editing tools ask why an edit "has no effect at all" or "changes gender too". The evaluation a bank
version stores (``Direction.evaluation``: per attribute, the mean change of its score under the edit and under a
norm-matched random direction, in stds of its unedited scores, Table I) answers both:

- ``clean``: its own effect is at least ``side_ratio`` times the largest other, and at least ``random_ratio``
  times its random twin's effect on the same attribute (and at least ``min_effect`` stds);
- ``entangled``: clearly above its random twin, but some other attribute moves by more than own / ``side_ratio``;
  the fix is eq. 12, projecting those attributes' directions out (``rebuild-bank --disentangle A:X,Y``);
- ``weak``: not clearly above its random twin (or below ``min_effect``): the edit is indistinguishable from a
  random direction of the same norm at the evaluated gamma;
- ``unevaluated``: the bank stores no evaluation for it.

A direction's own attribute is the one it was made for (``parameters.attribute`` of a supervised direction, that
of its source for a disentangled one); a direction without one (PCA, Jacobian) is judged by the attribute it moves
most, and has no eq. 12 fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hspace.bank import Bank
from hspace.errors import HSpaceError


@dataclass(frozen=True)
class Thresholds:
    """What ``clean`` and ``weak`` mean (module docstring); all effects in stds of the unedited scores."""

    side_ratio: float = 3.0
    random_ratio: float = 2.0
    min_effect: float = 0.25

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (np.isfinite(value) and value >= 0):
                raise HSpaceError(f"verdict threshold {name} must be a non-negative number; got {value}")


Record = Mapping[str, Any]  # a direction's manifest record: method, parameters, evaluation, ...


def verdicts(bank: Bank, thresholds: Thresholds | None = None) -> dict[str, dict[str, Any]]:
    """The verdict of every direction of ``bank``, by name (:func:`verdict`); reads no tensor."""
    records = bank.info()["directions"]
    return {name: verdict(record, records, thresholds) for name, record in records.items()}


def verdict(
    record: Record, others: Mapping[str, Record] | None = None, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    """``{"kind", "text", "attribute", "own", "random", "largest_side": [name, value] | None, "fix"}`` of the
    direction whose manifest record (or :class:`hspace.bank.Direction`'s ``record()``) is ``record``.

    ``others``: the bank's records by name, to find a disentangled direction's own attribute through its
    source. ``fix`` is the ``rebuild-bank`` option that would project the side effects out (eq. 12), or None.
    """
    t = thresholds or Thresholds()
    evaluation = record["evaluation"]
    if "effect" not in evaluation or "attributes" not in evaluation:
        return _result("unevaluated", "no evaluation stored with this direction")
    attributes = list(evaluation["attributes"])
    effect = np.abs(np.asarray(evaluation["effect"]["mean_in_std"], dtype=np.float64))
    random = np.abs(np.asarray(evaluation.get("random", {}).get("mean_in_std", [0.0] * len(attributes)), dtype=float))
    own_name = _own_attribute(record, others or {}, attributes)
    own_index = int(np.nanargmax(effect)) if own_name is None else attributes.index(own_name)
    own, baseline = float(effect[own_index]), float(random[own_index])
    sides = [
        (attributes[i], float(effect[i])) for i in np.argsort(-effect) if i != own_index and np.isfinite(effect[i])
    ]
    largest = sides[0] if sides else None
    facts = {
        "attribute": attributes[own_index],
        "own": own,
        "random": baseline,
        "largest_side": list(largest) if largest else None,
    }
    if own < t.min_effect or own < t.random_ratio * baseline:
        text = (
            f"{attributes[own_index]} moves {own:.2f} std, random twin {baseline:.2f}: not clearly above a random "
            f"direction (needs {t.random_ratio:g}x and {t.min_effect:g} std)"
        )
        return _result("weak", text, **facts)
    tangled = [name for name, value in sides if value * t.side_ratio > own]
    if tangled:
        fix = _disentangle_fix(record, own_name, tangled)
        text = f"entangled with {', '.join(tangled)}: {attributes[own_index]} {own:.2f} std, " + ", ".join(
            f"{name} {value:.2f}" for name, value in sides if name in tangled
        )
        return _result(
            "entangled",
            text + (f"; fix: {fix}" if fix else "; no eq. 12 fix (no own attribute)"),
            fix=fix,
            entangled_with=tangled,
            **facts,
        )
    side_text = f", largest side effect {largest[0]} {largest[1]:.2f}" if largest else ""
    return _result("clean", f"{attributes[own_index]} {own:.2f} std (random {baseline:.2f}){side_text}", **facts)


# ----- private helpers ---------------------------------------------------------------------------
def _result(kind: str, text: str, **facts: Any) -> dict[str, Any]:
    return {"kind": kind, "text": text, "fix": None, **facts}


def _own_attribute(record: Record, others: Mapping[str, Record], attributes: list[str]) -> str | None:
    """The attribute the direction was made for, where the evaluation scored it; None for PCA and the like."""
    parameters = record["parameters"]
    if record["method"] == "disentangled" and parameters.get("from") in others:
        return _own_attribute(others[parameters["from"]], others, attributes)
    attribute = parameters.get("attribute")
    return attribute if isinstance(attribute, str) and attribute in attributes else None


def _disentangle_fix(record: Record, own: str | None, tangled: list[str]) -> str | None:
    """``--disentangle A:X,Y``: the rebuild-bank option whose eq. 12 direction projects X, Y out of A's."""
    if own is None:
        return None
    disentangled = record["method"] == "disentangled"
    source = record["parameters"].get("from", own) if disentangled else own
    against = list(record["parameters"].get("against", [])) if disentangled else []
    against += [name for name in tangled if name not in against]
    return f"rebuild-bank --disentangle {source}:{','.join(against)}"
