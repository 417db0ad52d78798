"""User classifiers as annotators: a network that maps images to one logit per named attribute.

This is the paper's supervised case (Sec. V): samples annotated by a pretrained attribute classifier (a
CelebA classifier with its 40 attributes, say). Two file formats, neither of which unpickles Python objects:

* **TorchScript** (``torch.jit.save(torch.jit.script(model), "model.ts")``). ``torch.jit.load`` rebuilds
  the module from the TorchScript code stored in the archive and reads its pickled parts with TorchScript's
  own restricted unpickler, which only knows tensors and TorchScript types; a pickle that names any other
  Python callable is an error, and nothing of it runs (checked: ``tests/hspace/test_annotators.py`` plants an
  archive whose pickle calls ``exec``; loading fails and the call never happens). The model itself is
  still a program: it runs the TorchScript operations it was written with, so load models you trust. Its
  ``forward`` takes float32 (n, 3, H, W) and returns (n, A) logits.
* **safetensors** weights of a small built-in architecture (:data:`ARCHITECTURES`): ``small_cnn`` (3x3
  stride-2 convolutions with SiLU, global average pooling, a linear layer; argument ``widths``) or
  torchvision's ``resnet18``, ``resnet34``, ``resnet50`` with ``num_classes`` = number of attributes and
  torchvision's parameter names (``fc.weight``, ...).

Pickles (``torch.save`` files, ``.pt``/``.pth``/``.pkl``/``.ckpt``/``.bin``) are refused: unpickling runs
arbitrary code. A ``.pt`` file that is in fact a TorchScript archive is accepted.

Both formats need a JSON config (:mod:`hspace.annotators.classifier_config`), next to the model with the
same name and ``.json`` (``model.ts`` -> ``model.json``), or passed as ``config``::

    {
      "attributes": ["Smiling", "Eyeglasses", "Male"],      # output columns of the network, in order
      "input": {"size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
      "architecture": "resnet18",                          # safetensors only
      "arguments": {},                                     # safetensors only, architecture keywords
      "name": "celeba"                                     # optional annotator name
    }

Input: uint8 pixels divided by 255, resized to ``size`` (antialiased bilinear, aspect ratio not kept),
then ``(x - mean) / std`` per channel. Output: ``sigmoid(logit)`` per attribute (``output="probability"``,
default) or the raw logits (``output="logit"``); ``select`` keeps some attributes, in the order given.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hspace.annotators.base import Annotator
from hspace.annotators.classifier_config import ARCHITECTURES, ClassifierConfig, read_config
from hspace.errors import HSpaceError
from hspace.files import sha256_of
from hspace.names import check_name

OUTPUTS: tuple[str, ...] = ("probability", "logit")
EXPORT_ADVICE = (
    "export the model as TorchScript (torch.jit.save(torch.jit.script(model), 'model.ts')) or save its "
    "weights with safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) "
    "for a built-in architecture, with a JSON config next to it (see hspace.annotators.classifier)"
)


class SmallCNN(nn.Module):
    """3x3 stride-2 convolutions with SiLU, global average pooling, one linear layer: any input size.

    Parameters
    ----------
    outputs : int
        Number of logits.
    widths : sequence of int
        Channels of the convolutions (one per halving of the resolution).
    """

    def __init__(self, outputs: int, widths: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise HSpaceError(f"small_cnn widths must be a non-empty list of positive ints; got {widths!r}")
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, outputs) for normalised images (n, 3, H, W)."""
        return self.head(self.features(x).mean(dim=(2, 3)))


