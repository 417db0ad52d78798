"""Reading a diffusers model folder: a pipeline folder (``model_index.json``) of any of the three kinds, or a bare
``UNet2DModel`` folder.

Which kind a pipeline folder is follows from what it holds: ``unet`` (a ``UNet2DModel``) alone is pixel; with
``vqvae`` or ``vae`` it is latent; a ``UNet2DConditionModel`` with ``vae``, ``text_encoder`` and ``tokenizer`` is
text. Every part is read in float32 from safetensors (``.bin`` through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel

from hspace.conditioning import TextEncoder
from hspace.errors import HSpaceError
from hspace.model_configs import ModelParts

UNETS: dict[str, Any] = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
AUTOENCODERS: dict[str, Any] = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}


def load_folder(path: Path) -> ModelParts:
    """The parts of the model in ``path``.

    Raises
    ------
    HSpaceError
        If the folder is not a diffusers model folder, its backbone has no mid-block h-space (a transformer),
        a part hspace needs is missing, or a part's weights cannot be read.
    """
    if not (path / "model_index.json").is_file():
        unet_class = _class_name(path, None)
        scheduler = _scheduler_config(path / "scheduler_config.json", path)
        if unet_class != "UNet2DModel":
            raise HSpaceError(
                f"{path} holds a {unet_class}; a bare U-Net folder must hold a UNet2DModel (a UNet2DConditionModel "
                "needs its whole Stable Diffusion pipeline folder)"
            )
        return ModelParts(_load(UNet2DModel, path), scheduler)
    index = json.loads((path / "model_index.json").read_text())
    if "transformer" in index and "unet" not in index:
        backbone = (index["transformer"] or [None, "transformer"])[-1]
        raise HSpaceError(
            f"{path} holds a {backbone} backbone: no mid-block h-space, DiT models are not supported; use a U-Net "
            "pipeline (DDPM, LDM or Stable Diffusion)"
        )
    unet_class = _class_name(path / "unet", index.get("unet"))
    if unet_class not in UNETS:
        raise HSpaceError(
            f"{path} holds a {unet_class}; hspace works with UNet2DModel (pixel or latent) and UNet2DConditionModel "
            "(Stable Diffusion) pipelines"
        )
    scheduler = _scheduler_config(path / "scheduler" / "scheduler_config.json", path)
    unet = _load(UNETS[unet_class], path / "unet")
    autoencoder = _autoencoder(path, index)
    if unet_class == "UNet2DModel":
        return ModelParts(unet, scheduler, autoencoder=autoencoder)
    if autoencoder is None or not (path / "text_encoder").is_dir() or not (path / "tokenizer").is_dir():
        raise HSpaceError(
            f"{path} has a text-conditional U-Net but not all of vae/, text_encoder/ and tokenizer/: hspace needs "
            "a whole Stable Diffusion pipeline folder"
        )
    return ModelParts(unet, scheduler, autoencoder=autoencoder, text=_text_encoder(path))


def _class_name(folder: Path, entry: list | None) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise HSpaceError(f"{folder} is not a diffusers model folder: {config} is missing")
    return str(json.loads(config.read_text()).get("_class_name") or (entry or [None, "UNet2DModel"])[-1])


def _scheduler_config(file: Path, path: Path) -> dict[str, Any]:
    if not file.is_file():
        raise HSpaceError(f"{path} has no scheduler config: expected {file}")
    return json.loads(file.read_text())


def _autoencoder(path: Path, index: dict[str, Any]) -> torch.nn.Module | None:
    names = [name for name in ("vqvae", "vae") if name in index]
    if not names:
        return None
    folder = path / names[0]
    kind = _class_name(folder, index[names[0]])
    if kind not in AUTOENCODERS:
        raise HSpaceError(f"{folder} holds a {kind}; hspace decodes latents with a VQModel or an AutoencoderKL")
    return _load(AUTOENCODERS[kind], folder)


def _load(cls: Any, folder: Path) -> torch.nn.Module:
    try:
        # float32 on load: shipped weights are stored in float16 to stay small. low_cpu_mem_usage=False is what
        # diffusers falls back to without `accelerate` anyway (after a warning on every load); saying so here
        # keeps the load silent without a dependency that only saves memory on models far larger than these.
        return cls.from_pretrained(
            folder, use_safetensors=_has_safetensors(folder), torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise HSpaceError(f"cannot load the weights in {folder}: {error}") from error


def _text_encoder(path: Path) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(
            path / "text_encoder",
            use_safetensors=_has_safetensors(path / "text_encoder"),
            dtype=torch.float32,
            local_files_only=True,
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise HSpaceError(f"cannot load the text encoder or tokenizer in {path}: {error}") from error
    return TextEncoder(tokenizer, encoder)


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))
