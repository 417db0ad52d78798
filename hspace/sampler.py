"""DDIM sampling with h capture and h injection (eq. 2-5 of the paper).

Notation (<variable> -> <name in paper>):
    x        -> x_t, the noisy image at the current step (the noisy latent, for the latent kinds)
    eps      -> eps(x_t, t), the U-Net noise prediction
    h        -> h_t, the mid-block output; ``h`` of a result is h_{T:1}, steps in sampling order
    delta    -> delta h_{T:1}, added to h_t at every step (Sec. III)
    noise_delta -> delta x_T, added to x_T once before the first step (eq. 11 with q = x_T, Fig. 8a)
    eta      -> eta_t; 1 is DDPM-like (the paper's default), 0 is deterministic DDIM
    z        -> z_t, the variance noise of step t

Reproducibility: every sample owns a random stream, ``torch.Generator().manual_seed(seed)`` on the CPU.
It draws x_T first and then z_t at each step with eta_t > 0, in sampling order: exactly the stream of
diffusers' ``DDIMPipeline`` given one generator per sample. So a sample depends only on its seed, never
on its batch, and an edit replays the same x_T and z_{T:1}. x_T and the z_t never come from
the same stream position, the pitfall the authors' code warns about. Latent models draw the same way as
``LDMPipeline`` and ``StableDiffusionPipeline`` (x_T is the latent), decode once after the last step, and a
text-conditional model runs classifier-free guidance with h read from its conditional half
(:mod:`hspace.conditioning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler

from hspace.conditioning import Guidance, make_guidance
from hspace.errors import HSpaceError
from hspace.hook import HHook, h_hook
from hspace.models import LoadedModel, tf32_passes


@dataclass(frozen=True, kw_only=True)
class SampleResult:
    """Output of :func:`sample`.

    Attributes
    ----------
    images : Tensor of shape (B, C, S, S), float32 in [0, 1], on the CPU (decoded, for the latent kinds)
    h : Tensor of shape (B, T, C_h, H_h, W_h), float32 on the CPU, or None without capture
    timesteps : tuple of int, the T training timesteps in sampling order
    latents : Tensor of shape (B, *model.latent_shape), float32 on the CPU, or None
        The latent kinds' final x_0, before decoding (None for a pixel model, whose x_0 is the image).
    """

    images: torch.Tensor
    h: torch.Tensor | None
    timesteps: tuple[int, ...]
    latents: torch.Tensor | None = None


def parse_eta(eta: float | Sequence[float], steps: int) -> tuple[float, ...]:
    """One eta per step; a scalar is used at every step. Each must lie in [0, 1] (eq. 5)."""
    values = (float(eta),) * steps if isinstance(eta, (int, float)) else tuple(float(e) for e in eta)
    if len(values) != steps:
        raise HSpaceError(f"eta has {len(values)} values but there are {steps} steps: give one per step or a scalar")
    bad = [e for e in values if not 0.0 <= e <= 1.0]
    if bad:
        raise HSpaceError(f"eta must lie in [0, 1] (0 = DDIM, 1 = DDPM-like); got {bad[0]}")
    return values


def make_scheduler(scheduler_config: dict, steps: int) -> DDIMScheduler:
    """A ``DDIMScheduler`` built from the model's (training) scheduler config, set to ``steps`` steps."""
    if steps <= 0:
        raise HSpaceError(f"steps must be a positive integer; got {steps}")
    scheduler = DDIMScheduler.from_config(scheduler_config)
    if steps > scheduler.config.num_train_timesteps:
        raise HSpaceError(
            f"steps ({steps}) exceeds the model's {scheduler.config.num_train_timesteps} training timesteps"
        )
    scheduler.set_timesteps(steps)
    return scheduler


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float images to uint8, rounded as diffusers' ``numpy_to_pil`` does."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def sample(
    model: LoadedModel,
    seeds: Sequence[int],
    *,
    steps: int,
    eta: float | Sequence[float] = 1.0,
    delta: torch.Tensor | None = None,
    capture: bool = True,
    asyrp: bool = False,
    microbatch: int | None = None,
    replace_h: torch.Tensor | None = None,
    noise_delta: torch.Tensor | None = None,
    x_T: torch.Tensor | None = None,
    clip_sample: bool | None = None,
    prompts: Sequence[str] | None = None,
) -> SampleResult:
    """Generate one sample per seed, optionally editing h and recording h_{T:1}.

    Parameters
    ----------
    model : LoadedModel
    seeds : sequence of int
        One per sample; the sample is a function of its seed alone.
    steps : int
        Number of DDIM steps T.
    eta : float or sequence of T floats
    delta : Tensor of shape (T, C, H, W) or (B, T, C, H, W), optional
        delta h_{T:1}, e.g. from :func:`hspace.hook.compose_delta`. None samples unedited.
    capture : bool
        Record h_{T:1} (edit included).
    asyrp : bool
        Asyrp editing (Kwon et al., SM -B): P_t from the edited pass, D_t from an unedited pass; two
        U-Net passes per step. Default is the paper's: one edited pass feeds both P_t and D_t.
    microbatch : int, optional
        Samples per U-Net pass. Defaults to 1 on the CPU, where oneDNN convolutions and GEMV/GEMM
        dispatch round differently for different batch sizes (measured: 1.5e-6); one at a time makes
        a sample bitwise independent of its batch. Defaults to the whole batch elsewhere.
    replace_h : Tensor of shape (B, T, C, H, W), optional
        Use these h_{T:1} instead of the sample's own (Fig. 2a: keep x_T and z, take h from another
        sample); ``delta`` is added on top.
    noise_delta : Tensor of shape (C, S, S) or (B, C, S, S), optional
        Added to x_T before the first step: an edit in x_T (eq. 11 with q = x_T, Fig. 8a). The z_t stay
        the sample's own. Added as the paper adds it, with no renormalisation: x_T + delta is no longer
        exactly on the shell |x_T| ~ sqrt(C S S) of Gaussian noise, but at the gammas where x_T edits
        keep images in distribution the norm changes by a few percent (|x_T + g v|^2 = |x_T|^2 +
        2 g <x_T, v> + g^2 |v|^2, and <x_T, v> averages out). A caller who wants the norm kept builds the
        per-sample delta with :func:`hspace.directions.norm_preserving_noise_delta`.
    x_T : Tensor of shape (B, C, S, S), optional
        Start from these x_T instead of the seeds' draws (DDIM-inverted photos, :mod:`hspace.photos`); the
        seeds still give the z_t (drawn only where eta > 0).
    clip_sample : bool, optional
        Override the scheduler config's ``clip_sample`` (clipping P_t to [-1, 1]); None keeps the model's.
        Resampling inverted images does not clip, as the inversion does not (:mod:`hspace.inversion`).
    prompts : sequence of str, optional
        A text-conditional model's prompt per seed (a corpus's prompt list); None uses the prompt of the
        model's conditioning for every sample. The negative prompt and guidance are the conditioning's.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HSpaceError("sample needs at least one seed")
    config = model.scheduler_config if clip_sample is None else {**model.scheduler_config, "clip_sample": clip_sample}
    scheduler = make_scheduler(config, steps)
    etas = parse_eta(eta, steps)
    unet = model.unet
    device = unet.device
    if microbatch is None:
        microbatch = 1 if device.type == "cpu" else len(seeds)
    guidance = guidance_of(model, len(seeds), prompts)
    deltas = _per_step_delta(delta, len(seeds), steps, model.h_shape, device)
    replaced = _per_step_delta(replace_h, len(seeds), steps, model.h_shape, device)

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = draw_noise(generators, model.latent_shape).to(device)  # x_T (drawn anyway: the z_t follow it in each stream)
    if x_T is not None:
        if tuple(x_T.shape) != tuple(x.shape):
            raise HSpaceError(f"x_T must have shape {tuple(x.shape)} (one per seed); got {tuple(x_T.shape)}")
        x = x_T.to(device=device, dtype=x.dtype)
    if noise_delta is not None:
        x = x + _noise_delta(noise_delta, len(seeds), model.latent_shape, device)
    captured: list[torch.Tensor] = []
    with h_hook(unet) as hook, torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            eps, h_t = predict_eps(
                unet, hook, x, t, deltas[i], microbatch, capture=capture, replace_t=replaced[i], guidance=guidance
            )
            if capture:
                assert h_t is not None  # predict_eps returns h_t whenever capture is on
                captured.append(h_t)
            # z_t is drawn only when eta_t > 0, exactly as DDIMScheduler.step draws it (eq. 3).
            z = draw_noise(generators, model.latent_shape).to(device) if etas[i] > 0 else None
            out = scheduler.step(eps, t, x, eta=etas[i], variance_noise=z)
            if asyrp and deltas[i] is not None:
                # P_t from the edited eps, D_t (and sigma_t z_t) from an unedited pass:
                # x_{t-1} = x_{t-1}(eps_orig) + sqrt(alpha_{t-1}) (P_t(eps_edit) - P_t(eps_orig)) (eq. 2).
                eps_orig, _ = predict_eps(
                    unet, hook, x, t, None, microbatch, capture=False, replace_t=replaced[i], guidance=guidance
                )
                plain = scheduler.step(eps_orig, t, x, eta=etas[i], variance_noise=z)
                x = plain.prev_sample + _alpha_prev(scheduler, int(t)).sqrt() * (
                    out.pred_original_sample - plain.pred_original_sample
                )
            else:
                x = out.prev_sample
    images = model.decode(x, microbatch)
    h = torch.stack(captured, dim=1).float().cpu() if capture else None
    latents = None if model.autoencoder is None else x.float().cpu()
    return SampleResult(images=images, h=h, timesteps=tuple(int(t) for t in scheduler.timesteps), latents=latents)


def initial_noise(model: LoadedModel, seeds: Sequence[int]) -> torch.Tensor:
    """x_T of each sample, exactly as :func:`sample` draws it: shape (n, *model.latent_shape), float32 on the CPU.

    x_T is the first draw of the sample's stream (diffusers' ``DDIMPipeline`` draws it the same way), so
    eq. 11 in x_T needs only the seeds of the examples, never a rerun of the sampler.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise HSpaceError("initial_noise needs at least one seed")
    return draw_noise([torch.Generator().manual_seed(s) for s in seeds], model.latent_shape)


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """The next standard normal draw of ``shape`` from each sample's stream, stacked: (B, *shape) on the CPU."""
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])


