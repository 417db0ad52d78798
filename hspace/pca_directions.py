"""PCA directions (Sec. IV-A): per-step components with signs aligned across steps, concatenated over t.

For each step t the paper runs PCA on the n vectors vec(h_t^(i)) (:class:`hspace.pca.StreamingPCA`).
Direction j is the concatenation over t of the j-th component at step t. A component's sign is arbitrary
per step, so signs are aligned across steps (:func:`align_signs`, :func:`step_signs`) before
concatenating (:func:`pca_direction`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from hspace.errors import HSpaceError
from hspace.incremental_svd import flip_signs


def align_signs(components: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Make the sign of each component consistent across steps (Sec. IV-A).

    Step 0 follows scikit-learn's ``svd_flip`` (the entry of largest magnitude of each component is
    positive); at step t, component j is flipped when its dot product with the already aligned component j
    of step t - 1 is negative.

    Parameters
    ----------
    components : ndarray or Tensor of shape (T, k, D)
        Component j of step t in ``components[t, j]``, steps in sampling order.

    Returns
    -------
    aligned : same type, dtype and shape as ``components``
    signs : same type, shape (T, k), values +1 or -1, with ``aligned = components * signs[..., None]``
    """
    rows = torch.as_tensor(components)
    if rows.ndim != 3:
        raise HSpaceError(f"components must have shape (T, k, D); got {tuple(rows.shape)}")
    signs = step_signs(rows)
    aligned = (rows.to(torch.float64) * signs[..., None]).to(rows.dtype)
    signs = signs.to(rows.dtype)
    if isinstance(components, torch.Tensor):
        return aligned, signs
    return aligned.numpy(), signs.numpy()


def step_signs(steps: Iterable[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """The signs of :func:`align_signs`, float64 (T, k), from the steps' (k, D) components in sampling order.

    Reads one step at a time and keeps only the previous aligned step, so a run's components never have
    to be in memory at once (k = 128 at D = 32,768 is 16 MB per step, 840 MB for T = 50).
    """
    signs: list[torch.Tensor] = []
    previous: torch.Tensor | None = None
    for t, step in enumerate(steps):
        work = torch.as_tensor(step).to(torch.float64)
        if work.ndim != 2 or (previous is not None and work.shape != previous.shape):
            raise HSpaceError(f"step {t} components must have shape (k, D) like the others; got {tuple(work.shape)}")
        if previous is None:
            sign = flip_signs(work)
        else:
            sign = torch.where((work * previous).sum(dim=1) < 0, -1.0, 1.0).to(torch.float64)
        previous = work * sign[:, None]
        signs.append(sign)
    if not signs:
        raise HSpaceError("no steps to align")
    return torch.stack(signs)


def pca_direction(components: np.ndarray | torch.Tensor, j: int, h_shape: tuple[int, int, int]) -> torch.Tensor:
    """PCA direction j (Sec. IV-A): component j of every step, unit norm per step, as h_{T:1}.

    Parameters
    ----------
    components : ndarray or Tensor of shape (T, k, D), sign-aligned by :func:`align_signs`
    j : int, 0 <= j < k
    h_shape : (C, H, W), with C * H * W = D

    Returns
    -------
    Tensor of shape (T, C, H, W), float32, on the device of ``components`` (CPU for numpy)
    """
    rows = torch.as_tensor(components)
    if rows.ndim != 3:
        raise HSpaceError(f"components must have shape (T, k, D); got {tuple(rows.shape)}")
    T, k, D = rows.shape
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= j < k:
        raise HSpaceError(f"component index j must lie in 0..{k - 1}; got {j!r}")
    if math.prod(h_shape) != D:
        raise HSpaceError(
            f"h_shape {tuple(h_shape)} has {math.prod(h_shape)} numbers but a component has {D}: "
            "pass the model's h_shape (C, H, W)"
        )
    direction = rows[:, j, :].to(torch.float32)
    norms = direction.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise HSpaceError(
            f"component {j} is zero at step {int(torch.nonzero(norms[:, 0] == 0)[0, 0])}: refit PCA at that step"
        )
    return (direction / norms).reshape(T, *h_shape)
