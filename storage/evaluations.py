"""Evaluations of directions (Table I) kept in the corpus group, so a rerun reuses them instead of sampling again.

``evaluations/<key>`` is a group whose attributes are ``settings`` (what was evaluated how) and, once every
part is in, ``result`` (:meth:`hspace.evaluate.EvaluationResult.to_dict`), written last: a key with a result
is always a complete evaluation. The key hashes the directions' bytes and every setting
(:func:`evaluation_key`). The U-Net's precision is one of those settings, named only where it is not fp32:
results stored before precisions existed ran in fp32 and keep their keys (and have no parts).

The parts of a distributed evaluation (:class:`EvaluationParts`) are two arrays of that group: ``scores``,
float64 (repeats, samples, 1 + D, A), one chunk per U-Net pass of ``batch`` samples, and ``done``, bool
(repeats, passes), one chunk per flag, each set after its pass's scores. ``batch`` is recorded: the passes
decide the bits, so a rerun with another batch is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationResult
from storage.corpus import Corpus
from storage.groups import array_at, check_shapes, group_at, json_attrs, new_array, read_flags

EVALUATIONS = "evaluations"


def evaluation_key(directions: Mapping[str, np.ndarray], settings: dict[str, Any]) -> str:
    """sha256 over every direction's name, shape and bytes and the evaluation settings (JSON, sorted)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(directions):
        array = np.ascontiguousarray(directions[name], dtype=np.float32)
        digest.update(f"{name}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def stored_evaluation(corpus: Corpus, key: str) -> EvaluationResult | None:
    """The evaluation stored under ``key``, or None where there is none."""
    if EVALUATIONS not in corpus.group or key not in group_at(corpus.group, EVALUATIONS):
        return None
    corpus.refuse_if_stale(f"{EVALUATIONS}/{key}")
    result = json_attrs(group_at(corpus.group, f"{EVALUATIONS}/{key}"), "result")
    return EvaluationResult.from_dict(result) if result else None


def write_evaluation(corpus: Corpus, key: str, settings: dict[str, Any], result: EvaluationResult) -> None:
    """Store ``result`` under ``key`` in one write of the group's attributes (``corpus`` opened writable)."""
    corpus.group.require_group(EVALUATIONS).require_group(key).attrs.update(
        {"settings": settings, "result": result.to_dict()}
    )


class EvaluationParts:
    """The scores of an evaluation under ``evaluations/<key>``, written pass by pass (module docstring)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        parts = json_attrs(group, "parts")
        self.batch = int(parts["batch"])
        self.shape = tuple(int(n) for n in parts["shape"])

    @classmethod
    def create_or_open(
        cls, corpus: Corpus, key: str, settings: dict[str, Any], *, shape: tuple[int, int, int, int], batch: int
    ) -> EvaluationParts:
        """The parts of evaluation ``key`` (``corpus`` writable): created empty, or reopened if ``batch`` and
        ``shape`` (repeats, samples, 1 + D, A) are those they were made with."""
        corpus.refuse_if_stale(f"{EVALUATIONS}/{key}")
        group = corpus.group.require_group(EVALUATIONS).require_group(key)
        made = json_attrs(group, "parts")
        wanted: dict[str, Any] = {"batch": batch, "shape": list(shape)}
        if made:
            if made != wanted:
                raise HSpaceError(
                    f"evaluation {key} in {corpus.url} is partly done with batch {made['batch']} (samples per U-Net "
                    f"pass), which decides its bits: rerun with --batch {made['batch']} (was given {batch})"
                )
            return cls(group)
        repeats, samples, rows, columns = shape
        passes = -(-samples // batch)
        # Arrays first, the record last: a crash in between leaves no record, and the rerun makes them anew.
        new_array(
            group,
            "scores",
            shape=shape,
            chunks=(1, batch, rows, columns),
            dtype="float64",
            fill_value=np.nan,
            overwrite=True,
        )
        new_array(group, "done", shape=(repeats, passes), chunks=(1, 1), dtype="bool", fill_value=False, overwrite=True)
        group.attrs.update({"settings": settings, "parts": wanted})
        return cls(group)

    @property
    def passes(self) -> int:
        return -(-self.shape[1] // self.batch)

    def pass_range(self, p: int) -> tuple[int, int]:
        """Samples ``start, stop`` of pass ``p`` within its repeat."""
        return p * self.batch, min((p + 1) * self.batch, self.shape[1])

    def missing(self) -> list[tuple[int, int]]:
        """(repeat, pass) of every pass not done, in order."""
        return [(int(r), int(p)) for r, p in zip(*np.nonzero(~read_flags(array_at(self.group, "done"))), strict=True)]

    def write(self, repeat: int, p: int, scores: np.ndarray) -> None:
        """Store pass ``p`` of ``repeat`` (scores of shape (its samples, 1 + D, A)), then mark it done."""
        start, stop = self.pass_range(p)
        check_shapes(
            f"evaluation pass {p} of repeat {repeat}", {"scores": scores}, {"scores": (stop - start, *self.shape[2:])}
        )
        array_at(self.group, "scores")[repeat, start:stop] = scores
        array_at(self.group, "done")[repeat, p] = True

    def read(self) -> np.ndarray:
        """Every pass's scores, shape (repeats, samples, 1 + D, A); refused while a pass is missing."""
        missing = self.missing()
        if missing:
            raise HSpaceError(f"evaluation {self.group.path} has {len(missing)} passes not done; rerun the evaluation")
        return np.asarray(array_at(self.group, "scores")[...])
