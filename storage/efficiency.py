"""The parts of a Fig. 8a run (``hspace efficiency``) in ``<out>/parts.zarr``: a rerun computes only what is missing.

The group's attribute ``record`` holds every setting that fixes the bits (the plan's settings, the attribute,
the counts, ``keep`` and ``batch``), written after the arrays: a group without it is remade. A rerun with
another record is refused, naming what differs. Each unit of work writes its data, then its flag:

* the pool: ``pool_h`` (pool, T, C, H, W), one chunk per sample so that the examples' h can be read alone,
  ``pool_scores`` float64 (pool, A), one chunk per U-Net pass, and ``pool_done`` (passes,);
* the directions (:class:`hspace.efficiency.ExampleDirections`): ``directions/*`` arrays, then the
  attribute ``directions`` (``usable``);
* the edits: ``edit_scores`` float64 (rows, eval_samples), one chunk per pass, and ``edits_done`` (passes,);
* the curve: the attribute ``curve`` (:meth:`hspace.efficiency.EfficiencyCurve.to_dict`), written last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from hspace.efficiency import EfficiencyCurve, ExampleDirections
from hspace.errors import HSpaceError
from storage.groups import (
    array_at,
    check_shapes,
    describe_differences,
    group_at,
    json_attrs,
    new_array,
    read_array,
    read_flags,
)

PARTS = "parts.zarr"
TENSORS = ("h", "x_T", "random_h", "random_x")


def parts_path(out: str | Path) -> Path:
    return Path(out) / PARTS


def check_record(out: str | Path, record: dict[str, Any]) -> None:
    """Refuse (one line) a run of ``record`` where ``out`` holds parts of another; reads only."""
    path = parts_path(out)
    if not path.exists():
        return
    made = json_attrs(zarr.open_group(str(path), mode="r"), "record")
    if made and made != record:
        differences = describe_differences(made, record, labels=("stored", "given"), keys=made.keys() | record.keys())
        raise HSpaceError(
            f"{out} holds an efficiency run with other settings: {'; '.join(differences)}; rerun with those "
            "or give another --out"
        )


class EfficiencyParts:
    """The parts of one Fig. 8a run (module docstring)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        record = json_attrs(group, "record")
        self.batch = int(record["batch"])
        self.pool_samples = int(record["pool_samples"])
        self.eval_samples = int(record["eval_samples"])

    @classmethod
    def open(cls, out: str | Path) -> EfficiencyParts:
        """The parts made under ``out`` (:meth:`create_or_open`)."""
        group = zarr.open_group(str(parts_path(out)), mode="r+")
        if not json_attrs(group, "record"):
            raise HSpaceError(f"{parts_path(out)} holds no efficiency run's record; rerun the efficiency command")
        return cls(group)

    @classmethod
    def create_or_open(
        cls, out: str | Path, record: dict[str, Any], *, h_shape: tuple[int, ...], attributes: int, rows: int
    ) -> EfficiencyParts:
        """The parts of ``record`` under ``out``: made empty, or reopened if made with the same record.

        ``h_shape`` is one sample's h_{T:1} (T, C, H, W); ``attributes`` the pool's score columns; ``rows``
        the edits per evaluation sample.
        """
        check_record(out, record)
        group = zarr.open_group(str(parts_path(out)), mode="a")
        if json_attrs(group, "record"):
            return cls(group)
        pool, samples, batch = int(record["pool_samples"]), int(record["eval_samples"]), int(record["batch"])
        # Arrays first, the record last: a crash in between leaves no record, and the rerun makes them anew.
        arrays: dict[str, tuple[tuple[int, ...], tuple[int, ...], str, Any]] = {
            "pool_h": ((pool, *h_shape), (1, *h_shape), "float32", np.nan),
            "pool_scores": ((pool, attributes), (batch, attributes), "float64", np.nan),
            "pool_done": ((-(-pool // batch),), (1,), "bool", False),
            "edit_scores": ((rows, samples), (rows, batch), "float64", np.nan),
            "edits_done": ((-(-samples // batch),), (1,), "bool", False),
        }
        for name, (shape, chunks, dtype, fill) in arrays.items():
            new_array(group, name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, overwrite=True)
        group.attrs.update({"record": record})
        return cls(group)

    def pass_range(self, p: int, total: int) -> tuple[int, int]:
        """Samples ``start, stop`` of pass ``p`` of ``total`` samples (the pool's or the evaluation's)."""
        return p * self.batch, min((p + 1) * self.batch, total)

    def missing(self, stage: str) -> list[int]:
        """The passes of ``stage`` (``"pool"`` or ``"edits"``) not done, in order."""
        return [int(p) for p in np.flatnonzero(~read_flags(array_at(self.group, f"{stage}_done")))]

    def write_pool(self, p: int, h: torch.Tensor, scores: np.ndarray) -> None:
        """Store pool pass ``p``: h_{T:1} (n, T, C, H, W) and scores (n, A); then mark it done."""
        start, stop = self.pass_range(p, self.pool_samples)
        h_array, score_array = array_at(self.group, "pool_h"), array_at(self.group, "pool_scores")
        expected = {"h": (stop - start, *h_array.shape[1:]), "scores": (stop - start, score_array.shape[1])}
        check_shapes(f"efficiency pool pass {p}", {"h": h, "scores": scores}, expected)
        h_array[start:stop] = h.numpy()
        score_array[start:stop] = scores
        array_at(self.group, "pool_done")[p] = True

    def pool_scores(self) -> np.ndarray:
        """Every pool sample's scores (pool, A); refused while a pool pass is missing."""
        self._check_done("pool")
        return np.asarray(array_at(self.group, "pool_scores")[...])

    def pool_h(self, rows: np.ndarray) -> torch.Tensor:
        """h_{T:1} of pool samples ``rows`` (ascending indices), read alone: (len(rows), T, C, H, W)."""
        return torch.from_numpy(np.asarray(array_at(self.group, "pool_h").get_orthogonal_selection(rows)))

    def write_directions(self, directions: ExampleDirections) -> None:
        """Store the directions, then the attribute that marks them done."""
        group = self.group.require_group("directions")
        arrays = {name: getattr(directions, name).numpy() for name in TENSORS}
        arrays |= {"cosine_h": directions.cosine_h, "cosine_x": directions.cosine_x}
        for name, array in arrays.items():
            new_array(group, name, shape=array.shape, dtype=array.dtype, overwrite=True)[...] = array
        self.group.attrs.update({"directions": {"usable": directions.usable}})

    def directions(self) -> ExampleDirections | None:
        """The stored directions, or None where they are not (all) stored."""
        done = json_attrs(self.group, "directions")
        if not done:
            return None
        group = group_at(self.group, "directions")
        h, x_T, random_h, random_x = (torch.from_numpy(read_array(group, name)) for name in TENSORS)
        return ExampleDirections(
            h=h,
            x_T=x_T,
            random_h=random_h,
            random_x=random_x,
            cosine_h=read_array(group, "cosine_h"),
            cosine_x=read_array(group, "cosine_x"),
            usable=int(done["usable"]),
        )

    def write_edits(self, p: int, scores: np.ndarray) -> None:
        """Store evaluation pass ``p``'s scores (rows, n), then mark it done."""
        start, stop = self.pass_range(p, self.eval_samples)
        array = array_at(self.group, "edit_scores")
        check_shapes(f"efficiency edits pass {p}", {"scores": scores}, {"scores": (array.shape[0], stop - start)})
        array[:, start:stop] = scores
        array_at(self.group, "edits_done")[p] = True

    def edit_scores(self) -> np.ndarray:
        """Every evaluation sample's scores (rows, eval_samples); refused while a pass is missing."""
        self._check_done("edits")
        return np.asarray(array_at(self.group, "edit_scores")[...])

    def write_curve(self, curve: EfficiencyCurve) -> None:
        self.group.attrs.update({"curve": curve.to_dict()})

    def curve(self) -> EfficiencyCurve | None:
        """The finished curve, or None before every part is in."""
        data = json_attrs(self.group, "curve")
        return EfficiencyCurve.from_dict(data) if data else None

    def _check_done(self, stage: str) -> None:
        missing = self.missing(stage)
        if missing:
            raise HSpaceError(f"{self.group.store_path} has {len(missing)} {stage} passes not done; rerun")
