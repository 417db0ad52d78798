"""The merge of :class:`hspace.pca.StreamingPCA`'s default method: a one-pass incremental SVD, b rows at a time.

The state after n rows is the exact mean, the exact per-feature sum of squared deviations (for the total
variance), and a matrix ``B = S V^T`` of r = k + p rows (k components plus p oversampling rows) with
``B^T B ~= Xc^T Xc``, the scatter of the centred rows seen so far. A block X of b rows is merged as in
``IncrementalPCA.partial_fit`` (Ross et al. 2008): stack

    A = [ B ; X - mean(X) ; sqrt(n b / (n + b)) (mean_old - mean(X)) ]        (r + b + 1, D)

whose scatter ``A^T A`` is the scatter of all n + b rows about their new mean (the last row is the
mean-correction row of Chan et al.'s combined variance). Instead of a full SVD of A (what scikit-learn
does, O((r + b)^2 D) with LAPACK's large constant), we form the small Gram matrix ``G = A A^T`` with
torch matmuls (blocks ``B B^T``, ``B E^T``, ``E E^T`` for E the centred block plus the correction row, so
the off-diagonal block is computed once), solve ``G = U diag(w) U^T`` by ``eigh`` in float64, and keep
``B' = U_r^T A``, the top r rows of ``S' V'^T``. ``B'`` is formed directly, never as ``V'`` divided by
small singular values, and ``B B^T`` is recomputed at each merge rather than assumed diagonal, so
round-off does not accumulate as loss of orthogonality. Components are the normalised top-k rows of B,
singular values their norms. Why this method, p = k and b = 1,024 (measured): ``docs/pca.md``.

Notation (<variable> -> <name>):
    n, mean, m2  -> rows merged, their mean, per-feature sum of squared deviations (Chan et al.)
    basis        -> B = S V^T (r, D), rows in decreasing order of singular value
    block        -> X, one block of b rows; ``centred`` -> E = [X - mean(X) ; correction row]
    gram         -> G = A A^T, A = [B ; E]
    rank         -> r = k + p, rows kept
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Moments:
    """Exact first and second moments of the rows merged so far, and the rank-r scatter factor."""

    n: int
    mean: torch.Tensor  # (D,) float64
    m2: torch.Tensor  # (D,) float64, sum over rows of (x - mean)^2
    basis: torch.Tensor  # (r_now, D) float32, B = S V^T


@dataclass(frozen=True)
class Fitted:
    """The learned attributes, as numpy arrays (computed once per ``partial_fit``)."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    noise_variance: float


def merge_block(state: Moments | None, block: torch.Tensor, rank: int) -> Moments:
    """Merge b rows into the state (module docstring): exact moments, then the rank-r scatter factor.

    Parameters
    ----------
    state : Moments or None (nothing merged yet)
    block : Tensor of shape (b, D), float32, on the state's device
    rank : int, r, the rows of B to keep
    """
    b = len(block)
    # 1. Exact moments of the block, combined with the state's (Chan et al.), in float64.
    block_mean = block.sum(0, dtype=torch.float64) / b
    centred = block - block_mean.to(torch.float32)
    block_m2 = (centred * centred).sum(0, dtype=torch.float64)
    if state is None:
        mean, m2, basis, n = block_mean, block_m2, block.new_zeros(0, block.shape[1]), b
    else:
        n_old, n = state.n, state.n + b
        delta = block_mean - state.mean
        mean = state.mean + delta * (b / n)
        m2 = state.m2 + block_m2 + delta * delta * (n_old * b / n)
        # The mean-correction row: its outer product is the scatter between the two group means.
        correction = (math.sqrt(n_old * b / n) * (state.mean - block_mean)).to(torch.float32)
        centred = torch.cat([centred, correction[None]])
        basis = state.basis
    # 2. G = A A^T for A = [B ; E] by blocks (the off-diagonal block once), eigh in float64.
    r0 = len(basis)
    gram = torch.empty(r0 + len(centred), r0 + len(centred), dtype=torch.float64, device=block.device)
    cross = basis @ centred.T
    gram[:r0, :r0] = basis @ basis.T
    gram[:r0, r0:] = cross
    gram[r0:, :r0] = cross.T
    gram[r0:, r0:] = centred @ centred.T
    _, vectors = eigh(gram)
    # 3. B' = U_r^T A, the top r rows of S' V'^T (eigh sorts ascending).
    top = vectors[:, -min(rank, len(gram)) :].flip(1).to(torch.float32)
    new_basis = top[r0:].T @ centred
    if r0:
        new_basis += top[:r0].T @ basis
    return Moments(n=n, mean=mean, m2=m2, basis=new_basis)


def eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``; on the CPU with one intra-op thread.

    LAPACK's tridiagonal reduction synchronises its OpenMP threads at every column: measured on 2 shared,
    busy cores, a 600 x 600 eigh took 0.65-10 s on 2 threads and 0.13-0.15 s on 1. The thread count is a
    process-wide torch setting; it is changed only for the eigh and put back, also on errors.
    """
    if gram.device.type != "cpu":
        return torch.linalg.eigh(gram)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)


def top_k_attributes(state: Moments, k: int) -> Fitted:
    """Top-k components (svd_flip signs), singular values and variances from the state."""
    norms = state.basis.double().norm(dim=1)
    order = torch.argsort(norms, descending=True)  # eigh's order, up to round-off among near-equal rows
    norms, basis = norms[order], state.basis[order]
    components = basis[:k].double() / norms[:k, None].clamp_min(torch.finfo(torch.float64).tiny)
    components = components * flip_signs(components)[:, None]
    variance = norms**2 / (state.n - 1)
    total = state.m2.sum()
    return Fitted(
        components=components.to(torch.float32).cpu().numpy(),
        mean=state.mean.cpu().numpy(),
        explained_variance=variance[:k].cpu().numpy(),
        explained_variance_ratio=(norms[:k] ** 2 / total).cpu().numpy(),
        singular_values=norms[:k].cpu().numpy(),
        noise_variance=float(variance[k:].mean()) if len(variance) > k else 0.0,
    )


def sklearn_attributes(ipca: Any, k: int) -> Fitted:
    """The top-k learned attributes of a fitted ``sklearn.decomposition.IncrementalPCA``."""
    return Fitted(
        components=np.asarray(ipca.components_[:k], dtype=np.float32),
        mean=np.asarray(ipca.mean_, dtype=np.float64),
        explained_variance=np.asarray(ipca.explained_variance_[:k], dtype=np.float64),
        explained_variance_ratio=np.asarray(ipca.explained_variance_ratio_[:k], dtype=np.float64),
        singular_values=np.asarray(ipca.singular_values_[:k], dtype=np.float64),
        noise_variance=float(ipca.noise_variance_),
    )


def flip_signs(rows: torch.Tensor) -> torch.Tensor:
    """svd_flip's convention: the sign that makes each row's entry of largest magnitude positive; (k,)."""
    pick = rows.abs().argmax(dim=1)
    signs = torch.sign(rows[torch.arange(len(rows), device=rows.device), pick])
    return torch.where(signs == 0, torch.ones_like(signs), signs)
