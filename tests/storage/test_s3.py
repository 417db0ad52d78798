"""Corpora on s3:// URLs, against a real S3 API (moto's server on loopback, through s3fs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.cli import main
from hspace.evaluate import EvaluationResult
from storage.corpus import Corpus
from tasks.bank import report_markdown, write_report
from tasks.corpus import generate_shards, prepare_corpus

SETTINGS = dict(model="tiny", samples=6, steps=4, eta=1.0, batch=2, seed=3, dtype="float16", device="cpu")
BUILD = ["corpus", "build", "--model", "tiny", "--samples", "4", "--steps", "2", "--batch", "2", "--seed", "0"]


def test_a_corpus_on_s3_holds_what_a_local_one_holds_and_resumes(s3_bucket, corpus_factory):
    url = f"{s3_bucket}/runs/c.zarr"
    prepare_corpus(out=url, **SETTINGS)
    generate_shards.fn(url, [0, 2], "cpu")
    assert list(Corpus.open(url).done_shards()) == [True, False, True]
    generate_shards.fn(url, Corpus.open(url).missing_shards(), "cpu")  # the resume writes only shard 1
    on_s3 = Corpus.open(url)
    local = Corpus.open(corpus_factory(samples=6, steps=4, batch=2, seed=3))
    assert on_s3.spec == local.spec and on_s3.info()["shards_done"] == 3
    for read in ("read_h", "read_x0", "read_seeds"):
        assert np.array_equal(getattr(on_s3, read)(), getattr(local, read)())


def test_xarray_opens_a_corpus_on_s3_with_named_dimensions(s3_bucket):
    import xarray as xr

    url = f"{s3_bucket}/c.zarr"
    prepare_corpus(out=url, **SETTINGS)
    generate_shards.fn(url, [0, 1, 2], "cpu")
    h = xr.open_zarr(url, consolidated=False)["h"]
    assert h.dims == ("sample", "step", "h_channel", "h_height", "h_width")
    assert np.array_equal(h.values, Corpus.open(url).read_h())


def test_a_bucket_that_does_not_exist_is_one_line_and_creates_nothing(s3_bucket, capsys):
    assert main([*BUILD, "s3://hspace-no-such-bucket/c.zarr"]) == 1
    err = capsys.readouterr().err.strip()
    assert "The specified bucket does not exist" in err and "\n" not in err


def test_an_s3_url_without_s3fs_says_which_extra_to_install(tmp_path):
    # s3fs made unimportable in a fresh process, as on an install without the s3 extra.
    code = "import sys; sys.modules['s3fs'] = None; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, *BUILD, "s3://bucket/c.zarr"],
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "hspace: error: s3://bucket/c.zarr needs s3fs, which is not installed: pip install 'hspace[s3]'"
    )


def test_refused_credentials_are_one_line_and_create_nothing(s3_server_checking_credentials, monkeypatch, capsys):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server_checking_credentials)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unknown")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()
    assert main([*BUILD, "s3://hspace-any/c.zarr"]) == 1
    err = capsys.readouterr().err.strip()
    assert "access refused" in err and "AWS_ACCESS_KEY_ID" in err and "\n" not in err


def test_a_listing_shows_what_another_process_wrote_since(s3_bucket):
    """No listing cache on S3: workers and other runs write the corpus and the bank while a process holds its
    filesystem (s3fs's cache would keep the first listing of a folder for as long as the process lives)."""
    import s3fs
    import zarr
    from zarr.storage import FsspecStore

    from hspace.files import storage_options, url_filesystem

    fs, root = url_filesystem(f"{s3_bucket}/bank/versions")
    elsewhere = s3fs.S3FileSystem(skip_instance_cache=True)  # another process's filesystem
    elsewhere.pipe(f"{root}/v0001/manifest.json", b"{}")
    assert fs.ls(root, detail=False) == [f"{root}/v0001"]
    elsewhere.pipe(f"{root}/v0002/manifest.json", b"{}")
    assert sorted(fs.ls(root, detail=False)) == [f"{root}/v0001", f"{root}/v0002"]
    elsewhere.pipe(f"{s3_bucket.removeprefix('s3://')}/c.zarr/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')
    url = f"{s3_bucket}/c.zarr"  # the corpus's Zarr store is opened with the same options (storage.corpus)
    corpus = zarr.open_group(FsspecStore.from_url(url, storage_options=storage_options(url)), mode="r")
    assert list(corpus.group_keys()) == []
    elsewhere.pipe(
        f"{s3_bucket.removeprefix('s3://')}/c.zarr/evaluations/zarr.json", b'{"zarr_format": 3, "node_type": "group"}'
    )
    assert list(corpus.group_keys()) == ["evaluations"]


REBUILD = [
    "rebuild-bank",
    "--model",
    "tiny",
    "--samples",
    "24",
    "--steps",
    "30",
    "--batch",
    "2",
    "--seed",
    "4",
    "--attributes",
    "smile,hat",
    "--k",
    "4",
    "--pca-components",
    "2",
    "--pca-directions",
    "1",
    "--eval-samples",
    "4",
    "--repeats",
    "2",
    "--no-progress",
]


@pytest.mark.slow
def test_rebuild_bank_on_s3_with_two_workers_killed_mid_corpus_and_mid_evaluation_equals_an_uninterrupted_one(
    s3_bucket, use_prefect_server, tmp_path
):
    """Corpus and bank on S3, corpus and evaluation on a 2-worker Dask cluster reporting to the local Prefect
    server. SIGKILL while the corpus is part done, rerun; then, the evaluation and the bank removed, SIGKILL
    while the evaluation is part done, rerun: each rerun publishes the uninterrupted run's content hash."""
    import s3fs

    from hspace.bank import load_bank

    corpus, bank = f"{s3_bucket}/c.zarr", f"{s3_bucket}/bank"
    # 8 evaluation passes of one sample each, one per task: a kill can land between them.
    command = [*REBUILD, bank, "--corpus", corpus, "--workers", "2", "--eval-batch", "1", "--eval-block", "1"]
    assert main(command) == 0
    uninterrupted = load_bank(bank).info()["content_sha256"]
    s3 = s3fs.S3FileSystem()
    s3.rm(corpus.removeprefix("s3://"), recursive=True)
    s3.rm(bank.removeprefix("s3://"), recursive=True)

    done = kill_part_way(command, lambda group: group["done"][:], tmp_path / "corpus.log")
    assert 2 <= done.sum() < done.size == 12, f"the corpus was not caught part-way: done={done}"
    assert main(command) == 0
    assert load_bank(bank).info()["content_sha256"] == uninterrupted

    s3.rm(bank.removeprefix("s3://"), recursive=True)
    s3.rm(f"{corpus.removeprefix('s3://')}/evaluations", recursive=True)

    def evaluation_done(group) -> np.ndarray:
        (key,) = list(group["evaluations"].group_keys())
        return group["evaluations"][key]["done"][:]

    done = kill_part_way(command, evaluation_done, tmp_path / "evaluation.log")
    assert 2 <= done.sum() < done.size == 8, f"the evaluation was not caught part-way: done={done}"
    assert main(command) == 0
    assert load_bank(bank).info()["content_sha256"] == uninterrupted


def kill_part_way(command: list[str], flags: Callable[[Any], np.ndarray], log: Path) -> np.ndarray:
    """Run the CLI in a process group, SIGKILL it once ``flags(corpus group)`` has two set; return them then.

    The corpus is read with hspace's own store options, which keep no listing cache: other processes write it,
    and a cached listing of a group (made before the evaluation's was created) would never show it.
    """
    import zarr

    from hspace.files import storage_options

    corpus = command[command.index("--corpus") + 1]
    store = zarr.storage.FsspecStore.from_url(corpus, storage_options=storage_options(corpus), read_only=True)
    with log.open("wb") as output:  # a file, not a pipe: a full pipe would stop the process
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *command], stdout=output, stderr=output, start_new_session=True
        )
        done = np.zeros(1, dtype=bool)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(Exception):  # not created yet
                done = flags(zarr.open_group(store, mode="r"))
            if done.sum() >= 2:
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):  # it ended: the assertion below says so, with its log
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if done.sum() < 2 or done.all():
        print(log.read_text(errors="replace")[-20000:])
    return done


