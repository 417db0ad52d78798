"""Streaming PCA of h_t, one estimator per sampling step (Sec. IV-A), and the PCA directions built from it.

For each step t the paper runs PCA on the n vectors vec(h_t^(i)) (for ``google/ddpm-ema-celebahq-256``,
n = 50,000 vectors of D = 32,768 numbers) with scikit-learn's ``IncrementalPCA``, 25 components, batches
of 1,000. Direction j is the concatenation over t of the j-th component at step t. A component's sign is
arbitrary per step, so signs are aligned across steps (:func:`align_signs`) before concatenating
(:func:`pca_direction`).

:class:`StreamingPCA` is a one-pass incremental SVD that gives scikit-learn's ``IncrementalPCA`` results
(attributes, sign convention, explained variance ``S**2 / (n - 1)``) at a fraction of the cost, on any
torch device, with memory independent of n.

The default method, ``"incremental"``: one merge per block of b rows
----------------------------------------------------------------------
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
singular values their norms.

Rows that arrive in ``partial_fit`` go into a pending buffer and are merged in blocks of exactly
``batch_size`` rows, so the result depends only on the sequence of rows, not on how a caller cuts it
into calls (corpus shards are 32 samples; ``fit`` over an array equals any loop of ``partial_fit`` over
its rows, bitwise). The learned attributes are computed when first read after a ``partial_fit``, with
the pending rows merged into a copy of the state. Memory: the state (r x D float32 plus two D float64
vectors), one pending block, and the merge's temporaries: O((r + b) D), flat in n.

Why this method and these defaults (measured with ``bench/bench_pca.py`` on 2 CPU cores shared with other
jobs, so CPU seconds are quoted; D = 32,768, N = 4,096 rows in partial_fit calls of 1,024, a power-law
spectrum 4 / i on 256 directions over a noise floor that holds 57% of the variance; errors against an
exact float64 SVD: "ev" = largest relative error of the top-k explained variances, "deficit" = share of
the optimal top-k variance the subspace misses):

- Candidates: this one-pass merge, and two multi-pass methods on the same rows held in memory, with 2k
  columns: a randomized range finder with q power iterations and block Krylov iteration (Musco & Musco),
  each 2q + 2 passes over all rows. k = 128: ours ev 7.6e-3, deficit 1.2e-4, 10.6 s; randomized q = 2:
  4.0e-2, 7.9e-4, 7.0 s; block Krylov q = 2: 2.2e-3, 1.7e-5, 6.6 s; block Krylov q = 6: 1.3e-7,
  1.3e-8, 20.5 s (k = 25 alike). So block Krylov is more accurate for its CPU time, but only with all
  N x D rows in memory or 2q + 2 reads of the corpus per step (at the paper's size 6 x 3.3 GB of float16
  per step, 50 steps), and it has no ``partial_fit``: a shard cannot be added once it is seen. The
  incremental merge reads each shard once, keeps memory flat in n and is what ``partial_fit`` means;
  it is the default. (A multi-pass block Krylov ``fit`` over a re-readable corpus would be the way to
  reach ~1e-7 where that accuracy is needed.)
- Oversampling p: truncating to r rows at every merge drops the scatter beyond rank r, and on a heavy
  tail that error reaches the top k. With p = 0 (scikit-learn's merge, block for block) ev is 5.1e-2
  (k = 25) and 1.1e-1 (k = 128), deficit 1.3e-3 and 3.0e-3. With p = k: ev 5.3e-3 and 7.6e-3, deficit
  9.1e-5 and 1.2e-4, for 10.2 vs 9.0 s and 12.1 vs 9.7 s of CPU (at b = 1,024 the b^2 D term dominates
  the cost, so extra rows are nearly free). p = 2k gains less (k = 128: ev 5.9e-3 for 13.6 s), p = k/4
  much less accuracy (k = 128: ev 3.7e-2). Default: p = k.
- Block size b: a merge costs about ``(r^2 + r b + b^2 + r (r + b)) 2 D`` flops plus an eigh of order
  r + b, i.e. per row ``(2 r^2 / b + 2 r + b) 2 D``: cheapest near b = sqrt(2) r, but every merge
  truncates, and fewer, larger merges are more accurate: k = 25, p = 25: b = 256 gives ev 1.2e-2 (7.0 s),
  b = 1,024 ev 5.3e-3 (10.2 s); k = 128, p = 128: b = 512 ev 1.2e-2 (11.8 s), b = 1,024 ev 7.6e-3
  (12.1 s). Default: b = 1,024 (the authors' batches are 1,000), or 2 r when larger.
- Precision: the Gram matrix in float32 (fast on every device; its round-off, of the order of 1e-7 of
  the largest eigenvalue, should lie far below the truncation error above -- not measured separately
  against a float64 Gram) and its eigh in float64. On data with a gap
  (tests/test_pca.py) every explained variance is within 1e-3 of the exact SVD and the top-k subspace
  within 1e-2 rad.
- Speed against ``sklearn.decomposition.IncrementalPCA`` on the same 4 batches of 1,024 (whose merge
  equals ours with p = 0, to the printed digits): k = 25: 240.7 s vs 8.8 s of CPU (27x; wall 888 s vs
  42 s, 21x); k = 128: 253.4 s vs 10.6 s (24x; wall 442 s vs 28 s, 16x on a machine whose load changed
  between the runs). Peak memory: 1.7 GiB at N = 4,096 and at N = 8,192 (growth over the process after
  setup 478 vs 471 MiB at k = 25, 523 vs 524 MiB at k = 128); scikit-learn's partial_fit grew 1.3-1.5
  GiB at N = 4,096.

``method="sklearn"`` runs ``sklearn.decomposition.IncrementalPCA`` on the same blocks (a reference, on
the CPU; it needs scikit-learn).

Notation (<variable> -> <name>):
    n, mean, m2  -> rows merged, their mean, per-feature sum of squared deviations (Chan et al.)
    basis        -> B = S V^T (r, D), rows in decreasing order of singular value
    block        -> X, one block of b rows; ``centred`` -> E = [X - mean(X) ; correction row]
    gram         -> G = A A^T, A = [B ; E]
    rank         -> r = k + p, rows kept
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from hspace.errors import HSpaceError

Method = Literal["incremental", "sklearn"]
METHODS = ("incremental", "sklearn")


@dataclass(frozen=True)
class _Moments:
    """Exact first and second moments of the rows merged so far, and the rank-r scatter factor."""

    n: int
    mean: torch.Tensor  # (D,) float64
    m2: torch.Tensor  # (D,) float64, sum over rows of (x - mean)^2
    basis: torch.Tensor  # (r_now, D) float32, B = S V^T


@dataclass(frozen=True)
class _Fitted:
    """The learned attributes, as numpy arrays (computed once per ``partial_fit``)."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray
    noise_variance: float


