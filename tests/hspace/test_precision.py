"""Precision in the core: ``LoadedModel.at_precision``, the bank's recorded sampler precision, and
``hspace.edit`` running at the bank's precision unless told.

Oracles: dtypes read off the U-Net's parameters; manifests read as JSON; edits compared bit for bit with
``hspace.sampler.sample`` on a model the test loads in that precision itself.
"""

from __future__ import annotations

import json

import pytest
import torch

from hspace.bank import Direction, load_bank, parse_meta, publish
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.models import load_model
from hspace.sampler import sample, to_uint8

T = 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unet_dtype(model) -> torch.dtype:
    return next(model.unet.parameters()).dtype


def smile(tiny) -> Direction:
    tensor = torch.randn((T, *tiny.h_shape), generator=torch.Generator().manual_seed(0))
    return Direction(name="smile", tensor=tensor, method="supervised", fingerprint=tiny.fingerprint)


def publish_at(url, tiny, precision=None) -> str:
    extra = {} if precision is None else {"precision": precision}
    return publish(url, [smile(tiny)], model_fingerprint=tiny.fingerprint, eta=1.0, **extra)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_at_precision_casts_a_copy_of_an_fp32_model(tiny, precision):
    cast = tiny.at_precision(precision)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert cast.precision == precision and unet_dtype(cast) == expected
    assert unet_dtype(tiny) == torch.float32 and tiny.precision == "fp32"  # the original is untouched
    assert cast.fingerprint == tiny.fingerprint and cast.name == tiny.name
    assert tiny.at_precision("fp32") is tiny and cast.at_precision(precision) is cast
    # The same weights as loading in that precision directly.
    direct = load_model("tiny", precision=precision)
    for (name, a), (_, b) in zip(cast.unet.state_dict().items(), direct.unet.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_at_precision_refuses_to_widen_or_cross_half_precisions(tiny):
    half = tiny.at_precision("bf16")
    for target in ("fp32", "fp16"):
        with pytest.raises(HSpaceError, match=r"loaded in bf16.*load the model in fp32") as error:
            half.at_precision(target)
        assert "\n" not in str(error.value)
    with pytest.raises(HSpaceError, match="precision must be one of fp32, bf16, fp16; got 'fp8'"):
        tiny.at_precision("fp8")


def test_a_bank_records_its_precision_and_older_banks_read_as_fp32(tmp_path, tiny):
    publish_at(str(tmp_path / "old"), tiny)  # as every bank before precisions existed: no precision given
    publish_at(str(tmp_path / "bf16"), tiny, "bf16")
    old_manifest = json.loads((tmp_path / "old" / "versions" / "v0001" / "manifest.json").read_text())
    new_manifest = json.loads((tmp_path / "bf16" / "versions" / "v0001" / "manifest.json").read_text())
    assert "precision" not in old_manifest["sampler"] and new_manifest["sampler"]["precision"] == "bf16"
    assert load_bank(str(tmp_path / "old")).precision == "fp32"
    assert load_bank(str(tmp_path / "bf16")).precision == "bf16"
    assert load_bank(str(tmp_path / "bf16")).info()["sampler"]["precision"] == "bf16"
    # fp32 given explicitly is the same content as before precisions existed: the same version, nothing new.
    assert publish_at(str(tmp_path / "old"), tiny, "fp32") == "v0001"
    # The precision is content: the same directions in another precision are a new version.
    assert publish_at(str(tmp_path / "old"), tiny, "fp16") == "v0002"
    with pytest.raises(HSpaceError, match="precision must be one of"):
        publish_at(str(tmp_path / "bad"), tiny, "fp8")
    assert not (tmp_path / "bad").exists()


def test_an_exported_bank_keeps_its_precision(tmp_path, tiny):
    publish_at(str(tmp_path / "bank"), tiny, "fp16")
    bank = load_bank(str(tmp_path / "bank"))
    bank.export(str(tmp_path / "copy"))
    assert load_bank(str(tmp_path / "copy")).precision == "fp16"
    bank.export(str(tmp_path / "x.safetensors"))
    meta = json.loads((tmp_path / "x.json").read_text())
    arguments = parse_meta(meta, {"smile": bank.tensor("smile")})  # the seal holds with the precision in it
    assert arguments["precision"] == "fp16"
    meta["sampler"]["precision"] = "bf16"  # edited after export: refused
    with pytest.raises(HSpaceError, match="changed after export"):
        parse_meta(meta, {"smile": bank.tensor("smile")})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_edit_runs_at_the_banks_precision_unless_told(tmp_path, tiny, precision):
    publish_at(str(tmp_path / "bank"), tiny, precision)
    bank = load_bank(str(tmp_path / "bank"))
    delta = 2.0 * bank.tensor("smile")
    at_bank = edit(tiny, [4, 5], {"smile": 2.0}, bank)
    own = load_model("tiny", precision=precision)
    expected = to_uint8(sample(own, [4, 5], steps=T, eta=1.0, delta=delta, capture=False).images).numpy()
    assert (at_bank == expected).all()
    assert (edit(own, [4, 5], {"smile": 2.0}, bank) == expected).all()  # a model already in it: no cast
    told = edit(tiny, [4, 5], {"smile": 2.0}, bank, precision="fp32")
    in_fp32 = to_uint8(sample(tiny, [4, 5], steps=T, eta=1.0, delta=delta, capture=False).images).numpy()
    assert (told == in_fp32).all()
    # Half precision moves some pixels, but not far.
    assert (at_bank != told).any()
    assert abs(at_bank.astype(int) - told.astype(int)).mean() < 8
    assert unet_dtype(tiny) == torch.float32  # edit cast a copy


def test_edit_refuses_a_half_precision_model_for_an_fp32_bank(tmp_path, tiny):
    publish_at(str(tmp_path / "bank"), tiny)
    bank = load_bank(str(tmp_path / "bank"))
    with pytest.raises(HSpaceError, match=r"loaded in bf16.*load the model in fp32"):
        edit(tiny.at_precision("bf16"), [0], {"smile": 1.0}, bank)
    with pytest.raises(HSpaceError, match="precision must be one of"):
        edit(tiny, [0], {"smile": 1.0}, bank, precision="fp8")
