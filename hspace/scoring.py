"""Sampling and scoring for the measurements: Table I (:mod:`hspace.evaluate`) and Fig. 8a (:mod:`hspace.efficiency`).

* :func:`generate`: samples (optionally with h_{T:1}) and their scores.
* :func:`scores_of_edits`: every edit applied to every seed, and the scores of the edited images.

Passes of :func:`scores_of_edits` are made of whole samples: ``batch`` samples per U-Net pass, each with
all its edits, and scored pass by pass. A pass is therefore fixed by its samples alone, and any split of a
seed list into parts that start on a pass boundary (the blocks of a distributed evaluation, see
``flows/evaluate.py``) computes exactly the passes of the whole list: the same bits, on the CPU too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hspace.annotators.base import Annotator
from hspace.models import LoadedModel
from hspace.sampler import sample, to_uint8

Progress = Callable[[str], None]


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
    """Sample (whole batches per U-Net pass: a measurement needs no bitwise batch independence) and score.

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


def scores_of_edits(
    model: LoadedModel,
    annotator: Annotator,
    seeds: Sequence[int],
    edits: Sequence[Edit],
    *,
    steps: int,
    eta: float,
    batch: int,
    say: Progress | None = None,
    label: str = "edits",
) -> dict[str, np.ndarray]:
    """Every edit applied to every seed: ``batch`` seeds per U-Net pass, each with all of ``edits``.

    Returns attribute -> float64 scores of shape (len(edits), len(seeds)).
    """
    seeds = list(seeds)
    h_zero = torch.zeros(steps, *model.h_shape)
    x_zero = torch.zeros(model.latent_shape)
    passes = range(0, len(seeds), batch)
    parts: list[dict[str, np.ndarray]] = []
    for p, start in enumerate(passes):
        if say is not None:
            say(f"{label}: pass {p + 1}/{len(passes)} ({len(edits)} edits of {len(seeds)} samples, {steps} steps)")
        part = seeds[start : start + batch]
        rows = [edit for _ in part for edit in edits]  # sample-major: a pass is fixed by its samples
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
            [s for s in part for _ in edits],
            steps=steps,
            eta=eta,
            delta=delta,
            noise_delta=noise,
            capture=False,
            microbatch=len(rows),
        )
        scores = annotator.scores_by_attribute(to_uint8(result.images).numpy())
        parts.append({a: np.asarray(s, dtype=np.float64).reshape(len(part), len(edits)).T for a, s in scores.items()})
    return {a: np.concatenate([p[a] for p in parts], axis=1) for a in parts[0]}
