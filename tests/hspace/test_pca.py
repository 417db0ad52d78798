"""StreamingPCA, align_signs and pca_direction (Sec. IV-A) against exact, independent computations.

Oracle: ``numpy.linalg.svd`` in float64 of the centred data (all rows in memory), never the Gram-matrix
merge under test. The synthetic data has a known spectrum with a gap after the k-th component (variances
16..8 for the top k, then a tail that decays from 1.5, plus a noise floor and a large mean), so the top-k
subspace is determined and principal angles are a fair test.

Everything runs on one BLAS/OpenMP thread: on a shared, oversubscribed machine LAPACK's threaded
SVD spends most of its time waiting for descheduled threads (measured: a 1200 x 2048 SVD took 74 s on
two busy cores with 2 threads).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from hspace.errors import HSpaceError
from hspace.incremental_svd import column_sums, lower_gram
from hspace.pca import StreamingPCA
from hspace.pca_directions import align_signs, pca_direction, step_signs

N, D, K = 800, 2048, 10
BATCH = 200  # several merges over N rows


def _data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = np.r_[np.linspace(16.0, 8.0, K), 1.5 * np.exp(-np.arange(150) / 30.0)]
    axes = np.linalg.qr(rng.standard_normal((D, len(spectrum))))[0].T
    latent = rng.standard_normal((N, len(spectrum))) * np.sqrt(spectrum)
    rows = latent @ axes + 0.05 * rng.standard_normal((N, D)) + 100.0 * rng.standard_normal(D)
    return rows.astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return _data(0)


@pytest.fixture(scope="module")
def exact(X):
    """(mean, singular values, right singular vectors) of the centred data: numpy SVD in float64."""
    rows = X.astype(np.float64)
    mean = rows.mean(axis=0)
    _, s, vt = np.linalg.svd(rows - mean, full_matrices=False)
    return mean, s, vt


@pytest.fixture(scope="module")
def exact_float16(X):
    """The same for the float16-rounded data: the oracle sees exactly the numbers the estimator sees."""
    rows = X.astype(np.float16).astype(np.float64)
    _, s, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    return s, vt


def _max_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle (rad) between the row spaces of a (k, D) and b (k, D), both orthonormal."""
    cosines = np.linalg.svd(a.astype(np.float64) @ b.astype(np.float64).T, compute_uv=False)
    return float(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("batch_size", [None, BATCH])
def test_matches_exact_svd(X, exact, batch_size):
    mean, s, vt = exact
    pca = StreamingPCA(K, batch_size=batch_size, device="cpu").fit(X)
    assert s[K - 1] / s[K] > 2  # the gap that makes the top-k subspace well defined
    assert _relative(pca.explained_variance_, s[:K] ** 2 / (N - 1)) <= 1e-3
    assert _relative(pca.singular_values_, s[:K]) <= 1e-3
    assert _relative(pca.explained_variance_ratio_, s[:K] ** 2 / np.sum(s**2)) <= 1e-3
    assert _max_angle(pca.components_, vt[:K]) <= 1e-2
    np.testing.assert_allclose(pca.mean_, mean, rtol=0, atol=1e-9 * np.abs(mean).max())
    assert pca.components_.dtype == np.float32 and pca.components_.shape == (K, D)
    assert pca.mean_.shape == (D,) and pca.explained_variance_.shape == (K,)
    np.testing.assert_allclose(np.linalg.norm(pca.components_, axis=1), 1.0, atol=1e-5)
    # svd_flip's sign convention: the entry of largest magnitude of each component is positive
    biggest = pca.components_[np.arange(K), np.abs(pca.components_).argmax(axis=1)]
    assert (biggest > 0).all()
    assert isinstance(pca.n_samples_seen_, np.int64) and pca.n_samples_seen_ == N
    assert pca.n_features_in_ == D


def test_exact_to_float32_round_off_when_nothing_is_truncated():
    # Rank-8 rows (and a large mean) with r = 2k = 8 rows kept: no merge truncates, so what is left is the
    # round-off of the float32 Gram matrix and its float32 eigh (docs/pca.md, "Precision").
    rng = np.random.default_rng(5)
    spectrum = np.linspace(16.0, 2.0, 8)
    axes = np.linalg.qr(rng.standard_normal((D, 8)))[0].T
    X = (rng.standard_normal((600, 8)) * np.sqrt(spectrum)) @ axes + 100.0 * rng.standard_normal(D)
    X = X.astype(np.float32)
    rows = X.astype(np.float64)
    _, s, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    pca = StreamingPCA(4, batch_size=64, device="cpu").fit(X)
    assert _relative(pca.explained_variance_, s[:4] ** 2 / (len(X) - 1)) <= 1e-5
    cosines = np.abs(np.sum(pca.components_.astype(np.float64) * vt[:4], axis=1))
    assert cosines.min() >= 1 - 1e-6  # component by component (float32 components: 1 - cos ~ 1e-7)
    np.testing.assert_allclose(pca.mean_, rows.mean(axis=0), rtol=1e-12)


def test_reading_attributes_and_state_mid_stream_changes_nothing(X, exact):
    # The pending rows live in a buffer that the merge centres in place and later rows overwrite: reading
    # the attributes merges a copy of them, and the state holds a copy of them.
    cuts = [0, 150, 230, 470, 530, N]
    read = StreamingPCA(K, batch_size=BATCH, device="cpu")
    states = []
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        read.partial_fit(X[start:stop])
        read.components_  # noqa: B018
        states.append(read.state_dict())
    fitted = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(X)
    np.testing.assert_array_equal(read.components_, fitted.components_)
    np.testing.assert_array_equal(read.explained_variance_, fitted.explained_variance_)
    for stop, state in zip(cuts[1:], states, strict=True):
        np.testing.assert_array_equal(state["pending"], X[stop - stop % BATCH : stop])
    _, s, _ = exact
    assert _relative(read.explained_variance_, s[:K] ** 2 / (N - 1)) <= 1e-3


def test_merge_helpers_against_numpy():
    rng = np.random.default_rng(2)
    rows = torch.from_numpy(rng.standard_normal((300, 70)).astype(np.float32) + 50.0)
    expected = rows.numpy().astype(np.float64)
    np.testing.assert_allclose(column_sums(rows).numpy(), expected.sum(axis=0), rtol=1e-13)
    squares = (rows.numpy() ** 2).astype(np.float64)  # float32 squares, summed in float64
    np.testing.assert_allclose(column_sums(rows, squares=True).numpy(), squares.sum(axis=0), rtol=1e-13)
    head, tail = rows[:7] - 50.0, rows[7:] - 50.0
    stacked = np.concatenate([head.numpy(), tail.numpy()]).astype(np.float64)
    gram = np.tril(lower_gram(head, tail, panel=64).numpy())  # eigh reads the lower triangle only
    np.testing.assert_allclose(gram, np.tril(stacked @ stacked.T), rtol=0, atol=1e-5 * np.abs(gram).max())


def test_transform_projects_on_components(X):
    pca = StreamingPCA(K, device="cpu").fit(X)
    expected = (X.astype(np.float64) - pca.mean_) @ pca.components_.astype(np.float64).T
    got = pca.transform(X[:50])
    assert isinstance(got, np.ndarray) and got.shape == (50, K) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected[:50], rtol=0, atol=1e-3 * np.abs(expected).max())
    as_tensor = pca.transform(torch.from_numpy(X[:50]))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), got)


