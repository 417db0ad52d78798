"""`hspace pca`, `hspace jacobian` and `hspace edit`: results, the picture grid, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import flows.cli
from hspace.directions import random_direction_like
from hspace.render import labeled_grid
from hspace.sampler import derive_seeds, sample, to_uint8
from storage.corpus import Corpus
from storage.jacobian_runs import JacobianRun, read_jacobian_directions
from storage.pca_runs import read_pca_directions

SAMPLES, STEPS, BASE_SEED = 8, 4, 2


@pytest.fixture(autouse=True)
def registered():
    # The commands these tests run (pca, jacobian, edit) live in their own modules since the CLI split.
    assert {"flows.cli_pca", "flows.cli_jacobian", "flows.cli_edit"} <= set(flows.cli.COMMAND_MODULES)


@pytest.fixture
def url(corpus_factory, copy_corpus) -> str:
    return copy_corpus(corpus_factory(samples=SAMPLES, steps=STEPS, batch=4, seed=BASE_SEED))


def test_pca_fit_and_info(prefect_harness, url, capsys, tmp_path, cli):
    status = cli("pca", "fit", url, "--components", "3", "--batch-size", "4", "--json", "--no-progress")
    out = capsys.readouterr().out
    assert status == 0
    fitted = json.loads(out)
    assert fitted["complete"] and fitted["components"] == 3 and fitted["steps"] == list(range(STEPS))
    status = cli("pca", "info", url, "--json", "--plot", str(tmp_path / "ev.png"))
    out = capsys.readouterr().out
    info = json.loads(out)
    assert status == 0 and info["run"] == "default" and len(info["explained_variance_ratio"]) == STEPS
    ratio = np.array(info["explained_variance_ratio"])
    assert ratio.shape == (STEPS, 3) and (np.diff(ratio, axis=1) <= 0).all() and (ratio.sum(1) < 1).all()
    assert Image.open(tmp_path / "ev.png").size == (480, 320)
    assert not list(tmp_path.glob(".*.tmp*"))  # staging files of hspace.files.atomic_write
    status = cli("pca", "info", url)
    out = capsys.readouterr().out
    assert status == 0 and "explained_variance_ratio_total" in out


def test_jacobian_json_reports_what_is_stored(prefect_harness, url, capsys, cli):
    status = cli(
        "jacobian", url, "--sample", "2", "--step", "1", "--k", "2", "--max-iter", "3", "--json", "--no-progress"
    )
    out = capsys.readouterr().out
    assert status == 0
    info = json.loads(out)
    assert info["run"] == "sample2-step1-k2" and info["done"] == 1
    cell = JacobianRun.open(url, "sample2-step1-k2").read(2, 1)
    assert info["results"][0]["singular_values"] == [float(s) for s in cell.singular_values]


def test_edit_grid_rows_are_directions_and_gamma_zero_is_the_corpus_sample(
    prefect_harness, url, capsys, tmp_path, tiny, cli
):
    assert cli("pca", "fit", url, "--components", "2", "--batch-size", "4", "--no-progress") == 0
    out = tmp_path / "grid.png"
    status = cli(
        "edit",
        url,
        "--pca",
        "default",
        "--directions",
        "1,0",
        "--show",
        "5,0",
        "--gammas",
        "-3,3",
        "--random-baseline",
        "--out",
        str(out),
    )
    stdout = capsys.readouterr().out
    assert status == 0 and "3 directions x 2 samples x 3 gammas" in stdout
    # Oracle: the corpus's own x0 at gamma 0; hspace.sample along the stored directions elsewhere.
    v = torch.from_numpy(read_pca_directions(url, "default", [1, 0]))
    directions = [v[0], v[1], random_direction_like(v[0], torch.Generator().manual_seed(0))]
    x0 = Corpus.open(url).read_x0()
    gammas = [-3.0, 0.0, 3.0]
    cells = np.zeros((3, 6, 3, 16, 16), dtype=np.uint8)
    for r, direction in enumerate(directions):
        for s, sample_id in enumerate((5, 0)):
            for g, gamma in enumerate(gammas):
                if gamma == 0:
                    cells[r, s * 3 + g] = x0[sample_id]
                else:
                    seed = derive_seeds(BASE_SEED, sample_id, sample_id + 1)
                    edited = sample(tiny, seed, steps=STEPS, eta=1.0, delta=gamma * direction, capture=False)
                    cells[r, s * 3 + g] = to_uint8(edited.images).numpy()[0]
    expected = labeled_grid(
        cells, ["pca 1", "pca 0", "random"], ["-3", "+0", "+3"] * 2, column_groups=["sample 5"] * 3 + ["sample 0"] * 3
    )
    picture = Image.open(out)
    # Geometry of labeled_grid's docstring: 16 px images enlarged 4x, pad 2, labels of <= 6 characters.
    assert picture.size == (4 + 6 * 6 + 2 + 6 * (64 + 2), 12 * 2 + 2 + 2 + 3 * (64 + 2))
    assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(expected))
    assert (cells[0, 0] != cells[0, 1]).any()  # the edit changes the picture


def test_edit_along_jacobian_directions_applies_them_at_every_step(prefect_harness, url, tmp_path, tiny, cli):
    assert (
        cli(
            "jacobian",
            url,
            "--sample",
            "3",
            "--step",
            "2",
            "--k",
            "2",
            "--max-iter",
            "3",
            "--run",
            "j",
            "--no-progress",
        )
        == 0
    )
    out = tmp_path / "jac.png"
    status = cli(
        "edit",
        url,
        "--jacobian",
        "j",
        "--sample",
        "3",
        "--step",
        "2",
        "--directions",
        "0",
        "--gammas",
        "8",
        "--out",
        str(out),
    )
    assert status == 0
    found = torch.from_numpy(read_jacobian_directions(url, "j", 3, 2, [0]))[0]
    seed = derive_seeds(BASE_SEED, 3, 4)
    edited = sample(tiny, seed, steps=STEPS, eta=1.0, delta=8.0 * found.expand(STEPS, *found.shape), capture=False)
    cells = np.stack([Corpus.open(url).read_x0(slice(3, 4))[0], to_uint8(edited.images).numpy()[0]])[None]
    expected = labeled_grid(cells, ["jac 0"], ["+0", "+8"], column_groups=["sample 3"] * 2)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(expected))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pca", "info", "{url}", "--run", "nope"], "no PCA run 'nope'"),
        (["pca", "fit", "{url}", "--components", "2", "--run", "a/b"], "invalid run name"),
        (["pca", "fit", "{url}", "--components", "2", "--step", "0,9"], "step 9 is out of range"),
        (["pca", "fit", "{tmp}/none", "--components", "2"], "no corpus at"),
        (["jacobian", "{url}", "--sample", "99", "--step", "0", "--k", "2"], "sample 99 is out of range"),
        (["jacobian", "{url}", "--sample", "0", "--step", "4", "--k", "2"], "step 4 is out of range"),
        (
            ["jacobian", "{url}", "--sample", "0", "--step", "0", "--k", "2", "--mask", "{tmp}/mask.jpg"],
            "is a JPEG file; give a PNG",
        ),
        (
            ["jacobian", "{url}", "--sample", "0", "--step", "0", "--k", "2", "--mask", "{tmp}/black.png"],
            "has no white pixel",
        ),
        (["edit", "{url}", "--pca", "nope", "--directions", "0", "--out", "{tmp}/g.png"], "no PCA run 'nope'"),
        (["edit", "{url}", "--pca", "half", "--directions", "0", "--out", "{tmp}/g.png"], "is not complete"),
        (["edit", "{url}", "--jacobian", "j", "--directions", "0", "--out", "{tmp}/g.png"], "needs --sample ID"),
        (
            ["edit", "{url}", "--pca", "half", "--directions", "0", "--show", "8", "--out", "{tmp}/g.png"],
            "sample 8 is out of range",
        ),
        (["edit", "{url}", "--pca", "half", "--directions", "0", "--out", "{tmp}/no/g.png"], "does not exist"),
        (["edit", "{url}", "--pca", "half", "--directions", "0", "--out", "{tmp}/g.jpg"], "must name a .png"),
    ],
)
def test_bad_input_exits_1_with_one_line_and_writes_nothing(url, capsys, tmp_path, args, message, cli, tree_bytes):
    from tasks.pca import fit_pca_step, prepare_pca

    prepare_pca(url, components=2, run="half", batch_size=4)
    fit_pca_step.fn(url, "half", 0)  # steps 1..3 missing
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "mask.jpg", format="JPEG")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    before, files_before = tree_bytes(url), sorted(p.name for p in tmp_path.iterdir())
    status = cli(*[a.format(url=url, tmp=tmp_path) for a in args])
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    assert err.startswith("hspace: error: ") and err.count("\n") == 1 and message in err, err
    assert tree_bytes(url) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before
