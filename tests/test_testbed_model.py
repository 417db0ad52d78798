"""The shipped testbed model: its checksum is checked on load, and diffusers reads the folder as a pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from hspace.errors import HSpaceError
from hspace.models import SHIPPED, load_model, weight_fingerprint

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def test_card_checksum_matches_the_weights_file():
    folder = SHIPPED["testbed"]
    card = json.loads((folder / "card.json").read_text())
    assert hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest() == card["sha256"]
    assert (folder / WEIGHTS).stat().st_size <= 10 * 2**20
    assert card["steps_done"] == card["train_config"]["steps"]


def test_testbed_loads_in_float32_with_the_h_of_its_card():
    model = load_model("testbed")
    card = json.loads((SHIPPED["testbed"] / "card.json").read_text())
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())
    assert model.image_shape == (3, 32, 32)
    assert model.h_shape == (card["architecture"]["block_out_channels"][-1], 2, 2)


def test_diffusers_reads_the_shipped_folder_with_the_same_weights():
    from diffusers import DDPMPipeline

    pipeline = DDPMPipeline.from_pretrained(SHIPPED["testbed"], torch_dtype=torch.float32)
    assert weight_fingerprint(pipeline.unet) == load_model("testbed").fingerprint


def test_a_flipped_byte_in_the_weights_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED["testbed"], copy)
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-100] ^= 0x01
    (copy / WEIGHTS).write_bytes(bytes(data))
    monkeypatch.setitem(SHIPPED, "testbed", copy)
    with pytest.raises(HSpaceError, match="damaged"):
        load_model("testbed")


def test_missing_weights_say_to_reinstall(tmp_path, monkeypatch):
    monkeypatch.setitem(SHIPPED, "testbed", tmp_path / "nowhere")
    with pytest.raises(HSpaceError, match="reinstall"):
        load_model("testbed")
