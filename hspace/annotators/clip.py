"""The ``clip`` annotator: zero-shot attribute scores from an open_clip model and pairs of prompts.

The paper measures edits with CLIP as a zero-shot classifier (Sec. V, Table I): for each attribute a
positive and a negative prompt, "A smiling person" / "A person", "A person wearing glasses" / "A person",
"A person wearing a hat" / "A person", "A man" / "A woman", "An old person" / "A young person". The score
of an attribute is the probability CLIP gives the positive prompt against the negative one,

    p = exp(s cos(f, t+)) / (exp(s cos(f, t+)) + exp(s cos(f, t-))) = sigmoid(s (cos(f, t+) - cos(f, t-))),

where f is the image embedding, t+ and t- the prompt embeddings and s = exp(logit_scale) the model's own
temperature (the one its contrastive loss was trained with; about 100 for released CLIP models). A
SigLIP-style ``logit_bias`` would add the same constant to both logits and cancel, so it is not used.
Attribute names (:data:`DEFAULT_PROMPTS`): ``smile``, ``glasses``, ``hat``, ``gender`` (high = "A man"),
``age`` (high = "An old person"). Pass ``prompts`` to score other attributes.

Weights are never downloaded by surprise in a worker that cannot reach the hub: :meth:`ClipAnnotator.load`
looks a pretrained tag up in the Hugging Face cache (and on the hub when it is reachable), or loads a local
checkpoint file (``pretrained="/path/open_clip_model.safetensors"``; ``.bin``/``.pt`` state dicts go
through ``torch.load(weights_only=True)``), or a ``model="local-dir:/path"`` folder holding
``open_clip_config.json`` and the weights. When none is found the error says how to pre-download them.

Images are preprocessed with torch on whole batches (:func:`preprocess`), following the model's own
preprocessing config (size, resize mode, interpolation, mean, std), not with PIL image by image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.nn import functional as F

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError
from hspace.files import sha256_of
from hspace.names import check_name

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
# attribute -> (positive prompt, negative prompt), the paper's pairs (Sec. V, Table I).
DEFAULT_PROMPTS: dict[str, tuple[str, str]] = {
    "smile": ("A smiling person", "A person"),
    "glasses": ("A person wearing glasses", "A person"),
    "hat": ("A person wearing a hat", "A person"),
    "gender": ("A man", "A woman"),
    "age": ("An old person", "A young person"),
}


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a CLIP model wants its images (open_clip's ``PreprocessCfg``, the fields that matter at eval).

    Attributes
    ----------
    size : tuple of int
        (height, width) of the model input.
    mean, std : tuple of 3 float
        Per-channel normalisation of pixels scaled to [0, 1].
    interpolation : str
        ``"bicubic"`` or ``"bilinear"`` (antialiased, as PIL resizes).
    resize_mode : str
        ``"shortest"`` (shorter side to size, centre crop), ``"longest"`` (longer side to size, centre pad
        with ``fill_color``) or ``"squash"`` (both sides to size).
    fill_color : int
        Padding grey level (0..255) for ``"longest"``.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def parse(cls, cfg: Mapping[str, Any]) -> Preprocessing:
        """From an open_clip preprocess config dict (``open_clip.get_model_preprocess_cfg(model)``)."""
        size = cfg["size"]
        size = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
        mean, std = _per_channel(cfg["mean"]), _per_channel(cfg["std"])
        # open_clip maps "random" (a training option) to bicubic at eval time; so do we.
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        resize_mode = cfg.get("resize_mode") or "shortest"
        if resize_mode not in ("shortest", "longest", "squash"):
            raise HSpaceError(f"unsupported CLIP resize_mode {resize_mode!r}: expected shortest, longest or squash")
        return cls(
            size=size,
            mean=mean,
            std=std,
            interpolation=interpolation,
            resize_mode=resize_mode,
            fill_color=int(cfg.get("fill_color", 0)),
        )


def _per_channel(values: Any) -> tuple[float, float, float]:
    """A number or 3 numbers as (R, G, B) floats."""
    red, green, blue = (float(v) for v in np.broadcast_to(np.asarray(values, dtype=np.float64), (3,)))
    return red, green, blue


def preprocess(images: np.ndarray, prep: Preprocessing, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 images to a normalised CLIP input batch, with torch (what open_clip's eval transform does with PIL).

    Resizing is antialiased (torch's ``antialias=True`` kernels are PIL's), so results match open_clip's
    PIL transform to within PIL's rounding to uint8 between its two resize passes: on testbed renders a mean
    absolute difference of ~0.002 in normalised units, single edge pixels up to ~0.1.

    Parameters
    ----------
    images : numpy.ndarray
        uint8, shape (n, 3, H, W).
    prep : Preprocessing
    device : str or torch.device

    Returns
    -------
    torch.Tensor
        float32, shape (n, 3, size[0], size[1]).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device=device, dtype=torch.float32)
    height, width = x.shape[-2:]
    target_h, target_w = prep.size
    if prep.resize_mode == "squash":
        new = (target_h, target_w)
    elif prep.resize_mode == "shortest" and target_h == target_w:
        # open_clip uses torchvision's Resize(int) here: shorter side to size, longer side truncated.
        short, long = sorted((height, width))
        new_long = int(target_h * long / short)
        new = (target_h, new_long) if height <= width else (new_long, target_h)
    else:
        # Same rule as open_clip's ResizeKeepRatio: scale by the shorter (or longer) side's ratio.
        ratios = (height / target_h, width / target_w)
        ratio = min(ratios) if prep.resize_mode == "shortest" else max(ratios)
        new = (max(1, round(height / ratio)), max(1, round(width / ratio)))
    if new != (height, width):
        x = F.interpolate(x, size=new, mode=prep.interpolation, antialias=True, align_corners=False)
    # Bicubic overshoots; PIL clips to the uint8 range, and so do we.
    x = x.clamp(0.0, 255.0)
    x = _center_crop_or_pad(x, (target_h, target_w), float(prep.fill_color))
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def _center_crop_or_pad(x: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Crop (n, 3, h, w) to ``size`` about the centre, padding with ``fill`` where it is smaller (open_clip's rule)."""
    height, width = x.shape[-2:]
    target_h, target_w = size
    pad_h, pad_w = max(0, target_h - height), max(0, target_w - width)
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        height, width = x.shape[-2:]
    top, left = round((height - target_h) / 2.0), round((width - target_w) / 2.0)
    return x[..., top : top + target_h, left : left + target_w]


