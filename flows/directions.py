"""Flows that make named directions: supervised (eq. 11) and disentangled (eq. 12); from real images (SM -F):
:mod:`flows.inversion`.

Each flow plans first (every argument checked, inputs opened, the target name checked) and fails before
any work; the direction is written last, data before its ``complete`` flag (:mod:`storage.directions`).
A rerun with the same arguments rewrites the same direction; another direction of the same name is
refused unless ``overwrite`` (or it carries the same ``made_by`` tag: a producer replacing its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import flow

from flows.runner import checked_by
from storage.corpus import Corpus
from storage.directions import list_directions
from tasks.directions import (
    DEFAULT_K,
    disentangle_direction_task,
    plan_disentangle,
    plan_supervised,
    supervised_direction_task,
)


def check_supervised(parameters: dict[str, Any]) -> None:
    """Make the plan before Prefect starts, so that bad arguments fail in seconds (the flow plans again)."""
    plan_supervised(**parameters)


def check_disentangled(parameters: dict[str, Any]) -> None:
    """Make the plan before Prefect starts, so that bad arguments fail in seconds (the flow plans again)."""
    plan_disentangle(**{**parameters, "against": list(parameters["against"])})


@checked_by(check_supervised)
@flow(name="supervised-direction")
def supervised(
    url: str,
    name: str,
    attribute: str | None = None,
    annotator: str | None = None,
    k: int = DEFAULT_K,
    threshold: float | None = None,
    positives: list[int] | None = None,
    negatives: list[int] | None = None,
    space: str = "h",
    overwrite: bool = False,
    made_by: str | None = None,
) -> dict[str, Any]:
    """eq. 11 from the corpus at ``url``: top-k vs bottom-k samples by ``attribute`` (k from each side of
    ``threshold`` for a binary one), or explicit sample ids.

    Stored as ``directions/<name>`` (method ``supervised``, ``supervised-xT`` or ``examples``); returns a
    summary (name, method, space, shape, norms, parameters). See :func:`tasks.directions.plan_supervised`.
    """
    plan = plan_supervised(
        url,
        name,
        attribute=attribute,
        annotator=annotator,
        k=k,
        threshold=threshold,
        positives=positives,
        negatives=negatives,
        space=space,
        overwrite=overwrite,
        made_by=made_by,
    )
    return supervised_direction_task(plan)


@checked_by(check_disentangled)
@flow(name="disentangle-direction")
def disentangled(
    url: str,
    name: str,
    source: str,
    against: Sequence[str],
    keep_norm: bool = False,
    overwrite: bool = False,
    made_by: str | None = None,
) -> dict[str, Any]:
    """eq. 12: ``directions/<name>`` = ``directions/<source>`` with its projection on the ``against`` span removed
    (then rescaled to the norm of ``<source>`` with ``keep_norm``)."""
    plan = plan_disentangle(
        url, name, source=source, against=list(against), keep_norm=keep_norm, overwrite=overwrite, made_by=made_by
    )
    return disentangle_direction_task(plan)


def directions_of(url: str) -> list[dict[str, Any]]:
    """Every direction stored in the corpus at ``url``: its record and ``complete`` (no Prefect needed)."""
    return list_directions(Corpus.open(url))