def build_architecture(name: str, outputs: int, arguments: Mapping[str, Any] | None = None) -> nn.Module:
    """A built-in architecture (:data:`ARCHITECTURES`) with ``outputs`` logits, randomly initialised.

    Parameters
    ----------
    name : str
    outputs : int
        Number of attributes.
    arguments : mapping, optional
        ``small_cnn``: ``widths``; the resnets take none.

    Returns
    -------
    torch.nn.Module
    """
    arguments = dict(arguments or {})
    if name == "small_cnn":
        allowed = {"widths"}
    elif name in ("resnet18", "resnet34", "resnet50"):
        allowed = set()
    else:
        raise HSpaceError(f"unknown classifier architecture {name!r}; built in: {', '.join(ARCHITECTURES)}")
    if set(arguments) - allowed:
        raise HSpaceError(f"architecture {name!r} takes arguments {sorted(allowed) or 'none'}; got {sorted(arguments)}")
    if name == "small_cnn":
        return SmallCNN(outputs, **arguments)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=outputs)


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether a file is a TorchScript archive (a zip with ``code/`` and ``constants.pkl``), read without loading it.

    ``torch.save`` archives are zips too, but without TorchScript code.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


class ClassifierAnnotator(Annotator):
    """Attribute scores from a user classifier (see the module docstring); build one with :func:`load_classifier`.

    Parameters
    ----------
    module : torch.nn.Module or torch.jit.ScriptModule
        Maps float32 (n, 3, H, W) normalised images to (n, len(config.attributes)) logits.
    config : ClassifierConfig
    name : str
        Annotator name (a path component of the corpus).
    select : sequence of str, optional
        Attributes to keep, in this order; default all of ``config.attributes``.
    output : str
        ``"probability"`` (sigmoid of the logits) or ``"logit"``.
    batch : int
        Images per forward pass.
    device : str or torch.device
    source : dict, optional
        What the weights are (file name, checksum, format), recorded in :attr:`config`.

    Raises
    ------
    HSpaceError
        If ``select`` names attributes the config does not, or the module's output does not have one
        column per attribute (checked on one blank image).
    """

    def __init__(
        self,
        module: nn.Module,
        config: ClassifierConfig,
        *,
        name: str,
        select: Sequence[str] | None = None,
        output: str = "probability",
        batch: int = 256,
        device: str | torch.device = "cpu",
        source: dict[str, Any] | None = None,
    ) -> None:
        if output not in OUTPUTS:
            raise HSpaceError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise HSpaceError(f"batch must be a positive integer; got {batch!r}")
        self.name = check_name(name, "annotator")
        self.classifier_config = config
        if select is None:
            select = config.attributes
        if isinstance(select, str) or not select or len(set(select)) != len(select):
            raise HSpaceError(f"select must be a non-empty list of distinct attribute names; got {select!r}")
        unknown = [a for a in select if a not in config.attributes]
        if unknown:
            raise HSpaceError(
                f"classifier {name!r} has no attributes {unknown}; it has: {', '.join(config.attributes)}"
            )
        self.attributes = tuple(select)
        self.columns = [config.attributes.index(a) for a in self.attributes]
        self.output = output
        self.batch = batch
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.source = dict(source or {})
        with torch.no_grad():
            probe = self.module(torch.zeros(1, 3, *config.size, device=self.device))
        expected = (1, len(config.attributes))
        if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != expected:
            got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
            raise HSpaceError(
                f"classifier {name!r} returns {got} for one {config.size[0]}x{config.size[1]} image, "
                f"but its config names {len(config.attributes)} attributes: it must return one logit "
                "per attribute, shape (n, A); fix the config's attributes or input size"
            )

    @property
    def config(self) -> dict[str, Any]:
        """What fixes the scores (JSON): weights checksum, classifier config, selection and output."""
        return json.loads(
            json.dumps(
                {
                    **self.source,
                    "classifier": asdict(self.classifier_config),
                    "select": list(self.attributes),
                    "output": self.output,
                }
            )
        )

    def _input(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device=self.device, dtype=torch.float32) / 255.0
        if tuple(x.shape[-2:]) != self.classifier_config.size:
            x = F.interpolate(x, size=self.classifier_config.size, mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.classifier_config.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.classifier_config.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def score(self, images: np.ndarray) -> np.ndarray:
        """Score images.

        Parameters
        ----------
        images : numpy.ndarray
            uint8, shape (n, 3, H, W); resized to the config's input size.

        Returns
        -------
        numpy.ndarray
            float32, shape (n, len(attributes)): probabilities or logits (``output``).
        """
        self.check_images(images)
        out = np.empty((len(images), len(self.attributes)), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                part = images[start : start + self.batch]
                logits = self.module(self._input(part))[:, self.columns].float()
                values = torch.sigmoid(logits) if self.output == "probability" else logits
                out[start : start + len(part)] = values.cpu().numpy()
        return out


def load_classifier(
    path: str | os.PathLike,
    *,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    select: Sequence[str] | None = None,
    output: str = "probability",
    name: str | None = None,
    batch: int = 256,
    device: str | torch.device = "cpu",
) -> ClassifierAnnotator:
    """A user classifier from a TorchScript file or safetensors weights, with its JSON config.

    Parameters
    ----------
    path : str or PathLike
        A TorchScript archive (any suffix but ``.safetensors``; usually ``.ts``) or ``.safetensors`` weights.
    config : mapping or path, optional
        The config (module docstring) as a dict or a JSON file; default ``path`` with suffix ``.json``.
    select : sequence of str, optional
        Attributes to keep, in this order.
    output : str
        ``"probability"`` or ``"logit"``.
    name : str, optional
        Annotator name; default the config's ``name``, else the file's stem.
    batch : int
        Images per forward pass.
    device : str or torch.device

    Returns
    -------
    ClassifierAnnotator

    Raises
    ------
    HSpaceError
        For a pickle, a missing file or config, a config error, weights that do not fit the architecture,
        or an output that does not have one column per attribute.
    """
    path = Path(path)
    if not path.is_file():
        raise HSpaceError(f"classifier file {path} does not exist")
    is_safetensors = path.suffix.lower() == ".safetensors"
    if not is_safetensors and not is_torchscript(path):
        raise HSpaceError(
            f"classifier {path} is not TorchScript or safetensors (a pickle, e.g. torch.save): it is "
            f"refused because unpickling can run arbitrary code; {EXPORT_ADVICE}"
        )
    parsed = ClassifierConfig.parse(*read_config(path, config))
    if is_safetensors:
        module = _load_safetensors(path, parsed)
    else:
        if parsed.architecture is not None or parsed.arguments:
            raise HSpaceError(
                f"classifier {path} is TorchScript, which carries its own architecture: remove "
                "'architecture' and 'arguments' from its config"
            )
        with warnings.catch_warnings():  # torch 2.x deprecates TorchScript in favour of torch.export
            warnings.simplefilter("ignore", FutureWarning)
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as error:
                raise HSpaceError(
                    f"TorchScript file {path} could not be loaded ({_first_line(error)}); re-export it "
                    "with torch.jit.save(torch.jit.script(model), path)"
                ) from None
    if name is None:
        name = parsed.name or path.stem
        try:
            check_name(name, "annotator")
        except HSpaceError:
            raise HSpaceError(
                f"classifier file name {path.stem!r} is not a valid annotator name: pass name=... "
                "(letters, digits, '_', '-', '.') or set 'name' in its config"
            ) from None
    source = {
        "file": path.name,
        "format": "safetensors" if is_safetensors else "torchscript",
        "sha256": sha256_of(path),
    }
    return ClassifierAnnotator(
        module, parsed, name=name, select=select, output=output, batch=batch, device=device, source=source
    )


def _load_safetensors(path: Path, config: ClassifierConfig) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if config.architecture is None:
        raise HSpaceError(
            f"safetensors weights {path} need 'architecture' in their config (one of "
            f"{', '.join(ARCHITECTURES)}), since the file holds tensors only"
        )
    module = build_architecture(config.architecture, len(config.attributes), config.arguments)
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as error:
        raise HSpaceError(f"safetensors file {path} is unreadable ({_first_line(error)})") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:500]
        raise HSpaceError(
            f"weights {path} do not fit architecture {config.architecture!r} with "
            f"{len(config.attributes)} attributes and arguments {config.arguments}: {detail}"
        ) from None
    return module


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