def pair_probabilities(
    image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Probability of each positive prompt against its negative one (the module docstring's formula).

    Parameters
    ----------
    image_features : torch.Tensor
        Shape (n, D); normalised to unit length here.
    positive, negative : torch.Tensor
        Shape (A, D): embeddings of each attribute's positive and negative prompt; normalised here.
    logit_scale : float
        The temperature s (``model.logit_scale.exp()``), > 0.

    Returns
    -------
    torch.Tensor
        Shape (n, A), in (0, 1).
    """
    f = F.normalize(image_features.float(), dim=-1)
    cos_pos = f @ F.normalize(positive.float(), dim=-1).T
    cos_neg = f @ F.normalize(negative.float(), dim=-1).T
    # softmax over the pair [s cos+, s cos-], first entry.
    return torch.sigmoid(logit_scale * (cos_pos - cos_neg))


def parse_prompts(prompts: Mapping[str, Any] | None) -> dict[str, tuple[str, str]]:
    """``{attribute: (positive, negative)}`` checked: names usable as paths, two non-empty strings each."""
    if prompts is None:
        return dict(DEFAULT_PROMPTS)
    if not isinstance(prompts, Mapping) or not prompts:
        raise HSpaceError(f"prompts must be a non-empty mapping attribute -> [positive, negative]; got {prompts!r}")
    parsed = {}
    for attribute, pair in prompts.items():
        check_name(attribute, "attribute")
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(p, str) and p.strip() for p in pair):
            raise HSpaceError(
                f"prompts[{attribute!r}] must be two non-empty strings [positive, negative]; got {pair!r}"
            )
        parsed[attribute] = (pair[0], pair[1])
    return parsed


class ClipAnnotator(Annotator):
    """Zero-shot CLIP scores for attributes given as prompt pairs (see the module docstring).

    Use :meth:`load` to build one from an open_clip model name and pretrained tag or file.

    Parameters
    ----------
    model : torch.nn.Module
        An open_clip model (``encode_image``, ``encode_text``, ``logit_scale``); put in eval mode.
    tokenizer : callable
        open_clip tokenizer of the model: list of str -> (k, context_length) int tensor.
    preprocessing : Preprocessing
        The model's input size and normalisation.
    prompts : mapping, optional
        ``{attribute: (positive, negative)}``; default :data:`DEFAULT_PROMPTS`.
    name : str
        Annotator name (a path component of the corpus).
    batch : int
        Images per forward pass.
    device : str or torch.device
    source : dict, optional
        What the weights are (model, pretrained, checksum), recorded in :attr:`config`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        preprocessing: Preprocessing,
        *,
        prompts: Mapping[str, Any] | None = None,
        name: str = "clip",
        batch: int = 64,
        device: str | torch.device = "cpu",
        source: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise HSpaceError(f"batch must be a positive integer; got {batch!r}")
        self.name = check_name(name, "annotator")
        self.prompts = parse_prompts(prompts)
        self.attributes = tuple(self.prompts)
        self.device = torch.device(device)
        # An open_clip CLIP model; its encode_text and encode_image are not part of nn.Module's types.
        self.model = cast(Any, model.to(self.device).eval())
        self.preprocessing = preprocessing
        self.batch = batch
        self.source = dict(source or {})
        # Prompt embeddings once: each distinct prompt encoded a single time ("A person" is shared).
        texts = sorted({p for pair in self.prompts.values() for p in pair})
        with torch.no_grad():
            embedded = self.model.encode_text(tokenizer(texts).to(self.device), normalize=True).float()
        row = {text: i for i, text in enumerate(texts)}
        self.positive = embedded[[row[pos] for pos, _ in self.prompts.values()]]
        self.negative = embedded[[row[neg] for _, neg in self.prompts.values()]]
        self.logit_scale = float(self.model.logit_scale.detach().float().exp().reshape(-1)[0])

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
        *,
        prompts: Mapping[str, Any] | None = None,
        name: str = "clip",
        batch: int = 64,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
    ) -> ClipAnnotator:
        """Build the open_clip model with pretrained weights, its tokenizer and its preprocessing.

        Parameters
        ----------
        model : str
            open_clip model name (``open_clip.list_models()``), ``"hf-hub:org/repo"`` or
            ``"local-dir:/path"`` (a folder with ``open_clip_config.json`` and the weights).
        pretrained : str or PathLike
            A pretrained tag of ``model`` (``open_clip.list_pretrained_tags_by_model(model)``), found in the
            Hugging Face cache or downloaded; or a local checkpoint file. Ignored for ``hf-hub:`` and
            ``local-dir:`` models, which carry their weights. Random weights are refused.
        prompts : mapping, optional
            ``{attribute: (positive, negative)}``; default :data:`DEFAULT_PROMPTS`.
        name : str
            Annotator name; give CLIP annotators with other models or prompts other names, so their scores
            land in other places of the corpus.
        batch : int
            Images per forward pass.
        device : str or torch.device
        cache_dir : str, optional
            Download cache; default the Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``).

        Returns
        -------
        ClipAnnotator

        Raises
        ------
        HSpaceError
            If the model name is unknown or the weights cannot be found; the message says how to provide them.
        """
        try:
            import open_clip  # lazily: naming another annotator never imports open_clip
        except ImportError:
            raise HSpaceError("the clip annotator needs open_clip: pip install open_clip_torch") from None

        check_name(name, "annotator")
        carries_weights = str(model).startswith(("hf-hub:", "local-dir:"))
        if not carries_weights:
            if open_clip.get_model_config(str(model).replace("/", "-")) is None:
                raise HSpaceError(
                    f"unknown CLIP model {model!r}: use a name from open_clip.list_models() (e.g. "
                    f"{DEFAULT_MODEL!r}), 'hf-hub:<org>/<repo>' or 'local-dir:<folder>'"
                )
            tags = open_clip.list_pretrained_tags_by_model(model)
            if not pretrained:
                raise HSpaceError(
                    f"CLIP model {model!r} needs pretrained weights (random weights score nothing): "
                    f"pass pretrained=<tag> (one of {tags}) or pretrained=<path to a checkpoint file>"
                )
            is_tag = bool(open_clip.get_pretrained_cfg(str(model).replace("/", "-"), os.fspath(pretrained)))
            if not is_tag and not os.path.isfile(pretrained):
                raise HSpaceError(
                    f"pretrained {os.fspath(pretrained)!r} is neither a tag of CLIP model {model!r} "
                    f"(tags: {tags}) nor an existing checkpoint file"
                )
        pretrained = None if carries_weights or pretrained is None else os.fspath(pretrained)
        try:
            net = open_clip.create_model(
                model,
                pretrained=pretrained,
                device=device,
                require_pretrained=True,
                cache_dir=cache_dir,
                weights_only=True,
            )
            tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
        except (RuntimeError, OSError, ValueError, ImportError) as error:
            raise HSpaceError(_missing_weights_message(model, pretrained, error)) from None
        source: dict[str, Any] = {"model": str(model), "pretrained": pretrained, "open_clip": open_clip.__version__}
        # Tags name fixed published weights; local files can change under the same name, so record their bytes.
        if pretrained is not None and os.path.isfile(pretrained):
            source["sha256"] = sha256_of(pretrained)
        elif str(model).startswith("local-dir:"):
            folder = Path(str(model).removeprefix("local-dir:"))
            source["sha256"] = {
                p.name: sha256_of(p)
                for p in sorted(folder.iterdir())
                if p.suffix in (".safetensors", ".bin", ".pth", ".pt")
            }
        preprocessing = Preprocessing.parse(open_clip.get_model_preprocess_cfg(net))
        return cls(net, tokenizer, preprocessing, prompts=prompts, name=name, batch=batch, device=device, source=source)

    @property
    def config(self) -> dict[str, Any]:
        """What fixes the scores (JSON): weights source, prompts, temperature and preprocessing."""
        return json.loads(
            json.dumps(
                {
                    **self.source,
                    "prompts": self.prompts,
                    "logit_scale": self.logit_scale,
                    "preprocessing": asdict(self.preprocessing),
                }
            )
        )

    def score(self, images: np.ndarray) -> np.ndarray:
        """Score images.

        Parameters
        ----------
        images : numpy.ndarray
            uint8, shape (n, 3, H, W), any size (resized with the model's preprocessing).

        Returns
        -------
        numpy.ndarray
            float32, shape (n, len(attributes)): probability of each attribute's positive prompt over its
            negative one.
        """
        self.check_images(images)
        out = np.empty((len(images), len(self.attributes)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                part = images[start : start + self.batch]
                features = self.model.encode_image(preprocess(part, self.preprocessing, self.device))
                probabilities = pair_probabilities(features, self.positive, self.negative, self.logit_scale)
                out[start : start + len(part)] = probabilities.cpu().numpy()
        return out


def _missing_weights_message(model: str, pretrained: str | None, error: Exception) -> str:
    last = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    if str(model).startswith("local-dir:"):
        return (
            f"CLIP model {model!r} could not be loaded ({last}): the folder needs open_clip_config.json "
            "(with model_cfg) and a weights file such as open_clip_model.safetensors"
        )
    shown = repr(pretrained) if pretrained else "(its hub weights)"
    download = (
        f'python -c "import open_clip; open_clip.create_model({model!r}, pretrained={pretrained!r})"'
        if pretrained
        else f'python -c "import open_clip; open_clip.create_model({model!r})"'
    )
    return (
        f"CLIP weights for model {model!r}, pretrained {shown} could not be loaded ({last}). Machines "
        "without access to the model hub need them in the local cache: run `" + download + "` once where the "
        "hub is reachable and make that Hugging Face cache (HF_HOME / HF_HUB_CACHE) available here (with "
        "HF_HUB_OFFLINE=1 the cache is read without trying the hub first), or pass "
        "pretrained=<path to a local checkpoint file, e.g. open_clip_model.safetensors>"
    )
