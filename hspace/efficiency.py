"""The Fig. 8a sample-efficiency curve: how many examples eq. 11 needs in h_{T:1} and in x_T.

:func:`sample_efficiency` builds eq. 11 directions from the top-n vs bottom-n of an annotated pool, once
with q = h_{T:1} and once with q = x_T, applies them to fresh samples, and reports the attribute's change
as n grows (:class:`EfficiencyCurve`). Sampling and batching are those of :mod:`hspace.scoring`.
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
from hspace.models import LoadedModel
from hspace.render import line_plot
from hspace.sampler import derive_seeds, initial_noise
from hspace.scoring import Edit, Progress, generate, scores_of_edits


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
    _check_arguments(annotator, attribute, counts, pool_samples, eval_samples)
    say(f"sampling and annotating a pool of {pool_samples} samples with h_{{T:1}} ({steps} steps, eta {eta})")
    h, x_T, scores = _annotated_pool(
        model, annotator, attribute, counts, pool_samples, steps=steps, eta=eta, seed=seed, keep=keep, batch=batch
    )
    v_h, v_x = _example_directions(h, x_T, scores, counts)
    cos_h = np.array([_cosine(v, v_h[-1]) for v in v_h])
    cos_x = np.array([_cosine(v, v_x[-1]) for v in v_x])
    if normalize:
        v_h, v_x = _rescale_to_largest(v_h, v_x)
    generator = torch.Generator().manual_seed(seed)
    random_h = random_direction_like(v_h[-1], generator)
    random_x = random_direction_like(v_x[-1].unsqueeze(0), generator)[0]
    edits = (
        [Edit()]
        + [Edit(h=gamma_h * v) for v in v_h]
        + [Edit(x_T=gamma_x * v) for v in v_x]
        + [Edit(h=gamma_h * random_h), Edit(x_T=gamma_x * random_x)]
    )
    eval_seeds = derive_seeds(seed, pool_samples, pool_samples + eval_samples)
    measured = scores_of_edits(
        model, annotator, eval_seeds, edits, steps=steps, eta=eta, batch=batch, say=say, label="edits"
    )[attribute]
    change = measured[1:] - measured[0]  # (2 * len(counts) + 2, eval_samples)
    mean, se = change.mean(1), change.std(1, ddof=1 if eval_samples > 1 else 0) / math.sqrt(eval_samples)
    k = len(counts)
    settings = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "precision": model.precision,
        "annotator": annotator.name,
        "pool_samples": pool_samples,
        "usable_pool_samples": int(len(scores)),
        "eval_samples": eval_samples,
        "gamma_h": gamma_h,
        "gamma_x": gamma_x,
        "steps": steps,
        "eta": eta,
        "seed": seed,
        "normalize": normalize,
    }
    return EfficiencyCurve(
        attribute=attribute,
        counts=counts,
        effect_h=mean[:k],
        effect_x=mean[k : 2 * k],
        se_h=se[:k],
        se_x=se[k : 2 * k],
        cosine_h=cos_h,
        cosine_x=cos_x,
        scale=float(measured[0].std()),
        random_h=(float(mean[2 * k]), float(se[2 * k])),
        random_x=(float(mean[2 * k + 1]), float(se[2 * k + 1])),
        settings=settings,
    )


def _check_arguments(
    annotator: Annotator, attribute: str, counts: tuple[int, ...], pool_samples: int, eval_samples: int
) -> None:
    """Raise if the annotator lacks ``attribute`` or the example counts or sample counts cannot work."""
    if attribute not in annotator.attributes:
        raise HSpaceError(
            f"annotator {annotator.name!r} has no attribute {attribute!r}; it scores {', '.join(annotator.attributes)}"
        )
    if not counts or counts[0] < 1 or counts[-1] > pool_samples // 2:
        raise HSpaceError(
            f"example counts must lie in 1..{pool_samples // 2} (half of the {pool_samples} pool "
            f"samples: top n and bottom n must not overlap); got {list(counts)}"
        )
    if eval_samples < 1:
        raise HSpaceError(f"eval_samples must be positive; got {eval_samples}")


def _annotated_pool(
    model: LoadedModel,
    annotator: Annotator,
    attribute: str,
    counts: tuple[int, ...],
    pool_samples: int,
    *,
    steps: int,
    eta: float,
    seed: int,
    keep: Callable[[dict[str, np.ndarray]], np.ndarray] | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Generate and annotate the pool; h_{T:1}, x_T and ``attribute`` scores of its samples that pass ``keep``."""
    pool_seeds = derive_seeds(seed, 0, pool_samples)
    pool = generate(model, annotator, pool_seeds, steps=steps, eta=eta, capture=True, batch=batch)
    usable = np.arange(pool_samples) if keep is None else np.flatnonzero(np.asarray(keep(pool.scores), dtype=bool))
    if counts[-1] > len(usable) // 2:
        raise HSpaceError(
            f"only {len(usable)} of the {pool_samples} pool samples pass `keep`; the largest example "
            f"count ({counts[-1]}) needs {2 * counts[-1]}: enlarge the pool or lower the counts"
        )
    x_T = initial_noise(model, pool_seeds)[usable]
    assert pool.h is not None  # generated with capture=True
    return pool.h[usable], x_T, pool.scores[attribute][usable]


def _example_directions(
    h: torch.Tensor, x_T: torch.Tensor, scores: np.ndarray, counts: tuple[int, ...]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Eq. 11 from the top n vs bottom n by score, for each n of ``counts``: in h_{T:1} and in x_T."""
    v_h, v_x = [], []
    for n in counts:
        top, bottom = top_bottom(scores, n)
        v_h.append(supervised_direction(h[top], h[bottom]))  # eq. 11, q = h_{T:1}
        v_x.append(supervised_direction(x_T[top], x_T[bottom]))  # eq. 11, q = x_T
    return v_h, v_x


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
