"""Procedural cartoon faces with known, independent factors of variation (one deliberate correlation).

The faces are the training data of a small diffusion model (32x32 RGB) and the ground truth against which
editing directions in its latent space are checked: a direction is "real" if moving along it changes one of
:data:`FACTORS` and leaves the others alone.

Factors (all float32, one value per face):

* ``yaw`` in [-1, 1]: horizontal shift of the inner features (eyes, nose, mouth, glasses) relative to the
  face outline, like turning the head; uniform.
* ``smile`` in [-1, 1]: signed mouth curvature, -1 frown, +1 big smile; uniform. The mouth is a thick
  stroke (MOUTH_WIDTH, 2.6 px at 32x32) bent by up to 3.8 px: as a 1.4 px line it was settled in the last
  sampling steps by the model's full-resolution skips, outside h, and its h direction did not move it.
* ``eyes_open`` in {0, 1}: both eyes open (white ellipse with a dark pupil) or closed (a thin line);
  Bernoulli(0.5).
* ``glasses`` in {0, 1}: dark round frames around both eyes plus a bridge; Bernoulli(0.3).
* ``hat`` in {0, 1}: a blue hat over the top of the head. Deliberately correlated with ``glasses``:
  P(hat | glasses) = 0.7, P(hat | no glasses) = 0.2.
* ``skin_tone`` in [0, 1]: light to dark skin colour; uniform.
* ``face_width`` in [0, 1]: face ellipse width from 0.70 to 0.95 of its height; uniform.
* ``background`` in [0, 1]: background grey from 0.15 to 0.85 brightness; uniform.

Fixed: face centred, hair and hat colours, dark pupils. Every face is drawn with PIL at 4x the output size
and box-filtered down, which antialiases the edges.

Speed, measured on one core of the development machine: about 5,000 faces/s at 32x32 (2,000 at 64x64).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from hspace.errors import HSpaceError

FACTORS: tuple[str, ...] = ("yaw", "smile", "eyes_open", "glasses", "hat", "skin_tone", "face_width", "background")
BINARY_FACTORS: tuple[str, ...] = ("eyes_open", "glasses", "hat")

# Closed range each continuous factor must lie in (binary factors must be exactly 0 or 1).
FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-1.0, 1.0),
    "smile": (-1.0, 1.0),
    "skin_tone": (0.0, 1.0),
    "face_width": (0.0, 1.0),
    "background": (0.0, 1.0),
}

P_GLASSES = 0.3
P_HAT_GIVEN_GLASSES = 0.7
P_HAT_GIVEN_NO_GLASSES = 0.2
P_EYES_OPEN = 0.5

SUPERSAMPLE = 4  # drawing resolution / output resolution

# Geometry in units of the canvas side (0 = left/top, 1 = right/bottom), so any output size works.
FACE_CENTER = (0.5, 0.56)
FACE_HALF_HEIGHT = 0.36
FACE_WIDTH_RATIO = (0.70, 0.95)  # half-width / half-height at face_width = 0 and 1
YAW_SHIFT = 0.09  # feature shift at |yaw| = 1; small enough that glasses stay on the narrowest face
NOSE_YAW_GAIN = 1.3  # the nose sticks out, so it moves further than the eyes when the head turns
EYE_Y, EYE_DX = 0.50, 0.095
EYE_WHITE = (0.06, 0.05)  # half-width, half-height
PUPIL_RADIUS = 0.032
CLOSED_EYE_HALF_WIDTH, CLOSED_EYE_WIDTH = 0.065, 0.03
GLASSES_RADIUS, GLASSES_WIDTH = 0.08, 0.035
NOSE_Y, NOSE_SIZE = 0.635, (0.03, 0.04)
MOUTH_Y, MOUTH_HALF_WIDTH, MOUTH_CURVE, MOUTH_WIDTH = 0.78, 0.13, 0.12, 0.08
HAIR_ARC = (205, 335)  # degrees (PIL: clockwise from 3 o'clock) of the hair cap on the face ellipse
HAT_CROWN = (0.27, 0.03, 0.73, 0.33)
HAT_BRIM = (0.14, 0.28, 0.86, 0.38)
HAT_BAND = (0.27, 0.24, 0.73, 0.29)

LIGHT_SKIN = np.array([245, 210, 180], dtype=np.float64)
DARK_SKIN = np.array([105, 65, 40], dtype=np.float64)
BACKGROUND_RANGE = (0.15, 0.85)
HAIR_COLOR = (60, 38, 20)
HAT_COLOR = (30, 100, 225)
HAT_BAND_COLOR = (15, 45, 110)
EYE_WHITE_COLOR = (250, 250, 250)
PUPIL_COLOR = (20, 20, 30)
GLASSES_COLOR = (15, 15, 15)
MOUTH_COLOR = (150, 15, 40)


def sample_factors(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw factors for ``n`` faces: all independent except ``hat``, which depends on ``glasses``.

    Parameters
    ----------
    n : int
        Number of faces, positive.
    rng : numpy.random.Generator
        Source of randomness; the draw order is fixed, so a seeded generator gives the same factors.

    Returns
    -------
    dict[str, numpy.ndarray]
        One float32 array of shape (n,) per name in :data:`FACTORS`.
    """
    _check_count(n)
    glasses = rng.random(n) < P_GLASSES
    p_hat = np.where(glasses, P_HAT_GIVEN_GLASSES, P_HAT_GIVEN_NO_GLASSES)
    drawn = {
        "yaw": rng.uniform(-1.0, 1.0, n),
        "smile": rng.uniform(-1.0, 1.0, n),
        "eyes_open": rng.random(n) < P_EYES_OPEN,
        "glasses": glasses,
        "hat": rng.random(n) < p_hat,
        "skin_tone": rng.random(n),
        "face_width": rng.random(n),
        "background": rng.random(n),
    }
    return {name: drawn[name].astype(np.float32) for name in FACTORS}


