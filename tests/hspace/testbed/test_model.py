"""The shipped testbed model: its checksum is checked on load, and diffusers reads the folder as a pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from hspace.errors import HSpaceError
from hspace.models import SHIPPED, load_model, weight_fingerprint
from hspace.testbed.train import UNET_CONFIG, TrainConfig, cut_skip_connections, export_model, new_unet, train

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
    levels = len(card["architecture"]["block_out_channels"])
    assert model.h_shape == (card["architecture"]["block_out_channels"][-1],) + (32 // 2 ** (levels - 1),) * 2


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


def _eps_with_noisy_skips(unet, blocks, x, t) -> torch.Tensor:
    """diffusers' own forward, with the skip tensors that ``blocks`` receive replaced by large noise."""
    generator = torch.Generator().manual_seed(1)

    def noisy(module, args):
        sample, skips, emb = args
        return sample, tuple(10 * torch.randn(s.shape, generator=generator) for s in skips), emb

    handles = [block.register_forward_pre_hook(noisy) for block in blocks]
    try:
        with torch.no_grad():
            return unet(x, t).sample
    finally:
        for handle in handles:
            handle.remove()


def test_below_full_resolution_only_h_reaches_the_decoder():
    # The shipped weights, not the training code: noise in every cut skip leaves eps unchanged (so h is the
    # only route from encoder to decoder below 32x32), while noise in the kept 32x32 skips changes it.
    unet = load_model("testbed").unet
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 300, 600, 900])
    with torch.no_grad():
        eps = unet(x, t).sample
    cut = _eps_with_noisy_skips(unet, unet.up_blocks[:-1], x, t)
    kept = _eps_with_noisy_skips(unet, unet.up_blocks[-1:], x, t)
    assert torch.allclose(cut, eps, atol=1e-6, rtol=0)
    assert (kept - eps).abs().mean() > 0.01


def test_a_cut_that_group_norm_would_leak_around_is_refused():
    from diffusers import UNet2DModel

    # 128 h-path + 64 skip channels in 8 groups of 24: a group would hold both.
    unet = UNet2DModel(**dict(UNET_CONFIG, block_out_channels=(16, 32, 64, 128), norm_num_groups=8))
    with pytest.raises(HSpaceError, match="would mix them"):
        cut_skip_connections(unet)


def test_training_holds_the_cut_at_zero_and_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    config = TrainConfig(steps=4, batch=4, checkpoint_every=2, warmup=2)
    train(config, tmp_path / "straight")
    train(TrainConfig(**{**config.__dict__, "steps": 2}), tmp_path / "resumed")
    train(config, tmp_path / "resumed")
    history = json.loads((tmp_path / "resumed" / "state.json").read_text())["history"]
    assert history == [{"at_step": 2, "steps_before": 2, "steps_after": 4}]
    assert "history" not in json.loads((tmp_path / "straight" / "state.json").read_text())
    start = new_unet(config.seed).state_dict()
    for kind in ("model", "ema"):
        straight = load_file(tmp_path / "straight" / f"{kind}.safetensors")
        resumed = load_file(tmp_path / "resumed" / f"{kind}.safetensors")
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), kind
    probe = new_unet(config.seed)
    names = {id(p): n for n, p in probe.named_parameters()}
    cut = [(names[id(weight)], first) for weight, first in cut_skip_connections(probe)]
    assert len(cut) == 2 * sum(len(block.resnets) for block in probe.up_blocks[:-1])
    for kind in ("model", "ema"):
        trained = load_file(tmp_path / "straight" / f"{kind}.safetensors")
        for name, first in cut:
            assert torch.count_nonzero(trained[name][:, first:]) == 0, (kind, name)
            assert not torch.equal(trained[name][:, :first], start[name][:, :first]), (kind, name)
    # Export: a loadable model folder whose card records the resume and the weights' checksum.
    card = export_model(tmp_path / "resumed", tmp_path / "model", command="test")
    assert card["resumed_with_other_steps"] == history and card["steps_done"] == 4
    assert hashlib.sha256((tmp_path / "model" / WEIGHTS).read_bytes()).hexdigest() == card["sha256"]
    assert load_model(str(tmp_path / "model")).h_shape == (UNET_CONFIG["block_out_channels"][-1], 4, 4)


def test_init_from_starts_at_a_model_folders_weights_and_records_it(tmp_path):
    from safetensors.torch import load_file

    train(TrainConfig(steps=2, batch=4, checkpoint_every=2, warmup=1), tmp_path / "first")
    source = export_model(tmp_path / "first", tmp_path / "source", command="first")
    # A learning rate of 1e-12 leaves the weights where they started, to float32 rounding.
    config = TrainConfig(steps=1, batch=4, warmup=1, seed=1, lr=1e-12, init_from=str(tmp_path / "source"))
    train(config, tmp_path / "second")
    start = {k: v.float() for k, v in load_file(tmp_path / "source" / WEIGHTS).items()}
    for kind in ("model", "ema"):
        trained = load_file(tmp_path / "second" / f"{kind}.safetensors")
        assert all(torch.allclose(trained[k], start[k], atol=1e-6) for k in start), kind
    scratch = new_unet(config.seed).state_dict()  # where seed 1 would have started without init_from
    assert not all(torch.allclose(scratch[k], start[k], atol=1e-3) for k in start)
    card = export_model(tmp_path / "second", tmp_path / "model", command="second")
    assert card["init_from"]["sha256"] == source["sha256"]
    assert card["init_from"]["steps_done"] == 2 and card["init_from"]["command"] == "first"
    assert card["train_config"]["init_from"] == str(tmp_path / "source")


def test_init_from_refuses_a_folder_without_testbed_weights(tmp_path):
    from diffusers import UNet2DModel

    with pytest.raises(HSpaceError, match="no .*diffusion_pytorch_model.safetensors"):
        train(TrainConfig(steps=1, batch=2, init_from=str(tmp_path)), tmp_path / "ckpt")
    (tmp_path / "other" / "unet").mkdir(parents=True)
    UNet2DModel(**dict(UNET_CONFIG, block_out_channels=(24, 48, 96, 192))).save_pretrained(tmp_path / "other" / "unet")
    with pytest.raises(HSpaceError, match="not the testbed architecture"):
        train(TrainConfig(steps=1, batch=2, init_from=str(tmp_path / "other")), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "state.json").exists()
