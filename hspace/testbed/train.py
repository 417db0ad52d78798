"""Train the testbed diffusion model on procedural faces (DDPM, eps-prediction, EMA weights).

Architecture (why): small U-Nets trained briefly barely use their bottleneck, because skip connections
carry everything. Measured before this module: a 4-level U-Net with h = 128x4x4 trained 4,000 steps let
h move yaw only; a 5-level one (h = 128x2x2, attention at 4x4 and 2x2) trained 8,000 steps let h move
hat only, and swapping h_{T:1} between samples (Fig. 2a) left every factor with the noise donor.

So this model *cuts* the skip connections below full resolution: in every up block except the last
(32x32), the weights that read the skip tensor (the skip columns of ``conv1`` and of the 1x1
``conv_shortcut``) are zero and held at zero through training (:func:`cut_skip_connections`). It is still
a plain diffusers ``UNet2DModel`` (nothing is monkeypatched; the zeros are in the weights), but the only
route from the encoder to the decoder at 16x16 and below is h, as in the large models where h is
semantic (the paper's premise, Sec. III). The full-resolution skips stay, for the fine denoising at the
last steps that a 4x4 bottleneck cannot carry. The channel counts and ``norm_num_groups`` are chosen so
that no GroupNorm group of an up-block resnet mixes h-path and skip channels: otherwise the group
statistics would leak skip information around the zero weights (checked by :func:`cut_skip_connections`).

Reproducible and resumable: batch k's faces come from ``render_dataset(.., seed=[seed, k])`` and its noise
and timesteps from a generator seeded with (seed, k), so the data a step sees does not depend on where a
run was resumed. A checkpoint (model, EMA, optimizer, log) is written every ``checkpoint_every`` steps
into a new folder that replaces the old one only when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from hspace.errors import HSpaceError
from hspace.files import sha256_of
from hspace.model_configs import DDPM_LINEAR_CONFIG
from hspace.testbed.faces import render_dataset

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (24, 48, 96, 96),
    "layers_per_block": 1,
    "norm_num_groups": 12,
    "attention_head_dim": 32,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
}
# Skip connections are kept only at this resolution and above (see the module docstring).
KEEP_SKIPS_FROM = 32


def cut_skip_connections(unet: UNet2DModel, keep_from: int = KEEP_SKIPS_FROM) -> list[tuple[torch.Tensor, int]]:
    """Zero the weights that read skip tensors in the up blocks below resolution ``keep_from``.

    Returns the cut weights as ``(weight, first_skip_column)`` pairs, so that training can re-zero them
    after every optimizer step. Raises if a GroupNorm group of a cut resnet mixes h-path and skip
    channels, since its statistics would then carry skip information past the zero weights.
    """
    cut: list[tuple[torch.Tensor, int]] = []
    resolution = unet.config.sample_size // 2 ** (len(unet.up_blocks) - 1)
    previous = unet.mid_block.resnets[-1].out_channels
    for block in unet.up_blocks:
        for j, resnet in enumerate(block.resnets):
            # diffusers' up-block resnet input is cat([hidden, skip]): hidden first (UpBlock2D.forward).
            hidden = previous if j == 0 else resnet.out_channels
            if resolution >= keep_from:
                continue
            group = resnet.norm1.num_channels // resnet.norm1.num_groups
            if hidden % group:
                raise HSpaceError(
                    f"up-block resnet with {hidden} h-path + {resnet.norm1.num_channels - hidden} skip "
                    f"channels: GroupNorm groups of {group} channels would mix them; choose "
                    "block_out_channels and norm_num_groups so that they do not"
                )
            cut += [(resnet.conv1.weight, hidden), (resnet.conv_shortcut.weight, hidden)]
        previous = block.resnets[-1].out_channels
        resolution *= 2
    zero_cut(cut)
    return cut


def zero_cut(cut: list[tuple[torch.Tensor, int]]) -> None:
    """Set the skip columns of the weights :func:`cut_skip_connections` returned back to zero."""
    with torch.no_grad():
        for weight, first in cut:
            weight[:, first:] = 0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 9000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 250
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    # A model folder (or the shipped name "testbed") whose weights start this run instead of new_unet's:
    # continued training when a finished run's checkpoint (optimizer state) is gone. None: from scratch.
    init_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise HSpaceError(f"{name} must be a positive integer; got {getattr(self, name)}")
        if not self.lr > 0:
            raise HSpaceError(f"lr must be positive; got {self.lr}")


def new_unet(seed: int) -> UNet2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**UNET_CONFIG)
    cut_skip_connections(unet)
    return unet


def _lr_factor(step: int, config: TrainConfig) -> float:
    # Linear warm-up, then cosine decay to 10% of the peak.
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(config: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Faces in [-1, 1], noise and timesteps of step ``step``: a function of (seed, step) alone."""
    images, _ = render_dataset(config.batch, seed=int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0]))
    x0 = torch.from_numpy(images).float() / 127.5 - 1.0
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    noise = torch.randn(x0.shape, generator=generator)
    timesteps = torch.randint(0, DDPM_LINEAR_CONFIG["num_train_timesteps"], (config.batch,), generator=generator)
    return x0, noise, timesteps


