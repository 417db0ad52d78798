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


def heatmap(values: np.ndarray, rows: list[str], *, low: float = 0.0, high: float = 1.0, cell: int = 10,
            title: str = "") -> Image.Image:
    """A matrix as coloured cells (blue at ``low`` to red at ``high``), row labels on the left."""
    from PIL import ImageDraw

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(rows):
        raise HSpaceError(f"heatmap needs a (rows, columns) matrix with one label per row; got {values.shape}, "
                          f"{len(rows)} labels")
    label_width, top = 8 + 7 * max(map(len, rows)), 20 if title else 4
    height, width = values.shape
    picture = Image.new("RGB", (label_width + width * cell + 4, top + height * cell + 4), "white")
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((4, 4), title, fill="black")
    share = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low or 1.0), 0, 1)
    for i, name in enumerate(rows):
        draw.text((4, top + i * cell), name, fill="black")
        for j in range(width):
            red, blue = int(255 * share[i, j]), int(255 * (1 - share[i, j]))
            x, y = label_width + j * cell, top + i * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(red, 64, blue))
    return picture