def test_fit_equals_partial_fit_loop(X):
    fitted = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(X)
    # Any cut of the same rows into calls gives the same merges: pending rows wait for a full block.
    cuts = [0, 37, 38, 300, 777, N]
    looped = StreamingPCA(K, batch_size=BATCH, device="cpu")
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        looped.partial_fit(X[start:stop])
    streamed = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(X[i : i + 150] for i in range(0, N, 150))
    for other in (looped, streamed):
        np.testing.assert_array_equal(other.components_, fitted.components_)
        np.testing.assert_array_equal(other.explained_variance_, fitted.explained_variance_)
        np.testing.assert_array_equal(other.mean_, fitted.mean_)
        assert other.n_samples_seen_ == fitted.n_samples_seen_


def test_fit_starts_over(X):
    once = StreamingPCA(K, device="cpu").fit(X)
    twice = StreamingPCA(K, device="cpu").fit(X[:300]).fit(X)
    np.testing.assert_array_equal(twice.components_, once.components_)
    assert twice.n_samples_seen_ == N


def test_shard_order_changes_nothing_beyond_sign(X, exact):
    _, s, vt = exact
    shards = [X[i : i + BATCH] for i in range(0, N, BATCH)]
    forward = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(shards)
    order = [2, 0, 3, 1]  # no shard keeps its place
    assert sorted(order) == list(range(len(shards)))
    shuffled = StreamingPCA(K, batch_size=BATCH, device="cpu").fit([shards[i] for i in order])
    assert _max_angle(shuffled.components_, forward.components_) <= 1e-2
    assert _relative(shuffled.explained_variance_, forward.explained_variance_) <= 1e-3
    np.testing.assert_allclose(shuffled.mean_, forward.mean_, rtol=1e-12)
    # component by component (the gaps inside the top k are >= 0.9 of a variance unit): equal up to sign
    cosines = np.abs(np.sum(shuffled.components_.astype(np.float64) * forward.components_, axis=1))
    assert cosines.min() >= 1 - 1e-3


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_float16_input(X, exact_float16, kind):
    half = X.astype(np.float16)
    s, vt = exact_float16
    pca = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(half if kind == "numpy" else torch.from_numpy(half))
    assert _relative(pca.explained_variance_, s[:K] ** 2 / (N - 1)) <= 1e-3
    assert _max_angle(pca.components_, vt[:K]) <= 1e-2
    assert pca.components_.dtype == np.float32


