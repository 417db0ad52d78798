"""Pictures: sample grids as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from hspace.errors import HSpaceError


def image_grid(images: np.ndarray, *, columns: int | None = None, scale: int | None = None) -> Image.Image:
    """Tile uint8 images of shape (N, 3, S, S) into one RGB picture, small images enlarged to ~64 px."""
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise HSpaceError(f"image_grid expects uint8 images of shape (N, 3, S, S); got {images.dtype} {images.shape}")
    n, _, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    scale = scale or max(1, 64 // max(height, width))
    pad = 2
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        top, left = pad + row * (height + pad), pad + col * (width + pad)
        canvas[top:top + height, left:left + width] = image.transpose(1, 2, 0)
    picture = Image.fromarray(canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def save_grid(images: np.ndarray, path: Path, **grid_options: int) -> Path:
    """Write :func:`image_grid` to ``path`` (PNG) and return the path."""
    image_grid(images, **grid_options).save(path)
    return path
