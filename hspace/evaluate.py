"""Measuring directions with an annotator: the Table I matrix (the Fig. 8a curve is :mod:`hspace.efficiency`).

* :func:`evaluate_directions` (Table I): edit fresh random samples along each named direction, score the
  unedited and the edited images with any :class:`~hspace.annotators.base.Annotator`, and report the
  change of every attribute score: a matrix, rows = applied direction, columns = measured attribute, mean
  and std over repeats with different samples. Norm-matched random directions (Fig. 4's baseline) get rows
  of their own. Original vs disentangled (eq. 12) is two entries of the same dict of directions
  (:func:`hspace.directions.disentangled_set` builds them).
* The parts of a distributed evaluation (``flows/evaluate.py``): :func:`plan_evaluation` fixes the rows and
  edits, :func:`score_samples` scores any part of a repeat, :func:`summarize` makes the result from all
  of them. :func:`evaluate_directions` is these three in one process.

A direction of shape (T, C_h, H_h, W_h) edits h (``sample(delta=...)``); one of shape (C, S, S), the
model's image shape, edits x_T (``sample(noise_delta=...)``). Both kinds can be mixed in one evaluation.

Batching: every edit of a sample (all directions, their random twins and the unedited sample) runs in the
same U-Net pass, ``batch`` samples per pass (:func:`hspace.scoring.scores_of_edits`); a pass is fixed by its
samples, so a part of a repeat that starts on a pass boundary computes the bits the whole repeat computes.

Seeds: repeat r uses samples ``r * samples .. (r + 1) * samples - 1`` of the stream
``derive_seeds(seed, ...)``, so repeats never share a sample. Use another ``seed`` than the corpus the
directions came from, or the evaluation samples are the examples themselves.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hspace.annotators.base import Annotator
from hspace.directions import random_direction_like
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.render import labelled_heatmap
from hspace.sampler import derive_seeds
from hspace.scoring import Edit, Progress, scores_of_edits

UNITS = ("score", "std")


def _direction_kind(name: str, direction: torch.Tensor, model: LoadedModel, steps: int) -> str:
    if tuple(direction.shape) == (steps, *model.h_shape):
        return "h"
    if tuple(direction.shape) == tuple(model.latent_shape):
        return "x_T"
    raise HSpaceError(
        f"direction {name!r} has shape {tuple(direction.shape)}; expected an h direction "
        f"(T, C, H, W) = {(steps, *model.h_shape)} or an x_T direction (C, S, S) = "
        f"{tuple(model.latent_shape)} (is it from another model or number of steps?)"
    )


def _edit(direction: torch.Tensor, kind: str, gamma: float) -> Edit:
    scaled = gamma * direction.float()
    return Edit(h=scaled) if kind == "h" else Edit(x_T=scaled)


# --------------------------------------------------------------------------------------------------------
# Table I


@dataclass(frozen=True, kw_only=True)
class EvaluationResult:
    """The Table I matrix: change of each attribute score (columns) under each applied direction (rows).

    Attributes
    ----------
    rows : tuple of str, D of them
        Applied directions, in the order given, then their random twins ``"random(<name>)"``.
    attributes : tuple of str, A of them
        Measured attributes.
    effects : ndarray of shape (R, D, A)
        Per repeat: mean over the samples of (edited score - unedited score).
    abs_effects : ndarray of shape (R, D, A)
        Per repeat: mean over the samples of |edited score - unedited score| (a random edit that pushes
        samples both ways has a small mean but not a small mean absolute change).
    scale : ndarray of shape (A,)
        Std of each attribute's unedited scores over all repeats' samples: the unit of ``units="std"``,
        which makes attributes on different scales comparable within a row.
    settings : dict
        What was run (JSON-able).
    """

    rows: tuple[str, ...]
    attributes: tuple[str, ...]
    effects: np.ndarray
    abs_effects: np.ndarray
    scale: np.ndarray
    settings: dict = field(default_factory=dict)

    def _unit(self, units: str) -> np.ndarray:
        if units not in UNITS:
            raise HSpaceError(f"units must be one of {', '.join(UNITS)}; got {units!r}")
        return np.ones_like(self.scale) if units == "score" else np.where(self.scale > 0, self.scale, 1.0)

    def mean(self, units: str = "score") -> np.ndarray:
        """Mean over repeats of the mean change, shape (D, A)."""
        return self.effects.mean(0) / self._unit(units)

    def std(self, units: str = "score") -> np.ndarray:
        """Std over repeats (ddof 1; 0 with one repeat) of the mean change, shape (D, A)."""
        ddof = 1 if len(self.effects) > 1 else 0
        return self.effects.std(0, ddof=ddof) / self._unit(units)

    def effect(self, row: str, attribute: str, units: str = "score") -> float:
        """Mean change of ``attribute`` under direction ``row``."""
        return float(self.mean(units)[self.rows.index(row), self.attributes.index(attribute)])

    def to_dict(self) -> dict:
        """JSON-able: labels, mean and std in both units, the per-repeat effects, the scale and the settings."""
        return {
            "rows": list(self.rows),
            "attributes": list(self.attributes),
            "mean": self.mean().tolist(),
            "std": self.std().tolist(),
            "mean_in_std": self.mean("std").tolist(),
            "std_in_std": self.std("std").tolist(),
            "abs_mean": self.abs_effects.mean(0).tolist(),
            "effects": self.effects.tolist(),
            "abs_effects": self.abs_effects.tolist(),
            "scale": self.scale.tolist(),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            rows=tuple(data["rows"]),
            attributes=tuple(data["attributes"]),
            effects=np.asarray(data["effects"], dtype=np.float64),
            abs_effects=np.asarray(data["abs_effects"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            settings=dict(data.get("settings", {})),
        )

    def to_csv(self) -> str:
        """One line per (direction, attribute): mean and std over repeats in score units and in stds."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["direction", "attribute", "mean", "std", "mean_in_std", "std_in_std", "abs_mean"])
        mean, std, mean_s, std_s = self.mean(), self.std(), self.mean("std"), self.std("std")
        abs_mean = self.abs_effects.mean(0)
        for i, row in enumerate(self.rows):
            for j, attribute in enumerate(self.attributes):
                writer.writerow([row, attribute] + [f"{m[i, j]:.6g}" for m in (mean, std, mean_s, std_s, abs_mean)])
        return out.getvalue()

    def to_markdown(self, units: str = "score", digits: int = 3) -> str:
        """The matrix as a markdown table, ``mean ± std`` per cell, the strongest |mean| of each row in bold
        (Table I highlights the strongest effect in each row)."""
        mean, std = self.mean(units), self.std(units)
        s = self.settings
        unit_text = "attribute score" if units == "score" else "stds of the unedited scores"
        lines = [
            f"Change of each attribute ({unit_text}) when editing along each direction (rows), gamma "
            f"{s.get('gamma', '?')}: mean ± std over {len(self.effects)} repeats of {s.get('samples', '?')} "
            f"samples, {s.get('steps', '?')} steps, eta {s.get('eta', '?')}, annotator `{s.get('annotator', '?')}`.",
            "",
            "| direction | " + " | ".join(self.attributes) + " |",
            "|---|" + "---|" * len(self.attributes),
        ]
        for i, row in enumerate(self.rows):
            strongest = int(np.argmax(np.abs(mean[i])))
            cells = [f"{mean[i, j]:+.{digits}f} ± {std[i, j]:.{digits}f}" for j in range(len(self.attributes))]
            cells[strongest] = f"**{cells[strongest]}**"
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def heatmap(self, units: str = "std", title: str | None = None) -> Image.Image:
        """The matrix as a labelled picture: blue (down) - white - red (up), the value in each cell."""
        mean = self.mean(units)
        limit = float(np.abs(mean).max()) or 1.0
        title = title if title is not None else f"change of attribute ({'score' if units == 'score' else 'std'})"
        return labelled_heatmap(mean, list(self.rows), list(self.attributes), low=-limit, high=limit, title=title)


