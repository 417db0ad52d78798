"""Image-specific directions from the Jacobian of eps w.r.t. h (Sec. IV-B, Alg. 1, SM -E Alg. 2, eq. 6-10).

``J_t = d eps(x_t, h_t) / d h_t`` (eq. 6) with x_t held fixed: h_t, the output of ``unet.mid_block``, is
changed and everything downstream of it sees the change; the skip connections come from x_t and stay as
they are (Sec. IV-B: "we only consider the dependency on the latent variable h_t"). Its top right singular
vectors are the directions in h that change eps (equivalently the predicted image P_t) the most.

J is never formed (for ``google/ddpm-ema-celebahq-256`` it would be 196,608 x 32,768). Only the products
``J V`` (eq. 8) and ``J^T U`` (eq. 7) are used, both by automatic differentiation over a batch of
columns (:func:`hspace.jacobian_products.jacobian_products`, whose docstring says how attention and the
skip connections are handled).

Alg. 1 (block subspace iteration on J^T J) and Alg. 2 (the same in mini-batches of b vectors, each
orthogonal to those already found) share one iteration, :func:`_subspace_iteration`; Alg. 1 is the case
b = k. The masked variant (eq. 9-10) multiplies eps by a binary image mask M before differentiating.

Notation (<variable> -> <name in paper>):
    x_t        -> x_t, the noisy image at the step (held fixed)
    h_t        -> h_t, the mid-block output at that step
    delta      -> a v, the change added to h_t (the argument we differentiate in)
    J          -> J_t (eq. 6), or J_t^masked (eq. 9) with a mask; never formed
    mask       -> M (eq. 10): eps~ = eps * M
    V, phi     -> V (Alg. 1), Phi (Alg. 2): right singular vectors, one per ROW (the paper's columns)
    U, psi     -> U (Alg. 1), Psi (Alg. 2): J V, image-space changes, one per row
    v_hat      -> V_hat (Alg. 1), Phi_hat (Alg. 2): J^T U
    sigma      -> diag(Sigma) (Alg. 1), S^{1/2} (Alg. 2): singular values, largest first
    found      -> V of Alg. 2: the vectors found by earlier mini-batches
    theta      -> Theta, the optional initial guess
    block      -> b, the mini-batch size of Alg. 2
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from hspace.errors import HSpaceError
from hspace.hook import h_hook
from hspace.jacobian_products import jacobian_products
from hspace.models import LoadedModel

# The replay in `state_at_step` uses the sampler's own noise draws and U-Net pass, so that x_t is
# bitwise the x_t of `hspace.sampler.sample` for that seed (one stream per sample).
from hspace.sampler import draw_noise, guidance_of, make_scheduler, parse_eta, predict_eps

Algorithm = Literal["batched", "sequential"]


@dataclass(frozen=True, kw_only=True)
class StepState:
    """Where one sample is at one sampling step: the point at which J_t is taken.

    Attributes
    ----------
    x_t : Tensor of shape (1, C, S, S)
        The noisy image entering the step, float32 on the model's device.
    h_t : Tensor of shape (C_h, H_h, W_h)
        The mid-block output of the unedited pass at that step.
    t : int
        The training timestep of the step (``scheduler.timesteps[step]``).
    step : int
        Index of the step in sampling order (0 is the first, t near T).
    """

    x_t: torch.Tensor
    h_t: torch.Tensor
    t: int
    step: int


@dataclass(frozen=True, kw_only=True)
class JacobianResult:
    """The k top singular triplets of J_t (eq. 6) or J_t^masked (eq. 9), largest first.

    Attributes
    ----------
    singular_values : Tensor of shape (k,)
        sigma_1 >= ... >= sigma_k.
    directions : Tensor of shape (k, C_h, H_h, W_h)
        Right singular vectors v_i in h-space, unit norm, mutually orthogonal: the editing directions.
    image_changes : Tensor of shape (k, C, S, S)
        Left singular vectors u_i = J v_i / sigma_i, unit norm: how eps (masked, if a mask was given)
        changes along v_i.
    residuals : Tensor of shape (k,)
        ||J^T u_i - sigma_i v_i|| / sigma_i at the end (J v_i = sigma_i u_i holds exactly). A certificate:
        the relative error of sigma_i is at most this, and the angle of v_i to the true vector at most
        this times sigma_i over the gap to the neighbouring singular values.
    iterations : int
        Subspace iterations done, summed over the mini-batches of Alg. 2. Each is one JVP and one VJP
        over the vectors still iterating.
    column_iterations : int
        The cost: J v and J^T u products computed, summed over iterations (a U-Net up path forward and
        tangent, then forward and backward, per vector per iteration).
    converged : bool
        Every residual reached ``tol`` within ``max_iter`` iterations (per mini-batch in Alg. 2).

    All tensors are float32 on the CPU. The sign of each (v_i, u_i) pair is fixed so that the entry of
    v_i of largest magnitude is positive.
    """

    singular_values: torch.Tensor
    directions: torch.Tensor
    image_changes: torch.Tensor
    residuals: torch.Tensor
    iterations: int
    column_iterations: int
    converged: bool


def state_at_step(model: LoadedModel, seed: int, *, steps: int, step: int, eta: float | list[float] = 1.0) -> StepState:
    """x_t, h_t and t of the sample with this seed at step index ``step`` of a ``steps``-step run.

    Replays :func:`hspace.sampler.sample` for one seed (same scheduler, same per-sample stream: x_T, then
    z_t at each step with eta_t > 0) up to the step, unedited. ``h_t`` equals ``sample(model, [seed],
    steps=steps, eta=eta).h[0, step]``.

    The sampler does not expose x_t, so the loop is repeated here; a ``stop_at`` option on ``sample``
    would make this replay unnecessary.
    """
    scheduler = make_scheduler(model.scheduler_config, steps)
    etas = parse_eta(eta, steps)
    if not 0 <= step < steps:
        raise HSpaceError(f"step must be an index in 0..{steps - 1} (sampling order); got {step}")
    unet, device = model.unet, model.unet.device
    guidance = guidance_of(model, 1, None)  # a text model replays with its prompt and guidance
    generators = [torch.Generator().manual_seed(int(seed))]
    x = draw_noise(generators, model.latent_shape).to(device)  # x_T
    with h_hook(unet) as hook, torch.no_grad():
        for i, t in enumerate(scheduler.timesteps[: step + 1]):
            eps, h_t = predict_eps(unet, hook, x, t, None, 1, capture=i == step, guidance=guidance)
            if i == step:
                assert h_t is not None  # captured at this step
                return StepState(x_t=x, h_t=h_t[0], t=int(t), step=step)
            z = draw_noise(generators, model.latent_shape).to(device) if etas[i] > 0 else None
            x = scheduler.step(eps, t, x, eta=etas[i], variance_noise=z).prev_sample
    raise AssertionError("unreachable: the loop returns at i == step")


def jacobian_directions(
    model: LoadedModel,
    x_t: torch.Tensor,
    t: int | torch.Tensor,
    k: int,
    *,
    algorithm: Algorithm = "batched",
    block: int | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    theta: torch.Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    lock: bool = False,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
) -> JacobianResult:
    """The k top singular values and vectors of J_t = d eps(x_t, h_t) / d h_t (Sec. IV-B).

    Parameters
    ----------
    model : LoadedModel
    x_t : Tensor of shape (C, S, S) or (1, C, S, S)
        The noisy image, e.g. :attr:`StepState.x_t` from :func:`state_at_step`.
    t : int
        Training timestep of the step.
    k : int
        Number of singular triplets, at most dim h = C_h * H_h * W_h and at most the number of (unmasked)
        outputs.
    algorithm : {"batched", "sequential"}
        "batched" is Alg. 1: all k vectors iterate together (one U-Net pass over k columns per JVP and
        per VJP). "sequential" is Alg. 2 (SM -E): mini-batches of ``block`` vectors, each iterated
        orthogonally to those already found, so at most ``block`` columns are in memory.
    block : int, optional
        b of Alg. 2, in 1..k; default 1 (the authors' one-at-a-time way). Only with "sequential".
    mask : array of shape (S, S), (1, S, S) or (C, S, S), optional
        Binary mask M of the image region (eq. 9-10): directions that change that region most.
    theta : Tensor of shape (k, C_h, H_h, W_h), optional
        Initial guess Theta (e.g. the directions of a neighbouring step). Default: Gaussian noise.
    tol : float
        Stop when every relative residual ||J^T u_i - sigma_i v_i|| / sigma_i is at most ``tol``.
    max_iter : int
        At most this many iterations (per mini-batch in Alg. 2); ``converged`` says whether tol was met.
    lock : bool
        Lock converged vectors: once the leading vectors pass ``tol`` they stop iterating and the others
        go on orthogonal to them. Same answer, fewer products when the top vectors converge first
        (they do: in Alg. 1 vector i converges at rate (sigma_{k+1} / sigma_i)^2). Off by default, which
        is the paper's Alg. 1 (all k vectors iterate until the last one converges).
    chunk : int, optional
        At most this many columns per U-Net pass (memory only; the iteration is unchanged). Default: all.
    generator : torch.Generator, optional
        CPU generator for the Gaussian start. Default: a fresh one seeded 0, so results are reproducible.

    Returns
    -------
    JacobianResult
    """
    x_t = _parse_x_t(x_t, model)
    mask_t = _parse_mask(mask, model)
    d_in = int(np.prod(model.h_shape))
    d_out = int(np.prod(model.latent_shape)) if mask_t is None else int(mask_t.expand(model.latent_shape).sum())
    check_k(k, d_in, d_out, masked=mask_t is not None)
    block = parse_block(algorithm, block, k)
    if not tol > 0:
        raise HSpaceError(f"tol must be a positive number (relative residual); got {tol}")
    if max_iter < 1:
        raise HSpaceError(f"max_iter must be at least 1; got {max_iter}")
    if chunk is not None and chunk < 1:
        raise HSpaceError(f"chunk (columns per U-Net pass) must be at least 1; got {chunk}")
    if theta is not None and tuple(theta.shape) != (k, *model.h_shape):
        raise HSpaceError(
            f"theta has shape {tuple(theta.shape)}; expected (k, C, H, W) = {(k, *model.h_shape)}, "
            "one initial direction per singular vector"
        )
    generator = torch.Generator().manual_seed(0) if generator is None else generator

    with jacobian_products(model, x_t, t, mask_t, chunk or k) as (jvp, vjp):
        # Alg. 2: mini-batches [i_start, i_end) of b vectors; Alg. 1 is the single mini-batch b = k.
        found = torch.zeros(0, d_in, dtype=torch.float64)
        sigmas, lefts, residuals, iterations, column_iterations, converged = [], [], [], 0, 0, True
        for start in range(0, k, block):
            size = min(block, k - start)
            phi = (
                torch.randn(size, d_in, generator=generator, dtype=torch.float64)
                if theta is None
                else theta[start : start + size].reshape(size, d_in).double().cpu()
            )
            out = _subspace_iteration(jvp, vjp, phi, found, tol=tol, max_iter=max_iter, lock=lock)
            found = torch.cat([found, out.v])  # V <- [V; Phi]
            sigmas.append(out.sigma)  # Sigma <- diag(Sigma, S^{1/2})
            lefts.append(out.u)  # U <- [U; Psi]
            residuals.append(out.residual)
            iterations += out.iterations
            column_iterations += out.column_iterations
            converged &= out.converged

    sigma, v, u = torch.cat(sigmas), found, torch.cat(lefts)
    # Alg. 2's mini-batches come out in order up to rounding; sort so that sigma is non-increasing.
    order = torch.argsort(sigma, descending=True, stable=True)
    sigma, v, u, residual = sigma[order], v[order], u[order], torch.cat(residuals)[order]
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))  # like sklearn's svd_flip
    v, u = v * sign, u * sign
    return JacobianResult(
        singular_values=sigma.float(),
        directions=v.float().reshape(k, *model.h_shape),
        image_changes=u.float().reshape(k, *model.latent_shape),
        residuals=residual.float(),
        iterations=iterations,
        column_iterations=column_iterations,
        converged=bool(converged),
    )


# --- the subspace iteration (Alg. 1 and the inner loop of Alg. 2) ------------------------------------


@dataclass(frozen=True)
class _Iterated:
    sigma: torch.Tensor  # (b,)
    v: torch.Tensor  # (b, d_in), orthonormal rows, orthogonal to `found`
    u: torch.Tensor  # (b, d_out), orthonormal rows
    residual: torch.Tensor  # (b,)
    iterations: int
    column_iterations: int
    converged: bool


def _subspace_iteration(
    jvp: Callable[[torch.Tensor], torch.Tensor],
    vjp: Callable[[torch.Tensor], torch.Tensor],
    phi: torch.Tensor,
    found: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    lock: bool,
) -> _Iterated:
    """Top singular triplets of J (I - F^T F) by subspace iteration on its Gram matrix (Alg. 1 / Alg. 2).

    ``phi`` (b, d_in) is the start (rows), ``found`` (m, d_in) the orthonormal rows F already found
    (m = 0 for Alg. 1). The linear algebra on these small matrices is done in float64.

    One iteration, in the paper's steps:

    1. Phi <- QR([I - V (V^T V)^-1 V^T] Phi) (Alg. 2; V^T V = I here since found rows are orthonormal;
       for Alg. 1 only the QR of the start, which keeps the rows orthonormal).
    2. Psi <- d f(h + a Phi) / da at a = 0: the batched JVP (eq. 8).
    3. Rayleigh-Ritz: SVD Psi = W S P. Rotating Phi by W gives J phi_i = sigma_i p_i exactly, with the
       best singular-value estimates the subspace holds. This is the "orthonormalize U" of Alg. 1, done
       in every iteration so that the stopping test below is exact; Ritz values are more accurate than
       the square roots of the singular values of Phi_hat.
    4. Phi_hat <- d(P^T y) / dh = J^T P: the VJP (eq. 7), projected out of F for Alg. 2 (the adjoint of
       J (I - F^T F)). Phi_hat spans the same space as the paper's J^T Psi.
    5. Stop if every ||phi_hat_i - sigma_i phi_i|| <= tol * sigma_i; else Phi <- SVD(Phi_hat) (the
       reduced SVD of Alg. 1; its right factor is discarded) and repeat.

    With ``lock``, the leading pairs that pass the test in step 5 are set aside and the others go on
    with them projected out (standard locking for subspace iteration; not in the paper's Alg. 1).
    """
    phi = _orthonormal_rows(phi - (phi @ found.T) @ found)
    kept: list[tuple[torch.Tensor, ...]] = []  # locked (sigma, v, u, residual) blocks, in order
    column_iterations = 0
    for iteration in range(1, max_iter + 1):
        if iteration > 1 and len(found):
            phi = _orthonormal_rows(phi - (phi @ found.T) @ found)  # step 1: project out the found V
        psi = jvp(phi.float()).double()  # (b, d_out): J Phi, step 2
        w, sigma, p = torch.linalg.svd(psi, full_matrices=False)  # step 3
        phi = w.T @ phi
        phi_hat = vjp(p.float()).double()  # (b, d_in): J^T P, step 4
        phi_hat = phi_hat - (phi_hat @ found.T) @ found
        residual = (phi_hat - sigma[:, None] * phi).norm(dim=1) / sigma.clamp_min(torch.finfo(torch.float64).tiny)
        column_iterations += len(phi)
        done = residual <= tol
        if bool(done.all()) or iteration == max_iter:  # step 5
            kept.append((sigma, phi, p, residual))
            sigma, phi, p, residual = (torch.cat(parts) for parts in zip(*kept, strict=True))
            return _Iterated(
                sigma=sigma,
                v=phi,
                u=p,
                residual=residual,
                iterations=iteration,
                column_iterations=column_iterations,
                converged=bool((residual <= tol).all()),
            )
        leading = int(torch.cumprod(done.int(), 0).sum()) if lock else 0
        if leading:
            # Locking: the leading converged pairs are final; the rest iterate on J (I - F^T F) with them
            # in F, exactly as later mini-batches of Alg. 2 do.
            kept.append((sigma[:leading], phi[:leading], p[:leading], residual[:leading]))
            found = torch.cat([found, phi[:leading]])
            phi_hat = phi_hat[leading:]
        phi = torch.linalg.svd(phi_hat.T, full_matrices=False).U.T  # V, Sigma^2, R <- SVD(V_hat)
    raise AssertionError("unreachable: max_iter >= 1 returns inside the loop")


def _orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """Reduced QR of the columns (Alg. 1: Q, R <- QR(V)); raises if they are linearly dependent."""
    q, r = torch.linalg.qr(rows.T)
    diagonal = r.diagonal().abs()
    if bool((diagonal <= 1e-10 * diagonal.max().clamp_min(1e-300)).any()):
        raise HSpaceError(
            "the initial directions (theta) are linearly dependent, or lie in the span of "
            "vectors already found: give k linearly independent directions, or none"
        )
    return q.T


# --- parsing inputs at the boundary -------------------------------------------------------------------


def _parse_x_t(x_t: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    x_t = torch.as_tensor(x_t)
    if tuple(x_t.shape) == model.latent_shape:
        x_t = x_t.unsqueeze(0)
    if tuple(x_t.shape) != (1, *model.latent_shape):
        raise HSpaceError(
            f"x_t has shape {tuple(x_t.shape)}; expected one image, {model.latent_shape} or "
            f"{(1, *model.latent_shape)} (e.g. StepState.x_t from state_at_step)"
        )
    return x_t


def _parse_mask(mask: torch.Tensor | np.ndarray | None, model: LoadedModel) -> torch.Tensor | None:
    """M of eq. 10 as a float tensor of shape (1 | C, S, S) with values 0 and 1."""
    if mask is None:
        return None
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).detach().cpu()
    channels, height, width = model.latent_shape
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or tuple(mask.shape[1:]) != (height, width) or mask.shape[0] not in (1, channels):
        raise HSpaceError(
            f"mask has shape {tuple(mask.shape)}; expected ({height}, {width}), (1, {height}, {width}) "
            f"or ({channels}, {height}, {width}): one value per pixel of the image"
        )
    mask = mask.float()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise HSpaceError(
            "mask must be binary (eq. 10): 1 inside the region of interest, 0 outside; "
            "threshold it first, e.g. mask > 0.5"
        )
    if not bool(mask.any()):
        raise HSpaceError("mask is all zeros: the masked Jacobian is zero; mark the region of interest with ones")
    return mask


def check_k(k: int, d_in: int, d_out: int, *, masked: bool) -> None:
    """Refuse a k outside 1..dim h or above the rank bound of the (masked) Jacobian."""
    if not 1 <= k <= d_in:
        raise HSpaceError(f"k must lie in 1..{d_in} (dim h = C * H * W of the mid-block output); got {k}")
    if k > d_out:
        what = "pixels x channels inside the mask" if masked else "outputs of the U-Net"
        raise HSpaceError(
            f"k ({k}) exceeds the rank bound of the Jacobian, {d_out} {what}: "
            f"ask for at most {d_out} directions" + (" or enlarge the mask" if masked else "")
        )


def parse_block(algorithm: str, block: int | None, k: int) -> int:
    """b of Alg. 2; Alg. 1 is the single mini-batch b = k."""
    if algorithm == "batched":
        if block is not None:
            raise HSpaceError(
                "block (b of Alg. 2) applies only to algorithm='sequential'; "
                "use chunk to limit the columns per U-Net pass of the batched algorithm"
            )
        return k
    if algorithm == "sequential":
        block = 1 if block is None else block
        if not 1 <= block <= k:
            raise HSpaceError(f"block (b of Alg. 2) must lie in 1..k = 1..{k}; got {block}")
        return block
    raise HSpaceError(f"algorithm must be 'batched' (Alg. 1) or 'sequential' (Alg. 2); got {algorithm!r}")
