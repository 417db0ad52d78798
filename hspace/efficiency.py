"""The Fig. 8a sample-efficiency curve: how many examples eq. 11 needs in h_{T:1} and in x_T.

:func:`sample_efficiency` builds eq. 11 directions from the top-n vs bottom-n of an annotated pool, once
with q = h_{T:1} and once with q = x_T, applies them to fresh samples, and reports the attribute's change
as n grows (:class:`EfficiencyCurve`). Sampling and batching are those of :mod:`hspace.scoring`.

The parts of a distributed run (``flows/efficiency.py``), which :func:`sample_efficiency` runs in one process:
:func:`plan_efficiency` fixes the settings; :func:`sample_pool` samples and scores any passes of the pool,
:func:`example_directions` makes eq. 11 per count from the pool's scores and the h_{T:1} of only the top and
bottom examples (the pool's h may stay on disk), :func:`score_edits` scores any passes of the evaluation
samples, each with all its edits, and :func:`summarize` makes the curve. Passes are of ``batch`` samples and
are scored one by one (:mod:`hspace.scoring`): any split on pass boundaries gives the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from hspace.annotators.base import Annotator
from hspace.directions import per_step_norm, random_direction_like, supervised_direction, top_bottom
from hspace.errors import HSpaceError
from hspace.evaluate import check_batch
from hspace.models import LoadedModel
from hspace.render import line_plot
from hspace.sampler import derive_seeds, initial_noise
from hspace.scoring import Edit, Progress, generate, scores_of_edits

Keep = Callable[[dict[str, np.ndarray]], np.ndarray]  # the pool's scores by attribute -> bool mask of examples


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
        return {
            "attribute": self.attribute,
            "counts": list(self.counts),
            "scale": self.scale,
            "random_h": list(self.random_h),
            "random_x": list(self.random_x),
            **{k: getattr(self, k).tolist() for k in ("effect_h", "effect_x", "se_h", "se_x", "cosine_h", "cosine_x")},
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EfficiencyCurve:
        """Inverse of :meth:`to_dict`."""
        arrays = ("effect_h", "effect_x", "se_h", "se_x", "cosine_h", "cosine_x")
        return cls(
            attribute=data["attribute"],
            counts=tuple(int(n) for n in data["counts"]),
            scale=float(data["scale"]),
            random_h=(float(data["random_h"][0]), float(data["random_h"][1])),
            random_x=(float(data["random_x"][0]), float(data["random_x"][1])),
            settings=dict(data.get("settings", {})),
            **{k: np.asarray(data[k], dtype=np.float64) for k in arrays},
        )

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
            lines.append(
                f"| {n} | {self.effect_h[i]:+.3f} ± {self.se_h[i]:.3f} | {self.effect_x[i]:+.3f} ± "
                f"{self.se_x[i]:.3f} | {self.cosine_h[i]:.3f} | {self.cosine_x[i]:.3f} |"
            )
        lines.append(
            f"| random, norm of n = {self.counts[-1]} | {self.random_h[0]:+.3f} ± {self.random_h[1]:.3f} | "
            f"{self.random_x[0]:+.3f} ± {self.random_x[1]:.3f} | | |"
        )
        return "\n".join(lines) + "\n"

    def plot(self, width: int = 480, height: int = 300) -> Image.Image:
        """A line plot (PIL): effect vs n (log axis), h in red, x_T in blue, ± 1 standard error bars."""
        return line_plot(
            np.asarray(self.counts, dtype=np.float64),
            {"h": (self.effect_h, self.se_h, (200, 30, 30)), "x_T": (self.effect_x, self.se_x, (30, 60, 200))},
            title=f"Fig. 8a: change of {self.attribute} vs number of examples",
            x_label="examples n (top n vs bottom n, log scale)",
            y_label=f"change of {self.attribute}",
            width=width,
            height=height,
        )


@dataclass(frozen=True, kw_only=True)
class EfficiencyPlan:
    """What a Fig. 8a run measures; every part of a distributed one rebuilds the same plan.

    Attributes
    ----------
    attribute : str
    counts : tuple of int, k of them, ascending
    pool_samples, eval_samples : int
    columns : tuple of str
        The annotator's attributes: the columns of the pool's scores.
    settings : dict
        What is run (JSON-able): the curve's ``settings`` (less ``usable_pool_samples``).
    """

    attribute: str
    counts: tuple[int, ...]
    pool_samples: int
    eval_samples: int
    columns: tuple[str, ...]
    settings: dict

    @property
    def edits(self) -> int:
        """Rows of :func:`score_edits`: the unedited sample, h and x_T per count, two random directions."""
        return 3 + 2 * len(self.counts)


@dataclass(frozen=True, kw_only=True)
class ExampleDirections:
    """eq. 11 from the top n vs bottom n of the pool, per count n, as applied (rescaled where asked).

    Attributes
    ----------
    h, x_T : Tensors of shape (k, T, C, H, W) and (k, C, S, S)
    random_h, random_x : Tensors of shape (T, C, H, W) and (C, S, S)
        Gaussian directions with the norm of the largest n's (h: per step).
    cosine_h, cosine_x : ndarrays of shape (k,)
        Cosine of each (unrescaled) direction with the largest n's.
    usable : int
        Pool samples that passed ``keep``.
    """

    h: torch.Tensor
    x_T: torch.Tensor
    random_h: torch.Tensor
    random_x: torch.Tensor
    cosine_h: np.ndarray
    cosine_x: np.ndarray
    usable: int


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
    keep: Keep | None = None,
    batch: int = 128,
    progress: Progress | None = None,
) -> EfficiencyCurve:
    """Fig. 8a: how many examples eq. 11 needs in h_{T:1} and in x_T.

    An annotated pool of ``pool_samples`` samples (seeds ``derive_seeds(seed, 0, pool_samples)``) gives, for
    each n, the top-n and bottom-n samples by ``attribute``; eq. 11 over their h_{T:1} and over their x_T
    gives two directions, each applied to the same ``eval_samples`` fresh samples (the next seeds of the
    same stream). All edits of a sample share its U-Net pass.

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
    batch : int
        Samples per U-Net pass, in the pool and in the edits (each sample with all its edits).

    Returns
    -------
    EfficiencyCurve
        The same bits as the distributed run (``flows/efficiency.py``) with the same ``batch``.
    """
    say = progress or (lambda message: None)
    plan = plan_efficiency(
        model,
        annotator,
        attribute=attribute,
        gamma_h=gamma_h,
        gamma_x=gamma_x,
        steps=steps,
        example_counts=example_counts,
        pool_samples=pool_samples,
        eval_samples=eval_samples,
        eta=eta,
        seed=seed,
        normalize=normalize,
    )
    check_batch(batch)
    say(f"sampling and annotating a pool of {pool_samples} samples with h_{{T:1}} ({steps} steps, eta {eta})")
    h, scores = sample_pool(model, annotator, plan, pool_seeds(plan, 0, pool_samples), batch=batch)
    directions = example_directions(model, plan, scores, lambda rows: h[torch.from_numpy(rows)], keep=keep)
    seeds = evaluation_seeds(plan, 0, eval_samples)
    return summarize(plan, directions, score_edits(model, annotator, plan, directions, seeds, batch=batch, say=say))


def plan_efficiency(
    model: LoadedModel,
    annotator: Annotator,
    *,
    attribute: str,
    gamma_h: float,
    gamma_x: float,
    steps: int,
    example_counts: Sequence[int],
    pool_samples: int,
    eval_samples: int,
    eta: float,
    seed: int,
    normalize: bool,
) -> EfficiencyPlan:
    """Check the arguments (as :func:`sample_efficiency` takes them) and fix the plan."""
    counts = tuple(sorted({int(n) for n in example_counts}))
    if attribute not in annotator.attributes:
        raise HSpaceError(
            f"annotator {annotator.name!r} has no attribute {attribute!r}; it scores {', '.join(annotator.attributes)}"
        )
    if pool_samples < 1 or eval_samples < 1:
        raise HSpaceError(f"pool_samples and eval_samples must be positive; got {pool_samples}, {eval_samples}")
    if not counts or counts[0] < 1 or counts[-1] > pool_samples // 2:
        raise HSpaceError(
            f"example counts must lie in 1..{pool_samples // 2} (half of the {pool_samples} pool "
            f"samples: top n and bottom n must not overlap); got {list(counts)}"
        )
    samples = {"pool_samples": pool_samples, "eval_samples": eval_samples}
    settings: dict[str, object] = {"model": model.name, "fingerprint": model.fingerprint, "precision": model.precision}
    settings.update(annotator=annotator.name, **samples)
    settings.update(gamma_h=gamma_h, gamma_x=gamma_x, steps=steps, eta=eta, seed=seed, normalize=normalize)
    columns = tuple(annotator.attributes)
    return EfficiencyPlan(attribute=attribute, counts=counts, columns=columns, settings=settings, **samples)


def pool_seeds(plan: EfficiencyPlan, start: int, stop: int) -> list[int]:
    """Seeds of pool samples ``start:stop``: the first ``pool_samples`` of the stream ``derive_seeds(seed, ...)``."""
    return derive_seeds(int(plan.settings["seed"]), start, stop)


def evaluation_seeds(plan: EfficiencyPlan, start: int, stop: int) -> list[int]:
    """Seeds of evaluation samples ``start:stop``: the stream's next ``eval_samples`` after the pool's."""
    return derive_seeds(int(plan.settings["seed"]), plan.pool_samples + start, plan.pool_samples + stop)


def sample_pool(
    model: LoadedModel, annotator: Annotator, plan: EfficiencyPlan, seeds: Sequence[int], *, batch: int
) -> tuple[torch.Tensor, np.ndarray]:
    """h_{T:1} (n, T, C, H, W) and every attribute's score (float64 (n, A), ``plan.columns``) of pool ``seeds``.

    ``batch`` seeds per U-Net pass, each pass scored on its own: a part of the pool that starts on a pass
    boundary gets the bits that the whole pool gets.
    """
    seeds = list(seeds)
    s = plan.settings
    hs, scores = [], []
    for start in range(0, len(seeds), batch):
        part = generate(
            model, annotator, seeds[start : start + batch], steps=s["steps"], eta=s["eta"], capture=True, batch=batch
        )
        assert part.h is not None  # generated with capture=True
        hs.append(part.h)
        scores.append(np.stack([np.asarray(part.scores[a], dtype=np.float64) for a in plan.columns], axis=1))
    return torch.cat(hs), np.concatenate(scores)


def usable_examples(plan: EfficiencyPlan, scores: np.ndarray, keep: Keep | None) -> np.ndarray:
    """Indices of the pool samples that may serve as examples (``keep``); refused if too few for the counts."""
    if keep is None:
        return np.arange(plan.pool_samples)
    usable = np.flatnonzero(np.asarray(keep(dict(zip(plan.columns, scores.T, strict=True))), dtype=bool))
    if plan.counts[-1] > len(usable) // 2:
        raise HSpaceError(
            f"only {len(usable)} of the {plan.pool_samples} pool samples pass `keep`; the largest example "
            f"count ({plan.counts[-1]}) needs {2 * plan.counts[-1]}: enlarge the pool or lower the counts"
        )
    return usable


def example_directions(
    model: LoadedModel,
    plan: EfficiencyPlan,
    scores: np.ndarray,
    read_h: Callable[[np.ndarray], torch.Tensor],
    *,
    keep: Keep | None = None,
) -> ExampleDirections:
    """eq. 11 from the top n vs bottom n by ``plan.attribute`` for each count n, in h_{T:1} and in x_T.

    ``scores`` are the whole pool's (:func:`sample_pool`); ``read_h(rows)`` returns the h_{T:1} of the pool
    samples ``rows`` (ascending indices): only the examples' are read. The random directions come from a
    generator seeded with the plan's seed.
    """
    usable = usable_examples(plan, scores, keep)
    ranked = scores[usable, plan.columns.index(plan.attribute)]
    examples = [tuple(usable[side] for side in top_bottom(ranked, n)) for n in plan.counts]
    rows = np.unique(np.concatenate([side for pair in examples for side in pair]))
    h = read_h(rows)
    seeds = pool_seeds(plan, 0, plan.pool_samples)
    x_T = initial_noise(model, [seeds[i] for i in rows])  # each sample's own first draw: no pool-wide x_T
    v_h, v_x = [], []
    for top, bottom in examples:
        top_rows, bottom_rows = (torch.from_numpy(np.searchsorted(rows, side)) for side in (top, bottom))
        v_h.append(supervised_direction(h[top_rows], h[bottom_rows]))  # eq. 11, q = h_{T:1}
        v_x.append(supervised_direction(x_T[top_rows], x_T[bottom_rows]))  # eq. 11, q = x_T
    cosine_h = np.array([_cosine(v, v_h[-1]) for v in v_h])
    cosine_x = np.array([_cosine(v, v_x[-1]) for v in v_x])
    if plan.settings["normalize"]:
        v_h, v_x = _rescale_to_largest(v_h, v_x)
    generator = torch.Generator().manual_seed(int(plan.settings["seed"]))
    return ExampleDirections(
        h=torch.stack(v_h),
        x_T=torch.stack(v_x),
        random_h=random_direction_like(v_h[-1], generator),
        random_x=random_direction_like(v_x[-1].unsqueeze(0), generator)[0],
        cosine_h=cosine_h,
        cosine_x=cosine_x,
        usable=len(usable),
    )


def efficiency_edits(plan: EfficiencyPlan, directions: ExampleDirections) -> list[Edit]:
    """The edits of every evaluation sample: none, h per count, x_T per count, random h, random x_T."""
    gamma_h, gamma_x = float(plan.settings["gamma_h"]), float(plan.settings["gamma_x"])
    return (
        [Edit()]
        + [Edit(h=gamma_h * v) for v in directions.h]
        + [Edit(x_T=gamma_x * v) for v in directions.x_T]
        + [Edit(h=gamma_h * directions.random_h), Edit(x_T=gamma_x * directions.random_x)]
    )


def score_edits(
    model: LoadedModel,
    annotator: Annotator,
    plan: EfficiencyPlan,
    directions: ExampleDirections,
    seeds: Sequence[int],
    *,
    batch: int,
    say: Progress | None = None,
) -> np.ndarray:
    """``plan.attribute`` of evaluation ``seeds`` under each edit: float64 of shape (``plan.edits``, len(seeds)).

    ``batch`` seeds per U-Net pass, each with all its edits (:func:`hspace.scoring.scores_of_edits`): a part
    that starts on a pass boundary gets the bits that all the evaluation samples get.
    """
    s = plan.settings
    edits = efficiency_edits(plan, directions)
    return scores_of_edits(
        model, annotator, seeds, edits, steps=s["steps"], eta=s["eta"], batch=batch, say=say, label="edits"
    )[plan.attribute]


def summarize(plan: EfficiencyPlan, directions: ExampleDirections, measured: np.ndarray) -> EfficiencyCurve:
    """The curve from every evaluation sample's scores, shape (``plan.edits``, eval_samples) (:func:`score_edits`)."""
    n = plan.eval_samples
    if measured.shape != (plan.edits, n):
        raise HSpaceError(f"efficiency scores have shape {measured.shape}; the plan needs {(plan.edits, n)}")
    change = measured[1:] - measured[0]  # (2 * len(counts) + 2, eval_samples)
    mean, se = change.mean(1), change.std(1, ddof=1 if n > 1 else 0) / math.sqrt(n)
    k = len(plan.counts)
    settings = dict(plan.settings)
    settings["usable_pool_samples"] = directions.usable
    return EfficiencyCurve(
        attribute=plan.attribute,
        counts=plan.counts,
        effect_h=mean[:k],
        effect_x=mean[k : 2 * k],
        se_h=se[:k],
        se_x=se[k : 2 * k],
        cosine_h=directions.cosine_h,
        cosine_x=directions.cosine_x,
        scale=float(measured[0].std()),
        random_h=(float(mean[2 * k]), float(se[2 * k])),
        random_x=(float(mean[2 * k + 1]), float(se[2 * k + 1])),
        settings=settings,
    )


def _rescale_to_largest(
    v_h: list[torch.Tensor], v_x: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every direction at the norm of the last (largest n) one: h per step, x_T as a whole."""
    ref_h, ref_x = per_step_norm(v_h[-1]), v_x[-1].norm()
    v_h = [v * (ref_h / per_step_norm(v).clamp_min(1e-12)).view(-1, 1, 1, 1) for v in v_h]
    v_x = [v * (ref_x / v.norm().clamp_min(1e-12)) for v in v_x]
    return v_h, v_x


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
