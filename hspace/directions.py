"""Directions in h-space: supervised (eq. 11) and norm-matched random baselines (Fig. 4).

A direction has the shape of h_{T:1}: (T, C, H, W). Editing adds gamma * v_t to h_t at every step.
"""

from __future__ import annotations

import numpy as np
import torch

from hspace.errors import HSpaceError


def top_bottom(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k highest and the k lowest scores (Sec. V: classifier annotation)."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise HSpaceError(f"scores must be one value per sample; got shape {scores.shape}")
    if not 0 < k <= len(scores) // 2:
        raise HSpaceError(f"k must lie in 1..{len(scores) // 2} (half of the {len(scores)} samples); got {k}")
    order = np.argsort(scores, kind="stable")
    return order[-k:][::-1].copy(), order[:k].copy()


def supervised_direction(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """eq. 11: v = mean_i (q_i+ - q_i-), for q = h_{T:1} (or x_T) of positive and negative examples.

    Parameters
    ----------
    positives, negatives : Tensor of shape (n, T, C, H, W)
        The same number of examples on each side (eq. 11 pairs them; the mean of the differences is the
        difference of the means).
    """
    if positives.shape[1:] != negatives.shape[1:]:
        raise HSpaceError(f"positive and negative examples differ in shape: {tuple(positives.shape[1:])} vs "
                          f"{tuple(negatives.shape[1:])}")
    if len(positives) == 0 or len(negatives) == 0:
        raise HSpaceError("eq. 11 needs at least one positive and one negative example")
    return positives.float().mean(0) - negatives.float().mean(0)


def per_step_norm(direction: torch.Tensor) -> torch.Tensor:
    """|v_t| for each step t: shape (T,)."""
    return direction.flatten(1).norm(dim=1)


def random_direction_like(direction: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian direction rescaled to the same per-step norm as ``direction`` (the paper's baseline)."""
    noise = torch.randn(direction.shape, generator=generator)
    scale = per_step_norm(direction) / per_step_norm(noise).clamp_min(1e-12)
    return noise * scale.view(-1, *([1] * (direction.ndim - 1)))
