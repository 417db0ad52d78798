"""Editing your own photos with a bank's directions (issue 20).

A photo is fitted to the model's size (centre-cropped to its aspect ratio, then resized; each photo's note says
what was done), DDIM-inverted with eta = 0 at the bank's T (:func:`hspace.inversion.invert`), and sampled back
from the inverted x_T with eta = 0 and h_t + sum_j gamma_j v_{j,t} at every step (Sec. III). Both paths are
deterministic and neither clips P_t (clipping cannot be inverted; :mod:`hspace.inversion`), so gamma = 0 gives
the reconstruction exactly, and every edit differs from it by the edit alone.

The reconstruction is not the photo: DDIM inversion is approximate (the U-Net sees x one noise level off at each
step), more so for pictures unlike the model's training data. Each photo's reconstruction error (mean absolute,
in 0-255 levels, and PSNR) is returned, with a warning where it exceeds ``max_error``: an edit of a poor
reconstruction edits that reconstruction, not the photo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hspace.bank import Bank
from hspace.errors import HSpaceError
from hspace.images import fit_picture, open_picture
from hspace.inversion import invert
from hspace.models import LoadedModel
from hspace.sampler import sample, to_uint8

# Mean absolute reconstruction error (0-255 levels) above which a photo gets a warning. Measured on the testbed at
# T = 50 (`python bench/bench_photos.py --bank hspace-demo/bank`): 32 faces drawn by its renderer reconstruct with
# 2.5 levels on average, 5.4 at worst (PSNR 37.2 dB); at T = 10 the same kind of faces need 11 (so use T >= 25).
MAX_ERROR = 8.0

Photo = str | Path | Image.Image | np.ndarray


@dataclass(frozen=True)
class PhotoEdit:
    """What :func:`edit_image` returns.

    Attributes
    ----------
    inputs : uint8 (n, 3, S, S)
        The photos at the model's size.
    reconstructions : uint8 (n, 3, S, S)
        Sampled back from the inverted x_T without an edit (gamma = 0).
    edited : uint8 (rows, n, 3, S, S)
        One row per mapping of gammas given.
    errors : list of dict, one per photo
        ``{"mae": mean |reconstruction - input| in 0-255 levels, "psnr": dB, "warning": str or None}``.
    notes : list of str, one per photo
        How it was fitted to the model's size.
    """

    inputs: np.ndarray
    reconstructions: np.ndarray
    edited: np.ndarray
    errors: list[dict[str, Any]]
    notes: list[str]


def edit_image(
    model: LoadedModel,
    images: Sequence[Photo],
    gammas: Mapping[str, float] | Sequence[Mapping[str, float]],
    bank: Bank,
    *,
    max_error: float = MAX_ERROR,
    microbatch: int | None = None,
) -> PhotoEdit:
    """Edit photos with the bank's named directions (module docstring); directions add.

    Parameters
    ----------
    model : LoadedModel
        The bank's model (:meth:`hspace.bank.Bank.check_model`); it runs in the bank's precision.
    images : sequence of paths, PIL images or uint8 arrays (3, H, W)
        Any size; fitted to the model's (each ``notes`` entry says how).
    gammas : mapping of direction name to gamma, or a sequence of them
        One edit, or one row of edits per mapping; ``{}`` is the reconstruction.
    max_error : float
        Mean absolute reconstruction error (0-255 levels) above which a photo's ``errors`` entry has a warning.
    microbatch : int, optional
        Samples per U-Net pass (:func:`hspace.sampler.sample`).
    """
    bank.check_model(model)
    model = model.at_precision(bank.precision)
    rows = [dict(gammas)] if isinstance(gammas, Mapping) else [dict(g) for g in gammas]
    inputs, notes = fit_photos(images, model.image_shape)
    n = len(inputs)
    x_T = invert(model, inputs, steps=bank.steps, microbatch=microbatch).x_T
    zero = torch.zeros((bank.steps, *model.h_shape))
    # Row 0 unedited, then the edits: one sampler call, every sample with its own delta (zero for row 0).
    deltas = [zero] + [bank.delta(g) if g else zero for g in rows]
    result = sample(
        model,
        [0] * (n * len(deltas)),  # the seeds only seed z_t, and eta = 0 draws none
        steps=bank.steps,
        eta=0.0,
        delta=torch.stack([d for d in deltas for _ in range(n)]),
        capture=False,
        microbatch=microbatch,
        x_T=x_T.repeat(len(deltas), 1, 1, 1),
        clip_sample=False,
    )
    out = to_uint8(result.images).numpy().reshape(len(deltas), n, *model.image_shape)
    return PhotoEdit(
        inputs=inputs,
        reconstructions=out[0],
        edited=out[1:],
        errors=[reconstruction_error(a, b, max_error) for a, b in zip(inputs, out[0], strict=True)],
        notes=notes,
    )


def fit_photos(images: Sequence[Photo], shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """The photos as uint8 (n, 3, H, W) for ``shape`` = (3, H, W), centre-cropped and resized, and a note each."""
    if not images:
        raise HSpaceError("no photos given")
    _, height, width = (int(s) for s in shape)
    pictures, notes = [], []
    for i, image in enumerate(images):
        picture = _picture(image, i)
        w, h = picture.size
        fitted = fit_picture(picture, width, height)
        notes.append(
            f"{_label(image, i)}: at the model's size {width}x{height}"
            if (w, h) == (width, height)
            else f"{_label(image, i)}: {w}x{h} centre-cropped to its {width}:{height} middle and resized to "
            f"{width}x{height}"
        )
        pictures.append(np.asarray(fitted).transpose(2, 0, 1))
    # C-contiguous, as hspace.images.load_image_files: a channels-last layout rounds CPU convolutions differently.
    return np.ascontiguousarray(np.stack(pictures), dtype=np.uint8), notes


def reconstruction_error(photo: np.ndarray, reconstruction: np.ndarray, max_error: float) -> dict[str, Any]:
    """Mean absolute error (0-255 levels) and PSNR (dB) of a reconstruction; a warning above ``max_error``."""
    diff = photo.astype(np.float64) - reconstruction.astype(np.float64)
    mae, mse = float(np.abs(diff).mean()), float(np.square(diff).mean())
    psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
    warning = (
        f"reconstruction error {mae:.1f} levels exceeds {max_error:g}: DDIM inversion does not reproduce this photo "
        "well (unlike the model's training images?); its edits edit the reconstruction shown, not the photo"
        if mae > max_error
        else None
    )
    return {"mae": mae, "psnr": psnr, "warning": warning}


# ----- private helpers ---------------------------------------------------------------------------
def _picture(image: Photo, index: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise HSpaceError(
                f"photo {index}: an array must be uint8 of shape (3, H, W); got {image.dtype} {image.shape}"
            )
        return Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    try:
        return open_picture(image).convert("RGB")
    except (OSError, ValueError) as error:
        raise HSpaceError(f"cannot read {image} as an image ({error})") from None


def _label(image: Photo, index: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"photo {index}"
