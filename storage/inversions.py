"""The parts of a DDIM inversion of image folders (SM -F), kept so that a rerun inverts only what is missing.

``inversions/<key>`` is a group in the corpus the direction goes to (or, without a corpus, in a Zarr folder
next to ``--out``, :func:`standalone_root`). The key hashes every image's pixels and every setting that
decides the bits (:func:`inversion_key`). The group holds, per side ``s`` (``images``, or ``positives`` and
``negatives``; sorted by file name as the folders are read):

==================  ====================  =======  =============================================
array               shape                 dtype    chunks
==================  ====================  =======  =============================================
``<s>/x_T``         (n, 3, S, S)          float32  one per image
``<s>/h``           (n, T, C, H, W)       float32  one per image
``<s>/done``        (passes,)             bool     one per flag, set after its pass's x_T and h
==================  ====================  =======  =============================================

A pass is ``batch`` images inverted in one U-Net pass; ``batch`` is part of the key (on a GPU it decides
the bits). Each image is stored whole, so the direction is reduced from them in image order at the end,
the same bits for any split of the passes into tasks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from storage.groups import array_at, check_shapes, json_attrs, new_array, read_flags

INVERSIONS = "inversions"


def image_digest(image: np.ndarray) -> str:
    """sha256 of one uint8 image's shape and pixels (as inverted: at the model's size)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()


def inversion_key(digests: Mapping[str, Sequence[str]], settings: dict[str, Any]) -> str:
    """sha256 over the settings (JSON, sorted) and each side's name and image digests, in order."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for side, images in digests.items():
        digest.update(f"{side}:{','.join(images)};".encode())
    return digest.hexdigest()[:32]


def standalone_root(path: str) -> zarr.Group:
    """A local Zarr group at ``path`` that holds ``inversions/<key>`` where no corpus is given."""
    return zarr.open_group(path, mode="a")


class InversionParts:
    """The inverted images of one inversion under ``inversions/<key>``, written pass by pass (module docstring)."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        parts = json_attrs(group, "parts")
        self.batch = int(parts["batch"])
        self.counts: dict[str, int] = {side: int(n) for side, n in parts["counts"].items()}
        self.sides = tuple(self.counts)

    @classmethod
    def create_or_open(
        cls,
        root: zarr.Group,
        key: str,
        settings: dict[str, Any],
        *,
        counts: dict[str, int],
        noise_shape: tuple[int, ...],
        h_shape: tuple[int, ...],
        batch: int,
    ) -> InversionParts:
        """The parts of inversion ``key`` under ``root`` (writable): created empty, or reopened as made.

        ``counts``: images per side, in side order; ``h_shape`` is (T, C, H, W).
        """
        group = root.require_group(INVERSIONS).require_group(key)
        wanted: dict[str, Any] = {"batch": batch, "counts": dict(counts)}
        made = json_attrs(group, "parts")
        if made:
            if made != wanted:  # the key covers both: only a damaged group gets here
                raise HSpaceError(f"inversion parts {group.path} were made as {made}, not {wanted}: remove them")
            return cls(group)
        # Arrays first, the record last: a crash in between leaves no record, and the rerun makes them anew.
        for side, n in counts.items():
            for name, shape in (("x_T", noise_shape), ("h", h_shape)):
                new_array(
                    group,
                    f"{side}/{name}",
                    shape=(n, *shape),
                    chunks=(1, *shape),
                    dtype="float32",
                    fill_value=np.nan,
                    overwrite=True,
                )
            passes = -(-n // batch)
            new_array(
                group, f"{side}/done", shape=(passes,), chunks=(1,), dtype="bool", fill_value=False, overwrite=True
            )
        group.attrs.update({"settings": settings, "parts": wanted})
        return cls(group)

    def passes(self, side: int) -> int:
        """The U-Net passes of side ``side`` (its index in :attr:`sides`)."""
        return -(-self.counts[self.sides[side]] // self.batch)

    def pass_range(self, side: int, p: int) -> tuple[int, int]:
        """Images ``start, stop`` of pass ``p`` within its side."""
        return p * self.batch, min((p + 1) * self.batch, self.counts[self.sides[side]])

    def missing(self) -> list[tuple[int, int]]:
        """(side, pass) of every pass not done, in order."""
        return [
            (s, int(p))
            for s, side in enumerate(self.sides)
            for p in np.flatnonzero(~read_flags(array_at(self.group, f"{side}/done")))
        ]

    def write(self, side: int, p: int, x_T: np.ndarray, h: np.ndarray) -> None:
        """Store pass ``p`` of side ``side`` (x_T (k, 3, S, S), h (k, T, C, H, W)), then mark it done."""
        name = self.sides[side]
        start, stop = self.pass_range(side, p)
        x_array, h_array = array_at(self.group, f"{name}/x_T"), array_at(self.group, f"{name}/h")
        check_shapes(
            f"inversion pass {p} of {name}",
            {"x_T": x_T, "h": h},
            {"x_T": (stop - start, *x_array.shape[1:]), "h": (stop - start, *h_array.shape[1:])},
        )
        x_array[start:stop] = x_T
        h_array[start:stop] = h
        array_at(self.group, f"{name}/done")[p] = True

    def check_complete(self) -> None:
        """Refuse to go on while any pass is missing (before :meth:`read`)."""
        missing = self.missing()
        if missing:
            raise HSpaceError(f"inversion {self.group.path} has {len(missing)} passes not done; rerun the inversion")

    def read(self, side: int, what: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """``what`` (``x_T`` or ``h``) of images ``start:stop`` of side ``side`` (after :meth:`check_complete`)."""
        return np.asarray(array_at(self.group, f"{self.sides[side]}/{what}")[start:stop])


def remove_standalone(path: str) -> None:
    """Remove the Zarr folder of :func:`standalone_root` once its inversion is written (the result holds it all)."""
    shutil.rmtree(path, ignore_errors=True)
