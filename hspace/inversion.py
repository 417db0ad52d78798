"""DDIM inversion of real images (eta = 0) recording h_{T:1}, and eq. 11 on inverted images (SM -F).

Notation (<variable> -> <name in paper>):
    x        -> x_t, the image being noised; x_0 the real image in [-1, 1], x_T the result
    eps      -> eps(x, t), the U-Net noise prediction
    h        -> h_{T:1}, the mid-block outputs, steps in the sampler's order (h[:, 0] is the noisiest)
    r        -> num_train_timesteps // T, the gap between two timesteps

How inversion steps map to sampling steps
-----------------------------------------
The sampler (:func:`hspace.sampler.sample`) visits timesteps ``tau_0 > tau_1 > ... > tau_{T-1}``
(``DDIMScheduler.timesteps``, e.g. 980, 960, ..., 0) and its step at ``tau`` computes
``eps(x_tau, tau)`` and moves x from noise level ``tau`` to ``tau - r`` (eq. 2-4 with eta = 0).
``DDIMInverseScheduler`` visits the same timesteps in the opposite order (0, 20, ..., 980): its step at
``tau`` computes ``eps(x_{tau - r}, tau)`` and moves x from level ``tau - r`` up to ``tau``, the exact
algebraic inverse of the sampler's step at ``tau`` if eps were the same. So the inversion step at
timestep ``tau`` *is* the sampler's step at ``tau``, run backwards, and its h is stored at the sampler's
index of ``tau``: the inversion's i-th step (of T) lands in ``h[:, T - 1 - i]``. Directions from
inverted images thus apply to sampling step by step (``h[:, j]`` belongs to ``timesteps[j]``).

The inverse scheduler does not clip P_t (x_0 predictions) even where the model's config does: clipping
cannot be inverted (see :func:`make_inverse_scheduler` for the measured effect).

The one approximation of DDIM inversion is that the U-Net sees ``x_{tau - r}`` where the sampler would
see ``x_tau`` (one noise level lower, the same timestep). The h recorded during inversion therefore equal
the h that sampling from the returned x_T records only up to that shift (tests/flows/test_inversion.py
measures how close they are per step).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from diffusers import DDIMInverseScheduler

from hspace.errors import HSpaceError
from hspace.hook import h_hook
from hspace.models import LoadedModel
from hspace.sampler import guidance_of, make_scheduler, predict_eps


class Inversion(NamedTuple):
    """Output of :func:`invert`.

    Attributes
    ----------
    x_T : Tensor of shape (n, 3, S, S), float32 on the CPU
        The inverted noise; sampling from it with eta = 0 gives the image back (approximately).
    h : Tensor of shape (n, T, C, H, W), float32 on the CPU
        h_{T:1} recorded during inversion, in the sampler's step order (``h[:, 0]`` the noisiest).
    """

    x_T: torch.Tensor
    h: torch.Tensor


def make_inverse_scheduler(scheduler_config: dict, steps: int) -> DDIMInverseScheduler:
    """A ``DDIMInverseScheduler`` from the model's scheduler config whose timesteps are the sampler's, reversed."""
    sampler = make_scheduler(scheduler_config, steps)  # also checks steps
    # Clipping P_t to [-1, 1] maps many x_t to one x_{t-1}, so it cannot be inverted: measured on the testbed
    # model (4 samples, 50 steps), resampling from x_T inverted with clipping misses the image by 21.7/255 on
    # average, without clipping by 12.2/255 (2.9/255 when the resampling does not clip either).
    inverse = DDIMInverseScheduler.from_config({**scheduler_config, "clip_sample": False})
    try:
        inverse.set_timesteps(steps)
    except ValueError as error:  # a timestep_spacing DDIMInverseScheduler lacks ("linspace")
        raise HSpaceError(f"DDIM inversion does not support this model's scheduler config ({error})") from None
    forward, backward = [int(t) for t in sampler.timesteps], [int(t) for t in inverse.timesteps.flip(0)]
    if forward != backward:
        # Without this the h of inversion step i has no sampling step to belong to.
        raise HSpaceError(
            f"DDIM inversion of this model's scheduler visits timesteps {backward[::-1][:4]}... which "
            f"are not the sampler's {forward[:4]}... reversed (timestep_spacing "
            f"{sampler.config.timestep_spacing!r}); use a 'leading' or 'trailing' scheduler config"
        )
    return inverse


def to_model_input(images: np.ndarray | torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (n, 3, S, S) to float32 in [-1, 1]: the inverse of the sampler's ``x / 2 + 0.5`` and
    :func:`to_uint8`."""
    images = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
        raise HSpaceError(
            f"inversion takes uint8 images of shape (n, {', '.join(map(str, image_shape))}); got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    if len(images) == 0:
        raise HSpaceError("inversion needs at least one image")
    return images.float() / 127.5 - 1.0


def invert(
    model: LoadedModel, images: np.ndarray | torch.Tensor, *, steps: int, microbatch: int | None = None
) -> Inversion:
    """DDIM-invert real images (eta = 0), recording h_{T:1} on the way (SM -F).

    Parameters
    ----------
    model : LoadedModel
    images : uint8 array or Tensor of shape (n, 3, S, S)
        At the model's size (:func:`hspace.images.load_images` resizes).
    steps : int
        T; the same as the sampling steps the recorded h (and directions from them) are used with.
    microbatch : int, optional
        Images per U-Net pass; as in :func:`hspace.sampler.sample`, 1 on the CPU (an image is then
        bitwise independent of its batch), the whole batch elsewhere.

    Returns
    -------
    Inversion
        ``x_T`` (n, *model.latent_shape) and ``h`` (n, T, C, H, W), h in the sampler's step order.
    """
    x_0 = model.encode(to_model_input(images, model.image_shape).to(model.unet.device))
    return invert_latents(model, x_0, steps=steps, microbatch=microbatch)


def invert_latents(model: LoadedModel, x_0: torch.Tensor, *, steps: int, microbatch: int | None = None) -> Inversion:
    """:func:`invert` from x_0 itself: the image in [-1, 1] for a pixel model, the latent for the latent kinds
    (``model.encode`` of an image, or a sample's own ``SampleResult.latents``). A text-conditional model inverts
    with its conditioning (prompt and guidance), as it will resample."""
    unet = model.unet
    device = unet.device
    x = x_0.to(device=device, dtype=torch.float32)
    guidance = guidance_of(model, len(x), None)
    inverse = make_inverse_scheduler(model.scheduler_config, steps)
    if microbatch is None:
        microbatch = 1 if device.type == "cpu" else len(x)
    h: list[torch.Tensor | None] = [None] * steps
    with h_hook(unet) as hook, torch.no_grad():
        for i, t in enumerate(inverse.timesteps):  # low noise to high noise
            eps, h_t = predict_eps(unet, hook, x, t, None, microbatch, capture=True, guidance=guidance)
            h[steps - 1 - i] = h_t  # the sampler's index of timestep t (module docstring)
            x = inverse.step(eps, t, x).prev_sample  # level t - r -> level t
    return Inversion(x_T=x.float().cpu(), h=torch.stack(h, dim=1).float().cpu())  # type: ignore[arg-type]


def direction_from_images(
    model: LoadedModel, positives: np.ndarray, negatives: np.ndarray, *, steps: int, batch: int = 16
) -> torch.Tensor:
    """eq. 11 on h_{T:1} recorded while inverting real images: mean h of positives minus mean h of negatives.

    Parameters
    ----------
    positives, negatives : uint8 arrays of shape (n+, 3, S, S) and (n-, 3, S, S)
        The counts may differ (eq. 11's mean of paired differences is the difference of the means).
    batch : int
        Images inverted at a time; only their h is held, the means accumulate in float64.

    Returns
    -------
    Tensor of shape (T, C, H, W), float32
    """
    if batch <= 0:
        raise HSpaceError(f"batch must be a positive integer; got {batch}")
    means = []
    for side, images in (("positive", positives), ("negative", negatives)):
        if len(images) == 0:
            raise HSpaceError(f"eq. 11 needs at least one {side} image")
        total = torch.zeros((steps, *model.h_shape), dtype=torch.float64)
        for start in range(0, len(images), batch):
            total += invert(model, images[start : start + batch], steps=steps).h.double().sum(0)
        means.append(total / len(images))
    return (means[0] - means[1]).float()
