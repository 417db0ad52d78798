"""Loading diffusers U-Net models of three kinds, with their scheduler config.

Kinds (:data:`KINDS`): ``pixel``, a ``UNet2DModel`` on images (``DDPMPipeline``); ``latent``, a ``UNet2DModel`` on
the latents of a ``VQModel`` or ``AutoencoderKL`` (``LDMPipeline``); ``text``, a ``UNet2DConditionModel`` on the
latents of an ``AutoencoderKL``, conditioned on a CLIP text encoder's embeddings of a prompt
(``StableDiffusionPipeline``). h is the U-Net's mid-block output in every kind; x_t is the image (pixel) or the
latent (latent, text), and images are decoded once, after the last step.

A model is named by one of:

* a built-in config (random weights from a fixed seed, no download; :mod:`hspace.model_configs`): ``tiny``,
  ``tiny-ldm`` and ``tiny-sd`` for fast tests, ``celebahq-shape``, ``ldm-celebahq-shape`` and ``sd15-shape``, the
  exact architectures of ``google/ddpm-ema-celebahq-256``, ``CompVis/ldm-celebahq-256`` and Stable Diffusion 1.5,
  and ``scale-probe``, which has the first one's h (512 x 8 x 8) at a hundredth of its compute;
* a local directory: a pipeline folder (``model_index.json`` with ``unet/`` and ``scheduler/``, and ``vqvae/`` or
  ``vae/``, ``text_encoder/`` and ``tokenizer/`` for the latent kinds) or a bare U-Net folder (``config.json``,
  weights and ``scheduler_config.json``, the layout of ``google/ddpm-ema-celebahq-256``);
* a hub id ``owner/name``, fetched into (or read from) the user's Hugging Face cache, then loaded as a
  local directory.

Weights load through safetensors; a folder with only ``.bin`` weights is read by diffusers and transformers with
``torch.load(weights_only=True)``, which never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hspace.conditioning import Conditioning, TextEncoder
from hspace.errors import HSpaceError
from hspace.files import sha256_of
from hspace.model_configs import BUILTIN, ModelParts, build
from hspace.model_folders import load_folder

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The dtype the U-Net runs in. The scheduler arithmetic (eq. 2-5) stays float32 whatever the precision: the
# sampler casts x_t to the U-Net's dtype for each pass and eps back to float32 (hspace.sampler.predict_eps).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KINDS = ("pixel", "latent", "text")


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
    """A model ready for sampling, with everything a corpus must record about it.

    Attributes
    ----------
    name : str
        The name it was loaded by (built-in name, directory or hub id).
    unet : UNet2DModel or UNet2DConditionModel
        In eval mode, gradients off.
    scheduler_config : dict
        The training scheduler's config; samplers build a ``DDIMScheduler`` from it.
    fingerprint : str
        sha256 over every weight that changes a sample, as stored, before any cast (:func:`model_fingerprint`),
        so a model loaded in bf16 is recognised as the same weights as in fp32.
    precision : str
        One of :data:`PRECISIONS`: the dtype the U-Net was cast to on load (the autoencoder and text encoder stay
        float32: they run once per sample, the U-Net at every step).
    autoencoder : VQModel or AutoencoderKL or None
        Latent kinds: maps images to latents (:meth:`encode`) and back (:meth:`decode`).
    text : TextEncoder or None
        The text kind's tokenizer and CLIP text encoder.
    conditioning : Conditioning or None
        The text kind's prompt, negative prompt and guidance (:meth:`conditioned`); None for the others.
    """

    name: str
    unet: Any  # UNet2DModel or UNet2DConditionModel (diffusers is untyped: pyproject.toml)
    scheduler_config: dict[str, Any]
    fingerprint: str
    precision: str = "fp32"
    autoencoder: Any = None  # VQModel, AutoencoderKL or None
    text: TextEncoder | None = None
    conditioning: Conditioning | None = None

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

    def conditioned(self, conditioning: Conditioning | None) -> LoadedModel:
        """This model sampling with ``conditioning``; None keeps a text model's own (the empty prompt by default).

        Raises
        ------
        HSpaceError
            If ``conditioning`` is given for a model that is not text-conditional.
        """
        if conditioning is None:
            return self
        if self.kind != "text":
            raise HSpaceError(
                f"model {self.name!r} is unconditional ({self.kind} kind): a prompt, negative prompt or guidance "
                "applies only to a text-conditional model; leave them out"
            )
        return replace(self, conditioning=conditioning)

    @property
    def kind(self) -> str:
        """One of :data:`KINDS`, from the parts: no autoencoder is pixel, no text encoder latent, else text."""
        return "pixel" if self.autoencoder is None else "latent" if self.text is None else "text"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of x_t, what the U-Net denoises: the image itself for the pixel kind."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet.config.in_channels), int(height), int(width))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one decoded sample."""
        if self.autoencoder is None:
            return self.latent_shape
        config = self.autoencoder.config
        factor = 2 ** (len(config.block_out_channels) - 1)  # diffusers' vae_scale_factor
        _, height, width = self.latent_shape
        return (int(config.out_channels), height * factor, width * factor)

    @property
    def h_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of h_t, the mid-block output: deepest channels at the lowest resolution."""
        config = self.unet.config
        _, height, width = self.latent_shape
        factor = 2 ** (len(config.down_block_types) - 1)
        return (int(config.block_out_channels[-1]), height // factor, width // factor)

    def decode(self, x_0: torch.Tensor, microbatch: int) -> torch.Tensor:
        """Images in [0, 1] (float32, on the CPU) from the final x_0: (x_0 / 2 + 0.5) for the pixel kind; for the
        latent kinds the autoencoder's decoding of x_0 / scaling_factor, as ``LDMPipeline`` and
        ``StableDiffusionPipeline`` decode, ``microbatch`` latents at a time."""
        if self.autoencoder is None:
            images = x_0
        else:
            scale = self.autoencoder.config.scaling_factor
            with torch.no_grad():
                images = torch.cat([self.autoencoder.decode(part / scale).sample for part in x_0.split(microbatch)])
        return (images / 2 + 0.5).clamp(0, 1).float().cpu()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """x_0 from images in [-1, 1] (B, C, H, W): the images themselves for the pixel kind; for the latent kinds
        the autoencoder's encoding times scaling_factor (the inverse of :meth:`decode`): a VQ encoder's
        pre-quantisation latents (decoding quantises them), a KL encoder's posterior mode."""
        if self.autoencoder is None:
            return images
        scale = self.autoencoder.config.scaling_factor
        with torch.no_grad():
            encoded = self.autoencoder.encode(images.to(self.unet.device))
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        return latents.float() * scale


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


