"""The merge of :class:`hspace.pca.StreamingPCA`'s default method: a one-pass incremental SVD, b rows at a time.

The state after n rows is the exact mean, the exact per-feature sum of squared deviations (for the total
variance), and a matrix ``B = S V^T`` of r = k + p rows (k components plus p oversampling rows) with
``B^T B ~= Xc^T Xc``, the scatter of the centred rows seen so far. A block X of b rows is merged as in
``IncrementalPCA.partial_fit`` (Ross et al. 2008): stack

    A = [ B ; sqrt(n b / (n + b)) (mean_old - mean(X)) ; X - mean(X) ]        (r + 1 + b, D)

whose scatter ``A^T A`` is the scatter of all n + b rows about their new mean (the second block is the
mean-correction row of Chan et al.'s combined variance). Instead of a full SVD of A (what scikit-learn
does, O((r + b)^2 D) with LAPACK's large constant), we form the lower triangle of the small Gram matrix
``G = A A^T`` with torch matmuls (``H H^T``, ``E H^T`` and ``E E^T`` by row panels, for H the head
``[B ; correction row]`` and E the block centred in place, A never stacked), solve
``G = U diag(w) U^T`` by ``eigh``, and keep ``B' = U_r^T A = U_H^T H + U_E^T E``, the top r rows of
``S' V'^T``. ``B'`` is formed directly, never as ``V'`` divided by small singular values, and ``B B^T`` is
recomputed at each merge rather than assumed diagonal, so round-off does not accumulate as loss of
orthogonality. G and its eigh are float32, the moments float64 sums. Components are the normalised top-k
rows of B, singular values their norms. Why this method, p = k, b = 1,024 and the precisions (measured):
``docs/pca.md``.

Notation (<variable> -> <name>):
    n, mean, m2  -> rows merged, their mean, per-feature sum of squared deviations (Chan et al.)
    basis        -> B = S V^T (r, D), rows in decreasing order of singular value
    block        -> X, one block of b rows, centred in place into E = X - mean(X)
    head         -> H = [B ; correction row]
    gram         -> G = A A^T, A = [H ; E]
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
    block : Tensor of shape (b, D), float32, on the state's device; centred in place (it becomes E)
    rank : int, r, the rows of B to keep
    """
    b = len(block)
    # 1. Exact moments of the block, combined with the state's (Chan et al.), in float64; E = X - mean(X).
    block_mean, block_m2 = centre(block)
    if state is None:
        mean, m2, n, head = block_mean, block_m2, b, block.new_zeros(0, block.shape[1])
    else:
        n_old, n = state.n, state.n + b
        delta = block_mean - state.mean
        mean = state.mean + delta * (b / n)
        m2 = state.m2 + block_m2 + delta * delta * (n_old * b / n)
        # The mean-correction row: its outer product is the scatter between the two group means.
        correction = math.sqrt(n_old * b / n) * (state.mean - block_mean)
        head = torch.cat([state.basis, correction.to(torch.float32)[None]])
    # 2. G = A A^T for A = [B ; correction ; E] (its lower triangle), eigh; both in float32 (docs/pca.md).
    _, vectors = eigh(lower_gram(head, block))
    # 3. B' = U_r^T A, the top r rows of S' V'^T (eigh sorts ascending).
    top = vectors[:, -min(rank, len(head) + b) :].flip(1)
    basis = top[len(head) :].T @ block
    if len(head):
        basis.addmm_(top[: len(head)].T, head)
    return Moments(n=n, mean=mean, m2=m2, basis=basis)


def centre(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the mean of the rows (b, D) from them in place; return their mean and m2 (float64).

    Mean and m2 are float64 sums (exact for float32 rows); the rows are centred on the mean rounded to
    float32, as scikit-learn centres float32 rows. In place: a new (b, D) tensor costs its page faults
    on every merge.
    """
    mean = column_sums(block) / len(block)
    block -= mean.to(torch.float32)
    return mean, column_sums(block, squares=True)


def column_sums(rows: torch.Tensor, *, squares: bool = False) -> torch.Tensor:
    """The sum over rows (b, D) of the rows (or of their squares, rounded to the rows' dtype), (D,),
    accumulated in float64.

    On the CPU by numpy, 64 rows at a time: for 1,024 x 32,768 rows that took 0.03 CPU s, against 0.15 s
    for torch's ``sum(0, dtype=torch.float64)`` and 0.1 s for ``square()`` then a sum (measured).
    """
    if rows.device.type != "cpu":
        return (rows.square() if squares else rows).sum(0, dtype=torch.float64)
    values = rows.numpy()
    total = np.zeros(values.shape[1])
    scratch = np.empty((min(_CHUNK, len(values)), values.shape[1]), values.dtype)
    for start in range(0, len(values), _CHUNK):
        part = values[start : start + _CHUNK]
        if squares:
            part = np.square(part, out=scratch[: len(part)])
        total += part.sum(0, dtype=np.float64)
    return torch.from_numpy(total)


_CHUNK = 64  # rows per numpy sum in column_sums: the squares of 64 x 32,768 float32 stay in cache


def lower_gram(head: torch.Tensor, tail: torch.Tensor, panel: int = 256) -> torch.Tensor:
    """``A @ A.T`` for ``A = [head ; tail]``, without forming A: its lower triangle (above it, only the
    diagonal blocks are filled in, the rest is zero).

    ``tail @ tail.T`` by row panels: about 0.6 of the flops of the full product (G is symmetric and
    ``eigh`` reads only its lower triangle); panels of 256 to 512 rows measured alike.
    """
    h, m = len(head), len(head) + len(tail)
    gram = tail.new_zeros(m, m)
    gram[:h, :h] = head @ head.T
    for start in range(0, len(tail), panel):
        stop = min(start + panel, len(tail))
        rows = gram[h + start : h + stop]
        rows[:, :h] = tail[start:stop] @ head.T
        rows[:, h : h + stop] = tail[start:stop] @ tail[:stop].T
    return gram


def eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of the lower triangle; on the CPU with one intra-op thread.

    LAPACK's tridiagonal reduction synchronises its OpenMP threads at every column: measured on 2 shared,
    busy cores, a 600 x 600 eigh took 0.65-10 s on 2 threads and 0.13-0.15 s on 1. The thread count is a
    process-wide torch setting; it is changed only for the eigh and put back, also on errors.
    """
    if gram.device.type != "cpu":
        return torch.linalg.eigh(gram, UPLO="L")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(gram, UPLO="L")
    finally:
        torch.set_num_threads(threads)


def top_k_attributes(state: Moments, k: int) -> Fitted:
    """Top-k components (svd_flip signs), singular values and variances from the state."""
    norms = torch.linalg.vector_norm(state.basis, dim=1, dtype=torch.float64)
    order = torch.argsort(norms, descending=True)  # eigh's order, up to round-off among near-equal rows
    norms = norms[order]
    components = state.basis[order[:k]] / norms[:k, None].to(torch.float32).clamp_min(torch.finfo(torch.float32).tiny)
    components *= flip_signs(components)[:, None]
    variance = norms**2 / (state.n - 1)
    total = state.m2.sum()
    return Fitted(
        components=components.cpu().numpy(),
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
