"""``hspace bank edit``: a bank's named directions applied to seeds or to your photos, as a labelled grid (issue 20).

Columns are the inputs (seeds, or photos), rows the edits: the unedited sample (for photos: the photo at the
model's size, then its reconstruction, gamma = 0), then one row per ``--set`` (its directions add, Sec. V) and
one per value of ``--sweep``. Seeds go through :func:`hspace.edit`, photos through :func:`hspace.photos.edit_image`;
the grid's cells are exactly their images (enlarged by a whole factor, nearest neighbour).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from hspace.bank import Bank
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.photos import edit_image, fit_photos


@dataclass(frozen=True)
class EditGrid:
    """The cells (rows, columns, 3, S, S) uint8 with their labels, and per photo its fit and reconstruction."""

    cells: np.ndarray
    row_labels: list[str]
    column_labels: list[str]
    photos: list[dict[str, Any]]


def parse_set(value: str) -> dict[str, float]:
    """``smile=2,hat=-1`` as ``{"smile": 2.0, "hat": -1.0}`` (one row of edits that add)."""
    gammas: dict[str, float] = {}
    for item in value.split(","):
        name, _, number = item.partition("=")
        gammas[name.strip()] = _number(number, f"--set {value!r}: {item!r}", "NAME=GAMMA[,NAME=GAMMA...]")
        if not name.strip():
            raise HSpaceError(f"--set {value!r}: {item!r} has no direction name; use NAME=GAMMA[,NAME=GAMMA...]")
    return gammas


def parse_sweep(value: str) -> list[dict[str, float]]:
    """``smile=-2:2:5`` as 5 rows, smile from -2 to 2 in equal steps."""
    name, _, spec = value.partition("=")
    parts = spec.split(":")
    form = "NAME=START:STOP:COUNT, e.g. smile=-2:2:5"
    if not name.strip() or len(parts) != 3:
        raise HSpaceError(f"--sweep {value!r}: use {form}")
    start, stop = (_number(p, f"--sweep {value!r}", form) for p in parts[:2])
    try:
        count = int(parts[2])
    except ValueError:
        count = 0
    if count < 2:
        raise HSpaceError(f"--sweep {value!r}: COUNT must be an integer of at least 2; use {form}")
    return [{name.strip(): float(g)} for g in np.linspace(start, stop, count)]


def edit_grid(
    model: LoadedModel,
    bank: Bank,
    rows: list[dict[str, float]],
    *,
    seeds: list[int] | None = None,
    photos: list[Any] | None = None,
    photo_labels: list[str] | None = None,
    progress: bool = False,
) -> EditGrid:
    """The grid for ``seeds`` or ``photos`` (exactly one), one row per mapping of ``rows`` after the unedited ones.

    ``progress``: a tqdm bar on stderr, one step per row of seeds; photos are inverted and edited in one call, so
    they get a line saying what runs.
    """
    if (seeds is None) == (photos is None):
        raise HSpaceError("give either seeds or photos to edit")
    for name in {name for gammas in rows for name in gammas}:
        bank.tensor(name)  # an unknown name is refused here, before any sampling (the tensor is kept for the edits)
    labels = [_row_label(g) for g in rows]
    if seeds is not None:
        edits = tqdm([{}, *rows], desc="bank edit", unit="row", disable=not progress, file=sys.stderr)
        cells = np.stack([edit(model, seeds, gammas, bank) for gammas in edits])
        return EditGrid(cells, ["unedited", *labels], [f"seed {s}" for s in seeds], [])
    assert photos is not None
    fitted, notes = fit_photos(photos, model.image_shape)  # unreadable photos refused before any work is announced
    if progress:
        print(
            f"bank edit: inverting {len(photos)} photo(s) and sampling {len(rows) + 1} row(s) of them, {bank.steps} "
            "steps each",
            file=sys.stderr,
            flush=True,
        )
    result = edit_image(model, list(fitted), rows, bank)
    cells = np.concatenate([result.inputs[None], result.reconstructions[None], result.edited])
    names = photo_labels or [f"photo {i}" for i in range(len(photos))]
    report = [
        {"photo": name, "note": note, **error} for name, note, error in zip(names, notes, result.errors, strict=True)
    ]
    return EditGrid(cells, ["photo", "reconstruction", *labels], [f"photo {i}" for i in range(len(names))], report)


def _row_label(gammas: dict[str, float]) -> str:
    return ", ".join(f"{name} {gamma:+g}" for name, gamma in gammas.items()) or "gamma 0"


def _number(text: str, where: str, form: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise HSpaceError(f"{where}: {text!r} is not a finite number; use {form}")
    return value
