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
hspace.testbed.train_annotator`` rebuilds both; the non-faces and the augmentation it trains on are in
:mod:`hspace.testbed.augment`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError
from hspace.files import sha256_of
from hspace.testbed.faces import BINARY_FACTORS, FACTOR_RANGES, FACTORS

SIZE = 32  # the annotator's input side; other sizes are resized to it
CONTINUOUS_FACTORS: tuple[str, ...] = tuple(name for name in FACTORS if name not in BINARY_FACTORS)
# Output column order of the network and of TestbedAnnotator.score.
ATTRIBUTES: tuple[str, ...] = ("face",) + FACTORS
CONTINUOUS_COLUMNS = [ATTRIBUTES.index(name) for name in CONTINUOUS_FACTORS]
LOGIT_COLUMNS = [ATTRIBUTES.index(name) for name in ("face",) + BINARY_FACTORS]
# Standardisation of each continuous target (mean and std of a uniform on its range), so every regression
# loss is about as large as the BCE losses and no factor dominates the gradient.
CENTER = torch.tensor([sum(FACTOR_RANGES[n]) / 2 for n in CONTINUOUS_FACTORS])
SCALE = torch.tensor([(FACTOR_RANGES[n][1] - FACTOR_RANGES[n][0]) / math.sqrt(12) for n in CONTINUOUS_FACTORS])

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "annotator.safetensors"
DEFAULT_ARCHITECTURE = {"widths": [32, 64, 128, 128], "hidden": 64}


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
            raise HSpaceError(
                f"FaceAnnotatorNet takes 4 positive widths and a positive hidden size; got {list(widths)}, {hidden}"
            )
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * (SIZE // 8) ** 2, hidden), nn.SiLU(), nn.Linear(hidden, len(ATTRIBUTES))
        )

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
    scores[:, LOGIT_COLUMNS] = torch.sigmoid(raw[:, LOGIT_COLUMNS])
    scores[:, CONTINUOUS_COLUMNS] = raw[:, CONTINUOUS_COLUMNS] * SCALE + CENTER
    return scores


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 3, H, W) to float32 (n, 3, 32, 32) in [-1, 1].

    Integer multiples of 32 are box-filtered (``area``), which is how :mod:`faces` antialiases, so a 64x64
    render lands very close to the 32x32 one; other sizes use antialiased bilinear resizing.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    height, width = x.shape[-2:]
    if (height, width) != (SIZE, SIZE):
        exact = height % SIZE == 0 and width % SIZE == 0
        x = (
            F.interpolate(x, size=(SIZE, SIZE), mode="area")
            if exact
            else F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        )
    return x / 127.5 - 1.0


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
    # The binary factors' scores are probabilities: eq. 11 draws their examples from each side of 0.5 rather
    # than the most extreme scores (hspace.directions.top_bottom says why).
    class_thresholds = MappingProxyType({name: 0.5 for name in BINARY_FACTORS})

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
            raise HSpaceError(
                f"annotator weights {path} or their card {card_path.name} are missing: restore them "
                f"from version control or {rebuild}"
            )
        try:
            card = json.loads(card_path.read_text())
            expected, architecture = card["sha256"], card.get("architecture", DEFAULT_ARCHITECTURE)
        except (ValueError, KeyError, TypeError) as error:
            raise HSpaceError(f"annotator card {card_path} is unreadable ({error}): restore it or {rebuild}") from None
        actual = sha256_of(path)
        if actual != expected:
            raise HSpaceError(
                f"annotator weights {path} are a damaged file: sha256 {actual[:12]}... differs from "
                f"{expected[:12]}... in {card_path.name}; restore them from version control or {rebuild}"
            )
        net = FaceAnnotatorNet(architecture["widths"], architecture["hidden"])
        try:
            net.load_state_dict(load_file(path))
        except (RuntimeError, KeyError) as error:
            raise HSpaceError(
                f"annotator weights {path} do not fit architecture {architecture} ({error}); {rebuild}"
            ) from None
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
                part = images[start : start + self.batch]
                out[start : start + len(part)] = to_scores(self.net(to_input(part))).numpy()
        return out