def test_errors_say_what_to_do(X):
    pca = StreamingPCA(K, device="cpu").partial_fit(X[:100])
    with pytest.raises(HSpaceError, match="expecting 2048 features.*same shape"):
        pca.partial_fit(X[:10, :100])
    with pytest.raises(HSpaceError, match="lower n_components"):
        StreamingPCA(20, device="cpu").partial_fit(X[:30, :16])
    few = StreamingPCA(K, device="cpu").partial_fit(X[:K])
    with pytest.raises(HSpaceError, match="more than 10 samples.*call partial_fit with more rows"):
        few.components_  # noqa: B018
    assert few.partial_fit(X[K : K + 1]).components_.shape == (K, D)  # K + 1 rows are enough
    with pytest.raises(HSpaceError, match="2-D"):
        StreamingPCA(K, device="cpu").partial_fit(X[0])
    with pytest.raises(HSpaceError, match="NaN"):
        StreamingPCA(2, device="cpu").partial_fit(np.full((3, 8), np.nan))
    with pytest.raises(HSpaceError, match="method must be one of"):
        StreamingPCA(K, method="svd", device="cpu").partial_fit(X[:20])  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        StreamingPCA(K).components_  # noqa: B018 -- unfitted: hasattr(pca, "components_") is False
    assert isinstance(pca.n_samples_seen_, np.int64)