def _noise_delta(
    noise_delta: torch.Tensor, batch: int, image_shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """delta x_T as (B, C, S, S); one (C, S, S) delta is used for every sample."""
    if tuple(noise_delta.shape) == tuple(image_shape):
        noise_delta = noise_delta.unsqueeze(0).expand(batch, *image_shape)
    if tuple(noise_delta.shape) != (batch, *image_shape):
        raise HSpaceError(
            f"noise_delta has shape {tuple(noise_delta.shape)}; expected (C, S, S) = "
            f"{tuple(image_shape)} or (B, C, S, S) = {(batch, *image_shape)}"
        )
    return noise_delta.to(device=device, dtype=torch.float32)


def predict_eps(
    unet: torch.nn.Module,
    hook: HHook,
    x: torch.Tensor,
    t: torch.Tensor,
    delta_t: torch.Tensor | None,
    microbatch: int,
    *,
    capture: bool,
    replace_t: torch.Tensor | None = None,
    guidance: Guidance | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """eps(x_t, t) with delta_t added to h_t, in passes of ``microbatch`` samples; and h_t if captured.

    With ``guidance`` (a text-conditional U-Net), eps is the guided eps~ of :mod:`hspace.conditioning`: each
    pass holds the microbatch twice, unconditional half first as in ``StableDiffusionPipeline``, and h_t is the
    conditional half's.
    """
    # Once per call: ModelMixin.dtype walks every module, as costly as a tiny model's forward.
    dtype = next(unet.parameters()).dtype
    outputs: list[torch.Tensor] = []
    captures: list[torch.Tensor] = []
    hook.capture = capture
    with tf32_passes(unet):
        for start in range(0, x.shape[0], microbatch):
            part = slice(start, start + microbatch)
            hook.delta = None if delta_t is None else delta_t[part]
            hook.replace = None if replace_t is None else replace_t[part]
            if guidance is None:
                outputs.append(unet(x[part].to(dtype), t).sample.float())
            else:
                outputs.append(_guided_eps(unet, hook, x[part].to(dtype), t, guidance, part))
            if capture:
                assert hook.captured is not None  # the hook records h_t on every pass while capture is on
                captures.append(hook.captured[-len(x[part]) :])  # the conditional half under guidance
    hook.delta, hook.replace, hook.capture, hook.captured = None, None, False, None
    return torch.cat(outputs), (torch.cat(captures) if capture else None)


def _guided_eps(
    unet: torch.nn.Module, hook: HHook, x: torch.Tensor, t: torch.Tensor, guidance: Guidance, part: slice
) -> torch.Tensor:
    """eps~ = eps_uncond + w (eps_cond - eps_uncond) of one microbatch, both halves in one pass (the hook's delta
    and replacement, set for the microbatch, are doubled to match: the edit goes to both halves or, with
    ``edit_branch="cond"``, to the conditional one only)."""
    cond = guidance.cond[part]
    if guidance.uncond is None:  # w = 1: the conditional pass alone, as diffusers runs it
        return unet(x, t, encoder_hidden_states=cond).sample.float()
    if hook.delta is not None:
        uncond_delta = hook.delta if guidance.edit_branch == "both" else torch.zeros_like(hook.delta)
        hook.delta = torch.cat([uncond_delta, hook.delta])
    if hook.replace is not None:
        hook.replace = torch.cat([hook.replace, hook.replace])
    both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([guidance.uncond[part], cond])).sample.float()
    eps_uncond, eps_cond = both.chunk(2)
    return guidance.guide(eps_uncond, eps_cond)


def guidance_of(model: LoadedModel, batch: int, prompts: Sequence[str] | None) -> Guidance | None:
    """The text embeddings of one sampler call, one prompt per sample (None for an unconditional model)."""
    if model.text is None or model.conditioning is None:
        if prompts is not None:
            raise HSpaceError(f"model {model.name!r} is unconditional: prompts apply only to a text-conditional model")
        return None
    if prompts is None:
        prompts = [model.conditioning.prompt] * batch
    if len(prompts) != batch:
        raise HSpaceError(f"{len(prompts)} prompts for {batch} samples: give one prompt per seed")
    return make_guidance(model.text, model.conditioning, prompts, next(model.unet.parameters()).dtype)


def _alpha_prev(scheduler: DDIMScheduler, t: int) -> torch.Tensor:
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod


def _per_step_delta(
    delta: torch.Tensor | None,
    batch: int,
    steps: int,
    h_shape: tuple[int, int, int],
    device: torch.device,
) -> list[torch.Tensor | None]:
    """Split delta (or replacement) h_{T:1} into per-step (B, C, H, W) tensors; all None when absent."""
    if delta is None:
        return [None] * steps
    if tuple(delta.shape) == (steps, *h_shape):
        delta = delta.unsqueeze(0).expand(batch, *delta.shape)
    if tuple(delta.shape) != (batch, steps, *h_shape):
        raise HSpaceError(
            f"delta has shape {tuple(delta.shape)}; expected (T, C, H, W) = {(steps, *h_shape)} "
            f"or (B, T, C, H, W) = {(batch, steps, *h_shape)}"
        )
    delta = delta.to(device=device, dtype=torch.float32)
    return [delta[:, i] for i in range(steps)]


def derive_seeds(base_seed: int, start: int, stop: int) -> list[int]:
    """The per-sample seeds of samples ``start .. stop-1`` of a corpus with ``base_seed``.

    Each comes from ``numpy.random.SeedSequence([base_seed, index])``, so neighbouring samples get
    unrelated streams and sample i's seed does not depend on how the corpus is split into shards.
    """
    if base_seed < 0:
        raise HSpaceError(f"seed must be a non-negative integer; got {base_seed}")
    return [
        int(np.random.SeedSequence([base_seed, i]).generate_state(1, np.uint64)[0] >> np.uint64(1))
        for i in range(start, stop)
    ]
