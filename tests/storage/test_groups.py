"""What the corpus's members share (storage.groups) and the evaluations group (storage.evaluations)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationResult
from storage.corpus import Corpus
from storage.evaluations import evaluation_key, stored_evaluation, write_evaluation
from storage.groups import array_at, check_shapes, describe_differences, group_at, read_flags
from tasks.corpus import corpus_spec


def test_differences_name_nested_keys_and_skip_equal_ones():
    old = {"steps": 4, "config": {"scale": 1.0, "prompt": "a"}, "same": [1, 2]}
    new = {"steps": 5, "config": {"scale": 2.0, "prompt": "a"}, "same": [1, 2]}
    assert describe_differences(old, new, labels=("stored", "requested")) == [
        "steps (stored: 4, requested: 5)",
        "config.scale (stored: 1.0, requested: 2.0)",
    ]
    assert describe_differences(old, new, labels=("a", "b"), keys=["same"]) == []
    long = describe_differences({"x": "y" * 200}, {"x": None}, labels=("a", "b"))[0]
    assert "..." in long and len(long) < 120


def test_flags_of_any_shape_read_whole_or_one_by_one(tmp_path):
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    done = group.create_array("done", shape=(2, 3), dtype="bool", chunks=(1, 1), fill_value=False)
    done[1, 2] = True
    assert read_flags(done).tolist() == [[False] * 3, [False, False, True]]
    (tmp_path / "g" / "done" / "c" / "1" / "2").write_bytes(b"garbage")  # a chunk damaged mid-write
    assert not read_flags(done).any()


def test_shapes_are_checked_by_name_before_any_write():
    check_shapes("here", {"a": np.zeros((2, 3)), "b": [1, 2]}, {"a": (2, 3), "b": (2,)})
    with pytest.raises(HSpaceError, match=r"here: b has shape \(3,\), expected \(2,\)"):
        check_shapes("here", {"a": np.zeros((2, 3)), "b": [1, 2, 3]}, {"a": (2, 3), "b": (2,)})


def test_typed_access_refuses_the_other_kind_of_node(tmp_path):
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    group.create_array("a", shape=(1,), dtype="int64")
    group.create_group("b")
    assert isinstance(array_at(group, "a"), zarr.Array) and isinstance(group_at(group, "b"), zarr.Group)
    with pytest.raises(HSpaceError, match="is an array where"):
        group_at(group, "a")
    with pytest.raises(HSpaceError, match="is a group where"):
        array_at(group, "b")


def test_an_evaluation_is_stored_whole_under_its_key(tmp_path, tiny):
    spec = corpus_spec(tiny, samples=4, steps=2, eta=(1.0,) * 2, batch=2, seed=0, dtype="float16")
    corpus = Corpus.create_or_open(str(tmp_path / "c"), spec)
    directions = {"smile": np.ones((2, 3), dtype=np.float32)}
    key = evaluation_key(directions, {"gamma": 1.0})
    assert key != evaluation_key(directions, {"gamma": 2.0})
    assert key != evaluation_key({"smile": np.full((2, 3), 2, dtype=np.float32)}, {"gamma": 1.0})
    assert stored_evaluation(corpus, key) is None
    result = EvaluationResult(
        rows=("smile",),
        attributes=("age",),
        effects=np.arange(3.0).reshape(3, 1, 1),
        abs_effects=np.arange(3.0).reshape(3, 1, 1),
        scale=np.ones(1),
        settings={"gamma": 1.0},
    )
    write_evaluation(corpus, key, {"gamma": 1.0}, result)
    stored = stored_evaluation(Corpus.open(corpus.url), key)
    assert stored is not None and stored.to_dict() == result.to_dict()