@pytest.mark.parametrize("method", ["incremental", "sklearn"])
def test_state_round_trip_resumes_exactly(X, tmp_path, method):
    first, rest = X[:530], X[530:]  # 530 rows: two merged blocks of 200 and 130 pending rows
    pca = StreamingPCA(K, method=method, batch_size=BATCH, device="cpu").partial_fit(first)
    np.savez(tmp_path / "state.npz", **pca.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as saved:
        restored = StreamingPCA.from_state(dict(saved), device="cpu")
    np.testing.assert_array_equal(restored.transform(X[:20]), pca.transform(X[:20]))
    assert restored.n_samples_seen_ == pca.n_samples_seen_ == 530
    pca.partial_fit(rest)
    restored.partial_fit(rest)
    np.testing.assert_array_equal(restored.components_, pca.components_)
    np.testing.assert_array_equal(restored.explained_variance_ratio_, pca.explained_variance_ratio_)


def test_sklearn_method_agrees(X, exact):
    _, s, vt = exact
    ours = StreamingPCA(K, batch_size=BATCH, device="cpu").fit(X)
    reference = StreamingPCA(K, method="sklearn", batch_size=BATCH).fit(X)
    assert _relative(reference.explained_variance_, ours.explained_variance_) <= 1e-3
    assert _max_angle(reference.components_, ours.components_) <= 1e-2
    np.testing.assert_allclose(reference.mean_, ours.mean_, rtol=1e-12)
    np.testing.assert_allclose(reference.explained_variance_ratio_, ours.explained_variance_ratio_, rtol=1e-3)
    # Without oversampling the merge is scikit-learn's, block for block: equal up to float32 round-off.
    same = StreamingPCA(K, oversampling=0, batch_size=BATCH, device="cpu").fit(X)
    np.testing.assert_allclose(same.explained_variance_, reference.explained_variance_, rtol=1e-4)
    assert _max_angle(same.components_, reference.components_) <= 1e-3


def _smooth_components(seed: int, steps: int = 6, k: int = 4, d: int = 64) -> np.ndarray:
    """Orthonormal components that drift slowly with t, each step in the svd_flip sign convention."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((k, d))
    out = []
    for t in range(steps):
        q = np.linalg.qr((base + 0.05 * t * rng.standard_normal((k, d))).T)[0].T
        q *= np.sign(np.sum(q * base, axis=1))[:, None]  # each step agrees with the base in sign
        out.append(q)
    out = np.stack(out)
    biggest = out[0, np.arange(k), np.abs(out[0]).argmax(axis=1)]
    return out * np.sign(biggest)[None, :, None]


def test_align_signs_restores_random_flips():
    truth = _smooth_components(0)
    flips = np.random.default_rng(1).choice([-1.0, 1.0], size=truth.shape[:2])
    aligned, signs = align_signs(truth * flips[..., None])
    np.testing.assert_allclose(aligned, truth, atol=1e-12)
    np.testing.assert_array_equal(signs, flips)  # flips are their own inverse
    as_tensor, tensor_signs = align_signs(torch.from_numpy(truth * flips[..., None]).float())
    assert isinstance(as_tensor, torch.Tensor) and tensor_signs.shape == truth.shape[:2]
    np.testing.assert_allclose(as_tensor.numpy(), truth, atol=1e-6)
    with pytest.raises(HSpaceError, match=r"\(T, k, D\)"):
        align_signs(truth[0])


def test_step_signs_streams_the_steps_and_restores_random_flips():
    truth = _smooth_components(3)
    flips = np.random.default_rng(4).choice([-1.0, 1.0], size=truth.shape[:2])
    read = []

    def one_step_at_a_time():
        for t, step in enumerate(truth * flips[..., None]):
            read.append(t)
            yield step

    signs = step_signs(one_step_at_a_time())
    assert read == list(range(len(truth)))
    np.testing.assert_array_equal(signs.numpy(), flips)
    with pytest.raises(HSpaceError, match="step 1 components"):
        step_signs([truth[0], truth[1, :2]])
    with pytest.raises(HSpaceError, match="no steps"):
        step_signs([])


def test_pca_direction_shape_and_norms():
    components = _smooth_components(2, steps=5, k=3, d=2 * 4 * 4) * 3.0  # not unit: pca_direction normalises
    direction = pca_direction(components, 1, (2, 4, 4))
    assert direction.shape == (5, 2, 4, 4) and direction.dtype == torch.float32
    np.testing.assert_allclose(direction.flatten(1).norm(dim=1).numpy(), 1.0, atol=1e-6)
    expected = components[:, 1] / np.linalg.norm(components[:, 1], axis=1, keepdims=True)
    np.testing.assert_allclose(direction.flatten(1).numpy(), expected, atol=1e-6)
    with pytest.raises(HSpaceError, match="0..2"):
        pca_direction(components, 3, (2, 4, 4))
    with pytest.raises(HSpaceError, match="h_shape"):
        pca_direction(components, 0, (2, 4, 5))