def evaluate_directions(
    model: LoadedModel,
    annotator: Annotator,
    directions: Mapping[str, torch.Tensor],
    *,
    gamma: float | Mapping[str, float],
    steps: int,
    samples: int = 100,
    repeats: int = 10,
    eta: float = 1.0,
    seed: int = 0,
    random_baseline: bool = True,
    attributes: Sequence[str] | None = None,
    batch: int = 8,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Table I: the change of every attribute under every direction, mean ± std over repeats.

    Parameters
    ----------
    model, annotator
    directions : mapping of name -> Tensor of shape (T, C_h, H_h, W_h) (h) or (C, S, S) (x_T)
        Applied as ``gamma * v`` (h: at every step, Sec. III; x_T: added to x_T).
    gamma : float, or mapping of name -> float for every direction
        Edit strength; a direction's random twin uses its gamma.
    steps, eta : the sampler's settings (T must match the directions' T).
    samples : int
        Fresh random samples per repeat (the paper: 100).
    repeats : int
        Repeats with different samples (the paper: 10).
    seed : int
        Base of the evaluation seeds (:func:`evaluation_seeds`) and of the random baselines (one generator
        seeded with it, directions in the order given).
    random_baseline : bool
        Add a row ``"random(<name>)"`` per direction: a Gaussian direction with the same per-step norm
        (h) or the same norm (x_T), Fig. 4's baseline.
    attributes : sequence of str, optional
        Columns; all of the annotator's by default.
    batch : int
        Samples per U-Net pass, each with all its edits (1 + 2 x directions rows per sample).
    progress : callable taking a message, optional

    Returns
    -------
    EvaluationResult
        The same bits as the distributed evaluation (``flows/evaluate.py``) with the same ``batch``.
    """
    plan = plan_evaluation(
        model,
        annotator,
        directions,
        gamma=gamma,
        steps=steps,
        samples=samples,
        repeats=repeats,
        eta=eta,
        seed=seed,
        random_baseline=random_baseline,
        attributes=attributes,
    )
    check_batch(batch)
    scores = np.stack(
        [
            score_samples(
                model,
                annotator,
                plan,
                evaluation_seeds(plan, r, 0, samples),
                batch=batch,
                say=progress,
                label=f"repeat {r + 1}/{repeats}",
            )
            for r in range(repeats)
        ]
    )
    return summarize(plan, scores)


@dataclass(frozen=True, kw_only=True)
class EvaluationPlan:
    """What an evaluation applies and measures; every part of a distributed one rebuilds the same plan.

    Attributes
    ----------
    rows : tuple of str, D of them
        Applied directions, then their random twins.
    columns : tuple of str, A of them
        Measured attributes.
    edits : tuple of Edit, 1 + D of them
        The unedited sample first, then one per row.
    settings : dict
        What is run (JSON-able): the result's ``settings``.
    """

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    edits: tuple[Edit, ...]
    settings: dict

    @property
    def samples(self) -> int:
        return int(self.settings["samples"])

    @property
    def repeats(self) -> int:
        return int(self.settings["repeats"])


def plan_evaluation(
    model: LoadedModel,
    annotator: Annotator,
    directions: Mapping[str, torch.Tensor],
    *,
    gamma: float | Mapping[str, float],
    steps: int,
    samples: int,
    repeats: int,
    eta: float,
    seed: int,
    random_baseline: bool = True,
    attributes: Sequence[str] | None = None,
) -> EvaluationPlan:
    """Check the arguments (as :func:`evaluate_directions` takes them) and fix the rows, edits and columns."""
    if not directions:
        raise HSpaceError("evaluate_directions needs at least one direction")
    if samples < 1 or repeats < 1:
        raise HSpaceError(f"samples and repeats must be positive; got {samples}, {repeats}")
    columns = tuple(annotator.attributes if attributes is None else attributes)
    unknown = [a for a in columns if a not in annotator.attributes]
    if unknown or not columns:
        raise HSpaceError(
            f"annotator {annotator.name!r} has no attribute {', '.join(map(repr, unknown))}; it scores "
            f"{', '.join(annotator.attributes)}"
        )
    gammas = _gammas(gamma, directions)
    kinds = {name: _direction_kind(name, v, model, steps) for name, v in directions.items()}
    rows = list(directions)
    edits = [_edit(v, kinds[name], gammas[name]) for name, v in directions.items()]
    if random_baseline:
        twin_rows, twin_edits = _random_twins(directions, kinds, gammas, seed)
        rows, edits = rows + twin_rows, edits + twin_edits
    settings = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "annotator": annotator.name,
        "gamma": gamma if isinstance(gamma, (int, float)) else dict(gammas),
        "samples": samples,
        "repeats": repeats,
        "steps": steps,
        "eta": eta,
        "seed": seed,
        "random_baseline": random_baseline,
        "kinds": kinds,
    }
    return EvaluationPlan(rows=tuple(rows), columns=columns, edits=(Edit(), *edits), settings=settings)


def check_batch(batch: int) -> None:
    if batch < 1:
        raise HSpaceError(f"batch (samples per U-Net pass) must be a positive integer; got {batch}")


def evaluation_seeds(plan: EvaluationPlan, repeat: int, start: int, stop: int) -> list[int]:
    """Seeds of samples ``start:stop`` of ``repeat``: repeat r uses samples ``r * samples .. (r + 1) * samples - 1``
    of the stream ``derive_seeds(seed, ...)``, so repeats never share a sample."""
    base = repeat * plan.samples
    return derive_seeds(int(plan.settings["seed"]), base + start, base + stop)


def score_samples(
    model: LoadedModel,
    annotator: Annotator,
    plan: EvaluationPlan,
    seeds: Sequence[int],
    *,
    batch: int,
    say: Progress | None = None,
    label: str = "evaluation",
) -> np.ndarray:
    """Scores of ``seeds`` unedited and under each row's edit: float64 of shape (len(seeds), 1 + D, A).

    ``batch`` seeds per U-Net pass (:func:`hspace.scoring.scores_of_edits`): a part of a repeat that starts
    on a pass boundary gets the bits that the whole repeat gets.
    """
    s = plan.settings
    scores = scores_of_edits(
        model, annotator, seeds, plan.edits, steps=s["steps"], eta=s["eta"], batch=batch, say=say, label=label
    )
    return np.stack([scores[a].T for a in plan.columns], axis=-1)


def summarize(plan: EvaluationPlan, scores: np.ndarray) -> EvaluationResult:
    """The Table I result from every repeat's scores, shape (repeats, samples, 1 + D, A) (:func:`score_samples`)."""
    expected = (plan.repeats, plan.samples, len(plan.edits), len(plan.columns))
    if scores.shape != expected:
        raise HSpaceError(f"evaluation scores have shape {scores.shape}; the plan needs {expected}")
    change = scores[:, :, 1:] - scores[:, :, :1]  # (R, samples, D, A): edited - unedited
    return EvaluationResult(
        rows=plan.rows,
        attributes=plan.columns,
        effects=change.mean(1),
        abs_effects=np.abs(change).mean(1),
        # The unit of units="std": the unedited scores' std over all repeats' samples.
        scale=scores[:, :, 0].reshape(-1, len(plan.columns)).std(0),
        settings=plan.settings,
    )


