"""Training images for the testbed annotator that renders alone do not give: non-faces and imperfect faces.

:func:`make_negatives` draws the non-faces the ``face`` head learns to reject (noise, smooth colour fields,
faces pushed off-centre or zoomed in, patch-shuffled faces, blends of two different faces);
:func:`augment_faces` corrupts renders mildly, so imperfect generated samples still read as faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from hspace.errors import HSpaceError
from hspace.testbed.annotator import SIZE
from hspace.testbed.faces import FACTORS, render_dataset, render_faces

NEGATIVE_KINDS: tuple[str, ...] = ("noise", "smooth", "shifted", "cropped", "shuffled", "blend")


def make_negatives(n: int, rng: np.random.Generator, kinds: Sequence[str] = NEGATIVE_KINDS) -> np.ndarray:
    """Non-face images, each of a kind drawn uniformly from ``kinds``.

    Kinds: ``noise`` (Gaussian noise about a random colour), ``smooth`` (a random 2x2..6x6 colour grid
    upsampled: gradients and blobs, plus mild noise), ``shifted`` (a face moved 10..20 pixels off-centre),
    ``cropped`` (a 10..18 pixel crop of a face zoomed to full size), ``shuffled`` (a face cut into a 2x2 or
    4x4 grid of patches, permuted) and ``blend`` (two faces whose yaw differs by at least 1, mixed 35..65%,
    so features show twice).

    Parameters
    ----------
    n : int
        Number of images, >= 0.
    rng : numpy.random.Generator
        All randomness comes from it.
    kinds : sequence of str
        Subset of :data:`NEGATIVE_KINDS`.

    Returns
    -------
    numpy.ndarray
        uint8, shape (n, 3, 32, 32).
    """
    unknown = set(kinds) - set(NEGATIVE_KINDS)
    if unknown or not kinds:
        raise HSpaceError(f"negative kinds must be a non-empty subset of {NEGATIVE_KINDS}; got {list(kinds)}")
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)
    if n == 0:
        return out
    choice = rng.integers(0, len(kinds), n)
    # One render call for all face-based kinds (blends need two faces each).
    face_based = {"shifted", "cropped", "shuffled", "blend"}
    needed = sum(2 if kinds[c] == "blend" else 1 for c in choice if kinds[c] in face_based)
    if needed:
        faces, factors = render_dataset(needed, seed=int(rng.integers(2**32)))
    else:
        faces, factors = np.empty((0, 3, SIZE, SIZE), dtype=np.uint8), {}
    cursor = 0
    for i, c in enumerate(choice):
        kind = kinds[c]
        if kind == "noise":
            mean = rng.uniform(0, 255, (3, 1, 1))
            image = mean + rng.normal(0, rng.uniform(20, 100), (3, SIZE, SIZE))
        elif kind == "smooth":
            k = int(rng.integers(2, 7))
            grid = torch.from_numpy(rng.uniform(0, 255, (1, 3, k, k)))
            image = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)[0].numpy()
            image = image + rng.normal(0, rng.uniform(0, 20), image.shape)
        elif kind == "blend":
            image = _blend(faces[cursor], factors, cursor, rng)
            cursor += 2
        else:
            face = faces[cursor].astype(np.float64)
            cursor += 1
            image = {"shifted": _shifted, "cropped": _cropped, "shuffled": _shuffled}[kind](face, rng)
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


def _shifted(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move the face so at least one axis is off by 10..20 px; the uncovered part takes the background."""
    shift = rng.integers(-20, 21, 2)
    axis = int(rng.integers(2))
    shift[axis] = rng.choice([-1, 1]) * rng.integers(10, 21)
    out = np.broadcast_to(face[:, :1, :1], face.shape).copy()  # the corner pixel is background
    dy, dx = int(shift[0]), int(shift[1])
    src = face[:, max(0, -dy) : SIZE - max(0, dy), max(0, -dx) : SIZE - max(0, dx)]
    out[:, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
    return out


def _cropped(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zoom a 10..18 px square of the face to full size: a part of a face is not a face."""
    side = int(rng.integers(10, 19))
    top, left = rng.integers(0, SIZE - side + 1, 2)
    crop = torch.from_numpy(face[None, :, top : top + side, left : left + side])
    return F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0].numpy()


def _shuffled(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute a 2x2 grid of 16 px or a 4x4 grid of 8 px patches (never the identity)."""
    grid = int(rng.choice([2, 4]))
    patch = SIZE // grid
    patches = face.reshape(3, grid, patch, grid, patch).transpose(1, 3, 0, 2, 4).reshape(grid * grid, 3, patch, patch)
    order = rng.permutation(grid * grid)
    while (order == np.arange(grid * grid)).all():
        order = rng.permutation(grid * grid)
    shuffled = patches[order].reshape(grid, grid, 3, patch, patch).transpose(2, 0, 3, 1, 4)
    return shuffled.reshape(3, SIZE, SIZE)


def _blend(face: np.ndarray, factors: dict[str, np.ndarray], index: int, rng: np.random.Generator) -> np.ndarray:
    """Mix the face with another whose yaw differs by >= 1, so eyes, nose and mouth show twice.

    The partner is re-rendered from this face's neighbour's factors with yaw moved, because two faces with
    similar yaw would blend into something that still looks like one face (a label the net could not learn).
    """
    partner = {name: factors[name][index + 1 : index + 2].copy() for name in FACTORS}
    yaw = float(factors["yaw"][index])
    # Yaw in [-1, 1]: go to the side with room for a gap of at least 1.
    partner["yaw"][:] = rng.uniform(-1.0, yaw - 1.0) if yaw >= 0 else rng.uniform(yaw + 1.0, 1.0)
    other = render_faces(partner, SIZE)[0].astype(np.float64)
    alpha = rng.uniform(0.35, 0.65)
    return alpha * face.astype(np.float64) + (1 - alpha) * other


def augment_faces(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild corruption of faces in [-1, 1], so imperfect generated samples still read as faces.

    Every image gets Gaussian pixel noise with std uniform in [0, 10] grey levels; a third of them also a
    Gaussian blur with sigma uniform in [0.3, 0.8] px.

    Parameters
    ----------
    x : torch.Tensor
        float32, shape (n, 3, 32, 32), in [-1, 1].
    generator : torch.Generator
        Source of randomness.

    Returns
    -------
    torch.Tensor
        float32, shape (n, 3, 32, 32), clamped to [-1, 1].
    """
    n = len(x)
    blur = torch.rand(n, generator=generator) < 1 / 3
    if blur.any():
        sigma = 0.3 + 0.5 * torch.rand(int(blur.sum()), generator=generator)
        t = torch.arange(-1, 2, dtype=torch.float32)
        k1 = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        kernels = k1[:, :, None] * k1[:, None, :]  # (m, 3, 3)
        m = len(kernels)
        # One depthwise convolution for all blurred images: image i's 3 channels use kernel i.
        weight = kernels.repeat_interleave(3, 0)[:, None]  # (3m, 1, 3, 3)
        blurred = F.conv2d(
            F.pad(x[blur].reshape(1, 3 * m, SIZE, SIZE), (1, 1, 1, 1), mode="replicate"), weight, groups=3 * m
        )
        x = x.clone()
        x[blur] = blurred.reshape(m, 3, SIZE, SIZE)
    std = torch.rand(n, 1, 1, 1, generator=generator) * (10 / 127.5)
    return (x + std * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)
