"""Measuring directions with an annotator: the Table I matrix (the Fig. 8a curve is :mod:`hspace.efficiency`).

* :func:`evaluate_directions` (Table I): edit fresh random samples along each named direction, score the
  unedited and the edited images with any :class:`~hspace.annotators.base.Annotator`, and report the
  change of every attribute score: a matrix, rows = applied direction, columns = measured attribute, mean
  and std over repeats with different samples. Norm-matched random directions (Fig. 4's baseline) get rows
  of their own. Original vs disentangled (eq. 12) is two entries of the same dict of directions
  (:func:`hspace.directions.disentangled_set` builds them).
* :func:`generate` and :func:`scores_of_edits`: sampling and scoring, shared with
  :func:`hspace.efficiency.sample_efficiency` (Fig. 8a).

A direction of shape (T, C_h, H_h, W_h) edits h (``sample(delta=...)``); one of shape (C, S, S), the
model's image shape, edits x_T (``sample(noise_delta=...)``). Both kinds can be mixed in one evaluation.

Batching: every edit of one repeat (all directions, their random twins and the unedited samples) runs in
the same U-Net passes, with per-sample deltas, ``batch`` samples per pass. Evaluation needs no bitwise batch
independence, so passes are whole batches (on the CPU too).

Seeds: repeat r uses samples ``r * samples .. (r + 1) * samples - 1`` of the stream
``derive_seeds(seed, ...)``, so repeats never share a sample. Use another ``seed`` than the corpus the
directions came from, or the evaluation samples are the examples themselves.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hspace.annotators.base import Annotator
from hspace.directions import random_direction_like
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.render import labelled_heatmap
from hspace.sampler import derive_seeds, sample, to_uint8

Progress = Callable[[str], None]
UNITS = ("score", "std")


# --------------------------------------------------------------------------------------------------------
# Generating and scoring


@dataclass(frozen=True, kw_only=True)
class Samples:
    """Generated samples with their scores.

    Attributes
    ----------
    seeds : list of int, n of them
    images : ndarray of shape (n, 3, S, S), uint8
    h : Tensor of shape (n, T, C, H, W), or None without capture
    scores : dict of attribute -> ndarray of shape (n,)
    """

    seeds: list[int]
    images: np.ndarray
    h: torch.Tensor | None
    scores: dict[str, np.ndarray]


def generate(
    model: LoadedModel,
    annotator: Annotator,
    seeds: Sequence[int],
    *,
    steps: int,
    eta: float = 1.0,
    delta: torch.Tensor | None = None,
    noise_delta: torch.Tensor | None = None,
    replace_h: torch.Tensor | None = None,
    capture: bool = False,
    batch: int = 128,
) -> Samples:
    """Sample (whole batches per U-Net pass: evaluation needs no bitwise batch independence) and score.

    ``delta``, ``noise_delta`` and ``replace_h`` are as in :func:`hspace.sampler.sample`; per-sample ones
    (leading dimension n) are split with the seeds.
    """
    seeds = list(seeds)
    images: list[np.ndarray] = []
    hs: list[torch.Tensor] = []
    for start in range(0, len(seeds), batch):
        part = slice(start, start + batch)
        d = delta if delta is None or delta.ndim == 4 else delta[part]
        x = noise_delta if noise_delta is None or noise_delta.ndim == 3 else noise_delta[part]
        r = None if replace_h is None else replace_h[part]
        result = sample(
            model,
            seeds[part],
            steps=steps,
            eta=eta,
            delta=d,
            noise_delta=x,
            replace_h=r,
            capture=capture,
            microbatch=batch,
        )
        images.append(to_uint8(result.images).numpy())
        if capture:
            assert result.h is not None  # sample returns h whenever capture is on
            hs.append(result.h)
    images_all = np.concatenate(images)
    return Samples(
        seeds=seeds,
        images=images_all,
        h=torch.cat(hs) if capture else None,
        scores=annotator.scores_by_attribute(images_all),
    )


@dataclass(frozen=True)
class Edit:
    """One row of a batched run: an h delta (T, C, H, W) and/or an x_T delta (C, S, S), or neither."""

    h: torch.Tensor | None = None
    x_T: torch.Tensor | None = None


def _direction_kind(name: str, direction: torch.Tensor, model: LoadedModel, steps: int) -> str:
    if tuple(direction.shape) == (steps, *model.h_shape):
        return "h"
    if tuple(direction.shape) == tuple(model.image_shape):
        return "x_T"
    raise HSpaceError(
        f"direction {name!r} has shape {tuple(direction.shape)}; expected an h direction "
        f"(T, C, H, W) = {(steps, *model.h_shape)} or an x_T direction (C, S, S) = "
        f"{tuple(model.image_shape)} (is it from another model or number of steps?)"
    )


def _edit(direction: torch.Tensor, kind: str, gamma: float) -> Edit:
    scaled = gamma * direction.float()
    return Edit(h=scaled) if kind == "h" else Edit(x_T=scaled)


def scores_of_edits(
    model: LoadedModel,
    annotator: Annotator,
    seeds: Sequence[int],
    edits: Sequence[Edit],
    *,
    steps: int,
    eta: float,
    batch: int,
    say: Progress,
    label: str,
) -> dict[str, np.ndarray]:
    """Every edit applied to every seed, in shared passes of ``batch`` samples.

    Returns attribute -> scores of shape (len(edits), len(seeds)).
    """
    n = len(seeds)
    items = [(e, i) for e in range(len(edits)) for i in range(n)]  # row-major: edit, then sample
    h_zero = torch.zeros(steps, *model.h_shape)
    x_zero = torch.zeros(model.image_shape)
    images = []
    chunks = math.ceil(len(items) / batch)
    for c, start in enumerate(range(0, len(items), batch)):
        say(f"{label}: pass {c + 1}/{chunks} ({len(items)} edited and unedited samples, {steps} steps)")
        part = items[start : start + batch]
        rows = [edits[e] for e, _ in part]
        # Rows without an edit of a kind get exact zeros: adding 0.0 leaves h_t and x_T bitwise unchanged.
        delta = (
            torch.stack([h_zero if r.h is None else r.h for r in rows]) if any(r.h is not None for r in rows) else None
        )
        noise = (
            torch.stack([x_zero if r.x_T is None else r.x_T for r in rows])
            if any(r.x_T is not None for r in rows)
            else None
        )
        result = sample(
            model,
            [seeds[i] for _, i in part],
            steps=steps,
            eta=eta,
            delta=delta,
            noise_delta=noise,
            capture=False,
            microbatch=batch,
        )
        images.append(to_uint8(result.images).numpy())
    scores = annotator.scores_by_attribute(np.concatenate(images))
    return {a: s.reshape(len(edits), n) for a, s in scores.items()}


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
    batch: int = 128,
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
        Base of the evaluation seeds (repeat r: ``derive_seeds(seed, r * samples, (r + 1) * samples)``) and
        of the random baselines (one generator seeded with it, directions in the order given).
    random_baseline : bool
        Add a row ``"random(<name>)"`` per direction: a Gaussian direction with the same per-step norm
        (h) or the same norm (x_T), Fig. 4's baseline.
    attributes : sequence of str, optional
        Columns; all of the annotator's by default.
    batch : int
        Samples per U-Net pass.
    progress : callable taking a message, optional

    Returns
    -------
    EvaluationResult
    """
    say = progress or (lambda message: None)
    if not directions:
        raise HSpaceError("evaluate_directions needs at least one direction")
    if samples < 1 or repeats < 1 or batch < 1:
        raise HSpaceError(f"samples, repeats and batch must be positive; got {samples}, {repeats}, {batch}")
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
    effects = np.zeros((repeats, len(rows), len(columns)))
    abs_effects = np.zeros_like(effects)
    unedited = []
    for r in range(repeats):
        seeds = derive_seeds(seed, r * samples, (r + 1) * samples)
        scores = scores_of_edits(
            model,
            annotator,
            seeds,
            [Edit()] + edits,
            steps=steps,
            eta=eta,
            batch=batch,
            say=say,
            label=f"repeat {r + 1}/{repeats}",
        )
        for j, a in enumerate(columns):
            change = scores[a][1:] - scores[a][0]  # (D, samples)
            effects[r, :, j] = change.mean(1)
            abs_effects[r, :, j] = np.abs(change).mean(1)
        unedited.append(np.stack([scores[a][0] for a in columns], axis=1))
    scale = np.concatenate(unedited).std(0)
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
    return EvaluationResult(
        rows=tuple(rows), attributes=columns, effects=effects, abs_effects=abs_effects, scale=scale, settings=settings
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
