"""Loading unconditional diffusers U-Nets with their scheduler config.

A model is named by one of:

* a built-in config (random weights from a fixed seed, no download): ``tiny`` for fast tests,
  ``celebahq-shape``, the exact architecture of ``google/ddpm-ema-celebahq-256``, and ``scale-probe``, which
  has that model's h (512 x 8 x 8) at a hundredth of its compute, for measuring the pipeline at scale on CPUs;
* a local directory: either a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``)
  or a bare U-Net folder (``config.json``, weights and ``scheduler_config.json``, the layout of
  ``google/ddpm-ema-celebahq-256``);
* a hub id ``owner/name``, fetched into (or read from) the user's Hugging Face cache, then loaded as a
  local directory.

Weights load through safetensors; a folder with only ``.bin`` weights is read by diffusers with
``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from hspace.errors import HSpaceError
from hspace.files import sha256_of

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

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The dtype the U-Net runs in. The scheduler arithmetic (eq. 2-5) stays float32 whatever the precision: the
# sampler casts x_t to the U-Net's dtype for each pass and eps back to float32 (hspace.sampler.predict_eps).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def tf32_passes(unet: torch.nn.Module) -> Iterator[None]:
    """Within the block, an fp32 U-Net on CUDA runs its matmuls and convolutions in TF32 (10 mantissa bits,
    float32 range: the tensor-core rate); elsewhere, for other dtypes, and where the caller chose the matmul
    precision (``torch.backends.cuda.matmul.fp32_precision`` not torch's default ``"none"``, e.g. ``"ieee"``
    for an IEEE fp32 reference), nothing changes.

    Scoped to the sampler's U-Net passes rather than set for the process, so that what else runs in fp32 on
    the GPU (PCA's Gram products, the Jacobian's products near their tolerance, annotators) stays as torch
    runs it whatever ran before. torch's switches are process-wide: threads sampling on one GPU share them.
    """
    parameter = next(unet.parameters())
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv  # type: ignore[attr-defined]
    if parameter.device.type != "cuda" or parameter.dtype != torch.float32 or matmul.fp32_precision != "none":
        yield
        return
    before = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "tf32", "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def precision_entry(precision: str) -> dict[str, str]:
    """``{"precision": precision}`` for a record (a bank's sampler, an evaluation key, a direction's
    parameters), or nothing for fp32: records written before precisions existed were all fp32, and leaving
    fp32 out keeps their content hashes and keys, and those of every fp32 record since, what they were."""
    return {} if precision == "fp32" else {"precision": precision}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line error naming them."""
    if precision not in PRECISIONS:
        raise HSpaceError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A U-Net ready for sampling, with everything a corpus must record about it.

    Attributes
    ----------
    name : str
        The name it was loaded by (built-in name, directory or hub id).
    unet : UNet2DModel
        In eval mode, gradients off.
    scheduler_config : dict
        The training scheduler's config; samplers build a ``DDIMScheduler`` from it.
    fingerprint : str
        sha256 over the state dict as stored, before any cast (see :func:`weight_fingerprint`), so a model
        loaded in bf16 is recognised as the same weights as in fp32.
    precision : str
        One of :data:`PRECISIONS`: the dtype the U-Net was cast to on load.
    """

    name: str
    unet: UNet2DModel
    scheduler_config: dict[str, Any]
    fingerprint: str
    precision: str = "fp32"

    def at_precision(self, precision: str) -> LoadedModel:
        """This model with its U-Net in ``precision``: itself when it already is, else a cast copy of an fp32 one.

        Only fp32 is cast down: bf16 and fp16 weights have lost bits that a cast back to fp32 (or across to
        the other half precision) cannot restore, so those are refused rather than silently approximated.
        """
        dtype = PRECISIONS[check_precision(precision)]
        if precision == self.precision:
            return self
        if self.precision != "fp32":
            raise HSpaceError(
                f"model {self.name!r} was loaded in {self.precision}, which is not cast to {precision} without loss: "
                f"load the model in fp32 (load_model({self.name!r}), the default), which runs in any precision"
            )
        unet = torch.nn.Module.to(copy.deepcopy(self.unet), dtype=dtype)
        return replace(self, unet=unet, precision=precision)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet.config.in_channels), int(height), int(width))

    @property
    def h_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of h_t, the mid-block output: deepest channels at the lowest resolution."""
        config = self.unet.config
        _, height, width = self.image_shape
        factor = 2 ** (len(config.down_block_types) - 1)
        return (int(config.block_out_channels[-1]), height // factor, width // factor)


def _tiny() -> UNet2DModel:
    # Two levels with attention at the bottom, so the attention path (and its forward-mode AD
    # caveat, in the hspace.jacobian docstring) is exercised by every fast test. h = 32 x 8 x 8.
    return UNet2DModel(
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


def _celebahq_shape() -> UNet2DModel:
    # google/ddpm-ema-celebahq-256: 113.7M parameters, h = 512 x 8 x 8.
    return UNet2DModel(
        sample_size=256,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        layers_per_block=2,
        down_block_types=(
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
        ),
        freq_shift=1,
        flip_sin_to_cos=False,
        downsample_padding=0,
        norm_eps=1e-6,
    )


def _scale_probe() -> UNet2DModel:
    """The h of google/ddpm-ema-celebahq-256 (512 x 8 x 8 = 32,768 values per step) on 3 x 64 x 64 images, cheaply.

    Four levels (64 -> 32 -> 16 -> 8, three downsamplings), one resnet per level, 8/16/32 channels in the outer
    levels and 512 only at the bottom, where h is: the mid-block (two resnets, no attention: 3% more compute
    with it) and its neighbours work at 512 channels, everything else is almost free. 27.45M parameters,
    4.61 GFLOP per forward per sample (FlopCounterMode, batch 1), against 496 GFLOP for celebahq-shape.

    One U-Net pass at batch 32 (``python bench/bench_scale.py --pass-time``, 2026-12-05) on this project's 2-core
    CPU: 0.57 s (min of 3, the same pass timed by hand while the machine was nearly idle), 1.6-2.8 s (min of 5)
    at load average 4-8 from other jobs. Idle, a 50-step sample thus costs about 0.9 s, a shard of 32 about 28 s.
    """
    return UNet2DModel(
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


BUILTIN: dict[str, Callable[[], UNet2DModel]] = {
    "tiny": _tiny,
    "celebahq-shape": _celebahq_shape,
    "scale-probe": _scale_probe,
}

# Models the project trains and ships (weights inside the package, checked against their data card).
SHIPPED: dict[str, Path] = {"testbed": Path(__file__).parent / "testbed" / "weights" / "model"}


def weight_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the state dict: every key in sorted order with its dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_same_weights(model: LoadedModel, fingerprint: str, *, owner: str, advice: str) -> None:
    """Refuse ``model`` when its weight fingerprint is not ``fingerprint``, the one ``owner`` was built with.

    ``owner`` names what recorded the fingerprint ("the corpus", "bank x version v"); ``advice`` says what to do.
    Every place that loads a model again for stored work (a worker, a rerun) asks this one question.
    """
    if model.fingerprint != fingerprint:
        raise HSpaceError(
            f"the weights of {model.name!r} here (sha256 {model.fingerprint[:12]}) differ from those {owner} was "
            f"built with ({fingerprint[:12]}): {advice}"
        )


def load_model(name: str, *, device: str | torch.device = "cpu", precision: str = "fp32") -> LoadedModel:
    """Load a U-Net and its scheduler config by built-in name, directory or hub id.

    The U-Net is cast once, here, to ``precision`` (:data:`PRECISIONS`). On CUDA, the sampler runs an fp32
    U-Net's matmuls and convolutions in TF32 (:func:`tf32_passes`); bf16 and fp16 are the faster, rougher
    choices (docs/results.md).

    Raises
    ------
    HSpaceError
        If the name is none of these, the weights cannot be read, the model has no ``mid_block``, or the
        precision is unknown.
    """
    dtype = PRECISIONS[check_precision(precision)]
    if name in BUILTIN:
        unet, scheduler_config = _load_builtin(name), dict(DDPM_LINEAR_CONFIG)
    elif name in SHIPPED:
        unet, scheduler_config = _load_directory(verify_shipped(name))
    elif Path(name).is_dir():
        unet, scheduler_config = _load_directory(Path(name))
    elif HUB_ID.match(name) and not Path(name).exists():
        unet, scheduler_config = _load_directory(_hub_snapshot(name))
    else:
        raise HSpaceError(
            f"unknown model {name!r}: not a built-in ({', '.join(sorted([*BUILTIN, *SHIPPED]))}), not an existing "
            "directory, and not a hub id of the form owner/name"
        )
    if getattr(unet, "mid_block", None) is None:
        raise HSpaceError(
            f"model {name!r} has no mid_block, so it has no h-space: use a U-Net whose config has a "
            "mid_block_type (the default UNetMidBlock2D)"
        )
    fingerprint = weight_fingerprint(unet)
    # torch's own .to: diffusers' override warns about keeping fp32 modules even when, as for every
    # UNet2DModel, the list of such modules is empty.
    unet = torch.nn.Module.to(unet, device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(
        name=name, unet=unet, scheduler_config=scheduler_config, fingerprint=fingerprint, precision=precision
    )


def verify_shipped(name: str) -> Path:
    """The folder of a shipped model, after checking its weights against the sha256 in its data card."""
    folder = SHIPPED[name]
    card_path, weights = folder / "card.json", folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not card_path.is_file() or not weights.is_file():
        raise HSpaceError(f"the {name!r} model is not in this installation ({folder}); reinstall hspace")
    expected = json.loads(card_path.read_text())["sha256"]
    actual = sha256_of(weights)
    if actual != expected:
        raise HSpaceError(
            f"the {name!r} weights are damaged (sha256 {actual[:12]}, card says {expected[:12]}); reinstall hspace"
        )
    return folder


def _load_builtin(name: str) -> UNet2DModel:
    # Random weights from a fixed seed, drawn without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BUILTIN[name]()


def _load_directory(path: Path) -> tuple[UNet2DModel, dict[str, Any]]:
    if (path / "model_index.json").is_file():
        unet_dir, scheduler_file = path / "unet", path / "scheduler" / "scheduler_config.json"
    else:
        unet_dir, scheduler_file = path, path / "scheduler_config.json"
    if not (unet_dir / "config.json").is_file():
        raise HSpaceError(f"{path} is not a diffusers model folder: {unet_dir / 'config.json'} is missing")
    if not scheduler_file.is_file():
        raise HSpaceError(f"{path} has no scheduler config: expected {scheduler_file}")
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise HSpaceError(
            f"{path} holds a {config['_class_name']}; hspace works with unconditional UNet2DModel pipelines"
        )
    try:
        # float32 on load: shipped weights are stored in float16 to stay small. low_cpu_mem_usage=False is what
        # diffusers falls back to without `accelerate` anyway (after a warning on every load); saying so here
        # keeps the load silent without a dependency that only saves memory on models far larger than these.
        unet = UNet2DModel.from_pretrained(
            unet_dir, use_safetensors=_has_safetensors(unet_dir), torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise HSpaceError(f"cannot load the U-Net weights in {unet_dir}: {error}") from error
    return unet, json.loads(scheduler_file.read_text())


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin", "*/*.json", "*/*.safetensors", "*/*.bin"]
            )
        )
    except Exception as error:  # the hub client raises many types; all mean "not available here"
        raise HSpaceError(
            f"cannot fetch hub model {repo_id!r} ({type(error).__name__}: {error}); without network access, "
            "download it elsewhere and pass its local directory instead"
        ) from error