def render_faces(factors: Mapping[str, np.ndarray], size: int = 32) -> np.ndarray:
    """Draw one face per entry of ``factors``.

    Parameters
    ----------
    factors : mapping of str to numpy.ndarray
        Every name in :data:`FACTORS`, each an array of shape (n,) in its range (binary factors 0 or 1).
        Extra keys are ignored.
    size : int
        Output side in pixels, at least 8.

    Returns
    -------
    numpy.ndarray
        uint8 images of shape (n, 3, size, size).
    """
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise HSpaceError(f"size must be an integer >= 8; got {size!r}")
    values = _validated(factors)
    n = len(values["yaw"])
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        face = {name: float(values[name][i]) for name in FACTORS}
        images[i] = np.asarray(_render_one(face, size)).transpose(2, 0, 1)
    return images


def render_dataset(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample ``n`` faces' factors from ``seed`` and draw them; the same arguments give the same result.

    Parameters
    ----------
    n : int
        Number of faces, positive.
    seed : int
        Seed of the ``numpy.random.default_rng`` the factors come from.
    size : int
        Output side in pixels.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape (n, 3, size, size).
    factors : dict[str, numpy.ndarray]
        float32, each of shape (n,), as from :func:`sample_factors`.
    """
    factors = sample_factors(n, np.random.default_rng(seed))
    return render_faces(factors, size), factors


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise HSpaceError(f"the number of faces must be a positive integer; got {n!r}")


def _validated(factors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check names, shapes and ranges; return float64 arrays of shape (n,) keyed by factor name."""
    missing = [name for name in FACTORS if name not in factors]
    if missing:
        raise HSpaceError(f"missing face factor(s): {', '.join(missing)}; expected all of {', '.join(FACTORS)}")
    values = {name: np.asarray(factors[name], dtype=np.float64) for name in FACTORS}
    lengths = {name: v.shape for name, v in values.items()}
    n = len(values["yaw"]) if values["yaw"].ndim == 1 else -1
    if n <= 0 or any(shape != (n,) for shape in lengths.values()):
        raise HSpaceError(f"face factors must be non-empty 1-D arrays of one length; got shapes {lengths}")
    for name in BINARY_FACTORS:
        if not np.isin(values[name], (0.0, 1.0)).all():
            raise HSpaceError(f"face factor {name!r} must be 0 or 1")
    for name, (low, high) in FACTOR_RANGES.items():
        v = values[name]
        if not (np.isfinite(v).all() and (v >= low).all() and (v <= high).all()):
            raise HSpaceError(f"face factor {name!r} must lie in [{low}, {high}]")
    return values


def _render_one(face: dict[str, float], size: int) -> Image.Image:
    """One face as a (size, size) RGB image: drawn at SUPERSAMPLE x size, then box-filtered down."""
    side = size * SUPERSAMPLE
    grey = round(255 * np.interp(face["background"], (0.0, 1.0), BACKGROUND_RANGE))
    image = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    skin = LIGHT_SKIN + face["skin_tone"] * (DARK_SKIN - LIGHT_SKIN)
    _draw_head(draw, side, face["face_width"], _rgb(skin))
    # The nose is skin darkened a little, so it reads on light and dark skin alike.
    nose = _rgb(skin * 0.72)
    _draw_features(draw, side, face, nose)
    if face["hat"]:
        _draw_hat(draw, side)
    return image.resize((size, size), Image.Resampling.BOX)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(c) for c in np.rint(colour))
    return red, green, blue


def _draw_head(draw: ImageDraw.ImageDraw, side: int, face_width: float, skin: tuple[int, int, int]) -> None:
    cx, cy = FACE_CENTER
    ry = FACE_HALF_HEIGHT
    rx = ry * np.interp(face_width, (0.0, 1.0), FACE_WIDTH_RATIO)
    box = _px(side, cx - rx, cy - ry, cx + rx, cy + ry)
    draw.ellipse(box, fill=skin)
    # Hair: a cap cut from the same ellipse, so it always hugs the outline whatever the width.
    draw.chord(box, HAIR_ARC[0], HAIR_ARC[1], fill=HAIR_COLOR)


