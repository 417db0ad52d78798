"""Pictures (PIL): sample grids as PNG, heatmaps, and the explained-variance and Fig. 8a line plots."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hspace.errors import HSpaceError
from hspace.files import atomic_write


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
        canvas[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    picture = Image.fromarray(canvas)
    if scale <= 1:
        return picture
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def png_bytes(picture: Image.Image) -> bytes:
    """A picture as PNG file bytes (for :func:`hspace.files.write_whole_files`)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_grid(images: np.ndarray, path: Path, **grid_options: int) -> Path:
    """Write :func:`image_grid` to ``path`` (PNG) by write-then-rename (a file that exists is whole); the path."""
    picture = image_grid(images, **grid_options)
    return atomic_write(path, lambda staging: picture.save(staging, format="PNG"))


def heatmap(
    values: np.ndarray, rows: list[str], *, low: float = 0.0, high: float = 1.0, cell: int = 10, title: str = ""
) -> Image.Image:
    """A matrix as coloured cells (blue at ``low`` to red at ``high``), row labels on the left."""
    from PIL import ImageDraw

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != len(rows):
        raise HSpaceError(
            f"heatmap needs a (rows, columns) matrix with one label per row; got {values.shape}, {len(rows)} labels"
        )
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


# Label geometry of the default PIL font: about 6 px per character, 11 px per line.
_CHAR_WIDTH, _LINE_HEIGHT = 6, 12


