"""An S3 store that goes away for a while mid-run (moto's server behind conftest's OutageProxy): waited for, and
past the retries one line naming the corpus, with nothing marked done that is not complete."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hspace.errors import HSpaceError
from hspace.files import S3_MAX_ATTEMPTS, reachable, storage_options
from storage.corpus import Corpus

SETTINGS = dict(samples=8, steps=2, batch=2, seed=0)
BUILD = ["corpus", "build", "--model", "tiny", "--no-progress"] + [f"--{k}={v}" for k, v in SETTINGS.items()]
# A request for the third of four shards (zarr reads a shard before writing it): the store goes away on it.
MID_RUN = b"/c.zarr/h/c/2/"
OUTAGE_S = 4.0
# botocore's default before hspace set its own (legacy mode, 5 attempts) waits out 4 s 9 times in 10, 16 s never;
# hspace's S3_MAX_ATTEMPTS fails to wait out 16 s 3 times in 10,000 (random backoff: a 10^6-draw simulation).
LONG_OUTAGE_S = 16.0


def same_samples(corpus: Corpus, reference: Corpus, shards: np.ndarray) -> bool:
    return all(
        np.array_equal(
            getattr(corpus, read)(slice(*corpus.spec.shard_range(k))),
            getattr(reference, read)(slice(*corpus.spec.shard_range(k))),
        )
        for k in map(int, np.flatnonzero(shards))
        for read in ("read_h", "read_x0", "read_seeds")
    )


@pytest.mark.parametrize("outage", [OUTAGE_S, pytest.param(LONG_OUTAGE_S, marks=pytest.mark.slow)])
def test_a_build_waits_out_an_outage_and_equals_an_uninterrupted_one(
    s3_bucket, s3_outage, prefect_harness, cli, capsys, corpus_factory, outage
):
    url = f"{s3_bucket}/c.zarr"
    s3_outage.stop_after(MID_RUN, seconds=outage)
    started = time.monotonic()
    assert cli(*BUILD, url) == 0, capsys.readouterr().err
    assert s3_outage.outages == 1 and time.monotonic() - started > outage
    corpus, reference = Corpus.open(url), Corpus.open(corpus_factory(**SETTINGS))
    assert corpus.done_shards().all() and same_samples(corpus, reference, reference.done_shards())


def test_reading_a_corpus_waits_out_an_outage(s3_bucket, s3_outage, corpus_factory):
    from tasks.corpus import generate_shards, prepare_corpus

    url = f"{s3_bucket}/c.zarr"
    prepare_corpus(out=url, model="tiny", samples=8, steps=2, eta=1.0, batch=2, seed=0, dtype="float16", device="cpu")
    generate_shards.fn(url, [0, 1, 2, 3], "cpu")
    s3_outage.stop_after(b"/c.zarr/h/c/1/", seconds=OUTAGE_S)
    h = Corpus.open(url).read_h()
    assert s3_outage.outages == 1
    assert np.array_equal(h, Corpus.open(corpus_factory(**SETTINGS)).read_h())


def test_an_outage_past_the_retries_is_one_line_and_a_rerun_completes_the_corpus(
    s3_bucket, s3_outage, prefect_harness, cli, capsys, monkeypatch, corpus_factory
):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the user's own retry budget wins: about a second here
    url = f"{s3_bucket}/c.zarr"
    s3_outage.stop_after(MID_RUN)  # down until started again
    assert cli(*BUILD, url) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after Prefect's own log of the failed flow run
    assert err.startswith(f"hspace: error: cannot reach {url} (") and "rerun the same command" in err
    s3_outage.start()
    corpus, reference = Corpus.open(url), Corpus.open(corpus_factory(**SETTINGS))
    done = corpus.done_shards()
    assert 1 <= done.sum() < 4 and same_samples(corpus, reference, done)  # what is done is complete
    assert cli(*BUILD, url) == 0
    assert Corpus.open(url).done_shards().all() and same_samples(Corpus.open(url), reference, np.ones(4, bool))


def test_the_retry_settings_are_hspace_s_unless_the_user_gave_them(monkeypatch, tmp_path):
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    retries = {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}
    fresh = {"use_listings_cache": False}
    assert storage_options("s3://b/c.zarr") == {**fresh, "config_kwargs": {"retries": retries}}
    assert storage_options(str(tmp_path)) == storage_options("memory://c") == {}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert storage_options("s3://b/c.zarr") == {**fresh, "config_kwargs": {"retries": {"mode": "standard"}}}
    (tmp_path / "config").write_text("[profile slow]\nretry_mode = adaptive\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "slow")
    assert storage_options("s3://b/c.zarr") == fresh


def test_only_connection_failures_become_one_line_errors():
    from botocore.exceptions import EndpointConnectionError  # type: ignore[import-untyped]

    with (
        pytest.raises(HSpaceError, match=r"^cannot reach s3://b/c.zarr \(Could not connect"),
        reachable("s3://b/c.zarr"),
    ):
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/c.zarr/zarr.json")
    with pytest.raises(PermissionError), reachable("s3://b/c.zarr"):
        raise PermissionError("refused")