class StreamingPCA:
    """Streaming PCA in one pass with memory independent of the number of rows (scikit-learn's API).

    Parameters
    ----------
    n_components : int
        k, the number of components kept (the paper: 25).
    method : {"incremental", "sklearn"}, default "incremental"
        ``"incremental"``: the Gram-matrix merge of the module docstring, in torch on ``device``.
        ``"sklearn"``: ``sklearn.decomposition.IncrementalPCA`` on the same blocks (reference; CPU).
    oversampling : int or None, default None
        p, rows kept beyond k by ``"incremental"`` (None: k, keeping 2k rows). Ignored by ``"sklearn"``,
        which keeps exactly k.
    batch_size : int or None, default None
        b, rows per merge (None: 1,024, or 2 (k + p) when larger). ``partial_fit`` buffers rows until a block is full.
    device : str or torch.device or None, default None
        Where ``"incremental"`` computes (None: ``"cuda"`` when available, else ``"cpu"``).
    random_state : None
        Accepted for scikit-learn parity; both methods are deterministic, so it has no effect.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features), float32
        Unit principal axes, by decreasing explained variance; sign as scikit-learn's ``svd_flip``
        (the entry of largest magnitude of each row is positive).
    mean_ : ndarray of shape (n_features,), float64
        Mean of all rows seen (exact).
    explained_variance_ : ndarray of shape (n_components,), float64
        ``singular_values_**2 / (n_samples_seen_ - 1)``.
    explained_variance_ratio_ : ndarray of shape (n_components,), float64
        Explained variance over the total variance of all n_features (exact, from the running variance).
    singular_values_ : ndarray of shape (n_components,), float64
    noise_variance_ : float
        Mean explained variance of the kept rows beyond k (``"incremental"``: the p oversampling rows;
        ``"sklearn"``: as scikit-learn). 0.0 when there are none.
    n_samples_seen_ : numpy.int64
    n_features_in_ : int

    Examples
    --------
    >>> pca = StreamingPCA(25)
    >>> for shard in shards:                       # each (n_i, D), any float dtype
    ...     pca.partial_fit(shard)
    >>> pca.components_.shape                      # (25, D)
    """

    def __init__(
        self,
        n_components: int,
        *,
        method: Method = "incremental",
        oversampling: int | None = None,
        batch_size: int | None = None,
        device: str | torch.device | None = None,
        random_state: None = None,
    ) -> None:
        self.n_components = n_components
        self.method = method
        self.oversampling = oversampling
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state

    # ----------------------------------------------------------------------------------------- fitting
    def partial_fit(self, X: np.ndarray | torch.Tensor) -> StreamingPCA:
        """Add the rows of X (n, D), any real dtype (float16 included). Returns self.

        Rows are buffered and merged in blocks of ``batch_size``; the learned attributes always cover
        every row passed so far.
        """
        X = _parse_rows(X)
        if not hasattr(self, "_moments"):
            self._start(X.shape[1])
        if X.shape[1] != self.n_features_in_:
            raise HSpaceError(
                f"X has {X.shape[1]} features, but StreamingPCA is expecting {self.n_features_in_} features as "
                "input (from earlier partial_fit calls): pass rows of the same shape at every call (h_t of one "
                "step), or start a new estimator")
        b = self._batch_size
        start = 0
        while start < len(X):
            take = min(b - self._pending_rows, len(X) - start)
            # A copy: the caller may reuse its array, and the pending rows must not change with it.
            rows = _to_float32(X[start:start + take], self._device, copy=True)
            _check_finite(rows, start)
            start += take
            self._pending.append(rows)
            self._pending_rows += take
            if self._pending_rows == b:
                block = self._pending[0] if len(self._pending) == 1 else torch.cat(self._pending)
                self._pending, self._pending_rows = [], 0
                self._moments = self._merge(self._moments, block, commit=True)
        self._fitted = None
        return self

    def fit(self, X: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]) -> StreamingPCA:
        """Fit from scratch: an array (n, D) read ``batch_size`` rows at a time (numpy, torch, or anything
        with ``shape`` and row slicing, e.g. a Zarr array: nothing is copied whole), or an iterable of
        (n_i, D) batches (streamed shards). Equal to a loop of ``partial_fit``. Returns self."""
        for name in ("_moments", "_pending", "_pending_rows", "_fitted", "n_features_in_"):
            self.__dict__.pop(name, None)
        if hasattr(X, "shape") and hasattr(X, "__getitem__"):
            if len(X.shape) != 2:
                raise HSpaceError(f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}")
            step = self._resolved_batch_size(X.shape[1])
            batches: Iterable[Any] = (X[i:i + step] for i in range(0, X.shape[0], step))
        else:
            batches = X
        for batch in batches:
            self.partial_fit(batch)
        if not hasattr(self, "_moments"):
            raise HSpaceError("fit got no rows: pass a non-empty array or a non-empty iterable of batches")
        return self

    def transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Project rows (n, D) on the components: ``(X - mean_) @ components_.T``, shape (n, k), float32.

        A numpy input gives a numpy array; a torch tensor gives a tensor on the tensor's device.
        """
        fitted = self._fitted_attributes()
        rows = _parse_rows(X)
        if rows.shape[1] != self.n_features_in_:
            raise HSpaceError(f"X has {rows.shape[1]} features, but StreamingPCA was fitted with "
                              f"{self.n_features_in_}: pass rows of the same shape as the fitted ones")
        device = self._device
        mean = torch.from_numpy(fitted.mean).to(device, torch.float32)
        components = torch.from_numpy(fitted.components).to(device)
        out = torch.empty(len(rows), self.n_components, dtype=torch.float32, device=device)
        for i in range(0, len(rows), self._batch_size):
            block = _to_float32(rows[i:i + self._batch_size], device)
            out[i:i + len(block)] = (block - mean) @ components.T
        if isinstance(X, torch.Tensor):
            return out.to(X.device)
        return out.cpu().numpy()

    # ---------------------------------------------------------------------------- learned attributes
    @property
    def components_(self) -> np.ndarray:
        return self._fitted_attributes().components

    @property
    def mean_(self) -> np.ndarray:
        return self._fitted_attributes().mean

    @property
    def explained_variance_(self) -> np.ndarray:
        return self._fitted_attributes().explained_variance

    @property
    def explained_variance_ratio_(self) -> np.ndarray:
        return self._fitted_attributes().explained_variance_ratio

    @property
    def singular_values_(self) -> np.ndarray:
        return self._fitted_attributes().singular_values

    @property
    def noise_variance_(self) -> float:
        return self._fitted_attributes().noise_variance

    @property
    def n_samples_seen_(self) -> np.int64:
        if not hasattr(self, "_moments"):
            raise AttributeError("n_samples_seen_: this StreamingPCA has seen no rows yet; call partial_fit or fit")
        return np.int64(self._rows_merged() + self._pending_rows)

    # --------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters and the learned state as plain numpy arrays (strings as numpy unicode arrays).

        ``numpy.savez(path, **pca.state_dict())`` and
        ``StreamingPCA.from_state(dict(numpy.load(path)))`` round-trip without pickle, as do Zarr arrays.
        The pending rows (fewer than ``batch_size``) are included, so fitting can resume exactly.
        """
        state = {
            "method": np.array(self.method),
            "n_components": np.array(self.n_components, dtype=np.int64),
            "oversampling": np.array(-1 if self.oversampling is None else self.oversampling, dtype=np.int64),
            "batch_size": np.array(-1 if self.batch_size is None else self.batch_size, dtype=np.int64),
        }
        if not hasattr(self, "_moments"):
            return state
        state["pending"] = (torch.cat(self._pending).cpu().numpy() if self._pending
                            else np.zeros((0, self.n_features_in_), np.float32))
        if self.method == "sklearn":
            ipca = self._moments
            if ipca is not None:
                for name in _SKLEARN_STATE:
                    state[f"sklearn_{name}"] = np.asarray(getattr(ipca, name))
            return state
        moments: _Moments | None = self._moments
        if moments is not None:
            state["n_merged"] = np.array(moments.n, dtype=np.int64)
            state["mean"] = moments.mean.cpu().numpy()
            state["m2"] = moments.m2.cpu().numpy()
            state["basis"] = moments.basis.cpu().numpy()
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], *, device: str | torch.device | None = None) -> StreamingPCA:
        """Rebuild an estimator from :meth:`state_dict` output; it can keep fitting where it stopped."""
        try:
            oversampling, batch_size = int(state["oversampling"]), int(state["batch_size"])
            pca = cls(int(state["n_components"]), method=str(state["method"]),  # type: ignore[arg-type]
                      oversampling=None if oversampling < 0 else oversampling,
                      batch_size=None if batch_size < 0 else batch_size, device=device)
            if "pending" not in state:
                return pca
            pending = np.asarray(state["pending"], dtype=np.float32)
            pca._start(pending.shape[1])
            if pca.method == "sklearn":
                if "sklearn_components_" in state:
                    ipca = pca._new_sklearn()
                    for name in _SKLEARN_STATE:
                        value = np.asarray(state[f"sklearn_{name}"])
                        setattr(ipca, name, value if value.ndim else value.item())
                    pca._moments = ipca
            elif "n_merged" in state:
                device_ = pca._device
                pca._moments = _Moments(
                    n=int(state["n_merged"]),
                    mean=torch.from_numpy(np.asarray(state["mean"], dtype=np.float64)).to(device_),
                    m2=torch.from_numpy(np.asarray(state["m2"], dtype=np.float64)).to(device_),
                    basis=torch.from_numpy(np.asarray(state["basis"], dtype=np.float32)).to(device_))
        except KeyError as missing:
            raise HSpaceError(f"StreamingPCA state lacks {missing}: pass the dict that state_dict() returned") from None
        if len(pending):
            pca._pending = [torch.from_numpy(pending).to(pca._device)]
            pca._pending_rows = len(pending)
        return pca

    # ------------------------------------------------------------------------------------ internals
    def _start(self, n_features: int) -> None:
        """Check the parameters against the first rows and set up an empty state."""
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HSpaceError(f"n_components must be a positive integer; got {k!r}")
        if k > n_features:
            raise HSpaceError(f"n_components={k} must be <= n_features={n_features} (there are at most that many "
                              "principal axes): lower n_components")
        if self.method not in METHODS:
            raise HSpaceError(f"method must be one of {METHODS}; got {self.method!r}")
        if self.oversampling is not None and (not isinstance(self.oversampling, (int, np.integer))
                                              or self.oversampling < 0):
            raise HSpaceError(f"oversampling must be a non-negative integer or None; got {self.oversampling!r}")
        self._batch_size = self._resolved_batch_size(n_features)
        self._rank = min(k + self._resolved_oversampling(), n_features)
        self._device = torch.device("cpu") if self.method == "sklearn" else _resolve_device(self.device)
        self.n_features_in_ = n_features
        # None until the first full block is merged (for "sklearn": IncrementalPCA's first pass).
        self._moments: Any = None
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        self._fitted: _Fitted | None = None

    def _resolved_oversampling(self) -> int:
        if self.method == "sklearn":
            return 0
        return default_oversampling(self.n_components) if self.oversampling is None else int(self.oversampling)

    def _resolved_batch_size(self, n_features: int) -> int:
        if self.batch_size is None:
            return default_batch_size(self.n_components, self._resolved_oversampling())
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)) \
                or self.batch_size < 1:
            raise HSpaceError(f"batch_size must be a positive integer or None; got {self.batch_size!r}")
        if self.method == "sklearn" and self.batch_size < self.n_components:
            raise HSpaceError(f"method='sklearn' needs batch_size >= n_components ({self.n_components}); got "
                              f"{self.batch_size}: raise batch_size")
        return int(self.batch_size)

    def _rows_merged(self) -> int:
        if self.method == "sklearn":
            return 0 if self._moments is None else int(self._moments.n_samples_seen_)
        return 0 if self._moments is None else self._moments.n

    def _merge(self, state: Any, block: torch.Tensor, *, commit: bool) -> Any:
        if self.method == "sklearn":
            ipca = self._new_sklearn() if state is None else (state if commit else copy.deepcopy(state))
            return ipca.partial_fit(block.cpu().numpy())  # it copies (copy=True) before centring in place
        return _merge_block(state, block, self._rank)

    def _new_sklearn(self) -> Any:
        from sklearn.decomposition import IncrementalPCA  # the reference method only

        return IncrementalPCA(n_components=self.n_components, batch_size=self._batch_size)

    def _fitted_attributes(self) -> _Fitted:
        if not hasattr(self, "_moments"):
            raise AttributeError("this StreamingPCA is not fitted yet: call partial_fit or fit first")
        if self._fitted is not None:
            return self._fitted
        n = int(self.n_samples_seen_)
        k = self.n_components
        if n <= k:
            raise HSpaceError(f"n_components={k} needs more than {k} samples (the centred rows span at most n - 1 "
                              f"directions) and {n} were seen: call partial_fit with more rows or lower n_components")
        state = self._moments
        if self._pending:
            state = self._merge(state, torch.cat(self._pending), commit=False)
        self._fitted = _sklearn_attributes(state, k) if self.method == "sklearn" else _attributes(state, k)
        return self._fitted


