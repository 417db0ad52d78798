"""Evaluations of directions (Table I) kept in the corpus group, so a rerun reuses them instead of sampling again.

``evaluations/<key>`` is a group with no arrays: its attributes ``settings`` (what was evaluated how) and
``result`` (:meth:`hspace.evaluate.EvaluationResult.to_dict`). The key hashes the directions' bytes and every
setting (:func:`evaluation_key`); a group is written once, whole, so a key with a result is always a complete
evaluation. The U-Net's precision is one of those settings, named only where it is not fp32: results stored
before precisions existed ran in fp32 and keep their keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from hspace.evaluate import EvaluationResult
from storage.corpus import Corpus
from storage.groups import group_at, json_attrs

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
    result = json_attrs(group_at(corpus.group, f"{EVALUATIONS}/{key}"), "result")
    return EvaluationResult.from_dict(result) if result else None


def write_evaluation(corpus: Corpus, key: str, settings: dict[str, Any], result: EvaluationResult) -> None:
    """Store ``result`` under ``key`` in one write of the group's attributes (``corpus`` opened writable)."""
    corpus.group.require_group(EVALUATIONS).create_group(key, overwrite=True).attrs.update(
        {"settings": settings, "result": result.to_dict()}
    )
