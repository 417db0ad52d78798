"""The ``faces`` annotator: MTCNN face detection, its 5 landmarks and pose/expression proxies read from them.

MTCNN (Zhang et al. 2016, the facenet-pytorch port; its P-, R- and O-net weights ship inside the wheel and
load with ``torch.load(weights_only=True)``) finds faces and, for each, a box and 5 landmarks: both eyes,
the nose tip and both mouth corners. Per image the most probable face is kept. Columns
(:data:`ATTRIBUTES`):

* ``face``: MTCNN's final (O-net) probability of the kept face; 0 when none is found. MTCNN only reports
  faces above its last threshold (``thresholds[2]``, default 0.7), so values lie in {0} and (0.7, 1].
* ``box_left``, ``box_top``, ``box_right``, ``box_bottom``: the face box, in pixels of the input image.
* ``left_eye_x``, ``left_eye_y``, ``right_eye_x``, ``right_eye_y``, ``nose_x``, ``nose_y``,
  ``mouth_left_x``, ``mouth_left_y``, ``mouth_right_x``, ``mouth_right_y``: landmarks in input pixels.
  Left and right are the image's (the viewer's): ``left_eye`` is the subject's right eye.
* ``yaw``, ``roll``, ``mouth_width``: proxies from the landmarks (:func:`landmark_proxies`).

Geometric columns are NaN where no face is found; filter on ``face`` first.

Small images (generated samples are often 32x32 or 64x64) are upsampled with bilinear interpolation so
their shorter side is ``min_side`` pixels (default 160) before detection: MTCNN's smallest window is 12
pixels and its O-net reads 48x48 crops, so a 32-pixel face is below what it was trained on. Coordinates
are mapped back to the input's pixels.

Limits of the proxies: they are 2-D ratios of 5 points, not a head-pose estimate. ``yaw`` mixes head
turn with off-centre noses and with pitch when the head is also rolled strongly; it saturates and then
loses meaning beyond about +-45 degrees, where MTCNN's landmarks themselves degrade (one eye hidden).
``roll`` is exact for the eye line but that is all it measures. ``mouth_width`` grows with a smile but
also with an open mouth, and shrinks with yaw (foreshortening). On cartoon faces (the testbed) MTCNN finds
only some faces, and its landmarks follow painted features, not anatomy.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError
from hspace.files import sha256_of

LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # MTCNN's order
BOX: tuple[str, ...] = ("box_left", "box_top", "box_right", "box_bottom")
PROXIES: tuple[str, ...] = ("yaw", "roll", "mouth_width")
ATTRIBUTES: tuple[str, ...] = ("face",) + BOX + tuple(f"{p}_{axis}" for p in LANDMARKS for axis in "xy") + PROXIES
MTCNN_WEIGHTS = ("pnet.pt", "rnet.pt", "onet.pt")


def landmark_proxies(landmarks: np.ndarray) -> np.ndarray:
    """Yaw, roll and mouth width from 5 face landmarks.

    Notation: e_l, e_r the image-left and image-right eye, n the nose tip, m_l, m_r the mouth corners,
    all (x, y) in image coordinates (x to the right, y down); c = (e_l + e_r) / 2 the eyes' midpoint,
    v = e_r - e_l the eye vector and d = |v| the eye distance.

    * ``yaw`` = ((n - c) . v / d) / d: the nose's offset from the eyes' midpoint along the eye line, in eye
      distances. Positive when the nose points to the image's right (the head turned towards the viewer's
      right, the subject's left), 0 for a frontal face; rotating the whole face in the image plane does not
      change it.
    * ``roll`` = atan2(v_y, v_x) in degrees: the eye line's angle; positive when the image-right eye is
      lower (the face rotated clockwise as seen).
    * ``mouth_width`` = |m_r - m_l| / d.

    Parameters
    ----------
    landmarks : numpy.ndarray
        Shape (n, 5, 2), rows in :data:`LANDMARKS` order; NaN rows give NaN.

    Returns
    -------
    numpy.ndarray
        float32, shape (n, 3): columns yaw, roll, mouth_width. Coincident eyes (d = 0) give NaN.
    """
    p = np.asarray(landmarks, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise HSpaceError(f"landmarks must have shape (n, 5, 2); got {p.shape}")
    left_eye, right_eye, nose, mouth_left, mouth_right = (p[:, i] for i in range(5))
    v = right_eye - left_eye
    d = np.linalg.norm(v, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(d > 0, d, np.nan)
        yaw = np.sum((nose - (left_eye + right_eye) / 2) * v, axis=1) / d**2
        roll = np.degrees(np.arctan2(v[:, 1], v[:, 0]))
        roll = np.where(np.isnan(d), np.nan, roll)
        mouth_width = np.linalg.norm(mouth_right - mouth_left, axis=1) / d
    return np.stack([yaw, roll, mouth_width], axis=1).astype(np.float32)


def upsample(images: np.ndarray, min_side: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Float images with the shorter side at least ``min_side`` (bilinear), and the scale per axis.

    Parameters
    ----------
    images : numpy.ndarray
        uint8, shape (n, 3, H, W).
    min_side : int

    Returns
    -------
    x : torch.Tensor
        float32, shape (n, 3, H', W'), values in [0, 255].
    scale : tuple of float
        (H' / H, W' / W); 1 where no resizing was needed.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    height, width = x.shape[-2:]
    if min(height, width) >= min_side:
        return x, (1.0, 1.0)
    factor = min_side / min(height, width)
    size = (max(min_side, round(height * factor)), max(min_side, round(width * factor)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x, (size[0] / height, size[1] / width)


def _load_mtcnn(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """P-, R- and O-net with the wheel's weights, loaded as plain tensors (weights_only)."""
    try:
        import facenet_pytorch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError:
        raise HSpaceError(
            "the faces annotator needs facenet-pytorch: pip install facenet-pytorch==2.5.3 (2.6 pins an old torch)"
        ) from None
    data = Path(facenet_pytorch.__file__).parent / "data"
    nets = []
    for cls, file in zip((PNet, RNet, ONet), MTCNN_WEIGHTS, strict=True):
        net = cls(pretrained=False)  # facenet's own loader calls torch.load without weights_only
        try:
            net.load_state_dict(torch.load(data / file, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as error:
            raise HSpaceError(
                f"MTCNN weights {data / file} are missing or damaged ({error}): reinstall facenet-pytorch==2.5.3"
            ) from None
        nets.append(net.to(device).eval())
    return nets[0], nets[1], nets[2]


class FaceAnnotator(Annotator):
    """MTCNN face probability, box, landmarks and landmark proxies (see the module docstring).

    Parameters
    ----------
    min_side : int
        Images whose shorter side is smaller are upsampled to it before detection.
    min_face_size : int
        Smallest face MTCNN looks for, in pixels of the upsampled image (sets its image pyramid).
    thresholds : sequence of 3 float
        P-, R- and O-net probability thresholds.
    factor : float
        Scale step of the image pyramid, in (0, 1).
    batch : int
        Images per MTCNN call.
    device : str or torch.device
    """

    name = "faces"
    attributes = ATTRIBUTES

    def __init__(
        self,
        *,
        min_side: int = 160,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        batch: int = 32,
        device: str | torch.device = "cpu",
    ) -> None:
        for label, value in (("min_side", min_side), ("min_face_size", min_face_size), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise HSpaceError(f"{label} must be a positive integer; got {value!r}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise HSpaceError(f"thresholds must be 3 probabilities (P-, R-, O-net); got {list(thresholds)}")
        if not 0 < factor < 1:
            raise HSpaceError(f"factor (the pyramid's scale step) must lie in (0, 1); got {factor}")
        self.min_side, self.min_face_size, self.batch = min_side, min_face_size, batch
        self.thresholds, self.factor = [float(t) for t in thresholds], float(factor)
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = _load_mtcnn(self.device)

    @property
    def config(self) -> dict[str, Any]:
        """What fixes the scores (JSON): detector version, weight checksums and options."""
        import facenet_pytorch

        data = Path(facenet_pytorch.__file__).parent / "data"
        return {
            "detector": "mtcnn",
            "facenet_pytorch": importlib.metadata.version("facenet-pytorch"),
            "weights_sha256": {file: sha256_of(data / file) for file in MTCNN_WEIGHTS},
            "min_side": self.min_side,
            "min_face_size": self.min_face_size,
            "thresholds": self.thresholds,
            "factor": self.factor,
            "selection": "most probable face",
        }

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The most probable face of each image.

        Parameters
        ----------
        images : numpy.ndarray
            uint8, shape (n, 3, H, W).

        Returns
        -------
        probability : numpy.ndarray
            float32, shape (n,); 0 where no face is found.
        box : numpy.ndarray
            float32, shape (n, 4): left, top, right, bottom in input pixels; NaN where no face.
        landmarks : numpy.ndarray
            float32, shape (n, 5, 2): (x, y) in input pixels, rows in :data:`LANDMARKS` order; NaN where
            no face.
        """
        from facenet_pytorch.models.utils.detect_face import detect_face

        self.check_images(images)
        n = len(images)
        probability = np.zeros(n, dtype=np.float32)
        box = np.full((n, 4), np.nan, dtype=np.float32)
        landmarks = np.full((n, 5, 2), np.nan, dtype=np.float32)
        for start in range(0, n, self.batch):
            x, (scale_y, scale_x) = upsample(images[start : start + self.batch], self.min_side)
            with torch.no_grad():
                boxes, points = detect_face(
                    x.permute(0, 2, 3, 1).to(self.device),
                    self.min_face_size,
                    self.pnet,
                    self.rnet,
                    self.onet,
                    self.thresholds,
                    self.factor,
                    self.device,
                )
            for i, (found, marks) in enumerate(zip(boxes, points, strict=True)):
                if len(found) == 0:
                    continue
                k = int(np.argmax(found[:, 4]))
                # Back to input pixels; with align_corners=False pixel centres map as (u + 0.5) / s - 0.5.
                scale = np.array([scale_x, scale_y])
                probability[start + i] = found[k, 4]
                box[start + i] = ((found[k, :4].reshape(2, 2) + 0.5) / scale - 0.5).reshape(4)
                landmarks[start + i] = (marks[k] + 0.5) / scale - 0.5
        return probability, box, landmarks

    def score(self, images: np.ndarray) -> np.ndarray:
        """:meth:`detect` as scores: float32 (n, 18) for uint8 images (n, 3, H, W), columns in :data:`ATTRIBUTES`
        order (see the module docstring)."""
        probability, box, landmarks = self.detect(images)
        return np.concatenate(
            [probability[:, None], box, landmarks.reshape(-1, 10), landmark_proxies(landmarks)], axis=1
        ).astype(np.float32)
