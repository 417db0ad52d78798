"""Directions in h-space: supervised (eq. 11), disentangled (eq. 12) and norm-matched random baselines (Fig. 4).

A direction has the shape of h_{T:1}: (T, C, H, W). Editing adds gamma * v_t to h_t at every step.
eq. 11 also works with q = x_T (shape (C, S, S); Fig. 8a compares the two): pass the initial noises of the
examples (:func:`hspace.sampler.initial_noise`) and apply the result with ``sample(..., noise_delta=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hspace.errors import HSpaceError


def top_bottom(
    scores: np.ndarray, k: int, *, threshold: float | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The examples of eq. 11 (Sec. V: classifier annotation): indices of positives and negatives.

    Without ``threshold``: the k highest and the k lowest scores. With it (a binary attribute, e.g. a
    classifier's probability and 0.5): k drawn at random from the samples scoring above ``threshold`` and k
    from those at or below it (all of the smaller side when it has fewer than k). The k most extreme
    scores of a binary attribute are not the k most typical examples but the ones the classifier is most
    sure of, and its confidence follows whatever the attribute correlates with: on the testbed the 57
    faces least likely to wear glasses wear a hat 7% of the time, all faces without glasses 24%, so the
    top-k glasses direction carried more hat than the data's correlation (docs/results.md, "eq. 11 for binary
    attributes").

    Returns
    -------
    positives, negatives : int64 arrays, positives by descending score, negatives by ascending score.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise HSpaceError(f"scores must be one value per sample; got shape {scores.shape}")
    if threshold is None:
        if not 0 < k <= len(scores) // 2:
            raise HSpaceError(f"k must lie in 1..{len(scores) // 2} (half of the {len(scores)} samples); got {k}")
        order = np.argsort(scores, kind="stable")
        return order[-k:][::-1].copy(), order[:k].copy()
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise HSpaceError(f"k must be a positive integer; got {k!r}")
    if not np.isfinite(threshold):
        raise HSpaceError(f"threshold must be a finite number; got {threshold}")
    above, below = np.flatnonzero(scores > threshold), np.flatnonzero(scores <= threshold)
    if len(above) == 0 or len(below) == 0:
        side = "above" if len(above) == 0 else "at or below"
        raise HSpaceError(
            f"no sample scores {side} the threshold {threshold} (scores range "
            f"{scores.min():.4g}..{scores.max():.4g}): choose a threshold between the classes"
        )
    n = min(int(k), len(above), len(below))
    rng = np.random.default_rng(seed)
    positives, negatives = rng.choice(above, n, replace=False), rng.choice(below, n, replace=False)
    return (
        positives[np.argsort(-scores[positives], kind="stable")].astype(np.int64),
        negatives[np.argsort(scores[negatives], kind="stable")].astype(np.int64),
    )


def supervised_direction(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """eq. 11: v = mean_i (q_i+ - q_i-), for q = h_{T:1} (or x_T) of positive and negative examples.

    Parameters
    ----------
    positives, negatives : Tensor of shape (n, T, C, H, W)
        The same number of examples on each side (eq. 11 pairs them; the mean of the differences is the
        difference of the means).
    """
    if positives.shape[1:] != negatives.shape[1:]:
        raise HSpaceError(
            f"positive and negative examples differ in shape: {tuple(positives.shape[1:])} vs "
            f"{tuple(negatives.shape[1:])}"
        )
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


def disentangle(
    v0: torch.Tensor,
    others: torch.Tensor | Sequence[torch.Tensor],
    *,
    per_step: bool = False,
    keep_norm: bool = False,
    rtol: float = 1e-6,
) -> torch.Tensor:
    """eq. 12: remove from ``v0`` its projection onto the span of the ``others``.

    ``v = [I - V (V^T V)^-1 V^T] v_0`` with ``V = [v_1 ... v_k]``, every direction flattened over all steps
    (Sec. V). For one other direction this is ``v_0 - <v_0, v_1> / |v_1|^2 v_1``. The projector is applied
    through a reduced QR of V (``V = Q R``, so ``V (V^T V)^-1 V^T = Q Q^T``), in float64, never through an
    explicit inverse of the Gram matrix, whose condition number is the square of V's.

    Parameters
    ----------
    v0 : Tensor of shape (T, C, H, W)
        The primal direction (any shape works; h directions have this one).
    others : Tensor of shape (k, T, C, H, W), or a sequence of k tensors shaped like ``v0``
        The directions whose attributes the result must leave alone. k = 0 returns a copy of ``v0``.
    per_step : bool
        Project each step t separately (``V_t = [v_1,t ... v_k,t]``, leading dimension of ``v0`` = steps):
        the result is then orthogonal to every other direction at every step, which implies the paper's
        global orthogonality but removes more of ``v0`` (k numbers per step instead of k in all). The
        paper's eq. 12 is the default (``False``).
    keep_norm : bool
        Rescale the result to the norm of ``v0`` (per step with ``per_step``), so that one gamma makes edits
        of the same size along both: eq. 12 shortens ``v_0`` by the part it removes (to a third when ``v_0``
        and ``v_1`` have cosine 0.95). Shen et al.'s ``project_boundary`` (InterFaceGAN, whose conditional
        manipulation the paper's eq. 12 follows) renormalises the same way. The paper's eq. 12 is the
        default (``False``).
    rtol : float
        V is refused as rank deficient when some ``v_j`` lies within ``rtol * |v_j|`` of the span of
        ``v_1 .. v_{j-1}`` (the diagonal of R is that distance); eq. 12 needs ``V^T V`` invertible.

    Returns
    -------
    Tensor shaped like ``v0``, in ``v0``'s dtype.
    """
    stacked = _stack_others(v0, others)
    if stacked.shape[0] == 0:
        return v0.clone()
    if per_step:
        if v0.ndim < 1:
            raise HSpaceError("per-step disentanglement needs directions with a leading step dimension")
        projected = torch.stack(
            [
                _project_out(v0[t].reshape(-1), stacked[:, t].reshape(len(stacked), -1), rtol, step=t)
                for t in range(v0.shape[0])
            ]
        )
        if keep_norm:
            scale = per_step_norm(v0.double()) / per_step_norm(projected).clamp_min(1e-300)
            projected = projected * scale[:, None]
    else:
        projected = _project_out(v0.reshape(-1), stacked.reshape(len(stacked), -1), rtol)
        if keep_norm:
            # One factor for the whole direction: a rescaling that differed between steps would undo the
            # orthogonality of the global projection.
            projected = projected * (v0.double().norm() / projected.norm().clamp_min(1e-300))
    return projected.reshape(v0.shape).to(v0.dtype)


def _stack_others(v0: torch.Tensor, others: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(others, torch.Tensor):
        stacked = others
        if tuple(stacked.shape[1:]) != tuple(v0.shape):
            raise HSpaceError(
                f"others must have shape (k, *v0.shape) = (k, {', '.join(map(str, v0.shape))}); "
                f"got {tuple(stacked.shape)}"
            )
        return stacked
    others = list(others)
    for j, other in enumerate(others):
        if tuple(other.shape) != tuple(v0.shape):
            raise HSpaceError(
                f"direction {j} to disentangle against has shape {tuple(other.shape)}; v0 has "
                f"{tuple(v0.shape)}: directions must share one shape (same model and steps)"
            )
    return torch.stack(others) if others else v0.new_zeros((0, *v0.shape))


def _project_out(v0: torch.Tensor, others: torch.Tensor, rtol: float, step: int | None = None) -> torch.Tensor:
    """(I - Q Q^T) v0 for the reduced QR of V = others^T, shapes (D,) and (k, D); float64."""
    where = "" if step is None else f" at step {step}"
    v = others.double().T  # V: (D, k)
    if not torch.isfinite(v).all() or not torch.isfinite(v0).all():
        raise HSpaceError(f"directions to disentangle contain NaN or inf{where}")
    if v.shape[1] > v.shape[0]:
        raise HSpaceError(
            f"cannot disentangle against {v.shape[1]} directions in a space of dimension "
            f"{v.shape[0]}{where}: V^T V is singular"
        )
    q, r = torch.linalg.qr(v, mode="reduced")
    # R[j, j] is the distance of v_j from the span of v_1 .. v_{j-1} (Gram-Schmidt), so a tiny one names the
    # direction that makes V rank deficient.
    distance, norms = r.diagonal().abs(), v.norm(dim=0)
    bad = (distance <= rtol * norms) | (norms == 0)
    if bad.any():
        j = int(bad.nonzero()[0])
        raise HSpaceError(
            f"directions to disentangle against are linearly dependent{where}: direction {j} is "
            f"zero or lies in the span of the ones before it (eq. 12 needs V^T V invertible); "
            f"drop it or merge the duplicates"
        )
    x = v0.double()
    return x - q @ (q.T @ x)


def disentangled_set(
    directions: Mapping[str, torch.Tensor],
    against: Mapping[str, Sequence[str]],
    *,
    per_step: bool = False,
    keep_norm: bool = False,
) -> dict[str, torch.Tensor]:
    """The directions plus, for each ``name -> others`` of ``against``, ``name`` disentangled from the
    others by eq. 12, named ``"<name>-perp-<other>[-<other>...]"`` (Table I: original vs disentangled).

    ``keep_norm``: see :func:`disentangle` (each result keeps its original's norm).

    >>> disentangled_set({"glasses": v_g, "hat": v_h}, {"glasses": ["hat"]})  # doctest: +SKIP
    {"glasses": v_g, "hat": v_h, "glasses-perp-hat": disentangle(v_g, [v_h])}
    """
    result = dict(directions)
    for name, others in against.items():
        missing = [o for o in (name, *others) if o not in directions]
        if missing:
            raise HSpaceError(
                f"cannot disentangle {name!r}: no direction named {', '.join(map(repr, missing))}; "
                f"have {', '.join(directions)}"
            )
        if name in others:
            raise HSpaceError(f"cannot disentangle {name!r} against itself")
        label = f"{name}-perp-{'-'.join(others)}"
        result[label] = disentangle(
            directions[name], [directions[o] for o in others], per_step=per_step, keep_norm=keep_norm
        )
    return result


def norm_preserving_noise_delta(noise: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample x_T deltas that add ``delta`` and then rescale each x_T back to its own norm.

    ``sample(..., noise_delta=d)`` adds d to x_T as the paper does; passing
    ``norm_preserving_noise_delta(initial_noise(model, seeds), gamma * v)`` instead keeps every edited x_T
    at its original norm, on the shell where Gaussian noise of that dimension lives, for large edits where
    plain addition would leave it.

    Parameters
    ----------
    noise : Tensor of shape (B, C, S, S)
        The samples' x_T (:func:`hspace.sampler.initial_noise`).
    delta : Tensor of shape (C, S, S) or (B, C, S, S)

    Returns
    -------
    Tensor of shape (B, C, S, S): ``(x_T + delta) |x_T| / |x_T + delta| - x_T``.
    """
    if tuple(delta.shape) not in (tuple(noise.shape), tuple(noise.shape[1:])):
        raise HSpaceError(
            f"delta has shape {tuple(delta.shape)}; expected {tuple(noise.shape[1:])} or "
            f"{tuple(noise.shape)} to match the noise"
        )
    edited = noise + delta
    scale = noise.flatten(1).norm(dim=1) / edited.flatten(1).norm(dim=1).clamp_min(1e-12)
    return edited * scale.view(-1, *([1] * (noise.ndim - 1))) - noise