def _draw_features(draw: ImageDraw.ImageDraw, side: int, face: dict[str, float], nose: tuple[int, int, int]) -> None:
    """Eyes, glasses, nose and mouth, all shifted sideways by yaw."""
    shift = YAW_SHIFT * face["yaw"]
    cx = FACE_CENTER[0] + shift
    for ex in (cx - EYE_DX, cx + EYE_DX):
        if face["eyes_open"]:
            draw.ellipse(
                _px(side, ex - EYE_WHITE[0], EYE_Y - EYE_WHITE[1], ex + EYE_WHITE[0], EYE_Y + EYE_WHITE[1]),
                fill=EYE_WHITE_COLOR,
            )
            draw.ellipse(
                _px(side, ex - PUPIL_RADIUS, EYE_Y - PUPIL_RADIUS, ex + PUPIL_RADIUS, EYE_Y + PUPIL_RADIUS),
                fill=PUPIL_COLOR,
            )
        else:
            draw.line(
                _px(side, ex - CLOSED_EYE_HALF_WIDTH, EYE_Y, ex + CLOSED_EYE_HALF_WIDTH, EYE_Y),
                fill=PUPIL_COLOR,
                width=_width(side, CLOSED_EYE_WIDTH),
            )
        if face["glasses"]:
            draw.ellipse(
                _px(side, ex - GLASSES_RADIUS, EYE_Y - GLASSES_RADIUS, ex + GLASSES_RADIUS, EYE_Y + GLASSES_RADIUS),
                outline=GLASSES_COLOR,
                width=_width(side, GLASSES_WIDTH),
            )
    if face["glasses"]:
        inner = EYE_DX - GLASSES_RADIUS + GLASSES_WIDTH / 2
        draw.line(
            _px(side, cx - inner, EYE_Y, cx + inner, EYE_Y), fill=GLASSES_COLOR, width=_width(side, GLASSES_WIDTH)
        )
    nx = FACE_CENTER[0] + NOSE_YAW_GAIN * shift
    draw.ellipse(
        _px(side, nx - NOSE_SIZE[0], NOSE_Y - NOSE_SIZE[1], nx + NOSE_SIZE[0], NOSE_Y + NOSE_SIZE[1]), fill=nose
    )
    _draw_mouth(draw, side, cx, face["smile"])


def _draw_mouth(draw: ImageDraw.ImageDraw, side: int, cx: float, smile: float) -> None:
    """A parabola whose middle sits below the corners for a smile and above them for a frown."""
    t = np.linspace(-1.0, 1.0, 11)
    # Centred on MOUTH_Y so curvature moves the middle and the corners in opposite directions.
    y = MOUTH_Y + smile * MOUTH_CURVE * (0.5 - t**2)
    x = cx + MOUTH_HALF_WIDTH * t
    points = [(float(px * side), float(py * side)) for px, py in zip(x, y, strict=True)]
    draw.line(points, fill=MOUTH_COLOR, width=_width(side, MOUTH_WIDTH), joint="curve")


def _draw_hat(draw: ImageDraw.ImageDraw, side: int) -> None:
    """Crown, a darker band and a brim wider than any face, hiding the hair."""
    radius = _width(side, 0.05)
    draw.rounded_rectangle(_px(side, *HAT_CROWN), radius=radius, fill=HAT_COLOR)
    draw.rectangle(_px(side, *HAT_BAND), fill=HAT_BAND_COLOR)
    draw.rounded_rectangle(_px(side, *HAT_BRIM), radius=radius, fill=HAT_COLOR)


def _px(side: int, *coords: float) -> list[float]:
    """Canvas-unit coordinates to drawing pixels."""
    return [c * side for c in coords]


def _width(side: int, fraction: float) -> int:
    """A stroke width in drawing pixels, never below one."""
    return max(1, round(fraction * side))


def mouth_mask(size: int = 32) -> np.ndarray:
    """Binary (size, size) mask of every pixel the mouth can cover, from the renderer's geometry.

    The mouth (``_draw_mouth``) is a parabola of half-width MOUTH_HALF_WIDTH centred at
    x = FACE_CENTER[0] + YAW_SHIFT * yaw, |yaw| <= 1, whose points lie within MOUTH_CURVE / 2 of MOUTH_Y
    (y = MOUTH_Y + smile * MOUTH_CURVE * (0.5 - t^2), |smile| <= 1, t in [-1, 1]), drawn with a stroke of
    MOUTH_WIDTH; a pixel is in the mask when it overlaps that box grown by half the stroke (the renderer
    box-filters from 4x, so a partly covered pixel changes too).
    """
    pad = MOUTH_WIDTH / 2
    reach = YAW_SHIFT + MOUTH_HALF_WIDTH + pad
    x0, x1 = FACE_CENTER[0] - reach, FACE_CENTER[0] + reach
    y0, y1 = MOUTH_Y - MOUTH_CURVE / 2 - pad, MOUTH_Y + MOUTH_CURVE / 2 + pad
    low, high = np.arange(size) / size, np.arange(1, size + 1) / size  # each pixel's extent
    return ((high > y0) & (low < y1))[:, None] & ((high > x0) & (low < x1))[None, :]