def train(config: TrainConfig, checkpoint_dir: Path, *, progress: Callable[[int, float], None] | None = None) -> dict:
    """Train (or resume) to ``config.steps``; returns the log. The EMA weights are the model."""
    checkpoint_dir = Path(checkpoint_dir)
    unet, ema = new_unet(config.seed), new_unet(config.seed)
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    scheduler = DDPMScheduler.from_config(DDPM_LINEAR_CONFIG)
    log: dict = {"config": asdict(config), "step": 0, "loss": [], "seconds": 0.0}
    _recover_interrupted_swap(checkpoint_dir)
    if (checkpoint_dir / "state.json").is_file():
        log = _resume(checkpoint_dir, config, unet, ema, optimizer)
    elif config.init_from is not None:
        log["init_from"] = _start_from(config.init_from, unet, ema)
    cut = cut_skip_connections(unet)
    unet.train()
    started, running = time.monotonic(), []
    for step in range(log["step"], config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        x0, noise, timesteps = _batch(config, step)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        zero_cut(cut)  # Adam's eps and rounding must not regrow a cut skip
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        running.append(loss.item())
        if progress:
            progress(step + 1, loss.item())
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            log["loss"].append([step + 1, float(np.mean(running))])
            running = []
            log["step"] = step + 1
            log["seconds"] += time.monotonic() - started
            started = time.monotonic()
            _save_checkpoint(checkpoint_dir, unet, ema, optimizer, log)
    return log


def _resume(
    checkpoint_dir: Path, config: TrainConfig, unet: UNet2DModel, ema: UNet2DModel, optimizer: torch.optim.Optimizer
) -> dict:
    """Load the checkpoint's model, EMA and optimizer state; return its log, updated to ``config.steps``."""
    log = json.loads((checkpoint_dir / "state.json").read_text())
    differing = {k: v for k, v in log["config"].items() if k != "steps" and asdict(config)[k] != v}
    if differing:
        raise HSpaceError(
            f"{checkpoint_dir} holds a run with other settings {differing}: resume it with "
            "those, or train into another folder"
        )
    unet.load_state_dict(load_file(checkpoint_dir / "model.safetensors"))
    ema.load_state_dict(load_file(checkpoint_dir / "ema.safetensors"))
    optimizer.load_state_dict(torch.load(checkpoint_dir / "optimizer.pt", weights_only=True))
    if log["config"]["steps"] != config.steps:
        # The cosine decay is stretched from here on: record it, so the card says how the model was made.
        log.setdefault("history", []).append(
            {"at_step": log["step"], "steps_before": log["config"]["steps"], "steps_after": config.steps}
        )
    log["config"]["steps"] = config.steps
    return log


def _start_from(name: str, unet: UNet2DModel, ema: UNet2DModel) -> dict:
    """Load ``name``'s weights into the model and its EMA; return the provenance :func:`_initial_weights` read."""
    weights, source = _initial_weights(name)
    for module in (unet, ema):
        try:
            module.load_state_dict(weights)
        except RuntimeError as error:
            raise HSpaceError(
                f"--init-from {name}: its U-Net is not the testbed architecture "
                f"(UNET_CONFIG): {str(error).splitlines()[0]}"
            ) from error
    return source


def _initial_weights(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """float32 weights of a model folder (or shipped name) and what its card says about how it was made."""
    from hspace.models import SHIPPED, verify_shipped

    folder = verify_shipped(name) if name in SHIPPED else Path(name)
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise HSpaceError(
            f"--init-from {name}: no {path}; give a model folder written by `hspace testbed train` "
            "(or the shipped name testbed)"
        )
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    source = {
        "model": name,
        "sha256": sha256_of(path),
        **{k: card.get(k) for k in ("steps_done", "final_loss", "command", "train_seconds", "init_from")},
    }
    return {k: v.float() for k, v in load_file(path).items()}, source


def _recover_interrupted_swap(directory: Path) -> None:
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and (old / "state.json").is_file():
        old.rename(directory)


def _save_checkpoint(
    directory: Path, unet: UNet2DModel, ema: UNet2DModel, optimizer: torch.optim.Optimizer, log: dict
) -> None:
    # Write a complete new folder, then swap it in: a crash leaves either the old or the new checkpoint.
    staging = directory.with_name(directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, staging / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, staging / "ema.safetensors")
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps(log))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def export_model(checkpoint_dir: Path, out_dir: Path, *, command: str) -> dict:
    """Write the EMA weights (float16 safetensors), configs and a data card as a loadable model folder.

    Layout: ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``,
    ``scheduler/scheduler_config.json``, ``model_index.json`` (a diffusers pipeline folder, so
    ``load_model(out_dir)`` and diffusers both read it) and ``card.json``.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not (checkpoint_dir / "state.json").is_file():
        raise HSpaceError(f"no finished checkpoint in {checkpoint_dir}: run `hspace testbed train` first")
    log = json.loads((checkpoint_dir / "state.json").read_text())
    unet = new_unet(0)
    unet.load_state_dict(load_file(checkpoint_dir / "ema.safetensors"))
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    unet.to(torch.float16).save_pretrained(staging / "unet", safe_serialization=True)
    DDPMScheduler.from_config(DDPM_LINEAR_CONFIG).save_pretrained(staging / "scheduler")
    (staging / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            },
            indent=2,
        )
    )
    weights = staging / "unet" / "diffusion_pytorch_model.safetensors"
    card = {
        "model": "testbed",
        "data": "hspace.testbed.faces.render_dataset: 32x32 procedural cartoon faces, fresh faces every batch "
        "(factors: yaw, smile, eyes_open, glasses, hat, skin_tone, face_width, background; "
        "P(hat | glasses) = 0.7, P(hat | no glasses) = 0.2)",
        "objective": "DDPM eps-prediction, MSE, linear betas 1e-4..0.02, 1000 timesteps; EMA weights",
        "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in UNET_CONFIG.items()},
        "skip_connections": f"kept at {KEEP_SKIPS_FROM}x{KEEP_SKIPS_FROM} only: below it the up-block weights that "
        "read skips are zero (h is the only route from encoder to decoder there)",
        "parameters": sum(p.numel() for p in unet.parameters()),
        "train_config": log["config"],
        "steps_done": log["step"],
        "final_loss": log["loss"][-1][1] if log["loss"] else None,
        "loss_curve": log["loss"],
        "train_seconds": round(log["seconds"], 1),
        "weights_dtype": "float16",
        "sha256": sha256_of(weights),
        "command": command,
        # Resumes with another --steps (the learning-rate schedule changed at those steps); empty if none.
        "resumed_with_other_steps": log.get("history", []),
        # The model this run started from (its own card's provenance nested), or None if from scratch.
        "init_from": log.get("init_from"),
    }
    (staging / "card.json").write_text(json.dumps(card, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return card
