"""Jacobian directions (Sec. IV-B, Alg. 1, SM -E Alg. 2, eq. 9-10) against an explicit Jacobian on `tiny`.

The oracle is independent of the code under test: J is built column by column with
``torch.autograd.functional.jacobian`` (reverse mode, the model's own SDPA attention, h edited through the
sampler's hook at batch 1), then decomposed by a dense SVD in float64. The code under test uses forward-mode
AD, classic attention processors and skip connections broadcast from a batch-1 down path.

The tiny model has attention in its first up block, directly downstream of h, so every JVP here goes
through attention in forward mode (the case PyTorch's fused CPU kernel cannot differentiate).

Singular vectors are compared up to sign, and only where they are determined: singular values closer than
``CLUSTER`` (relative) form a cluster whose vectors may mix, and for a cluster the subspaces are compared
(the cosine of the largest principal angle). Each test asserts that its k sits at a gap of the explicit
spectrum, so that the top-k subspace itself is determined (otherwise any agreement would be luck).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

import hspace.jacobian as jacobian_module
from hspace.errors import HSpaceError
from hspace.hook import h_hook
from hspace.jacobian import JacobianResult, jacobian_directions, state_at_step
from hspace.jacobian_products import jacobian_products
from hspace.sampler import sample

SEED, STEPS, STEP = 0, 10, 0  # t = 900: top singular values 0.798, 0.765, 0.701 | 0.644 (gaps >= 4%)
K = 3
TOL = 1e-3  # relative residual: with gaps >= 4%, angle <= TOL * sigma / gap <= 0.025 rad, |cos| >= 0.9997
CLUSTER = 0.02  # singular values closer than this (relative) are treated as one cluster
TOP_HALF = np.zeros((16, 16), dtype=bool)
TOP_HALF[:8] = True  # masked spectrum: 0.719, 0.710 (a near-degenerate pair), 0.669 | 0.580


@pytest.fixture(scope="module")
def state(tiny):
    return state_at_step(tiny, SEED, steps=STEPS, step=STEP)


def explicit_svd(model, state, mask=None):
    """Dense SVD of J (or J masked, eq. 9-10), float64: (sigma, V rows in h-space, U rows in image space)."""
    unet = model.unet

    def eps_of_delta(delta):
        with h_hook(unet) as hook:
            hook.delta = delta.reshape(1, *model.h_shape)
            eps = unet(state.x_t, state.t).sample[0]
        return (eps if mask is None else eps * torch.as_tensor(mask, dtype=eps.dtype)).reshape(-1)

    jac = torch.autograd.functional.jacobian(eps_of_delta, torch.zeros(int(np.prod(model.h_shape))), vectorize=True)
    u, sigma, vh = torch.linalg.svd(jac.double(), full_matrices=False)
    return sigma, vh, u.T


@pytest.fixture(scope="module")
def explicit(tiny, state):
    return explicit_svd(tiny, state)


@pytest.fixture(scope="module")
def batched(tiny, state):
    return jacobian_directions(tiny, state.x_t, state.t, K, tol=TOL)


def clusters(sigma: torch.Tensor, k: int) -> list[list[int]]:
    """Indices 0..k-1 grouped into runs whose neighbouring singular values differ by less than CLUSTER."""
    groups = [[0]]
    for i in range(1, k):
        close = sigma[i - 1] - sigma[i] < CLUSTER * sigma[i - 1]
        groups[-1].append(i) if close else groups.append([i])
    return groups


def assert_at_a_gap(sigma: torch.Tensor, k: int) -> None:
    assert sigma[k] < (1 - CLUSTER) * sigma[k - 1], (
        f"k = {k} is not at a gap of the explicit spectrum {sigma[: k + 1].tolist()}: the top-k subspace "
        "is not determined; choose another seed/step/k for this test"
    )


def assert_matches(
    result: JacobianResult, reference, k: int, *, rtol_sigma: float = 1e-3, min_cos: float = 0.999
) -> None:
    """Singular values within rtol; vectors (right and left) equal up to sign, or per cluster as subspaces."""
    sigma, v_ref, u_ref = reference
    assert_at_a_gap(sigma, k)
    got = result.singular_values.double()
    assert torch.allclose(got, sigma[:k], rtol=rtol_sigma, atol=0), (got.tolist(), sigma[:k].tolist())
    v = result.directions.reshape(k, -1).double()
    u = result.image_changes.reshape(k, -1).double()
    for group in clusters(sigma, k):
        for ours, ref in ((v, v_ref), (u, u_ref)):
            # cos of the largest principal angle between span(ours[group]) and span(ref[group]).
            cos = torch.linalg.svdvals(ours[group] @ ref[group].T).min()
            assert cos >= min_cos, (group, float(cos))


def test_state_at_step_replays_the_sampler(tiny, state):
    captured = sample(tiny, [SEED], steps=STEPS, eta=1.0).h[0, STEP]
    assert torch.equal(state.h_t, captured)
    assert state.t == 900 and state.x_t.shape == (1, *tiny.image_shape)
    later = state_at_step(tiny, SEED, steps=STEPS, step=6, eta=0.0)
    assert torch.equal(later.h_t, sample(tiny, [SEED], steps=STEPS, eta=0.0).h[0, 6])


def test_forward_mode_goes_through_attention(tiny, state, explicit):
    # Attention sits downstream of h, so the JVP differentiates through it ...
    assert any(isinstance(m, Attention) for m in tiny.unet.up_blocks.modules())
    # ... and the JVP of the code under test equals the explicit J applied to a vector.
    v = torch.randn(2, int(np.prod(tiny.h_shape)), generator=torch.Generator().manual_seed(1))
    sigma, vh, u_rows = explicit
    jac = (u_rows.T * sigma) @ vh
    with jacobian_products(tiny, state.x_t, state.t, None, chunk=2) as (jvp, vjp):
        assert torch.allclose(jvp(v).double(), v.double() @ jac.T, atol=1e-5)
        assert torch.allclose(vjp(v[:, :768]).double(), v[:, :768].double() @ jac, atol=1e-5)


def test_batched_alg1_matches_the_explicit_svd(tiny, batched, explicit):
    assert batched.converged and batched.iterations < 100
    assert batched.directions.shape == (K, *tiny.h_shape)
    assert batched.image_changes.shape == (K, *tiny.image_shape)
    assert (batched.residuals <= TOL).all()
    assert_matches(batched, explicit, K)
    # Orthonormal rows, and the image changes are J v_i / sigma_i.
    v = batched.directions.reshape(K, -1).double()
    assert torch.allclose(v @ v.T, torch.eye(K, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize(
    ("algorithm", "block", "lock"), [("sequential", 1, False), ("sequential", 2, False), ("batched", None, True)]
)
def test_sequential_alg2_and_locking_equal_batched_alg1(tiny, state, batched, explicit, algorithm, block, lock):
    result = jacobian_directions(tiny, state.x_t, state.t, K, algorithm=algorithm, block=block, lock=lock, tol=TOL)
    assert result.converged
    # Locking and small mini-batches iterate fewer vectors at a time; Alg. 1 iterates all K every time.
    assert batched.column_iterations == K * batched.iterations
    if lock:
        assert result.column_iterations < batched.column_iterations
    assert_matches(result, explicit, K)
    # Same singular values and subspaces as Alg. 1 (up to the shared tolerance).
    sigma = explicit[0]
    assert torch.allclose(result.singular_values, batched.singular_values, rtol=1e-3, atol=0)
    for group in clusters(sigma, K):
        cos = torch.linalg.svdvals(
            result.directions.reshape(K, -1)[group] @ batched.directions.reshape(K, -1)[group].T
        ).min()
        assert cos >= 0.999


def test_masked_variant_matches_the_explicit_masked_svd(tiny, state):
    reference = explicit_svd(tiny, state, mask=TOP_HALF)
    assert len(clusters(reference[0], K)) < K, "this mask is meant to exercise a near-degenerate pair"
    result = jacobian_directions(tiny, state.x_t, state.t, K, mask=TOP_HALF, tol=TOL)
    assert result.converged
    assert_matches(result, reference, K)
    # The image changes live inside the region (eq. 10).
    assert result.image_changes[:, :, 8:].abs().max() == 0
    # (S, S), (1, S, S) and (C, S, S) masks mean the same thing.
    short = dict(tol=TOL, max_iter=2)
    as_2d = jacobian_directions(tiny, state.x_t, state.t, 2, mask=TOP_HALF, **short)
    as_3d = jacobian_directions(tiny, state.x_t, state.t, 2, mask=np.repeat(TOP_HALF[None], 3, 0), **short)
    as_1 = jacobian_directions(tiny, state.x_t, state.t, 2, mask=torch.as_tensor(TOP_HALF[None]), **short)
    assert torch.allclose(as_2d.singular_values, as_3d.singular_values, rtol=1e-6)
    assert torch.allclose(as_2d.singular_values, as_1.singular_values, rtol=1e-6)


def test_initial_theta_near_the_answer_converges_at_once(tiny, state, batched, explicit):
    # Theta = the converged directions, slightly disturbed: a few iterations instead of ~20.
    noise = torch.randn(batched.directions.shape, generator=torch.Generator().manual_seed(2))
    theta = batched.directions + 1e-4 * noise
    for algorithm, block in (("batched", None), ("sequential", 1)):
        result = jacobian_directions(
            tiny, state.x_t, state.t, K, algorithm=algorithm, block=block, theta=theta, tol=TOL
        )
        assert result.converged and result.iterations <= 3 * (K if block else 1)
        assert_matches(result, explicit, K)


def test_chunked_passes_do_not_change_the_iteration(tiny, state):
    whole = jacobian_directions(tiny, state.x_t, state.t, K, max_iter=3)
    chunked = jacobian_directions(tiny, state.x_t, state.t, K, max_iter=3, chunk=1)
    assert whole.iterations == chunked.iterations == 3 and not whole.converged
    assert torch.allclose(whole.singular_values, chunked.singular_values, rtol=1e-5)


def test_the_model_is_left_as_it_was(tiny, state, monkeypatch):
    unet = tiny.unet

    def snapshot():
        processors = {name: m.processor for name, m in unet.named_modules() if isinstance(m, Attention)}
        hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules()]
        return processors, hooks

    before = snapshot()
    assert before[0], "the tiny model must have attention for this test to mean anything"
    jacobian_directions(tiny, state.x_t, state.t, 1, max_iter=1)
    assert snapshot() == before  # the same processor objects, no hook left behind

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(jacobian_module, "_subspace_iteration", fail)
    with pytest.raises(RuntimeError, match="boom"):
        jacobian_directions(tiny, state.x_t, state.t, 1)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must lie in 1..2048"),
        ({"k": 2049}, "dim h"),
        ({"k": 769}, "rank bound"),
        ({"k": 4, "mask": np.pad(np.ones((1, 1)), ((0, 15), (0, 15)))}, "enlarge the mask"),
        ({"mask": np.ones((8, 8))}, "mask has shape"),
        ({"mask": np.ones((2, 16, 16))}, "mask has shape"),
        ({"mask": np.full((16, 16), 0.5)}, "binary"),
        ({"mask": np.zeros((16, 16))}, "all zeros"),
        ({"algorithm": "lanczos"}, "algorithm must be"),
        ({"block": 1}, "only to algorithm='sequential'"),
        ({"algorithm": "sequential", "block": 3}, "block .* must lie in 1..k"),
        ({"theta": torch.zeros(2, 32, 8, 8)}, "linearly dependent"),
        ({"theta": torch.zeros(3, 32, 8, 8)}, "theta has shape"),
        ({"tol": 0.0}, "tol must be"),
        ({"max_iter": 0}, "max_iter"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_errors_say_what_to_do(tiny, state, kwargs, message):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(HSpaceError, match=message):
        jacobian_directions(tiny, state.x_t, state.t, **kwargs)


def test_bad_x_t_and_step_are_refused(tiny, state):
    with pytest.raises(HSpaceError, match="x_t has shape"):
        jacobian_directions(tiny, state.x_t[:, :2], state.t, 1)
    with pytest.raises(HSpaceError, match="step must be an index in 0..9"):
        state_at_step(tiny, 0, steps=10, step=10)