def table_one() -> EvaluationResult:
    """A small Table I (2 directions and their random twins, 2 attributes, 2 repeats) with fixed numbers."""
    effects = np.arange(16, dtype=np.float64).reshape(2, 4, 2) / 10
    return EvaluationResult(
        rows=("smile", "hat", "random(smile)", "random(hat)"),
        attributes=("smile", "hat"),
        effects=effects,
        abs_effects=np.abs(effects),
        scale=np.array([1.0, 2.0]),
    )


def test_an_evaluation_report_on_s3_is_written_whole_and_its_picture_linked_for_the_ui(s3_bucket, tmp_path):
    """Issue 18: the report's heatmap is shown in the Prefect artifact through a signed link when the report is on
    a store with URLs (fetched here over plain HTTP, as a browser would), and named, not linked, when it is local."""
    import urllib.request

    import s3fs

    result = table_one()
    files = write_report(result, f"{s3_bucket}/reports/run-1")
    assert files == [f"{s3_bucket}/reports/run-1/evaluation.{ext}" for ext in ("csv", "md", "png")]
    fs = s3fs.S3FileSystem()
    local = write_report(result, str(tmp_path / "report"))
    for remote, here in zip(files, local, strict=True):
        assert fs.cat_file(remote) == Path(here).read_bytes()

    markdown = report_markdown(result, files)
    assert markdown.startswith(result.to_markdown("std"))
    link = markdown.split("![Table I heatmap](", 1)[1].split(")", 1)[0]
    assert link.startswith("http") and "Signature" in link
    with urllib.request.urlopen(link, timeout=30) as response:  # noqa: S310 -- the signed moto URL
        assert response.read() == (tmp_path / "report" / "evaluation.png").read_bytes()

    here = report_markdown(result, local)
    assert "](" not in here and f"`{local[2]}` (a local file" in here