_SKLEARN_STATE = ("components_", "singular_values_", "mean_", "var_", "n_samples_seen_", "explained_variance_",
                  "explained_variance_ratio_", "noise_variance_", "n_components_", "n_features_in_")


def default_oversampling(n_components: int) -> int:
    """p used when ``oversampling=None``: k, so that r = 2k rows are kept (module docstring)."""
    return n_components


def default_batch_size(n_components: int, oversampling: int) -> int:
    """b used when ``batch_size=None``: 1,024 rows, or 2 r when that is larger (module docstring)."""
    return max(1024, 2 * (n_components + oversampling))


# --------------------------------------------------------------------------------------- the merge
def _merge_block(state: _Moments | None, block: torch.Tensor, rank: int) -> _Moments:
    """Merge b rows into the state (module docstring): exact moments, then the rank-r scatter factor.

    Parameters
    ----------
    state : _Moments or None (nothing merged yet)
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
    _, vectors = _eigh(gram)
    # 3. B' = U_r^T A, the top r rows of S' V'^T (eigh sorts ascending).
    top = vectors[:, -min(rank, len(gram)):].flip(1).to(torch.float32)
    new_basis = top[r0:].T @ centred
    if r0:
        new_basis += top[:r0].T @ basis
    return _Moments(n=n, mean=mean, m2=m2, basis=new_basis)


def _eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _attributes(state: _Moments, k: int) -> _Fitted:
    """Top-k components (svd_flip signs), singular values and variances from the state."""
    norms = state.basis.double().norm(dim=1)
    order = torch.argsort(norms, descending=True)  # eigh's order, up to round-off among near-equal rows
    norms, basis = norms[order], state.basis[order]
    components = (basis[:k].double() / norms[:k, None].clamp_min(torch.finfo(torch.float64).tiny))
    components = components * _flip_signs(components)[:, None]
    variance = norms**2 / (state.n - 1)
    total = state.m2.sum()
    return _Fitted(
        components=components.to(torch.float32).cpu().numpy(),
        mean=state.mean.cpu().numpy(),
        explained_variance=variance[:k].cpu().numpy(),
        explained_variance_ratio=(norms[:k] ** 2 / total).cpu().numpy(),
        singular_values=norms[:k].cpu().numpy(),
        noise_variance=float(variance[k:].mean()) if len(variance) > k else 0.0,
    )


def _sklearn_attributes(ipca: Any, k: int) -> _Fitted:
    return _Fitted(
        components=np.asarray(ipca.components_[:k], dtype=np.float32),
        mean=np.asarray(ipca.mean_, dtype=np.float64),
        explained_variance=np.asarray(ipca.explained_variance_[:k], dtype=np.float64),
        explained_variance_ratio=np.asarray(ipca.explained_variance_ratio_[:k], dtype=np.float64),
        singular_values=np.asarray(ipca.singular_values_[:k], dtype=np.float64),
        noise_variance=float(ipca.noise_variance_),
    )


def _flip_signs(rows: torch.Tensor) -> torch.Tensor:
    """svd_flip's convention: the sign that makes each row's entry of largest magnitude positive; (k,)."""
    pick = rows.abs().argmax(dim=1)
    signs = torch.sign(rows[torch.arange(len(rows), device=rows.device), pick])
    return torch.where(signs == 0, torch.ones_like(signs), signs)


# ------------------------------------------------------------------------------------ input parsing
def _parse_rows(X: Any) -> np.ndarray | torch.Tensor:
    """A 2-D numpy array or torch tensor of real numbers (not copied)."""
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise HSpaceError(f"X must hold real numbers; got dtype {X.dtype}")
    elif X.is_complex() or X.dtype == torch.bool:
        raise HSpaceError(f"X must hold real numbers; got dtype {X.dtype}")
    if X.ndim != 2:
        raise HSpaceError(f"X must be 2-D (n_samples, n_features); got shape {tuple(X.shape)}: flatten each "
                          "sample, e.g. h_t.reshape(n, -1)")
    if X.shape[0] == 0:
        raise HSpaceError("X has no rows: pass at least one sample")
    return X


def _to_float32(rows: np.ndarray | torch.Tensor, device: torch.device, *, copy: bool = False) -> torch.Tensor:
    if isinstance(rows, np.ndarray):
        rows = torch.from_numpy(np.ascontiguousarray(rows))
    return rows.to(device=device, dtype=torch.float32, copy=copy)


def _check_finite(rows: torch.Tensor, offset: int) -> None:
    if not bool(torch.isfinite(rows).all()):
        bad = int(torch.nonzero(~torch.isfinite(rows).all(dim=1))[0, 0]) + offset
        raise HSpaceError(f"X contains NaN or infinity (first in row {bad} of this batch): check the data source "
                          "(e.g. the corpus shard) and drop or regenerate those samples")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------- PCA directions
def align_signs(components: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Make the sign of each component consistent across steps (method.md, Sec. IV-A).

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
            sign = _flip_signs(work)
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
        raise HSpaceError(f"h_shape {tuple(h_shape)} has {math.prod(h_shape)} numbers but a component has {D}: "
                          "pass the model's h_shape (C, H, W)")
    direction = rows[:, j, :].to(torch.float32)
    norms = direction.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise HSpaceError(f"component {j} is zero at step {int(torch.nonzero(norms[:, 0] == 0)[0, 0])}: "
                          "refit PCA at that step")
    return (direction / norms).reshape(T, *h_shape)
