"""What PCA runs and Jacobian runs share: run names, run groups inside the corpus, progress flags, step checks.

A run lives in ``<kind>/<run>/`` of the corpus group (``kind`` is ``"pca"`` or ``"jacobian"``). Its group has
an ``hspace`` attribute with its parameters and ``initialized`` (true once every array exists), so a crash
during creation is repaired by the next open. Reopening a run with other parameters is an error that names
each difference. Run names become paths, so they are validated (:func:`hspace.names.check_name`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.names import check_name
from storage.corpus import Corpus
from storage.corpus_spec import ADDED_SETTINGS, NOT_COMPARED, UNCHECKSUMMED_VERSION
from storage.groups import describe_differences, group_at, json_attrs, new_array

RESULTS_SCHEMA_VERSION = 1
# name, (shape, dtype, chunks, dimension names): the arrays of a run, created together.
ArrayLayout = dict[str, tuple[tuple[int, ...], str, tuple[int, ...], tuple[str, ...]]]

# Run parameters added after RESULTS_SCHEMA_VERSION 1 shipped, with the value every run made before them has.
ADDED_PARAMETERS: dict[str, dict[str, Any]] = {"pca": {}, "jacobian": {"precision": "fp32"}}
_WHAT = {"pca": "PCA", "jacobian": "Jacobian"}
_COMMAND = {"pca": "hspace pca fit", "jacobian": "hspace jacobian"}


def check_run_name(run: str) -> str:
    """Return ``run`` if it is a valid run name (it becomes a path inside the corpus group)."""
    return check_name(run, "run")


def corpus_settings(corpus: Corpus) -> dict[str, Any]:
    """The corpus settings a result depends on (all but the package version), JSON-ready.

    Its ``schema_version`` is always 1 (``UNCHECKSUMMED_VERSION``): chunk checksums (version 2) changed no stored
    value, and runs made before them recorded 1, so a run resumes whichever version its corpus has.
    """
    settings = {k: v for k, v in corpus.spec.to_attrs().items() if k not in NOT_COMPARED}
    return {**settings, "schema_version": UNCHECKSUMMED_VERSION}


def run_attrs(kind: str, spec: Any) -> dict[str, Any]:
    """A run spec (a dataclass) as the run group's JSON attributes, tagged with its kind and schema version."""
    return json.loads(json.dumps({"kind": kind, "schema_version": RESULTS_SCHEMA_VERSION, **asdict(spec)}))


def h_dim(corpus: Corpus) -> int:
    """D = C * H * W, the length of vec(h_t)."""
    return int(np.prod(corpus.spec.h_shape))


def check_steps(corpus: Corpus, steps: Sequence[int]) -> None:
    """Refuse an empty, out-of-range or repeating list of corpus step indices."""
    total = corpus.spec.steps
    if not steps:
        raise HSpaceError("give at least one step")
    bad = [t for t in steps if not 0 <= t < total]
    if bad:
        raise HSpaceError(f"step {bad[0]} is out of range: the corpus has steps 0..{total - 1} (sampling order)")
    if len(set(steps)) != len(steps):
        raise HSpaceError(f"steps repeat: {list(steps)}")


def list_runs(url: str, kind: str) -> list[str]:
    """Names of the runs of one kind (``"pca"`` or ``"jacobian"``) in the corpus at ``url``."""
    return _run_names(Corpus.open(url), kind)


def _run_names(corpus: Corpus, kind: str) -> list[str]:
    if kind not in corpus.group:
        return []
    return sorted(name for name, _ in group_at(corpus.group, kind).groups())


def create_or_open_run(
    corpus: Corpus, kind: str, run: str, attrs: dict[str, Any], make_arrays: Callable[[zarr.Group], None]
) -> zarr.Group:
    """The run group, created (arrays, then ``initialized``) or checked against ``attrs``."""
    corpus.refuse_if_stale(f"{kind}/{run}")
    parent = corpus.group.require_group(kind)
    if run in parent:
        group = group_at(parent, run)
        existing = json_attrs(group, "hspace")
        if existing:
            existing = _with_added(kind, existing)
            _check_same_run(corpus.url, kind, run, existing, attrs)
            if existing.get("initialized", False):
                return group
    else:
        group = parent.create_group(run)
    group.attrs.update({"hspace": {**attrs, "initialized": False}})
    make_arrays(group)
    group.attrs.update({"hspace": {**attrs, "initialized": True}})
    return group


def open_run(corpus: Corpus, kind: str, run: str) -> tuple[zarr.Group, dict[str, Any]]:
    """An existing, fully created run group and its attributes; refuses one this hspace cannot read."""
    check_run_name(run)
    what, command = _WHAT[kind], _COMMAND[kind]
    if kind not in corpus.group or run not in group_at(corpus.group, kind):
        known = _run_names(corpus, kind)
        raise HSpaceError(
            f"no {what} run {run!r} in {corpus.url} (runs: {', '.join(known) or 'none'}); create it with `{command}`"
        )
    corpus.refuse_if_stale(f"{kind}/{run}")
    group = group_at(corpus.group, f"{kind}/{run}")
    attrs = _with_added(kind, json_attrs(group, "hspace"))
    if attrs.get("kind") != kind or attrs.get("schema_version") != RESULTS_SCHEMA_VERSION:
        raise HSpaceError(f"{corpus.url}/{kind}/{run} is not a {what} run this hspace can read")
    if not attrs.get("initialized", False):
        raise HSpaceError(f"{what} run {run!r} was not fully created; rerun `{command}` with the same settings")
    return group, attrs


def _with_added(kind: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """A run's attributes as this hspace writes them: parameters and corpus settings added since it was made
    (:data:`ADDED_PARAMETERS`, ``storage.corpus.ADDED_SETTINGS``) at the value it was made with."""
    corpus = attrs.get("corpus")
    return {
        **ADDED_PARAMETERS.get(kind, {}),
        **attrs,
        **({"corpus": {**ADDED_SETTINGS, **corpus}} if isinstance(corpus, dict) else {}),
    }


def create_arrays(group: zarr.Group, layout: ArrayLayout) -> None:
    """Create (or recreate, after a crash during creation) the arrays of a run, filled with 0."""
    for name, (shape, dtype, chunks, dims) in layout.items():
        new_array(
            group, name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0, dimension_names=dims, overwrite=True
        )


def _check_same_run(url: str, kind: str, run: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    ignored = ("package_version", "initialized")
    differing = describe_differences(
        old,
        new,
        labels=("run", "requested"),
        keys=[key for key in sorted(old.keys() | new.keys()) if key not in ignored],
    )
    if differing:
        raise HSpaceError(
            f"{_WHAT[kind]} run {run!r} in {url} was made with other settings: {'; '.join(differing)}. "
            "Use the same settings to resume it, or another run name (--run; --pca-run of rebuild-bank)"
        )
