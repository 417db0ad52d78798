"""Integrity (issue 19): every chunk checksummed, `hspace corpus verify [--repair]`, stale results, an old-schema
corpus still read, and a run-time failure in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.groups import DamagedChunk
from storage.pca_runs import PCARun

SETTINGS = dict(samples=8, steps=3, batch=4, seed=0)
BUILD = ["--model", "tiny", "--samples", "8", "--steps", "3", "--batch", "4", "--seed", "0", "--no-progress"]
READ = {"h": Corpus.read_h, "x0": Corpus.read_x0, "seed": Corpus.read_seeds}


def flip_byte(url: str, array: str, shard: int) -> Path:
    """Flip one bit in the middle of the (only) chunk file of ``array`` at shard ``shard``."""
    first = Path(url) / array / "c" / str(shard)  # a file for 1-D arrays, a folder of one file otherwise
    files = [first] if first.is_file() else sorted(p for p in first.rglob("*") if p.is_file())
    assert len(files) == 1, files
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x10
    files[0].write_bytes(bytes(data))
    return files[0]


def verify_json(cli, capsys, url: str, *flags: str) -> tuple[int, dict]:
    status = cli("corpus", "verify", url, "--json", "--no-progress", *flags)
    return status, json.loads(capsys.readouterr().out)


def chunk_codecs(array: zarr.Array) -> list[str]:
    """The names of the codecs each chunk goes through (inside the shard for a sharded array)."""
    codecs = array.metadata.to_dict()["codecs"]
    if codecs[0]["name"] == "sharding_indexed":
        codecs = codecs[0]["configuration"]["codecs"]
    return [c["name"] for c in codecs]


def test_every_array_of_a_new_corpus_is_checksummed(corpus_factory):
    group = zarr.open_group(corpus_factory(**SETTINGS), mode="r")
    for name in ("h", "x0", "seed", "done", "timestep"):
        assert chunk_codecs(group[name]) == ["bytes", "zstd", "crc32c"], name
    assert Corpus.open(corpus_factory(**SETTINGS)).checksummed


@pytest.mark.parametrize("array", ["h", "x0", "seed"])
def test_a_flipped_byte_is_found_named_on_read_and_repaired_to_the_same_bytes(
    prefect_harness, corpus_factory, copy_corpus, tree_bytes, cli, capsys, array
):
    clean = corpus_factory(**SETTINGS)
    url = copy_corpus(clean)
    flip_byte(url, array, 1)

    status, report = verify_json(cli, capsys, url)
    assert status == 1
    assert [(d["array"], d["shard"], d["where"]) for d in report["damaged"]] == [(array, 1, "shard 1 (samples 4..7)")]
    assert report["repaired"] is None and report["checksummed"] is True

    corpus = Corpus.open(url)
    READ[array](corpus, slice(0, 4))  # shard 0 still reads
    with pytest.raises(DamagedChunk, match=rf"array '{array}', shard 1 \(samples 4..7\)") as caught:
        READ[array](corpus)
    assert caught.value.shard == 1 and caught.value.samples == (4, 8)

    status, report = verify_json(cli, capsys, url, "--repair")
    assert status == 1 and report["repaired"]["shards_to_rebuild"] == [1]
    assert not bool(Corpus.open(url).done_shards()[1])
    assert cli("corpus", "build", url, *BUILD) == 0
    assert cli("corpus", "verify", url, "--no-progress") == 0
    assert tree_bytes(url) == tree_bytes(clean)


def test_a_damaged_done_flag_and_timestep_are_found_and_repaired(
    prefect_harness, corpus_factory, copy_corpus, cli, capsys, tree_bytes
):
    clean = corpus_factory(**SETTINGS)
    url = copy_corpus(clean)
    flip_byte(url, "done", 0)
    timestep = Path(url) / "timestep" / "c" / "0"
    timestep.write_bytes(timestep.read_bytes()[:-1] + bytes([timestep.read_bytes()[-1] ^ 1]))

    status, report = verify_json(cli, capsys, url, "--repair")
    assert status == 1
    assert sorted((d["array"], d["shard"]) for d in report["damaged"]) == [("done", 0), ("timestep", None)]
    assert report["repaired"]["timestep_rewritten"] and report["repaired"]["shards_to_rebuild"] == [0]
    assert report["stale"] == {}  # the samples were not damaged: no result needs recomputing
    assert cli("corpus", "build", url, *BUILD) == 0
    assert tree_bytes(url) == tree_bytes(clean)


def test_a_repair_marks_results_stale_and_they_are_refused_until_recomputed(
    prefect_harness, corpus_factory, copy_corpus, cli, capsys
):
    url = copy_corpus(corpus_factory(**SETTINGS))
    assert cli("pca", "fit", url, "--components", "2", "--run", "r", "--no-progress") == 0
    flip_byte(url, "h", 0)

    status, report = verify_json(cli, capsys, url, "--repair")
    assert status == 1 and report["repaired"]["stale"] == ["pca/r"]
    assert "shards 0" in report["stale"]["pca/r"]
    cli("corpus", "info", url, "--json")
    assert json.loads(capsys.readouterr().out)["stale"] == report["stale"]
    with pytest.raises(HSpaceError, match="pca/r of the corpus at .* is stale .*rebuild-bank"):
        PCARun.open(url, "r")
    assert cli("corpus", "build", url, *BUILD) == 0  # the shard regenerated; the run made before stays stale
    assert cli("pca", "fit", url, "--components", "2", "--run", "r", "--no-progress") == 1
    assert "is stale" in capsys.readouterr().err

    corpus = Corpus.open(url, writable=True)
    assert corpus.drop_stale() == ["pca/r"]
    assert "pca/r" not in zarr.open_group(url, mode="r") and Corpus.open(url).stale() == {}


def test_a_damaged_result_chunk_is_found_and_its_result_marked_stale(
    prefect_harness, corpus_factory, copy_corpus, cli, capsys
):
    url = copy_corpus(corpus_factory(**SETTINGS))
    assert cli("pca", "fit", url, "--components", "2", "--run", "r", "--no-progress") == 0
    files = sorted(
        p for p in (Path(url) / "pca" / "r" / "components").rglob("*") if p.is_file() and p.name != "zarr.json"
    )
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 1
    files[0].write_bytes(bytes(data))

    status, report = verify_json(cli, capsys, url, "--repair")
    assert status == 1
    assert [d["array"] for d in report["damaged"]] == ["pca/r/components"]
    assert report["repaired"]["shards_to_rebuild"] == [] and list(report["stale"]) == ["pca/r"]


def test_an_old_schema_corpus_opens_with_a_note_and_reads_the_same(corpus_factory, copy_corpus, capsys):
    """A schema-version-1 corpus: the same arrays without the crc32c codec (as hspace wrote them before)."""
    clean = corpus_factory(**SETTINGS)
    url = copy_corpus(clean)
    group = zarr.open_group(url, mode="r+")
    for name in ("h", "x0", "seed", "done", "timestep"):
        old = group[name]
        data, dims = old[...], old.metadata.dimension_names
        kwargs = {"shards": old.shards} if old.shards is not None else {}
        group.create_array(
            name, shape=old.shape, dtype=old.dtype, chunks=old.chunks, dimension_names=dims, overwrite=True, **kwargs
        )[...] = data
        assert chunk_codecs(group[name]) == ["bytes", "zstd"], name
    attrs = dict(group.attrs["hspace"])
    group.attrs.update({"hspace": {**attrs, "schema_version": 1}})

    capsys.readouterr()
    corpus = Corpus.open(url)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "before chunk checksums (schema version 1)" in err
    assert not corpus.checksummed and corpus.info()["checksummed"] is False
    assert np.array_equal(corpus.read_h(), Corpus.open(clean).read_h())
    Corpus.open(url)
    assert capsys.readouterr().err == ""  # once per corpus and process


def hspace_process(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_a_damaged_chunk_during_pca_fit_is_one_line_without_a_traceback(corpus_factory, copy_corpus):
    url = copy_corpus(corpus_factory(**SETTINGS))
    flip_byte(url, "h", 1)

    result = hspace_process("pca", "fit", url, "--components", "2", "--no-progress")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hspace: error: damaged data in the corpus at ")
    assert "array 'h', shard 1 (samples 4..7)" in lines[0] and "corpus verify" in lines[0]

    verbose = hspace_process("--verbose", "pca", "fit", url, "--components", "2", "--no-progress")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == lines[0]


def test_failures_that_are_not_hspace_errors_are_one_line_unless_verbose(monkeypatch, capsys):
    from distributed.scheduler import KilledWorker

    import flows.cli
    import flows.cli_corpus

    def killed(args):
        raise KilledWorker("generate-shard-3", "tcp://127.0.0.1:1234", 3)

    monkeypatch.setattr(flows.cli_corpus, "_info", killed)
    assert flows.cli.main(["corpus", "info", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a Dask worker died too often while running generate-shard-3" in err

    def broken(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(flows.cli_corpus, "_info", broken)
    assert flows.cli.main(["corpus", "info", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: disk on fire" in err and "--verbose" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        flows.cli.main(["--verbose", "corpus", "info", "x"])


def test_a_pca_run_made_before_checksums_resumes(prefect_harness, corpus_factory, copy_corpus, cli, capsys):
    """Runs record the corpus settings they were made from; those made before checksums say schema version 1."""
    url = copy_corpus(corpus_factory(**SETTINGS))
    assert cli("pca", "fit", url, "--components", "2", "--run", "r", "--no-progress") == 0
    group = zarr.open_group(url, mode="r+")
    attrs = dict(group["pca/r"].attrs["hspace"])
    assert attrs["corpus"]["schema_version"] == 1
    group.attrs.update({"hspace": {**group.attrs["hspace"], "schema_version": 1}})  # and an unchecksummed corpus
    assert cli("pca", "fit", url, "--components", "2", "--run", "r", "--no-progress") == 0, capsys.readouterr().err
