"""The Zarr corpus: schema, attributes, refusals, resume state, fsspec URLs."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import zarr

from hspace.errors import HSpaceError
from storage.corpus import Corpus
from storage.corpus_spec import SCHEMA_VERSION, CorpusSpec
from tasks.corpus import corpus_spec


@pytest.fixture
def spec(tiny) -> CorpusSpec:
    return corpus_spec(tiny, samples=10, steps=4, eta=(1.0,) * 4, batch=4, seed=3, dtype="float16")


def fake_shard(spec: CorpusSpec, shard: int, value: float = 0.5):
    start, stop = spec.shard_range(shard)
    n = stop - start
    return {
        "h": np.full((n, spec.steps, *spec.h_shape), value, dtype=np.float32),
        "x0": np.full((n, *spec.image_shape), 7, dtype=np.uint8),
        "seeds": np.arange(start, stop, dtype=np.int64),
    }


def test_schema_arrays_chunks_shards_and_attributes(tmp_path, spec, tiny):
    corpus = Corpus.create_or_open(str(tmp_path / "c.zarr"), spec)
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    h = group["h"]
    assert h.shape == (10, 4, 32, 8, 8) and h.dtype == np.float16
    assert h.chunks == (4, 1, 32, 8, 8) and h.shards == (4, 4, 32, 8, 8)
    assert h.metadata.dimension_names == ("sample", "step", "h_channel", "h_height", "h_width")
    assert group["x0"].shape == (10, 3, 16, 16) and group["x0"].dtype == np.uint8
    assert group["x0"].chunks == (4, 3, 16, 16)
    assert group["seed"].dtype == np.int64 and group["seed"].chunks == (4,)
    assert group["done"].shape == (3,) and group["done"].chunks == (1,) and not group["done"][:].any()
    assert list(group["timestep"][:]) == [750, 500, 250, 0]
    for name in ("h", "x0", "seed", "done", "timestep"):
        assert group[name].metadata.dimension_names is not None
    attrs = group.attrs["hspace"]
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["initialized"] is True
    assert attrs["model"] == "tiny" and attrs["fingerprint"] == tiny.fingerprint
    assert attrs["scheduler_class"] == "DDIMScheduler" and attrs["scheduler_config"]["beta_schedule"] == "linear"
    assert attrs["steps"] == 4 and attrs["timesteps"] == [750, 500, 250, 0] and attrs["eta"] == [1.0] * 4
    assert attrs["h_shape"] == [32, 8, 8] and attrs["h_dtype"] == "float16"
    assert attrs["base_seed"] == 3 and attrs["package_version"] == "0.1.0"
    assert corpus.missing_shards() == [0, 1, 2]


def test_float32_option(tmp_path, spec):
    corpus = Corpus.create_or_open(str(tmp_path / "c"), dataclasses.replace(spec, h_dtype="float32"))
    assert corpus.group["h"].dtype == np.float32


def test_batch_that_does_not_divide_samples_gives_a_short_last_shard(tmp_path, spec):
    corpus = Corpus.create_or_open(str(tmp_path / "c"), spec)
    assert [spec.shard_range(k) for k in range(spec.n_shards)] == [(0, 4), (4, 8), (8, 10)]
    corpus.write_shard(2, **fake_shard(spec, 2, 2.0))
    assert corpus.missing_shards() == [0, 1]
    assert (corpus.read_h(slice(8, 10)) == 2.0).all()
    assert (corpus.read_h(slice(0, 8)) == 0).all()  # untouched shards read as the fill value
    info = corpus.info()
    assert (info["samples_done"], info["shards_done"], info["samples_missing"]) == (2, 1, 8)


def test_write_shard_checks_shapes_and_does_not_mark_done(tmp_path, spec):
    corpus = Corpus.create_or_open(str(tmp_path / "c"), spec)
    bad = fake_shard(spec, 0)
    bad["h"] = bad["h"][:, :2]
    with pytest.raises(HSpaceError, match="shard 0: h has shape"):
        corpus.write_shard(0, **bad)
    assert corpus.missing_shards() == [0, 1, 2]
    with pytest.raises(HSpaceError, match="shard 3 does not exist"):
        spec.shard_range(3)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples", 12),
        ("shard_size", 2),
        ("steps", 5),
        ("eta", (0.0,) * 4),
        ("base_seed", 4),
        ("h_dtype", "float32"),
        ("fingerprint", "0" * 64),
        ("model", "celebahq-shape"),
    ],
)
def test_reopening_with_other_settings_names_the_field(tmp_path, spec, field, value):
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec)
    other = dataclasses.replace(spec, **{field: value})
    with pytest.raises(HSpaceError, match=rf"other settings: {field} \(corpus: .*, requested: .*\)"):
        Corpus.create_or_open(url, other)


def test_reopening_with_same_settings_keeps_the_data(tmp_path, spec):
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec).write_shard(1, **fake_shard(spec, 1, 3.0))
    again = Corpus.create_or_open(url, dataclasses.replace(spec, package_version="9.9"))
    assert again.missing_shards() == [0, 2]
    assert (again.read_h(slice(4, 8)) == 3.0).all()


def test_foreign_zarr_group_is_refused(tmp_path, spec):
    zarr.open_group(str(tmp_path / "f"), mode="w", attributes={"something": "else"})
    with pytest.raises(HSpaceError, match="is a Zarr group but not an hspace corpus"):
        Corpus.create_or_open(str(tmp_path / "f"), spec)


def test_zarr_array_at_the_path_is_refused(tmp_path, spec):
    zarr.create_array(str(tmp_path / "a"), shape=(3,), dtype="int8")
    with pytest.raises(HSpaceError, match="is a Zarr array, not an hspace corpus"):
        Corpus.create_or_open(str(tmp_path / "a"), spec)


def test_corrupted_group_metadata_is_refused(tmp_path, spec):
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec)
    (tmp_path / "c" / "zarr.json").write_bytes(b'{"zarr_format": 3, "node_ty')
    with pytest.raises(HSpaceError, match="damaged Zarr group"):
        Corpus.create_or_open(url, spec)
    with pytest.raises(HSpaceError, match="damaged Zarr group"):
        Corpus.open(url)


def test_other_schema_version_is_refused(tmp_path, spec):
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec)
    meta = json.loads((tmp_path / "c" / "zarr.json").read_text())
    meta["attributes"]["hspace"]["schema_version"] = 99
    (tmp_path / "c" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(HSpaceError, match="schema version 99"):
        Corpus.open(url)


def test_non_empty_folder_and_plain_file_are_refused(tmp_path, spec):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(HSpaceError, match="exists and is not an hspace corpus"):
        Corpus.create_or_open(str(tmp_path / "photos"), spec)
    (tmp_path / "file").write_text("x")
    with pytest.raises(HSpaceError, match="exists and is not an hspace corpus"):
        Corpus.create_or_open(str(tmp_path / "file"), spec)
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.jpg"]


def test_unwritable_location_is_refused(tmp_path, spec):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HSpaceError, match="cannot create a corpus at"):
        Corpus.create_or_open(str(tmp_path / "file" / "corpus"), spec)


def test_missing_corpus_says_how_to_build_one(tmp_path):
    with pytest.raises(HSpaceError, match="no corpus at .*hspace corpus build"):
        Corpus.open(str(tmp_path / "nothing"))


def test_creation_interrupted_before_the_arrays_is_repaired(tmp_path, spec):
    url = str(tmp_path / "c")
    # What a crash right after the group was written leaves: settings, no arrays, not initialized.
    zarr.open_group(url, mode="w-", attributes={"hspace": {**spec.to_attrs(), "initialized": False}})
    with pytest.raises(HSpaceError, match="creation did not finish"):
        Corpus.open(url)
    corpus = Corpus.create_or_open(url, spec)
    assert corpus.missing_shards() == [0, 1, 2]
    assert Corpus.open(url).spec == spec


def test_damaged_done_flag_counts_as_not_done(tmp_path, spec):
    url = str(tmp_path / "c")
    corpus = Corpus.create_or_open(url, spec)
    for k in range(3):
        corpus.write_shard(k, **fake_shard(spec, k))
    (tmp_path / "c" / "done" / "c" / "1").write_bytes(b"\x00garbage")
    assert Corpus.open(url).missing_shards() == [1]


def test_memory_url_round_trip(spec):
    url = "memory://hspace-test/corpus"
    corpus = Corpus.create_or_open(url, spec)
    corpus.write_shard(0, **fake_shard(spec, 0, 1.5))
    reopened = Corpus.open(url)
    assert reopened.missing_shards() == [1, 2]
    assert (reopened.read_h(slice(0, 4), step=2) == 1.5).all()
    assert reopened.info()["bytes"] > 0


def test_xarray_opens_h_with_named_dimensions(tmp_path, spec):
    xr = pytest.importorskip("xarray")
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec).write_shard(0, **fake_shard(spec, 0))
    dataset = xr.open_zarr(url, consolidated=False, zarr_format=3)
    assert dataset["h"].dims == ("sample", "step", "h_channel", "h_height", "h_width")
    assert dataset["h"].shape == (10, 4, 32, 8, 8)
    assert dataset["x0"].dims == ("sample", "image_channel", "image_height", "image_width")
    assert float(dataset["h"].isel(sample=0, step=1).mean()) == 0.5


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("samples", 0, "samples must be a positive"),
        ("shard_size", -1, "batch must be a positive"),
        ("h_dtype", "bfloat16", "h dtype must be one of"),
    ],
)
def test_spec_validation(spec, field, value, message):
    with pytest.raises(HSpaceError, match=message):
        dataclasses.replace(spec, **{field: value})


def test_a_scheduler_config_difference_names_the_key(tmp_path, spec):
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec)
    other = dataclasses.replace(spec, scheduler_config={**spec.scheduler_config, "beta_end": 0.03})
    with pytest.raises(HSpaceError, match=r"scheduler_config.beta_end \(corpus: 0.02, requested: 0.03\)"):
        Corpus.create_or_open(url, other)


@pytest.mark.slow
def test_the_spec_is_the_same_in_another_process(tmp_path, spec):
    import subprocess
    import sys

    # Settings computed in a fresh interpreter (another hash seed) must reopen this corpus.
    url = str(tmp_path / "c")
    Corpus.create_or_open(url, spec)
    code = (
        "from hspace.models import load_model; from tasks.corpus import corpus_spec; "
        "from storage.corpus import Corpus; "
        f"Corpus.create_or_open({url!r}, corpus_spec(load_model('tiny'), samples=10, steps=4, eta=(1.0,) * 4, "
        "batch=4, seed=3, dtype='float16'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "7"}
    )
    assert result.returncode == 0, result.stderr[-1500:]