def labeled_grid(
    images: np.ndarray,
    row_labels: list[str],
    column_labels: list[str],
    *,
    column_groups: list[str] | None = None,
    scale: int | None = None,
    pad: int = 2,
) -> Image.Image:
    """A grid of uint8 images (rows, columns, 3, S, S) with row labels on the left and column labels on top.

    ``column_groups`` (optional, one label per run of equal consecutive entries) is a second header line
    above the column labels, e.g. the seed over its gamma columns (the layout of the paper's Fig. 3-5).
    Each image is enlarged by ``scale`` (default: to about 64 px, as :func:`image_grid`). Cell (r, c) has its
    top-left corner at ``(left + pad + c * (w + pad), top + pad + r * (h + pad))`` with ``w, h = scale * S``,
    ``left = 4 + 6 * max(len(row label))`` and ``top = 12 * header lines + 2``; the picture is
    ``left + pad + columns * (w + pad)`` wide and ``top + pad + rows * (h + pad)`` high.
    """
    from PIL import ImageDraw

    if images.ndim != 5 or images.shape[2] != 3 or images.dtype != np.uint8:
        raise HSpaceError(
            f"labeled_grid expects uint8 images of shape (rows, columns, 3, S, S); got {images.dtype} {images.shape}"
        )
    rows, columns, _, height, width = images.shape
    if len(row_labels) != rows or len(column_labels) != columns:
        raise HSpaceError(
            f"labeled_grid needs one label per row and per column: {rows} x {columns} images, "
            f"{len(row_labels)} row and {len(column_labels)} column labels"
        )
    if column_groups is not None and len(column_groups) != columns:
        raise HSpaceError(f"column_groups needs one entry per column ({columns}); got {len(column_groups)}")
    scale = scale or max(1, 64 // max(height, width))
    w, h = width * scale, height * scale
    left = 4 + _CHAR_WIDTH * max(map(len, row_labels))
    top = _LINE_HEIGHT * (1 if column_groups is None else 2) + 2
    picture = Image.new("RGB", (left + pad + columns * (w + pad), top + pad + rows * (h + pad)), "white")
    draw = ImageDraw.Draw(picture)
    x_of = [left + pad + c * (w + pad) for c in range(columns)]
    if column_groups is not None:
        for c, name in enumerate(column_groups):
            if c == 0 or column_groups[c - 1] != name:
                draw.text((x_of[c], 1), name, fill="black")
    for c, name in enumerate(column_labels):
        draw.text((x_of[c], top - _LINE_HEIGHT), name, fill="black")
    for r, name in enumerate(row_labels):
        y = top + pad + r * (h + pad)
        draw.text((2, y + max(0, (h - _LINE_HEIGHT) // 2)), name, fill="black")
        for c in range(columns):
            cell = Image.fromarray(images[r, c].transpose(1, 2, 0)).resize((w, h), Image.Resampling.NEAREST)
            picture.paste(cell, (x_of[c], y))
    return picture


def explained_variance_plot(
    ratios: np.ndarray, step_labels: list[str], *, title: str = "", size: tuple[int, int] = (480, 320)
) -> Image.Image:
    """Cumulative explained-variance ratio against the number of components, one curve per step.

    ``ratios`` is (steps, k): the explained variance ratio of each component at each step (rows with NaN
    are skipped). Curves go from blue (first step, the noisiest) to red (last step); the first and last
    labels are written in the legend.
    """
    from PIL import ImageDraw

    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 2 or ratios.shape[0] != len(step_labels):
        raise HSpaceError(
            f"explained_variance_plot needs a (steps, components) matrix with one label per step; "
            f"got {ratios.shape}, {len(step_labels)} labels"
        )
    width, height = size
    margin_left, margin_right, margin_top, margin_bottom = 44, 12, 22 if title else 10, 30
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    x0, x1, y0, y1 = margin_left, width - margin_right, height - margin_bottom, margin_top
    draw.rectangle((x0, y1, x1, y0), outline="black")
    if title:
        draw.text((margin_left, 4), title, fill="black")
    steps, k = ratios.shape

    def x_at(j: float) -> float:  # j components (1..k)
        return x0 + (x1 - x0) * ((j - 1) / max(k - 1, 1))

    def y_at(value: float) -> float:
        return y0 - (y0 - y1) * float(np.clip(value, 0.0, 1.0))

    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_at(value)
        draw.line((x0 - 3, y, x0, y), fill="black")
        draw.text((4, y - 5), f"{value:.2f}", fill="black")
    for j in sorted({1, (k + 1) // 2, k}):
        x = x_at(j)
        draw.line((x, y0, x, y0 + 3), fill="black")
        draw.text((x - 3, y0 + 5), str(j), fill="black")
    draw.text(((x0 + x1) // 2 - 40, height - 12), "components (cumulative)", fill="black")
    drawn = [i for i in range(steps) if not np.isnan(ratios[i]).any()]
    for rank, i in enumerate(drawn):
        share = rank / max(len(drawn) - 1, 1)
        colour = (int(255 * share), 40, int(255 * (1 - share)))
        cumulative = np.cumsum(ratios[i])
        points = [(x_at(j + 1), y_at(cumulative[j])) for j in range(k)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        else:
            draw.line(points, fill=colour, width=1)
    if drawn:
        legend = [(drawn[0], (0, 40, 255)), (drawn[-1], (255, 40, 0))] if len(drawn) > 1 else [(drawn[0], (0, 40, 255))]
        for n, (i, colour) in enumerate(legend):
            y = y0 - 14 - 12 * (len(legend) - 1 - n)
            draw.line((x1 - 110, y + 5, x1 - 96, y + 5), fill=colour, width=2)
            draw.text((x1 - 92, y), step_labels[i], fill="black")
    return picture


def _diverging(share: float) -> tuple[int, int, int]:
    """-1 -> blue, 0 -> white, +1 -> red."""
    share = max(-1.0, min(1.0, share))
    fade = int(round(255 * (1 - abs(share))))
    return (255, fade, fade) if share >= 0 else (fade, fade, 255)


def labelled_heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    low: float,
    high: float,
    title: str = "",
    digits: int = 2,
) -> Image.Image:
    """A matrix as coloured cells with row and column labels and each value written in its cell
    (:func:`heatmap` has neither column labels nor values).

    Colour: blue at ``low``, white at the midpoint, red at ``high`` (pass a symmetric range for changes).
    """
    from PIL import ImageDraw

    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(rows), len(columns)):
        raise HSpaceError(
            f"heatmap needs a (rows, columns) matrix with one label each; got {values.shape}, "
            f"{len(rows)} row and {len(columns)} column labels"
        )
    char_w, line_h = _CHAR_WIDTH, 11  # PIL's default bitmap font, lines packed 1 pixel tighter than labels
    cell_w = max(8 + char_w * (digits + 3), 8 + char_w * max(map(len, columns)))
    cell_h = 18
    left = 10 + char_w * max(map(len, rows))
    top = (line_h + 8 if title else 4) + line_h + 4
    picture = Image.new("RGB", (left + cell_w * len(columns) + 6, top + cell_h * len(rows) + 6), "white")
    draw = ImageDraw.Draw(picture)
    if title:
        draw.text((4, 4), title, fill="black")
    for j, name in enumerate(columns):
        draw.text((left + j * cell_w + (cell_w - char_w * len(name)) // 2, top - line_h - 2), name, fill="black")
    middle, half = (high + low) / 2, (high - low) / 2 or 1.0
    for i, name in enumerate(rows):
        y = top + i * cell_h
        draw.text((4, y + (cell_h - line_h) // 2), name, fill="black")
        for j in range(len(columns)):
            x, value = left + j * cell_w, values[i, j]
            colour = (200, 200, 200) if not np.isfinite(value) else _diverging((value - middle) / half)
            draw.rectangle((x, y, x + cell_w - 2, y + cell_h - 2), fill=colour)
            text = f"{value:+.{digits}f}" if np.isfinite(value) else "n/a"
            draw.text((x + (cell_w - char_w * len(text)) // 2, y + (cell_h - line_h) // 2), text, fill="black")
    return picture


def line_plot(
    x: np.ndarray,
    series: Mapping[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 480,
    height: int = 300,
) -> Image.Image:
    """Lines over a log x axis: ``series`` maps a label to (values, error bars, RGB colour)."""
    from PIL import ImageDraw

    margin_l, margin_r, margin_t, margin_b = 56, 16, 28, 40
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    lx = np.log(np.asarray(x, dtype=np.float64))
    x0, x1 = float(lx.min()), float(lx.max())
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    lows = [np.asarray(v) - np.asarray(e) for v, e, _ in series.values()]
    highs = [np.asarray(v) + np.asarray(e) for v, e, _ in series.values()]
    y0, y1 = min(0.0, float(np.min(lows))), max(0.0, float(np.max(highs)))
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(value: float) -> float:
        return margin_l + (value - x0) / (x1 - x0) * (width - margin_l - margin_r)

    def py(value: float) -> float:
        return height - margin_b - (value - y0) / (y1 - y0) * (height - margin_t - margin_b)

    draw.rectangle((margin_l, margin_t, width - margin_r, height - margin_b), outline="black")
    draw.line((margin_l, py(0.0), width - margin_r, py(0.0)), fill=(170, 170, 170))
    for value, raw in zip(lx, x, strict=False):
        draw.line((px(value), height - margin_b, px(value), height - margin_b + 4), fill="black")
        draw.text((px(value) - 3 * len(f"{raw:g}"), height - margin_b + 6), f"{raw:g}", fill="black")
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        draw.line((margin_l - 4, py(value), margin_l, py(value)), fill="black")
        draw.text((4, py(value) - 5), f"{value:+.2f}", fill="black")
    draw.text((margin_l, 8), title, fill="black")
    draw.text((margin_l, height - 14), x_label, fill="black")
    draw.text((width - margin_r - 6 * len(y_label), margin_t + 4), y_label, fill=(90, 90, 90))
    for k, (label, (values, errors, colour)) in enumerate(series.items()):
        points = [(px(a), py(b)) for a, b in zip(lx, values, strict=False)]
        draw.line(points, fill=colour, width=2)
        for (cx, cy), b, e in zip(points, values, errors, strict=False):
            draw.line((cx, py(b - e), cx, py(b + e)), fill=colour)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        draw.text((margin_l + 8, margin_t + 6 + 12 * k), f"- {label}", fill=colour)
    return picture
