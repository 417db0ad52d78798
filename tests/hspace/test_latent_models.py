"""The latent (LDM) and text-conditional (Stable Diffusion) kinds: the sampler against diffusers' own pipelines,
h of the conditional half, edits, inversion, loading pipeline folders, fingerprints and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMPipeline, StableDiffusionPipeline

from hspace.conditioning import Conditioning
from hspace.errors import HSpaceError
from hspace.hook import h_hook
from hspace.inversion import invert_latents
from hspace.jacobian import jacobian_directions, state_at_step
from hspace.model_configs import build
from hspace.models import load_model, model_fingerprint, weight_fingerprint
from hspace.sampler import sample, to_uint8

STEPS = 10
PROMPTED = Conditioning(prompt="a smiling face", negative_prompt="blurry", guidance=5.0)


@pytest.fixture(scope="module")
def ldm():
    return load_model("tiny-ldm")


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny-sd", conditioning=PROMPTED)


def sd_pipeline(model):
    return StableDiffusionPipeline(
        vae=model.autoencoder,
        text_encoder=model.text.encoder,
        tokenizer=model.text.tokenizer,
        unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_latent_sampler_equals_ldm_pipeline(ldm, eta):
    ours = sample(ldm, [7], steps=STEPS, eta=eta).images.permute(0, 2, 3, 1).numpy()
    pipe = LDMPipeline(vqvae=ldm.autoencoder, unet=ldm.unet, scheduler=DDIMScheduler.from_config(ldm.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    # LDMPipeline draws x_T from the generator and the z_t of eta > 0 from torch's global stream: start that
    # stream where the sample's own stream is after x_T, so both see the same z_t.
    after_x_T = torch.Generator().manual_seed(7)
    torch.randn((1, *ldm.latent_shape), generator=after_x_T)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(after_x_T.get_state())
        theirs = pipe(
            batch_size=1,
            generator=torch.Generator().manual_seed(7),
            num_inference_steps=STEPS,
            eta=eta,
            output_type="np",
        ).images
    assert ours.shape == (1, 16, 16, 3)
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_text_sampler_equals_stable_diffusion_pipeline(sd, eta, guidance):
    model = sd.conditioned(Conditioning(prompt="a smiling face", negative_prompt="blurry", guidance=guidance))
    ours = sample(model, [3, 4], steps=STEPS, eta=eta).images.permute(0, 2, 3, 1).numpy()
    pipe = sd_pipeline(sd)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        ["a smiling face"] * 2,
        negative_prompt=["blurry"] * 2,
        guidance_scale=guidance,
        num_inference_steps=STEPS,
        eta=eta,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="np",
        height=16,
        width=16,
    ).images
    assert np.abs(ours - theirs).max() <= 1e-5
    assert ours.std() > 0.01  # not a degenerate image


def test_h_of_a_guided_pass_is_its_conditional_half(sd):
    seen: list[torch.Tensor] = []
    handle = sd.unet.mid_block.register_forward_hook(lambda module, args, output: seen.append(output.clone()))
    try:
        result = sample(sd, [5], steps=STEPS, eta=1.0)
    finally:
        handle.remove()
    assert len(seen) == STEPS and seen[0].shape == (2, *sd.h_shape)  # one pass per step: [uncond, cond]
    for step, output in enumerate(seen):
        assert torch.equal(result.h[0, step], output[1].float())
        assert not torch.allclose(output[0], output[1])  # the halves differ: the prompt matters


@pytest.mark.parametrize("name", ["tiny-ldm", "tiny-sd"])
def test_gamma_zero_edit_is_bitwise_the_unedited_sample(name, ldm, sd):
    model = {"tiny-ldm": ldm, "tiny-sd": sd}[name]
    plain = sample(model, [1, 2], steps=STEPS, eta=1.0)
    zero = sample(model, [1, 2], steps=STEPS, eta=1.0, delta=torch.zeros(STEPS, *model.h_shape))
    assert torch.equal(plain.images, zero.images) and torch.equal(plain.h, zero.h)
    edited = sample(model, [1, 2], steps=STEPS, eta=1.0, delta=torch.ones(STEPS, *model.h_shape))
    assert (to_uint8(edited.images) != to_uint8(plain.images)).any()


def h_after_edits(model, **kwargs) -> torch.Tensor:
    """h as the up path receives it (edits included) at the first step, both halves: [uncond, cond]."""
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = model.unet.up_blocks[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        sample(model, [5], steps=1, eta=1.0, **kwargs)
    finally:
        handle.remove()
    return seen[0]


def test_edit_branch_cond_leaves_the_unconditional_half_unedited(sd):
    delta = torch.full((1, *sd.h_shape), 0.5)
    unedited = h_after_edits(sd)
    both = h_after_edits(sd, delta=delta)
    cond = h_after_edits(sd.conditioned(Conditioning(**{**PROMPTED.record(), "edit_branch": "cond"})), delta=delta)
    assert torch.equal(cond[0], unedited[0])  # the unconditional half as unedited
    assert torch.allclose(cond[1], unedited[1] + 0.5) and torch.allclose(both[0], unedited[0] + 0.5)
    assert torch.allclose(both[1], unedited[1] + 0.5)


def test_prompt_list_gives_each_sample_its_prompt(sd):
    both = sample(sd, [1, 2], steps=STEPS, eta=0.0, prompts=["a smiling face", "a frowning face"])
    first = sample(sd, [1], steps=STEPS, eta=0.0)
    second = sample(
        sd.conditioned(Conditioning(**{**PROMPTED.record(), "prompt": "a frowning face"})), [2], steps=STEPS, eta=0.0
    )
    assert torch.equal(both.images[0], first.images[0]) and torch.equal(both.images[1], second.images[0])
    with pytest.raises(HSpaceError, match="3 prompts for 2 samples"):
        sample(sd, [1, 2], steps=STEPS, prompts=["a", "b", "c"])


@pytest.mark.parametrize("name", ["tiny-ldm", "tiny-sd"])
def test_inversion_of_a_sample_reconstructs_it(name, ldm, sd):
    # DDIM inversion of the sample's own final latent (eta 0), then resampling from the inverted x_T: the
    # decoded images match to the bound below (measured: see the assertion message). The autoencoder's own
    # encode/decode error adds to this for a photo; with random weights it is meaningless, so it is left out.
    model = {"tiny-ldm": ldm, "tiny-sd": sd}[name]
    steps = 50
    original = sample(model, [11, 12], steps=steps, eta=0.0)
    inverted = invert_latents(model, original.latents, steps=steps)
    again = sample(model, [11, 12], steps=steps, eta=0.0, x_T=inverted.x_T, clip_sample=False)
    error = (to_uint8(again.images).float() - to_uint8(original.images).float()).abs().mean().item()
    assert error < 2.0, f"{name}: mean reconstruction error {error:.3f} levels of 255"
    assert torch.allclose(inverted.h[:, -1], original.h[:, -1], atol=0.05 * original.h.abs().max().item())


def test_encode_is_the_inverse_scaling_of_decode(ldm, sd):
    for model in (ldm, sd):
        images = torch.rand(1, *model.image_shape) * 2 - 1
        latents = model.encode(images)
        assert latents.shape == (1, *model.latent_shape)
        with torch.no_grad():
            raw = model.autoencoder.encode(images)
        unscaled = raw.latent_dist.mode() if hasattr(raw, "latent_dist") else raw.latents
        assert torch.equal(latents, unscaled * model.autoencoder.config.scaling_factor)


def test_pipeline_folders_load_as_their_kind_with_the_same_fingerprint(ldm, sd, tmp_path):
    LDMPipeline(
        vqvae=ldm.autoencoder, unet=ldm.unet, scheduler=DDIMScheduler.from_config(ldm.scheduler_config)
    ).save_pretrained(tmp_path / "ldm")
    sd_pipeline(sd).save_pretrained(tmp_path / "sd")
    for folder, model, kind in (("ldm", ldm, "latent"), ("sd", sd, "text")):
        loaded = load_model(str(tmp_path / folder))
        assert loaded.kind == kind and loaded.fingerprint == model.fingerprint
        assert loaded.h_shape == model.h_shape and loaded.image_shape == (3, 16, 16)
    assert load_model(str(tmp_path / "sd")).conditioning == Conditioning()  # the empty prompt at 7.5 by default


def test_the_fingerprint_covers_every_part_that_changes_a_sample():
    tiny = build("tiny")
    assert model_fingerprint(tiny) == weight_fingerprint(tiny.unet)  # pixel fingerprints as before
    reference = model_fingerprint(build("tiny-sd"))
    for part in ("unet", "autoencoder", "encoder"):
        parts = build("tiny-sd")
        module = parts.text.encoder if part == "encoder" else getattr(parts, part)
        with torch.no_grad():
            next(module.parameters()).view(-1)[0] += 1e-3
        assert model_fingerprint(parts) != reference, part
    parts = build("tiny-sd")
    parts.autoencoder.register_to_config(scaling_factor=1.0)  # a config value that changes every decoded sample
    assert model_fingerprint(parts) != reference
    parts = build("tiny-sd")
    parts.text.tokenizer.model_max_length = 8
    assert model_fingerprint(parts) != reference
    parts.text.embed(["a face"])  # tokenizing with padding sets the tokenizer's padding state: not its definition
    parts.text.tokenizer.model_max_length = 16
    assert model_fingerprint(parts) == reference


def test_bad_input_is_one_line(tmp_path, ldm):
    with pytest.raises(HSpaceError, match="unconditional \\(latent kind\\)"):
        ldm.conditioned(Conditioning(prompt="a face"))
    for guidance in (0.5, float("inf"), float("nan")):
        with pytest.raises(HSpaceError, match="guidance must be a number >= 1"):
            Conditioning(guidance=guidance)
    with pytest.raises(HSpaceError, match="unconditional"):
        sample(ldm, [1], steps=2, prompts=["a face"])
    dit = tmp_path / "dit"
    dit.mkdir()
    (dit / "model_index.json").write_text(
        json.dumps({"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]})
    )
    with pytest.raises(HSpaceError, match="no mid-block h-space, DiT models are not supported"):
        load_model(str(dit))
    half = tmp_path / "half"
    build("tiny-sd").unet.save_pretrained(half / "unet")
    (half / "scheduler").mkdir()
    (half / "scheduler" / "scheduler_config.json").write_text("{}")
    (half / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(HSpaceError, match="not all of vae/, text_encoder/ and tokenizer/"):
        load_model(str(half))


def test_the_latent_kinds_jacobian_is_the_unets_in_latent_space(ldm, sd):
    # Oracle: the dense Jacobian of eps(x_t, h_t + delta) by reverse mode, decomposed in float64.
    state = state_at_step(ldm, 0, steps=STEPS, step=2)
    assert state.x_t.shape == (1, *ldm.latent_shape)

    def eps_of_delta(delta):
        with h_hook(ldm.unet) as hook:
            hook.delta = delta.reshape(1, *ldm.h_shape)
            return ldm.unet(state.x_t, state.t).sample.reshape(-1)

    jac = torch.autograd.functional.jacobian(eps_of_delta, torch.zeros(int(np.prod(ldm.h_shape))), vectorize=True)
    sigma = torch.linalg.svdvals(jac.double())
    result = jacobian_directions(ldm, state.x_t, state.t, 1, tol=1e-4)
    assert result.image_changes.shape == (1, *ldm.latent_shape)
    assert abs(result.singular_values[0].item() - sigma[0].item()) <= 1e-3 * sigma[0].item()


@pytest.mark.parametrize("branch", ["both", "cond"])
def test_the_text_kinds_jacobian_is_the_guided_eps_one(sd, branch):
    # Oracle: the guided eps~ as StableDiffusionPipeline computes it, [uncond, cond] in one batch at batch 2, the
    # edit in both halves (or the conditional one), differentiated densely by reverse mode; float64 SVD.
    model = sd.conditioned(Conditioning(**{**PROMPTED.record(), "edit_branch": branch}))
    state = state_at_step(model, 0, steps=STEPS, step=2)
    assert torch.equal(state.h_t, sample(model, [0], steps=STEPS, eta=1.0).h[0, 2])
    cond, uncond = model.text.embed([PROMPTED.prompt]), model.text.embed([PROMPTED.negative_prompt])

    def eps_of_delta(delta):
        delta = delta.reshape(1, *model.h_shape)
        with h_hook(model.unet) as hook:
            hook.delta = torch.cat([delta if branch == "both" else torch.zeros_like(delta), delta])
            both = model.unet(torch.cat([state.x_t] * 2), state.t, encoder_hidden_states=torch.cat([uncond, cond]))
        eps_u, eps_c = both.sample.chunk(2)
        return (eps_u + PROMPTED.guidance * (eps_c - eps_u)).reshape(-1)

    jac = torch.autograd.functional.jacobian(eps_of_delta, torch.zeros(int(np.prod(model.h_shape))), vectorize=True)
    sigma = torch.linalg.svdvals(jac.double())
    result = jacobian_directions(model, state.x_t, state.t, 1, tol=1e-4)
    assert abs(result.singular_values[0].item() - sigma[0].item()) <= 1e-3 * sigma[0].item()
