"""The whole pipeline on the latent and text-conditional kinds: corpus, annotation of decoded images, PCA,
supervised and disentangled directions, evaluation and a bank, then editing from the bank; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from flows.bank import RebuildSettings, rebuild_bank
from flows.runner import run_flow
from hspace.bank import load_bank
from hspace.conditioning import Conditioning
from hspace.directions import top_bottom
from hspace.editing import edit
from hspace.inversion import invert
from hspace.models import load_model
from hspace.sampler import to_uint8
from storage.corpus import Corpus

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: bits depend on the thread count

ARGS = dict(
    samples=16,
    steps=4,
    eta=1.0,
    batch=8,
    seed=3,
    annotator="testbed",
    attributes=["smile", "hat"],
    k=4,
    thresholds={},
    disentangle={"smile": ["hat"]},
    pca_components=2,
    pca_directions=1,
    gamma=2.0,
    eval_samples=4,
    repeats=2,
)
KINDS = {
    "tiny-ldm": {},
    "tiny-sd": {"prompt": "a smiling face", "negative_prompt": "blurry", "guidance": 3.0},
}


@pytest.fixture(scope="module")
def banks(prefect_harness, tmp_path_factory):
    """One rebuilt bank per kind (corpus, annotate, PCA, eq. 11, eq. 12, Table I, publish)."""
    root = tmp_path_factory.mktemp("latent")
    made = {}
    for name, conditioning in KINDS.items():
        corpus, bank = str(root / f"{name}.zarr"), str(root / f"{name}-bank")
        result = run_flow(
            rebuild_bank, settings=RebuildSettings(bank=bank, corpus=corpus, model=name, **conditioning, **ARGS)
        )
        made[name] = (corpus, bank, result)
    return made


@pytest.mark.parametrize("name", list(KINDS))
def test_rebuild_bank_runs_end_to_end_and_a_rerun_publishes_nothing_new(banks, name):
    corpus_url, bank_url, result = banks[name]
    assert result["directions"] == ["smile", "hat", "smile-disentangled", "pca-0"]
    corpus = Corpus.open(corpus_url)
    model = load_model(name)
    assert corpus.read_x0().shape == (16, *model.image_shape) and model.image_shape == (3, 16, 16)
    assert corpus.read_h().shape == (16, 4, *model.h_shape)
    info = corpus.info()
    assert info["latent_shape"] == list(model.latent_shape)
    bank = load_bank(bank_url)
    expected = None if not KINDS[name] else Conditioning(**KINDS[name]).sampling()
    assert bank.conditioning == expected and info.get("conditioning") == expected
    for direction in result["directions"]:  # every direction carries its evaluation (Table I)
        assert set(bank[direction].evaluation) >= {"effect", "random", "attributes"}
    # eq. 11 by hand from the stored h (the conditional pass's, for the text kind) and the decoded images' scores.
    top, bottom = top_bottom(corpus.group["annotations/testbed/smile"][:], 4)
    h = corpus.read_h().astype(np.float64)
    assert np.allclose(bank.tensor("smile").numpy(), h[top].mean(0) - h[bottom].mean(0), atol=1e-5)
    again = run_flow(
        rebuild_bank, settings=RebuildSettings(bank=bank_url, corpus=corpus_url, model=name, **KINDS[name], **ARGS)
    )
    assert again["version"] == result["version"]


@pytest.mark.parametrize("name", list(KINDS))
def test_bank_edit_with_gamma_zero_is_the_unedited_sample_and_edits_change_it(banks, name, cli, tmp_path, capsys):
    _, bank_url, _ = banks[name]
    bank = load_bank(bank_url)
    model = load_model(name).conditioned(bank.sampling())
    plain = edit(model, [0, 1], {}, bank)
    assert np.array_equal(edit(model, [0, 1], {"smile": 0.0}, bank), plain)
    assert not np.array_equal(edit(model, [0, 1], {"smile": 4.0}, bank), plain)
    out = tmp_path / "grid.png"
    assert cli("bank", "edit", bank_url, "--model", name, "--seeds", "0,1", "--set", "smile=2", "--out", out) == 0
    assert out.is_file()


def test_a_bank_is_refused_for_a_model_sampling_with_another_prompt(banks, cli, tmp_path, capsys):
    _, bank_url, _ = banks["tiny-sd"]
    out = tmp_path / "grid.png"
    argv = ("bank", "edit", bank_url, "--model", "tiny-sd", "--seeds", "0", "--set", "smile=2", "--out", out)
    assert cli(*argv, "--guidance", "7") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was made with prompt 'a smiling face'" in err and "guidance 7" in err
    assert not out.exists()
    assert cli(*argv, "--edit-branch", "cond") == 0  # where the edit goes is an edit-time choice


def test_jacobian_directions_of_a_text_corpus_and_prompts_refused_on_an_unconditional_one(banks, cli, capsys):
    corpus_url, _, _ = banks["tiny-sd"]
    argv = ("--sample", "0", "--step", "1", "--k", "2", "--tol", "0.01", "--run", "text")
    assert cli("jacobian", corpus_url, *argv) == 0
    jacobian = Corpus.open(corpus_url).group["jacobian/text"]
    assert jacobian["directions"].shape[:3] == (1, 1, 2) and bool(jacobian["done"][:].all())
    ldm_corpus, _, _ = banks["tiny-ldm"]
    assert cli("evaluate", ldm_corpus, "--directions", "smile", "--prompt", "a face", "--samples", "2") == 1
    assert "unconditional model: leave out the prompt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "tiny-ldm", "--prompt", "a face"], "unconditional (latent kind)"),
        (["--model", "tiny-sd", "--guidance", "0.5"], "guidance must be a number >= 1"),
        (["--model", "tiny-sd", "--prompts", "PROMPTS"], "the prompt list has 2 prompts but there are 4 samples"),
    ],
)
def test_corpus_build_bad_input_is_one_line_and_creates_nothing(prefect_harness, cli, capsys, tmp_path, argv, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a face\nanother face\n")
    url = tmp_path / "c.zarr"
    argv = [str(prompts) if a == "PROMPTS" else a for a in argv]
    assert cli("corpus", "build", url, *argv, "--samples", "4", "--steps", "2", "--batch", "2", "--seed", "0") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not url.exists()


def test_a_prompt_list_is_recorded_one_per_sample(prefect_harness, cli, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a face\nanother face\n")
    url = tmp_path / "c.zarr"
    argv = ("corpus", "build", url, "--model", "tiny-sd", "--prompts", prompts, "--guidance", "2")
    assert cli(*argv, "--samples", "2", "--steps", "2", "--batch", "1", "--seed", "0", "--no-progress") == 0
    corpus = Corpus.open(str(url))
    assert corpus.spec.prompts == ("a face", "another face") and corpus.spec.conditioning["guidance"] == 2.0
    assert json.loads(json.dumps(corpus.info()))["prompts"] == "2 (one per sample)"


def test_a_text_corpus_resumes_to_the_bytes_of_an_uninterrupted_build(prefect_harness, cli, tmp_path, tree_bytes):
    whole, resumed = tmp_path / "whole.zarr", tmp_path / "resumed.zarr"
    argv = ("--model", "tiny-sd", "--prompt", "a face", "--guidance", "2", "--samples", "4", "--steps", "2")
    for url in (whole, resumed):
        assert cli("corpus", "build", url, *argv, "--batch", "2", "--seed", "0", "--no-progress") == 0
    # As if killed after shard 0: shard 1 not done and its h overwritten; the rerun regenerates it.
    corpus = Corpus.open(str(resumed), writable=True)
    corpus.group["done"][1] = False
    corpus.group["h"][2:4] = 0
    assert tree_bytes(resumed) != tree_bytes(whole)
    assert cli("corpus", "build", resumed, *argv, "--batch", "2", "--seed", "0", "--no-progress") == 0
    assert tree_bytes(resumed) == tree_bytes(whole)


def test_directions_invert_on_a_text_model_inverts_with_the_prompt(prefect_harness, cli, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    for i, picture in enumerate(pixels):
        Image.fromarray(picture).save(folder / f"{i}.png")
    out = tmp_path / "inverted.safetensors"
    argv = ("directions", "invert", "--steps", "3", "--images", folder, "--out", out, "--no-progress")
    assert cli(*argv, "--model", "tiny-sd", "--prompt", "a face", "--guidance", "2") == 0
    model = load_model("tiny-sd", conditioning=Conditioning(prompt="a face", guidance=2.0))
    expected = invert(model, pixels.transpose(0, 3, 1, 2), steps=3)
    stored = load_file(out)  # as tests/flows/test_inversion.py: the flow's threads round differently, by ~1e-6
    torch.testing.assert_close(stored["x_T"], expected.x_T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stored["h"], expected.h, rtol=1e-5, atol=1e-5)
    assert json.loads(safe_open(out, "pt").metadata()["hspace"])["conditioning"]["prompt"] == "a face"
    other = ("directions", "invert", "--steps", "3", "--images", folder, "--out", tmp_path / "other.safetensors")
    assert cli(*other, "--model", "tiny-ldm", "--prompt", "a face") == 1
    assert "unconditional (latent kind)" in capsys.readouterr().err


def test_rebuild_records_the_conditioning_only_where_given():
    # A bank rebuilt before prompts existed must rebuild to the same version: unset, they are not recorded.
    assert not {"prompt", "negative_prompt", "guidance"} & set(RebuildSettings(bank="b", corpus="c").record())
    recorded = RebuildSettings(bank="b", corpus="c", model="tiny-sd", prompt="a face").record()
    assert recorded["prompt"] == "a face" and "guidance" not in recorded


def test_a_latent_corpus_can_store_the_final_latents(prefect_harness, cli, capsys, tmp_path):
    url = tmp_path / "c.zarr"
    argv = ("--samples", "2", "--steps", "2", "--batch", "1", "--seed", "0", "--latents", "--no-progress")
    assert cli("corpus", "build", url, "--model", "tiny-ldm", *argv) == 0
    corpus = Corpus.open(str(url))
    model = load_model("tiny-ldm")
    latents = corpus.read_latents()
    assert latents.shape == (2, *model.latent_shape) and latents.dtype == np.float32
    decoded = to_uint8(model.decode(torch.from_numpy(latents), 1)).numpy()
    assert np.array_equal(decoded, corpus.read_x0())  # x0 is exactly these latents decoded
    assert cli("corpus", "verify", url, "--json", "--no-progress") == 0
    assert cli("corpus", "build", tmp_path / "p.zarr", "--model", "tiny", *argv) == 1
    assert "only a latent model's corpus can store latents" in capsys.readouterr().err
    assert not (tmp_path / "p.zarr").exists()
