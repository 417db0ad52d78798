"""Model loading: built-ins, local folders (the hub loading path), fingerprints, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMPipeline, DDPMScheduler

from hspace.errors import HSpaceError
from hspace.model_configs import BUILTIN
from hspace.models import SHIPPED, load_model, weight_fingerprint


def test_tiny_is_deterministic_and_has_h(tiny):
    again = load_model("tiny")
    assert again.fingerprint == tiny.fingerprint
    assert tiny.h_shape == (32, 8, 8)
    assert tiny.image_shape == (3, 16, 16)
    seen = []
    handle = tiny.unet.mid_block.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        tiny.unet(torch.zeros(1, 3, 16, 16), torch.tensor(10))
    finally:
        handle.remove()
    assert seen == [(1, *tiny.h_shape)]


def test_loading_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_celebahq_shape_matches_the_published_architecture():
    model = load_model("celebahq-shape")
    parameters = sum(p.numel() for p in model.unet.parameters())
    assert round(parameters / 1e6, 1) == 113.7  # the architecture of google/ddpm-ema-celebahq-256
    assert model.h_shape == (512, 8, 8)
    assert model.image_shape == (3, 256, 256)


def test_scale_probe_has_the_h_of_celebahq_at_a_hundredth_of_its_compute():
    from torch.utils.flop_counter import FlopCounterMode

    model = load_model("scale-probe")
    assert model.h_shape == (512, 8, 8)  # google/ddpm-ema-celebahq-256's h: 32,768 values per step
    assert model.image_shape == (3, 64, 64)
    assert load_model("scale-probe").fingerprint == model.fingerprint
    seen = []
    handle = model.unet.mid_block.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        with FlopCounterMode(display=False) as counter:
            model.unet(torch.zeros(1, 3, 64, 64), torch.tensor(10))
    finally:
        handle.remove()
    assert seen == [(1, 512, 8, 8)]
    # celebahq-shape: 496,348,037,120 FLOP per forward (bench/bench_gpu.py); the probe's is 4.61e9.
    assert counter.get_total_flops() < 496_348_037_120 / 100


def test_every_builtin_is_named_in_the_unknown_model_error():
    assert set(BUILTIN) == {
        "tiny",
        "celebahq-shape",
        "scale-probe",
        "tiny-ldm",
        "tiny-sd",
        "ldm-celebahq-shape",
        "sd15-shape",
    }
    with pytest.raises(HSpaceError) as error:
        load_model("no such model")
    for name in [*BUILTIN, *SHIPPED]:
        assert name in str(error.value)


def test_fingerprint_is_sha256_of_the_state_dict_and_sees_one_changed_weight(tiny):
    import hashlib

    unet = load_model("tiny").unet
    digest = hashlib.sha256()
    for key, tensor in sorted(unet.state_dict().items()):
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert weight_fingerprint(unet) == digest.hexdigest() == tiny.fingerprint
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] += 1e-3
    assert weight_fingerprint(unet) != tiny.fingerprint


def test_pipeline_folder_and_bare_unet_folder_load_with_the_same_weights(tiny, tmp_path):
    pipeline = DDIMPipeline(unet=tiny.unet, scheduler=DDPMScheduler.from_config(tiny.scheduler_config))
    pipeline.save_pretrained(tmp_path / "pipeline")
    from_pipeline = load_model(str(tmp_path / "pipeline"))
    assert from_pipeline.fingerprint == tiny.fingerprint
    assert from_pipeline.scheduler_config["beta_schedule"] == "linear"

    # google/ddpm-ema-celebahq-256's layout: U-Net files and scheduler_config.json side by side.
    bare = tmp_path / "bare"
    tiny.unet.save_pretrained(bare)
    DDPMScheduler.from_config(tiny.scheduler_config).save_pretrained(bare)
    assert any(bare.glob("*.safetensors"))
    assert load_model(str(bare)).fingerprint == tiny.fingerprint


def test_unknown_name_is_a_clear_error():
    with pytest.raises(HSpaceError, match="unknown model 'no such model'.*built-in.*directory.*hub id"):
        load_model("no such model")


def test_model_without_mid_block_is_refused(no_mid_block_model):
    with pytest.raises(HSpaceError, match="has no mid_block"):
        load_model(no_mid_block_model)


def test_folder_without_scheduler_or_config_is_refused(tiny, tmp_path):
    tiny.unet.save_pretrained(tmp_path)
    with pytest.raises(HSpaceError, match="no scheduler config"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(HSpaceError, match="not a diffusers model folder"):
        load_model(str(tmp_path))


def test_other_model_classes_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp_path / "scheduler_config.json").write_text("{}")
    with pytest.raises(HSpaceError, match="UNet2DConditionModel"):
        load_model(str(tmp_path))


def test_unreachable_hub_id_says_how_to_proceed(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HSpaceError, match="cannot fetch hub model 'nobody/nothing-here'.*local directory"):
        load_model("nobody/nothing-here")
