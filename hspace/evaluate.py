"""Measuring directions with an annotator: the Table I matrix and the Fig. 8a sample-efficiency curve.

* :func:`evaluate_directions` (Table I): edit fresh random samples along each named direction, score the
  unedited and the edited images with any :class:`~hspace.annotators.base.Annotator`, and report the
  change of every attribute score: a matrix, rows = applied direction, columns = measured attribute, mean
  and std over repeats with different samples. Norm-matched random directions (Fig. 4's baseline) get rows
  of their own. Original vs disentangled (eq. 12) is two entries of the same dict of directions
  (:func:`hspace.directions.disentangled_set` builds them).
* :func:`sample_efficiency` (Fig. 8a): eq. 11 from the top-n vs bottom-n of an annotated pool, once with
  q = h_{T:1} and once with q = x_T, applied to fresh samples; the attribute's change as n grows.

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
from PIL import Image, ImageDraw

from hspace.annotators.base import Annotator
from hspace.directions import per_step_norm, random_direction_like, supervised_direction, top_bottom
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.sampler import derive_seeds, initial_noise, sample, to_uint8

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


def generate(model: LoadedModel, annotator: Annotator, seeds: Sequence[int], *, steps: int, eta: float = 1.0,
             delta: torch.Tensor | None = None, noise_delta: torch.Tensor | None = None,
             replace_h: torch.Tensor | None = None, capture: bool = False, batch: int = 128) -> Samples:
    """Sample (whole batches per U-Net pass: evaluation needs no bitwise batch independence) and score.

    ``delta``, ``noise_delta`` and ``replace_h`` are as in :func:`hspace.sampler.sample`; per-sample ones
    (leading dimension n) are split with the seeds.
    """
    seeds = list(seeds)
    images, hs = [], []
    for start in range(0, len(seeds), batch):
        part = slice(start, start + batch)
        d = delta if delta is None or delta.ndim == 4 else delta[part]
        x = noise_delta if noise_delta is None or noise_delta.ndim == 3 else noise_delta[part]
        r = None if replace_h is None else replace_h[part]
        result = sample(model, seeds[part], steps=steps, eta=eta, delta=d, noise_delta=x, replace_h=r,
                        capture=capture, microbatch=batch)
        images.append(to_uint8(result.images).numpy())
        if capture:
            hs.append(result.h)
    images_all = np.concatenate(images)
    return Samples(seeds=seeds, images=images_all, h=torch.cat(hs) if capture else None,
                   scores=annotator.scores_by_attribute(images_all))


@dataclass(frozen=True)
class _Edit:
    """One row of a batched run: an h delta (T, C, H, W) and/or an x_T delta (C, S, S), or neither."""

    h: torch.Tensor | None = None
    x_T: torch.Tensor | None = None


def _direction_kind(name: str, direction: torch.Tensor, model: LoadedModel, steps: int) -> str:
    if tuple(direction.shape) == (steps, *model.h_shape):
        return "h"
    if tuple(direction.shape) == tuple(model.image_shape):
        return "x_T"
    raise HSpaceError(f"direction {name!r} has shape {tuple(direction.shape)}; expected an h direction "
                      f"(T, C, H, W) = {(steps, *model.h_shape)} or an x_T direction (C, S, S) = "
                      f"{tuple(model.image_shape)} (is it from another model or number of steps?)")


def _edit(direction: torch.Tensor, kind: str, gamma: float) -> _Edit:
    scaled = gamma * direction.float()
    return _Edit(h=scaled) if kind == "h" else _Edit(x_T=scaled)


def _scores_of_edits(model: LoadedModel, annotator: Annotator, seeds: Sequence[int], edits: Sequence[_Edit], *,
                     steps: int, eta: float, batch: int, say: Progress, label: str) -> dict[str, np.ndarray]:
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
        part = items[start:start + batch]
        rows = [edits[e] for e, _ in part]
        # Rows without an edit of a kind get exact zeros: adding 0.0 leaves h_t and x_T bitwise unchanged.
        delta = (torch.stack([h_zero if r.h is None else r.h for r in rows])
                 if any(r.h is not None for r in rows) else None)
        noise = (torch.stack([x_zero if r.x_T is None else r.x_T for r in rows])
                 if any(r.x_T is not None for r in rows) else None)
        result = sample(model, [seeds[i] for _, i in part], steps=steps, eta=eta, delta=delta, noise_delta=noise,
                        capture=False, microbatch=batch)
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
            "rows": list(self.rows), "attributes": list(self.attributes),
            "mean": self.mean().tolist(), "std": self.std().tolist(),
            "mean_in_std": self.mean("std").tolist(), "std_in_std": self.std("std").tolist(),
            "abs_mean": self.abs_effects.mean(0).tolist(),
            "effects": self.effects.tolist(), "abs_effects": self.abs_effects.tolist(),
            "scale": self.scale.tolist(), "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        return cls(rows=tuple(data["rows"]), attributes=tuple(data["attributes"]),
                   effects=np.asarray(data["effects"], dtype=np.float64),
                   abs_effects=np.asarray(data["abs_effects"], dtype=np.float64),
                   scale=np.asarray(data["scale"], dtype=np.float64), settings=dict(data.get("settings", {})))

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
        raise HSpaceError(f"annotator {annotator.name!r} has no attribute {', '.join(map(repr, unknown))}; it scores "
                          f"{', '.join(annotator.attributes)}")
    gammas = _gammas(gamma, directions)
    kinds = {name: _direction_kind(name, v, model, steps) for name, v in directions.items()}
    rows = list(directions)
    edits = [_edit(v, kinds[name], gammas[name]) for name, v in directions.items()]
    if random_baseline:
        generator = torch.Generator().manual_seed(seed)
        for name, v in directions.items():
            twin = f"random({name})"
            if twin in directions:
                raise HSpaceError(f"a direction is named {twin!r}, the name of {name!r}'s random baseline; rename it")
            # x_T directions are matched in their whole norm: treat them as a single "step".
            random = (random_direction_like(v.float(), generator) if kinds[name] == "h"
                      else random_direction_like(v.float().unsqueeze(0), generator)[0])
            rows.append(twin)
            edits.append(_edit(random, kinds[name], gammas[name]))
    effects = np.zeros((repeats, len(rows), len(columns)))
    abs_effects = np.zeros_like(effects)
    unedited = []
    for r in range(repeats):
        seeds = derive_seeds(seed, r * samples, (r + 1) * samples)
        scores = _scores_of_edits(model, annotator, seeds, [_Edit()] + edits, steps=steps, eta=eta, batch=batch,
                                  say=say, label=f"repeat {r + 1}/{repeats}")
        for j, a in enumerate(columns):
            change = scores[a][1:] - scores[a][0]  # (D, samples)
            effects[r, :, j] = change.mean(1)
            abs_effects[r, :, j] = np.abs(change).mean(1)
        unedited.append(np.stack([scores[a][0] for a in columns], axis=1))
    scale = np.concatenate(unedited).std(0)
    settings = {"model": model.name, "fingerprint": model.fingerprint, "annotator": annotator.name,
                "gamma": gamma if isinstance(gamma, (int, float)) else dict(gammas), "samples": samples,
                "repeats": repeats, "steps": steps, "eta": eta, "seed": seed, "random_baseline": random_baseline,
                "kinds": kinds}
    return EvaluationResult(rows=tuple(rows), attributes=columns, effects=effects, abs_effects=abs_effects,
                            scale=scale, settings=settings)


def _gammas(gamma: float | Mapping[str, float], directions: Mapping[str, torch.Tensor]) -> dict[str, float]:
    if isinstance(gamma, (int, float)):
        return {name: float(gamma) for name in directions}
    missing = [name for name in directions if name not in gamma]
    if missing:
        raise HSpaceError(f"gamma has no value for direction(s) {', '.join(map(repr, missing))}; give one per "
                          f"direction or a single number")
    return {name: float(gamma[name]) for name in directions}


# --------------------------------------------------------------------------------------------------------
# Fig. 8a


@dataclass(frozen=True, kw_only=True)
class EfficiencyCurve:
    """Fig. 8a: the effect of eq. 11 directions built from n examples, in h vs in x_T.

    Attributes
    ----------
    attribute : str
    counts : tuple of int
        n: the direction uses the top n vs the bottom n of the pool.
    effect_h, effect_x : ndarray of shape (len(counts),)
        Mean change of the attribute over the evaluation samples (score units) when editing along the
        h direction (gamma_h) or the x_T direction (gamma_x).
    se_h, se_x : ndarray of shape (len(counts),)
        Standard errors of those means (std over samples / sqrt(samples)).
    cosine_h, cosine_x : ndarray of shape (len(counts),)
        Cosine between the direction from n examples and the one from the largest n: how far it has
        converged, independent of the edit.
    random_h, random_x : tuple of (mean, standard error)
        The same measurement for a Gaussian direction with the norm of the largest n's (h: per step): what
        an edit of that size does by itself, whatever its direction (e.g. a longer x_T).
    scale : float
        Std of the attribute over the unedited evaluation samples.
    settings : dict
    """

    attribute: str
    counts: tuple[int, ...]
    effect_h: np.ndarray
    effect_x: np.ndarray
    se_h: np.ndarray
    se_x: np.ndarray
    cosine_h: np.ndarray
    cosine_x: np.ndarray
    scale: float
    random_h: tuple[float, float] = (float("nan"), float("nan"))
    random_x: tuple[float, float] = (float("nan"), float("nan"))
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"attribute": self.attribute, "counts": list(self.counts), "scale": self.scale,
                "random_h": list(self.random_h), "random_x": list(self.random_x),
                **{k: getattr(self, k).tolist() for k in ("effect_h", "effect_x", "se_h", "se_x",
                                                          "cosine_h", "cosine_x")},
                "settings": dict(self.settings)}

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            f"Change of `{self.attribute}` (score units; its std over unedited samples is {self.scale:.3f}) when "
            f"editing {s.get('eval_samples', '?')} fresh samples along eq. 11 directions from the top n vs bottom "
            f"n of {s.get('pool_samples', '?')} annotated samples; h at gamma {s.get('gamma_h', '?')}, x_T at gamma "
            f"{s.get('gamma_x', '?')}; {s.get('steps', '?')} steps, eta {s.get('eta', '?')}"
            + ("; every direction rescaled to the norm of the largest n's." if s.get("normalize") else "."),
            "",
            "| n | effect h | effect x_T | cos(h_n, h_max) | cos(x_n, x_max) |",
            "|---|---|---|---|---|",
        ]
        for i, n in enumerate(self.counts):
            lines.append(f"| {n} | {self.effect_h[i]:+.3f} ± {self.se_h[i]:.3f} | {self.effect_x[i]:+.3f} ± "
                         f"{self.se_x[i]:.3f} | {self.cosine_h[i]:.3f} | {self.cosine_x[i]:.3f} |")
        lines.append(f"| random, norm of n = {self.counts[-1]} | {self.random_h[0]:+.3f} ± {self.random_h[1]:.3f} | "
                     f"{self.random_x[0]:+.3f} ± {self.random_x[1]:.3f} | | |")
        return "\n".join(lines) + "\n"

    def plot(self, width: int = 480, height: int = 300) -> Image.Image:
        """A line plot (PIL): effect vs n (log axis), h in red, x_T in blue, ± 1 standard error bars."""
        return line_plot(np.asarray(self.counts, dtype=np.float64),
                         {"h": (self.effect_h, self.se_h, (200, 30, 30)),
                          "x_T": (self.effect_x, self.se_x, (30, 60, 200))},
                         title=f"Fig. 8a: change of {self.attribute} vs number of examples",
                         x_label="examples n (top n vs bottom n, log scale)", y_label=f"change of {self.attribute}",
                         width=width, height=height)


def sample_efficiency(
    model: LoadedModel,
    annotator: Annotator,
    *,
    attribute: str,
    gamma_h: float,
    gamma_x: float,
    steps: int,
    example_counts: Sequence[int] = (2, 5, 10, 25, 50, 100, 200),
    pool_samples: int = 512,
    eval_samples: int = 64,
    eta: float = 0.0,
    seed: int = 0,
    normalize: bool = True,
    keep: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
    batch: int = 128,
    progress: Progress | None = None,
) -> EfficiencyCurve:
    """Fig. 8a: how many examples eq. 11 needs in h_{T:1} and in x_T.

    An annotated pool of ``pool_samples`` samples (seeds ``derive_seeds(seed, 0, pool_samples)``) gives, for
    each n, the top-n and bottom-n samples by ``attribute``; eq. 11 over their h_{T:1} and over their x_T
    gives two directions, each applied to the same ``eval_samples`` fresh samples (the next seeds of the
    same stream). All edits share U-Net passes.

    Parameters
    ----------
    eta : float
        0 by default: the paper's Fig. 8a is DDIM (eta_t = 0). With eta > 0 the z_t carry much of the
        image and an x_T direction has little left to steer.
    normalize : bool
        Rescale every direction to the norm of the one from the largest n (h: per step; x_T: as a whole)
        before applying gamma. With few examples eq. 11 is dominated by the examples' own variation and its
        norm grows like 1/sqrt(n); rescaling makes each point of the curve measure where the direction
        points, at one edit size. ``False`` applies the raw eq. 11 directions (the paper's).
    keep : callable taking the pool's scores (attribute -> (pool_samples,)) and returning a bool mask, optional
        Which pool samples may serve as examples, e.g. ``lambda s: s["face"] > 0.5`` for the testbed, whose
        factor scores of non-faces mean nothing. All of them by default.

    Returns
    -------
    EfficiencyCurve
    """
    say = progress or (lambda message: None)
    counts = tuple(sorted({int(n) for n in example_counts}))
    if attribute not in annotator.attributes:
        raise HSpaceError(f"annotator {annotator.name!r} has no attribute {attribute!r}; it scores "
                          f"{', '.join(annotator.attributes)}")
    if not counts or counts[0] < 1 or counts[-1] > pool_samples // 2:
        raise HSpaceError(f"example counts must lie in 1..{pool_samples // 2} (half of the {pool_samples} pool "
                          f"samples: top n and bottom n must not overlap); got {list(counts)}")
    if eval_samples < 1:
        raise HSpaceError(f"eval_samples must be positive; got {eval_samples}")
    pool_seeds = derive_seeds(seed, 0, pool_samples)
    say(f"sampling and annotating a pool of {pool_samples} samples with h_{{T:1}} ({steps} steps, eta {eta})")
    pool = generate(model, annotator, pool_seeds, steps=steps, eta=eta, capture=True, batch=batch)
    usable = np.arange(pool_samples) if keep is None else np.flatnonzero(np.asarray(keep(pool.scores), dtype=bool))
    if counts[-1] > len(usable) // 2:
        raise HSpaceError(f"only {len(usable)} of the {pool_samples} pool samples pass `keep`; the largest example "
                          f"count ({counts[-1]}) needs {2 * counts[-1]}: enlarge the pool or lower the counts")
    x_T = initial_noise(model, pool_seeds)[usable]
    h, scores = pool.h[usable], pool.scores[attribute][usable]
    v_h, v_x = [], []
    for n in counts:
        top, bottom = top_bottom(scores, n)
        v_h.append(supervised_direction(h[top], h[bottom]))  # eq. 11, q = h_{T:1}
        v_x.append(supervised_direction(x_T[top], x_T[bottom]))  # eq. 11, q = x_T
    cos_h = np.array([_cosine(v, v_h[-1]) for v in v_h])
    cos_x = np.array([_cosine(v, v_x[-1]) for v in v_x])
    if normalize:
        ref_h, ref_x = per_step_norm(v_h[-1]), v_x[-1].norm()
        v_h = [v * (ref_h / per_step_norm(v).clamp_min(1e-12)).view(-1, 1, 1, 1) for v in v_h]
        v_x = [v * (ref_x / v.norm().clamp_min(1e-12)) for v in v_x]
    generator = torch.Generator().manual_seed(seed)
    random_h = random_direction_like(v_h[-1], generator)
    random_x = random_direction_like(v_x[-1].unsqueeze(0), generator)[0]
    edits = ([_Edit()] + [_Edit(h=gamma_h * v) for v in v_h] + [_Edit(x_T=gamma_x * v) for v in v_x]
             + [_Edit(h=gamma_h * random_h), _Edit(x_T=gamma_x * random_x)])
    eval_seeds = derive_seeds(seed, pool_samples, pool_samples + eval_samples)
    measured = _scores_of_edits(model, annotator, eval_seeds, edits, steps=steps, eta=eta, batch=batch, say=say,
                                label="edits")[attribute]
    change = measured[1:] - measured[0]  # (2 * len(counts) + 2, eval_samples)
    mean, se = change.mean(1), change.std(1, ddof=1 if eval_samples > 1 else 0) / math.sqrt(eval_samples)
    k = len(counts)
    settings = {"model": model.name, "fingerprint": model.fingerprint, "annotator": annotator.name,
                "pool_samples": pool_samples, "usable_pool_samples": int(len(usable)), "eval_samples": eval_samples,
                "gamma_h": gamma_h, "gamma_x": gamma_x,
                "steps": steps, "eta": eta, "seed": seed, "normalize": normalize}
    return EfficiencyCurve(attribute=attribute, counts=counts, effect_h=mean[:k], effect_x=mean[k:2 * k], se_h=se[:k],
                           se_x=se[k:2 * k], cosine_h=cos_h, cosine_x=cos_x, scale=float(measured[0].std()),
                           random_h=(float(mean[2 * k]), float(se[2 * k])),
                           random_x=(float(mean[2 * k + 1]), float(se[2 * k + 1])), settings=settings)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


# --------------------------------------------------------------------------------------------------------
# Pictures (PIL only; hspace.render.heatmap has no column labels or values)


def _diverging(share: float) -> tuple[int, int, int]:
    """-1 -> blue, 0 -> white, +1 -> red."""
    share = max(-1.0, min(1.0, share))
    fade = int(round(255 * (1 - abs(share))))
    return (255, fade, fade) if share >= 0 else (fade, fade, 255)


def labelled_heatmap(values: np.ndarray, rows: Sequence[str], columns: Sequence[str], *, low: float, high: float,
                     title: str = "", digits: int = 2) -> Image.Image:
    """A matrix as coloured cells with row and column labels and each value written in its cell.

    Colour: blue at ``low``, white at the midpoint, red at ``high`` (pass a symmetric range for changes).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(rows), len(columns)):
        raise HSpaceError(f"heatmap needs a (rows, columns) matrix with one label each; got {values.shape}, "
                          f"{len(rows)} row and {len(columns)} column labels")
    char_w, line_h = 6, 11  # PIL's default bitmap font
    cell_w = max(8 + char_w * (digits + 3), 8 + char_w * max(map(len, columns)))
    cell_h = 18
    left = 10 + char_w * max(map(len, rows))
    top = (line_h + 8 if title else 4) + line_h + 4
    picture = Image.new("RGB", (left + cell_w * len(columns) + 6, top + cell_h * len(rows) + 6), "white")
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((4, 4), title, fill="black")
    for j, name in enumerate(columns):
        draw.text((left + j * cell_w + (cell_w - char_w * len(name)) // 2, top - line_h - 2), name, fill="black")
    middle, half = (high + low) / 2, (high - low) / 2 or 1.0
    for i, name in enumerate(rows):
        y = top + i * cell_h
        draw.text((4, y + (cell_h - line_h) // 2), name, fill="black")
        for j in range(len(columns)):
            x, value = left + j * cell_w, values[i, j]
            colour = (200, 200, 200) if not np.isfinite(value) else _diverging((value - middle) / half)
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=colour)
            text = f"{value:+.{digits}f}" if np.isfinite(value) else "n/a"
            draw.text((x + (cell_w - char_w * len(text)) // 2, y + (cell_h - line_h) // 2), text, fill="black")
    return picture


def line_plot(x: np.ndarray, series: Mapping[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int]]], *,
              title: str = "", x_label: str = "", y_label: str = "", width: int = 480,
              height: int = 300) -> Image.Image:
    """Lines over a log x axis: ``series`` maps a label to (values, error bars, RGB colour)."""
    margin_l, margin_r, margin_t, margin_b = 56, 16, 28, 40
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    lx = np.log(np.asarray(x, dtype=np.float64))
    x0, x1 = float(lx.min()), float(lx.max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    lows = [np.asarray(v) - np.asarray(e) for v, e, _ in series.values()]
    highs = [np.asarray(v) + np.asarray(e) for v, e, _ in series.values()]
    y0, y1 = min(0.0, float(np.min(lows))), max(0.0, float(np.max(highs)))
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(value: float) -> float:
        return margin_l + (value - x0) / (x1 - x0) * (width - margin_l - margin_r)

    def py(value: float) -> float:
        return height - margin_b - (value - y0) / (y1 - y0) * (height - margin_t - margin_b)

    draw.rectangle((margin_l, margin_t, width - margin_r, height - margin_b), outline="black")
    draw.line((margin_l, py(0.0), width - margin_r, py(0.0)), fill=(170, 170, 170))
    for value, raw in zip(lx, x):
        draw.line((px(value), height - margin_b, px(value), height - margin_b + 4), fill="black")
        draw.text((px(value) - 3 * len(f"{raw:g}"), height - margin_b + 6), f"{raw:g}", fill="black")
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        draw.line((margin_l - 4, py(value), margin_l, py(value)), fill="black")
        draw.text((4, py(value) - 5), f"{value:+.2f}", fill="black")
    draw.text((margin_l, 8), title, fill="black")
    draw.text((margin_l, height - 14), x_label, fill="black")
    draw.text((width - margin_r - 6 * len(y_label), margin_t + 4), y_label, fill=(90, 90, 90))
    for k, (label, (values, errors, colour)) in enumerate(series.items()):
        points = [(px(a), py(b)) for a, b in zip(lx, values)]
        draw.line(points, fill=colour, width=2)
        for (cx, cy), b, e in zip(points, values, errors):
            draw.line((cx, py(b - e), cx, py(b + e)), fill=colour)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        draw.text((margin_l + 8, margin_t + 6 + 12 * k), f"- {label}", fill=colour)
    return picture