def load_model(
    name: str,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    conditioning: Conditioning | None = None,
) -> LoadedModel:
    """Load a model (U-Net, scheduler config, and the autoencoder and text encoder of the latent kinds) by
    built-in name, directory or hub id.

    The U-Net is cast once, here, to ``precision`` (:data:`PRECISIONS`). On CUDA, the sampler runs an fp32
    U-Net's matmuls and convolutions in TF32 (:func:`tf32_passes`); bf16 and fp16 are the faster, rougher
    choices (docs/results.md). A text-conditional model samples with ``conditioning``, by default the empty
    prompt at diffusers' guidance 7.5 (:class:`hspace.conditioning.Conditioning`).

    Raises
    ------
    HSpaceError
        If the name is none of these, the weights cannot be read, the model has no ``mid_block``, the precision
        is unknown, or ``conditioning`` is given for an unconditional model.
    """
    dtype = PRECISIONS[check_precision(precision)]
    if name in BUILTIN:
        parts = build(name)
    elif name in SHIPPED:
        parts = load_folder(verify_shipped(name))
    elif Path(name).is_dir():
        parts = load_folder(Path(name))
    elif HUB_ID.match(name) and not Path(name).exists():
        parts = load_folder(_hub_snapshot(name))
    else:
        raise HSpaceError(
            f"unknown model {name!r}: not a built-in ({', '.join(sorted([*BUILTIN, *SHIPPED]))}), not an existing "
            "directory, and not a hub id of the form owner/name"
        )
    if getattr(parts.unet, "mid_block", None) is None:
        raise HSpaceError(
            f"model {name!r} has no mid_block, so it has no h-space: use a U-Net whose config has a "
            "mid_block_type (the default UNetMidBlock2D)"
        )
    fingerprint = model_fingerprint(parts)
    # torch's own .to: diffusers' override warns about keeping fp32 modules even when, as for every
    # UNet2DModel, the list of such modules is empty.
    unet = torch.nn.Module.to(parts.unet, device=device, dtype=dtype).eval().requires_grad_(False)
    autoencoder, text = parts.autoencoder, parts.text
    if autoencoder is not None:
        autoencoder = torch.nn.Module.to(autoencoder, device=device).eval().requires_grad_(False)
    if text is not None:
        text = TextEncoder(text.tokenizer, text.encoder.to(device).eval().requires_grad_(False))
    model = LoadedModel(
        name=name,
        unet=unet,
        scheduler_config=parts.scheduler_config,
        fingerprint=fingerprint,
        precision=precision,
        autoencoder=autoencoder,
        text=text,
        conditioning=None if text is None else Conditioning(),
    )
    return model.conditioned(conditioning)


def model_fingerprint(parts: ModelParts) -> str:
    """The U-Net's :func:`weight_fingerprint` for a pixel model (so fingerprints recorded before the latent kinds
    stay valid); for the latent kinds, sha256 over the fingerprints of the U-Net, the autoencoder and the text
    encoder, and the tokenizer's definition: every part that changes a sample, with the autoencoder's
    ``scaling_factor`` (a config value that decoding divides by: CompVis/ldm-celebahq-256's config leaves it at
    VQModel's default)."""
    if parts.autoencoder is None:
        return weight_fingerprint(parts.unet)
    scale = float(parts.autoencoder.config.scaling_factor)
    entries = [
        f"unet:{weight_fingerprint(parts.unet)}",
        f"autoencoder:{weight_fingerprint(parts.autoencoder)}",
        f"scaling_factor:{scale!r}",
    ]
    if parts.text is not None:
        entries += [f"text_encoder:{weight_fingerprint(parts.text.encoder)}", f"tokenizer:{parts.text.digest()}"]
    return hashlib.sha256("|".join(entries).encode()).hexdigest()


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