def _random_twins(
    directions: Mapping[str, torch.Tensor], kinds: Mapping[str, str], gammas: Mapping[str, float], seed: int
) -> tuple[list[str], list[Edit]]:
    """Rows ``"random(<name>)"`` and their edits: Gaussian directions norm-matched to each (Fig. 4's baseline)."""
    generator = torch.Generator().manual_seed(seed)
    rows, edits = [], []
    for name, v in directions.items():
        twin = f"random({name})"
        if twin in directions:
            raise HSpaceError(f"a direction is named {twin!r}, the name of {name!r}'s random baseline; rename it")
        # x_T directions are matched in their whole norm: treat them as a single "step".
        random = (
            random_direction_like(v.float(), generator)
            if kinds[name] == "h"
            else random_direction_like(v.float().unsqueeze(0), generator)[0]
        )
        rows.append(twin)
        edits.append(_edit(random, kinds[name], gammas[name]))
    return rows, edits


def _gammas(gamma: float | Mapping[str, float], directions: Mapping[str, torch.Tensor]) -> dict[str, float]:
    if isinstance(gamma, (int, float)):
        return {name: float(gamma) for name in directions}
    missing = [name for name in directions if name not in gamma]
    if missing:
        raise HSpaceError(
            f"gamma has no value for direction(s) {', '.join(map(repr, missing))}; give one per "
            f"direction or a single number"
        )
    return {name: float(gamma[name]) for name in directions}
