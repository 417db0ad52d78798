"""Built-in models: architectures from configs with random weights from a fixed seed, no download.

Three kinds, as :mod:`hspace.models` loads them from pipeline folders: ``pixel`` (a ``UNet2DModel`` on images),
``latent`` (a ``UNet2DModel`` on the latents of a ``VQModel`` or ``AutoencoderKL``, diffusers' ``LDMPipeline``)
and ``text`` (a ``UNet2DConditionModel`` with an ``AutoencoderKL`` and a CLIP text encoder,
``StableDiffusionPipeline``). ``tiny*`` are for fast tests; ``*-shape`` are the exact architectures of the
public checkpoints, for measuring (configs read from the checkpoints' ``config.json`` files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel

from hspace.conditioning import TextEncoder, tiny_vocabulary

# The scheduler config of google/ddpm-ema-celebahq-256 (DDPM, linear betas, 1000 steps, clipped x0).
DDPM_LINEAR_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "variance_type": "fixed_small",
    "clip_sample": True,
}
# CompVis/ldm-celebahq-256's scheduler (its file names the step count by the old key ``timesteps``).
LDM_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
}
# stable-diffusion-v1-5's scheduler (PNDM; the sampler builds a DDIMScheduler from it, as diffusers does).
SD_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


@dataclass(frozen=True)
class ModelParts:
    """What a model is built from, before :func:`hspace.models.load_model` casts and fingerprints it."""

    unet: Any
    scheduler_config: dict[str, Any]
    autoencoder: Any = None
    text: TextEncoder | None = None


def _tiny() -> ModelParts:
    # Two levels with attention at the bottom, so the attention path (and its forward-mode AD
    # caveat, in the hspace.jacobian docstring) is exercised by every fast test. h = 32 x 8 x 8.
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return ModelParts(unet, dict(DDPM_LINEAR_CONFIG))


def _celebahq_shape() -> ModelParts:
    # google/ddpm-ema-celebahq-256: 113.7M parameters, h = 512 x 8 x 8.
    unet = UNet2DModel(
        sample_size=256,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        freq_shift=1,
        flip_sin_to_cos=False,
        downsample_padding=0,
        norm_eps=1e-6,
    )
    return ModelParts(unet, dict(DDPM_LINEAR_CONFIG))


def _scale_probe() -> ModelParts:
    """The h of google/ddpm-ema-celebahq-256 (512 x 8 x 8 = 32,768 values per step) on 3 x 64 x 64 images, cheaply.

    Four levels (64 -> 32 -> 16 -> 8, three downsamplings), one resnet per level, 8/16/32 channels in the outer
    levels and 512 only at the bottom, where h is: the mid-block (two resnets, no attention: 3% more compute
    with it) and its neighbours work at 512 channels, everything else is almost free. 27.45M parameters,
    4.61 GFLOP per forward per sample (FlopCounterMode, batch 1), against 496 GFLOP for celebahq-shape.

    One U-Net pass at batch 32 (``python bench/bench_scale.py --pass-time``, 2026-12-05) on this project's 2-core
    CPU: 0.57 s (min of 3, the same pass timed by hand while the machine was nearly idle), 1.6-2.8 s (min of 5)
    at load average 4-8 from other jobs. Idle, a 50-step sample thus costs about 0.9 s, a shard of 32 about 28 s.
    """
    unet = UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 32, 512),
        layers_per_block=1,
        norm_num_groups=8,
        add_attention=False,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    return ModelParts(unet, dict(DDPM_LINEAR_CONFIG))


def _tiny_ldm() -> ModelParts:
    # A VQ autoencoder with one downsampling (16 x 16 images <-> 3 x 8 x 8 latents) and a U-Net on the latents
    # with attention at the bottom; h = 32 x 4 x 4.
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=3,
        num_vq_embeddings=32,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return ModelParts(unet, dict(LDM_CONFIG), autoencoder=vqvae)


def _tiny_sd() -> ModelParts:
    # Stable Diffusion's three parts at toy size: a KL autoencoder (16 x 16 images <-> 4 x 8 x 8 latents), a
    # cross-attention U-Net (h = 32 x 4 x 4, cross-attention in the mid-block as in SD), and a 2-layer CLIP text
    # encoder over a byte-level vocabulary, 16 tokens per prompt.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    return ModelParts(unet, dict(SD_CONFIG), autoencoder=vae, text=_clip_text(16, 2, 16))


def _ldm_celebahq_shape() -> ModelParts:
    # CompVis/ldm-celebahq-256: a VQ-f4 autoencoder (256 x 256 <-> 3 x 64 x 64) and a 274M-parameter U-Net;
    # h = 896 x 8 x 8.
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        latent_channels=3,
        num_vq_embeddings=8192,
        sample_size=256,
    )
    unet = UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        block_out_channels=(224, 448, 672, 896),
        layers_per_block=2,
        attention_head_dim=32,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    return ModelParts(unet, dict(LDM_CONFIG), autoencoder=vqvae)


def _sd15_shape() -> ModelParts:
    # stable-diffusion-v1-5 at 512 px: 4 x 64 x 64 latents, h = 1280 x 8 x 8, CLIP ViT-L/14's text encoder
    # (its vocabulary size; the byte-level tokenizer stands in for CLIP's BPE, which changes no shape).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    return ModelParts(unet, dict(SD_CONFIG), autoencoder=vae, text=_clip_text(768, 12, 77, vocab_size=49408))


def _clip_text(width: int, layers: int, tokens: int, vocab_size: int | None = None) -> TextEncoder:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocabulary = tiny_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=tokens)
    config = CLIPTextConfig(
        vocab_size=vocab_size or len(vocabulary),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64) if width >= 64 else 2,
        max_position_embeddings=tokens,
        bos_token_id=vocabulary["<|startoftext|>"],
        eos_token_id=vocabulary["<|endoftext|>"],
        pad_token_id=vocabulary["<|endoftext|>"],
        hidden_act="quick_gelu",
    )
    return TextEncoder(tokenizer, CLIPTextModel(config))


BUILTIN: dict[str, Callable[[], ModelParts]] = {
    "tiny": _tiny,
    "celebahq-shape": _celebahq_shape,
    "scale-probe": _scale_probe,
    "tiny-ldm": _tiny_ldm,
    "tiny-sd": _tiny_sd,
    "ldm-celebahq-shape": _ldm_celebahq_shape,
    "sd15-shape": _sd15_shape,
}


def build(name: str) -> ModelParts:
    """The built-in model ``name``, its random weights drawn without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BUILTIN[name]()
