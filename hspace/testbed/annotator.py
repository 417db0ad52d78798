"""The testbed annotator: a small CNN that scores (generated) 32x32 faces for every factor of :mod:`faces`.

Generated samples have no labels, so checks on the testbed model ("the glasses direction moves the glasses
score by >= 1 std", "edited samples are still faces") need a measuring instrument. This one is trained on
fresh renders from :func:`hspace.testbed.faces.render_dataset`, where the factors are known exactly, plus
non-faces (noise, smooth colour fields, faces pushed off-centre or zoomed in, patch-shuffled faces, blends
of two different faces), so it can also say whether a sample is a face at all.

Outputs (:attr:`TestbedAnnotator.attributes`, one column each):

* ``face``: probability that the image is a face.
* ``yaw``, ``smile``, ``skin_tone``, ``face_width``, ``background``: regressed values in factor units
  (the ranges of :data:`hspace.testbed.faces.FACTOR_RANGES`; not clipped, so a sample beyond the
  training range may score slightly outside it).
* ``eyes_open``, ``glasses``, ``hat``: probabilities in [0, 1].

Factor scores of an image the ``face`` head rejects are meaningless; filter on ``face`` first.

Shipped weights: ``weights/annotator.safetensors`` (float32) with ``weights/annotator.json`` next to it,
which records their sha256, the training command and the held-out report. ``python -m
hspace.testbed.train_annotator`` rebuilds both.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError
from hspace.testbed.faces import BINARY_FACTORS, FACTOR_RANGES, FACTORS, render_dataset, render_faces

SIZE = 32  # the annotator's input side; other sizes are resized to it
CONTINUOUS_FACTORS: tuple[str, ...] = tuple(name for name in FACTORS if name not in BINARY_FACTORS)
# Output column order of the network and of TestbedAnnotator.score.
ATTRIBUTES: tuple[str, ...] = ("face",) + FACTORS
# The binary factors' scores are probabilities: eq. 11 draws their examples from each side of 0.5 rather than
# the most extreme scores (hspace.directions.top_bottom says why).
CLASS_THRESHOLDS: dict[str, float] = {name: 0.5 for name in BINARY_FACTORS}
_CONTINUOUS_COLUMNS = [ATTRIBUTES.index(name) for name in CONTINUOUS_FACTORS]
_LOGIT_COLUMNS = [ATTRIBUTES.index(name) for name in ("face",) + BINARY_FACTORS]
# Standardisation of each continuous target (mean and std of a uniform on its range), so every regression
# loss is about as large as the BCE losses and no factor dominates the gradient.
_CENTER = torch.tensor([sum(FACTOR_RANGES[n]) / 2 for n in CONTINUOUS_FACTORS])
_SCALE = torch.tensor([(FACTOR_RANGES[n][1] - FACTOR_RANGES[n][0]) / math.sqrt(12) for n in CONTINUOUS_FACTORS])

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "annotator.safetensors"
DEFAULT_ARCHITECTURE = {"widths": [32, 64, 128, 128], "hidden": 64}
NEGATIVE_KINDS: tuple[str, ...] = ("noise", "smooth", "shifted", "cropped", "shuffled", "blend")


class FaceAnnotatorNet(nn.Module):
    """Four 3x3 convolutions (the last three stride 2: 32 -> 16 -> 8 -> 4), then a two-layer head.

    No normalisation layers: train and eval behave the same, and per-image normalisation (GroupNorm)
    would remove the absolute brightness that ``background`` and ``skin_tone`` are read from. The head
    sees the whole 4x4 map flattened, not a global average, because ``yaw`` is a position.

    Parameters
    ----------
    widths : sequence of 4 int
        Channels of the four convolutions.
    hidden : int
        Width of the head's hidden layer.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), hidden: int = 64) -> None:
        super().__init__()
        if len(widths) != 4 or min(widths) <= 0 or hidden <= 0:
            raise HSpaceError(f"FaceAnnotatorNet takes 4 positive widths and a positive hidden size; "
                              f"got {list(widths)}, {hidden}")
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * (SIZE // 8) ** 2, hidden), nn.SiLU(),
                                  nn.Linear(hidden, len(ATTRIBUTES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for images in [-1, 1].

        Parameters
        ----------
        x : torch.Tensor
            float32, shape (n, 3, 32, 32), pixel values scaled to [-1, 1].

        Returns
        -------
        torch.Tensor
            float32, shape (n, 9), columns in :data:`ATTRIBUTES` order: logits for ``face`` and the binary
            factors, standardised values for the continuous factors (see :func:`to_scores`).
        """
        return self.head(self.features(x))


def to_scores(raw: torch.Tensor) -> torch.Tensor:
    """Network outputs (n, 9) to scores (n, 9): sigmoid on logits, continuous columns back to factor units."""
    scores = raw.clone()
    scores[:, _LOGIT_COLUMNS] = torch.sigmoid(raw[:, _LOGIT_COLUMNS])
    scores[:, _CONTINUOUS_COLUMNS] = raw[:, _CONTINUOUS_COLUMNS] * _SCALE + _CENTER
    return scores


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 3, H, W) to float32 (n, 3, 32, 32) in [-1, 1].

    Integer multiples of 32 are box-filtered (``area``), which is how :mod:`faces` antialiases, so a 64x64
    render lands very close to the 32x32 one; other sizes use antialiased bilinear resizing.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    height, width = x.shape[-2:]
    if (height, width) != (SIZE, SIZE):
        exact = height % SIZE == 0 and width % SIZE == 0
        x = F.interpolate(x, size=(SIZE, SIZE), mode="area") if exact else \
            F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TestbedAnnotator(Annotator):
    """Scores images for being a face and for each testbed factor (see the module docstring).

    Images of any size are accepted and resized to 32x32 (box filter for integer multiples of 32,
    antialiased bilinear otherwise); the annotator was trained at 32x32 only.

    Parameters
    ----------
    net : FaceAnnotatorNet
        Trained network; it is put in eval mode and run on CPU.
    batch : int
        Images per forward pass, bounding memory.
    """

    __test__ = False  # its name starts with "Test": keep pytest from collecting it
    name = "testbed"
    attributes = ATTRIBUTES

    def __init__(self, net: FaceAnnotatorNet, *, batch: int = 512) -> None:
        if batch <= 0:
            raise HSpaceError(f"batch must be a positive integer; got {batch}")
        self.net = net.cpu().eval()
        self.batch = batch
        self.weights_sha256: str | None = None  # set by load(): the checked file's sha256

    @property
    def config(self) -> dict:
        return {"weights_sha256": self.weights_sha256}

    @classmethod
    def load(cls, path: str | Path | None = None, *, batch: int = 512) -> TestbedAnnotator:
        """Load weights after checking them against the sha256 in the JSON card next to them.

        Parameters
        ----------
        path : str or Path, optional
            A ``.safetensors`` file; its card is the same name with ``.json``. Default: the shipped
            ``weights/annotator.safetensors``.
        batch : int
            Images per forward pass.

        Returns
        -------
        TestbedAnnotator

        Raises
        ------
        HSpaceError
            If the file or its card is missing, the checksum differs (a damaged or replaced file), or the
            tensors do not fit the architecture the card names.
        """
        from safetensors.torch import load_file  # safetensors only: never unpickle weights

        path = Path(DEFAULT_WEIGHTS if path is None else path)
        card_path = path.with_suffix(".json")
        rebuild = "rebuild them with `python -m hspace.testbed.train_annotator`"
        if not path.is_file() or not card_path.is_file():
            raise HSpaceError(f"annotator weights {path} or their card {card_path.name} are missing: restore them "
                              f"from version control or {rebuild}")
        try:
            card = json.loads(card_path.read_text())
            expected, architecture = card["sha256"], card.get("architecture", DEFAULT_ARCHITECTURE)
        except (ValueError, KeyError, TypeError) as error:
            raise HSpaceError(f"annotator card {card_path} is unreadable ({error}): restore it or {rebuild}") from None
        actual = sha256_of(path)
        if actual != expected:
            raise HSpaceError(f"annotator weights {path} are a damaged file: sha256 {actual[:12]}... differs from "
                              f"{expected[:12]}... in {card_path.name}; restore them from version control or {rebuild}")
        net = FaceAnnotatorNet(architecture["widths"], architecture["hidden"])
        try:
            net.load_state_dict(load_file(path))
        except (RuntimeError, KeyError) as error:
            raise HSpaceError(f"annotator weights {path} do not fit architecture {architecture} ({error}); "
                              f"{rebuild}") from None
        annotator = cls(net, batch=batch)
        annotator.weights_sha256 = actual
        return annotator

    def score(self, images: np.ndarray) -> np.ndarray:
        """Score images.

        Parameters
        ----------
        images : numpy.ndarray
            uint8, shape (n, 3, H, W); resized to 32x32 when H, W differ.

        Returns
        -------
        numpy.ndarray
            float32, shape (n, 9), columns in :attr:`attributes` order: probabilities for ``face`` and the
            binary factors, factor units for the continuous ones.
        """
        self.check_images(images)
        out = np.empty((len(images), len(ATTRIBUTES)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                part = images[start:start + self.batch]
                out[start:start + len(part)] = to_scores(self.net(_to_input(part))).numpy()
        return out


# --------------------------------------------------------------------------------------------- training

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
    faces, factors = (render_dataset(needed, seed=int(rng.integers(2**32))) if needed else (None, None))
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
    src = face[:, max(0, -dy):SIZE - max(0, dy), max(0, -dx):SIZE - max(0, dx)]
    out[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
    return out


def _cropped(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zoom a 10..18 px square of the face to full size: a part of a face is not a face."""
    side = int(rng.integers(10, 19))
    top, left = rng.integers(0, SIZE - side + 1, 2)
    crop = torch.from_numpy(face[None, :, top:top + side, left:left + side])
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
    partner = {name: factors[name][index + 1:index + 2].copy() for name in FACTORS}
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
        k1 = torch.exp(-t[None, :] ** 2 / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        kernels = (k1[:, :, None] * k1[:, None, :])  # (m, 3, 3)
        m = len(kernels)
        # One depthwise convolution for all blurred images: image i's 3 channels use kernel i.
        weight = kernels.repeat_interleave(3, 0)[:, None]  # (3m, 1, 3, 3)
        blurred = F.conv2d(F.pad(x[blur].reshape(1, 3 * m, SIZE, SIZE), (1, 1, 1, 1), mode="replicate"),
                           weight, groups=3 * m)
        x = x.clone()
        x[blur] = blurred.reshape(m, 3, SIZE, SIZE)
    std = torch.rand(n, 1, 1, 1, generator=generator) * (10 / 127.5)
    return (x + std * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)


def _step_seed(seed: int, step: int) -> int:
    # Batch k depends on (seed, k) alone, as in hspace.testbed.train.
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _targets(factors: dict[str, np.ndarray]) -> torch.Tensor:
    """(n, 9) training targets: face = 1, binary factors as 0/1, continuous ones standardised."""
    n = len(factors["yaw"])
    y = torch.empty(n, len(ATTRIBUTES))
    y[:, 0] = 1.0
    for name in FACTORS:
        y[:, ATTRIBUTES.index(name)] = torch.from_numpy(factors[name])
    y[:, _CONTINUOUS_COLUMNS] = (y[:, _CONTINUOUS_COLUMNS] - _CENTER) / _SCALE
    return y


def _loss(raw: torch.Tensor, y: torch.Tensor, is_face: torch.Tensor) -> torch.Tensor:
    """BCE for face (all images); BCE and MSE (standardised) for the factors of faces only, averaged per head."""
    face_loss = F.binary_cross_entropy_with_logits(raw[:, 0], y[:, 0])
    binary_cols = [ATTRIBUTES.index(name) for name in BINARY_FACTORS]
    faces = raw[is_face]
    binary_loss = F.binary_cross_entropy_with_logits(faces[:, binary_cols], y[is_face][:, binary_cols])
    regression_loss = F.mse_loss(faces[:, _CONTINUOUS_COLUMNS], y[is_face][:, _CONTINUOUS_COLUMNS])
    # Per-head means: 1 face head, 3 binary, 5 continuous.
    return (face_loss + 3 * binary_loss + 5 * regression_loss) / len(ATTRIBUTES)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_annotator(steps: int, seed: int, *, batch: int = 128, negative_share: float = 0.25, lr: float = 2e-3,
                    architecture: dict | None = None, eval_faces: int = 2000, eval_negatives: int = 2000,
                    eval_seed: int = 20_250_101,
                    progress: Callable[[int, float], None] | None = None) -> tuple[FaceAnnotatorNet, dict]:
    """Train a :class:`FaceAnnotatorNet` on fresh renders and non-faces, then measure it on held-out ones.

    Deterministic given ``seed`` (on one CPU thread): the weights come from ``torch.manual_seed(seed)``,
    batch k's faces from ``render_dataset(.., seed=SeedSequence([seed, k]))`` and its negatives and
    augmentation noise from generators seeded with the same.

    Parameters
    ----------
    steps : int
        Optimiser steps, positive.
    seed : int
        Seed of everything random in training.
    batch : int
        Images per step, faces and negatives together.
    negative_share : float
        Share of each batch that is non-faces (label ``face`` = 0, factor losses masked out), in (0, 1).
    lr : float
        Peak AdamW learning rate (linear warm-up over 5% of steps, cosine decay to 2% of it).
    architecture : dict, optional
        ``{"widths": [4 ints], "hidden": int}``; default :data:`DEFAULT_ARCHITECTURE`.
    eval_faces, eval_negatives : int
        Held-out set sizes; positive.
    eval_seed : int
        Seed of the held-out set; training seeds are 32-bit hashes of (seed, step), so they do not meet it
        in practice.
    progress : callable, optional
        Called as ``progress(step, loss)`` after every step.

    Returns
    -------
    net : FaceAnnotatorNet
        The trained network, in eval mode.
    report : dict
        ``steps``, ``seed``, ``batch``, ``negative_share``, ``lr``, ``architecture``, ``parameters``,
        ``train_seconds``, ``final_loss`` (mean of the last 10% of steps) and ``held_out`` (see
        :func:`evaluate_annotator`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise HSpaceError(f"steps must be a positive integer; got {steps!r}")
    if not 0 < negative_share < 1 or batch < 2:
        raise HSpaceError(f"need batch >= 2 and 0 < negative_share < 1; got {batch}, {negative_share}")
    architecture = dict(DEFAULT_ARCHITECTURE if architecture is None else architecture)
    n_negative = max(1, round(batch * negative_share))
    n_face = batch - n_negative
    if n_face < 1:
        raise HSpaceError(f"batch {batch} with negative_share {negative_share} leaves no faces: lower the share")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FaceAnnotatorNet(architecture["widths"], architecture["hidden"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    is_face = torch.cat([torch.ones(n_face, dtype=torch.bool), torch.zeros(n_negative, dtype=torch.bool)])
    losses: list[float] = []
    net.train()
    started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        step_seed = _step_seed(seed, step)
        images, factors = render_dataset(n_face, seed=step_seed)
        rng = np.random.default_rng([step_seed, 1])
        negatives = make_negatives(n_negative, rng)
        generator = torch.Generator().manual_seed(step_seed)
        x = torch.cat([augment_faces(_to_input(images), generator), _to_input(negatives)])
        y = torch.cat([_targets(factors), torch.zeros(n_negative, len(ATTRIBUTES))])
        loss = _loss(net(x), y, is_face)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, losses[-1])
    train_seconds = time.monotonic() - started
    net.eval()
    report = {
        "steps": steps, "seed": seed, "batch": batch, "negative_share": negative_share, "lr": lr,
        "architecture": architecture, "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(train_seconds, 1),
        "final_loss": float(np.mean(losses[-max(1, steps // 10):])),
        "held_out": evaluate_annotator(TestbedAnnotator(net), faces=eval_faces, negatives=eval_negatives,
                                       seed=eval_seed),
    }
    return net, report


def evaluate_annotator(annotator: Annotator, *, faces: int = 2000, negatives: int = 2000, seed: int = 20_250_101) -> dict:
    """Accuracy of an annotator with :data:`ATTRIBUTES` on fresh renders and non-faces.

    Parameters
    ----------
    annotator : Annotator
        Scores with at least the columns of :data:`ATTRIBUTES`.
    faces, negatives : int
        Number of renders (``render_dataset(faces, seed)``) and of non-faces (``make_negatives`` from
        ``default_rng([seed, 1])``); positive.
    seed : int
        Seed of the set.

    Returns
    -------
    dict
        ``faces``, ``negatives``, ``seed``; ``face_accuracy`` (threshold 0.5, faces and non-faces together),
        ``face_recall`` (clean renders called faces), ``face_recall_noisy`` (renders after the training
        augmentation called faces), ``negative_rejection`` (non-faces called non-faces) and
        ``negative_rejection_by_kind``; ``binary_accuracy`` {factor: share of renders right at 0.5};
        ``r2`` and ``mae`` {continuous factor: on renders, in factor units}.
    """
    if faces <= 0 or negatives <= 0:
        raise HSpaceError(f"evaluation needs at least one face and one non-face; got {faces}, {negatives}")
    images, factors = render_dataset(faces, seed=seed)
    rng = np.random.default_rng([seed, 1])
    kinds = rng.integers(0, len(NEGATIVE_KINDS), negatives)
    negative_images = np.concatenate([make_negatives(1, rng, [NEGATIVE_KINDS[k]]) for k in kinds])
    noisy = augment_faces(_to_input(images), torch.Generator().manual_seed(seed))
    noisy_uint8 = ((noisy + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    scores = annotator.scores_by_attribute(images)
    negative_face = annotator.scores_by_attribute(negative_images)["face"]
    noisy_face = annotator.scores_by_attribute(noisy_uint8)["face"]
    recall = float((scores["face"] > 0.5).mean())
    rejection = float((negative_face <= 0.5).mean())
    report: dict = {
        "faces": faces, "negatives": negatives, "seed": seed,
        "face_accuracy": (recall * faces + rejection * negatives) / (faces + negatives),
        "face_recall": recall,
        "face_recall_noisy": float((noisy_face > 0.5).mean()),
        "negative_rejection": rejection,
        "negative_rejection_by_kind": {kind: float((negative_face[kinds == i] <= 0.5).mean())
                                       for i, kind in enumerate(NEGATIVE_KINDS) if (kinds == i).any()},
        "binary_accuracy": {name: float(((scores[name] > 0.5) == (factors[name] > 0.5)).mean())
                            for name in BINARY_FACTORS},
        "r2": {}, "mae": {},
    }
    for name in CONTINUOUS_FACTORS:
        truth, predicted = factors[name].astype(np.float64), scores[name].astype(np.float64)
        report["r2"][name] = float(1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2))
        report["mae"][name] = float(np.mean(np.abs(predicted - truth)))
    return report


def save_annotator(net: FaceAnnotatorNet, report: dict, path: str | Path = DEFAULT_WEIGHTS, *,
                   command: str = "") -> dict:
    """Write float32 safetensors weights and their JSON card (sha256, training report, command).

    Each file is written to a temporary name first and renamed, so a crash never leaves a half-written
    file under the real name. The card goes last: a card always describes weights that exist.

    Parameters
    ----------
    net : FaceAnnotatorNet
    report : dict
        As returned by :func:`train_annotator`.
    path : str or Path
        Destination ``.safetensors`` file; the card is written next to it with ``.json``.
    command : str
        The command line that produced the weights.

    Returns
    -------
    dict
        The card.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().contiguous() for k, v in net.state_dict().items()}, staging)
    staging.replace(path)
    card = {
        "annotator": TestbedAnnotator.name,
        "attributes": list(ATTRIBUTES),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "architecture": report["architecture"],
        "input": "uint8 (n, 3, 32, 32) scaled to [-1, 1]; other sizes resized to 32x32",
        "steps": report["steps"],
        "seed": report["seed"],
        "report": report,
        "command": command,
        "torch": torch.__version__,
    }
    card_staging = path.with_suffix(".json.tmp")
    card_staging.write_text(json.dumps(card, indent=2) + "\n")
    card_staging.replace(path.with_suffix(".json"))
    return card
