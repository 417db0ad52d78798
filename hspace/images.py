"""Reading pictures: real images for DDIM inversion (SM -F) and the mask M of eq. 10.

Every picture is opened by :func:`open_picture`, so an unreadable file fails the same way wherever it is read.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hspace.errors import HSpaceError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def open_picture(path: str | Path) -> Image.Image:
    """The decoded picture at ``path`` (PIL, fully loaded, its ``format`` known).

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If its bytes are not a picture PIL can decode.
    """
    from PIL import Image, UnidentifiedImageError

    data = Path(path).read_bytes()
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except UnidentifiedImageError:
        # PIL names the in-memory buffer (with its address); name the file, as reading it directly would.
        raise ValueError(f"cannot identify image file {str(path)!r}") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"not a picture PIL can decode ({error})") from error
    return picture


def image_files(folder: str | Path) -> list[Path]:
    """The PNG and JPEG files of a folder, sorted by name (other files are ignored).

    Raises
    ------
    HSpaceError
        If the folder does not exist or holds no PNG/JPEG file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HSpaceError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise HSpaceError(f"image folder {folder} holds no PNG or JPEG files ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_images(folder: str | Path, shape: Sequence[int]) -> tuple[np.ndarray, list[Path]]:
    """The PNG and JPEG images of a folder (sorted by name) as uint8 (n, 3, S, S), centre-cropped and resized.

    Parameters
    ----------
    folder : str or Path
    shape : (3, S, S) or (3, H, W)
        The model's image shape; other files in the folder are ignored.

    Returns
    -------
    images : ndarray of shape (n, 3, H, W), uint8
    paths : list of Path, in the same order

    Raises
    ------
    HSpaceError
        If the folder does not exist, holds no PNG/JPEG file, or a file cannot be read as an image.
    """
    paths = image_files(folder)
    return load_image_files(paths, shape), paths


def load_image_files(paths: Sequence[str | Path], shape: Sequence[int]) -> np.ndarray:
    """Image files as uint8 (n, 3, H, W) for ``shape`` = (3, H, W), centre-cropped and resized (:func:`load_images`)."""
    _, height, width = (int(s) for s in shape)
    images = []
    for path in paths:
        try:
            picture = open_picture(path).convert("RGB")
        except (OSError, ValueError) as error:
            raise HSpaceError(f"cannot read {path} as an image ({error}); remove or replace it") from None
        images.append(np.asarray(fit_picture(picture, width, height)).transpose(2, 0, 1))
    if not images:
        raise HSpaceError("no image files given")
    # C-contiguous: a channels-last layout (what stacking transposed views gives) makes the U-Net's CPU
    # convolutions round differently (1.5e-6 on the tiny model's inverted x_T), so results would depend on it.
    return np.ascontiguousarray(np.stack(images), dtype=np.uint8)


def read_mask_png(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """M of eq. 10 from a PNG (white = region): uint8 (S, S) of 0/1.

    The picture is read as grey levels, resized to ``image_size`` (height, width) by nearest neighbour and
    binarised at 128. It must be a PNG with the image's aspect ratio and at least one white pixel.
    """
    from PIL import Image

    path = Path(path)
    try:
        picture = open_picture(path)
    except OSError as error:
        raise HSpaceError(f"cannot read the mask {path}: {error.strerror or error}") from error
    except ValueError as error:
        raise HSpaceError(f"the mask {path} is not a readable image: give a PNG (white = region)") from error
    if picture.format != "PNG":
        raise HSpaceError(f"the mask {path} is a {picture.format} file; give a PNG (white = region)")
    height, width = image_size
    if picture.width * height != picture.height * width:
        raise HSpaceError(
            f"the mask {path} is {picture.width}x{picture.height} but the images are {width}x{height}: "
            "give a mask of the same aspect ratio (it is resized by nearest neighbour)"
        )
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        picture = picture.convert("RGBA").convert("L")  # alpha dropped: the grey level is what counts
    grey = np.asarray(picture.convert("L").resize((width, height), Image.Resampling.NEAREST))
    mask = (grey >= 128).astype(np.uint8)
    if not mask.any():
        raise HSpaceError(f"the mask {path} has no white pixel at {width}x{height}: mark the region in white")
    return mask


def fit_picture(picture: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the target aspect ratio, then resize (antialiased); a picture of the right size is untouched."""
    from PIL import Image

    if picture.size == (width, height):
        return picture
    w, h = picture.size
    scale = min(w / width, h / height)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return picture.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.LANCZOS)
