"""The JSON config of a user classifier, read and checked at the boundary (:class:`ClassifierConfig`).

Its keys (``attributes``, ``input``, ``architecture``, ``arguments``, ``name``) are described, with an example,
in :mod:`hspace.annotators.classifier`; :func:`read_config` finds the file next to the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hspace.errors import HSpaceError
from hspace.names import check_name

ARCHITECTURES: tuple[str, ...] = ("small_cnn", "resnet18", "resnet34", "resnet50")
CONFIG_KEYS = frozenset({"attributes", "input", "architecture", "arguments", "name"})


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """What a classifier file needs besides its weights (its JSON config; see hspace.annotators.classifier).

    Attributes
    ----------
    attributes : tuple of str
        Names of the network's output columns, in order.
    size : tuple of int
        (height, width) of the network input.
    mean, std : tuple of 3 float
        Per-channel normalisation of pixels scaled to [0, 1].
    architecture : str or None
        One of :data:`ARCHITECTURES` (safetensors weights); None for TorchScript.
    arguments : dict
        Keyword arguments of the architecture.
    name : str or None
        Annotator name, if the config gives one.
    """

    attributes: tuple[str, ...]
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> ClassifierConfig:
        """Check a config dict; ``where`` names its source in error messages."""
        if not isinstance(raw, Mapping):
            raise HSpaceError(f"classifier config {where} must be a JSON object; got {type(raw).__name__}")
        unknown = sorted(set(raw) - CONFIG_KEYS)
        if unknown:
            raise HSpaceError(f"classifier config {where} has unknown keys {unknown}; allowed: {sorted(CONFIG_KEYS)}")
        attributes = _parse_attributes(raw.get("attributes"), where)
        size, mean, std = _parse_input(raw.get("input"), where)
        architecture = raw.get("architecture")
        if architecture is not None and architecture not in ARCHITECTURES:
            raise HSpaceError(
                f"classifier config {where}: unknown architecture {architecture!r}; built in: "
                f"{', '.join(ARCHITECTURES)}"
            )
        arguments = raw.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise HSpaceError(f"classifier config {where}: 'arguments' must be an object; got {arguments!r}")
        name = raw.get("name")
        if name is not None:
            check_name(name, "annotator")
        return cls(
            attributes=attributes,
            size=size,
            mean=mean,
            std=std,
            architecture=architecture,
            arguments=dict(arguments),
            name=name,
        )


def _parse_attributes(attributes: Any, where: str) -> tuple[str, ...]:
    if not isinstance(attributes, Sequence) or isinstance(attributes, str) or not attributes:
        raise HSpaceError(
            f"classifier config {where} needs 'attributes': a non-empty list of the network's "
            "output names, in column order"
        )
    for attribute in attributes:
        check_name(attribute, "attribute")
    duplicates = sorted({a for a in attributes if list(attributes).count(a) > 1})
    if duplicates:
        raise HSpaceError(f"classifier config {where} names attributes more than once: {duplicates}")
    return tuple(attributes)


def _parse_input(
    prep: Any, where: str
) -> tuple[tuple[int, int], tuple[float, float, float], tuple[float, float, float]]:
    """(size, mean, std) of the config's ``input``."""
    if not isinstance(prep, Mapping) or not {"size", "mean", "std"} <= set(prep):
        raise HSpaceError(
            f"classifier config {where} needs 'input': {{'size': int or [h, w], 'mean': [3 floats], "
            "'std': [3 floats]}} (pixels are scaled to [0, 1], then (x - mean) / std); a wrong "
            "normalisation gives wrong scores silently, so there is no default"
        )
    size = _parse_size(prep["size"], where)
    mean, std = _parse_channels(prep["mean"], "mean", where), _parse_channels(prep["std"], "std", where)
    if min(std) <= 0:
        raise HSpaceError(f"classifier config {where}: input std must be positive; got {list(std)}")
    return size, mean, std


def _parse_size(size: Any, where: str) -> tuple[int, int]:
    values = [size] if isinstance(size, int) else size
    if (
        not isinstance(values, Sequence)
        or len(values) not in (1, 2)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise HSpaceError(
            f"classifier config {where}: input size must be a positive int or [height, width]; got {size!r}"
        )
    return (values[0], values[-1])


def _parse_channels(values: Any, label: str, where: str) -> tuple[float, float, float]:
    try:
        array = np.broadcast_to(np.asarray(values, dtype=np.float64), (3,))
    except (ValueError, TypeError):
        raise HSpaceError(
            f"classifier config {where}: input {label} must be a number or 3 numbers (R, G, B); got {values!r}"
        ) from None
    if not np.isfinite(array).all():
        raise HSpaceError(f"classifier config {where}: input {label} must be finite; got {values!r}")
    return (float(array[0]), float(array[1]), float(array[2]))


def read_config(path: Path, config: Mapping[str, Any] | str | os.PathLike | None) -> tuple[Any, str]:
    """The raw config of classifier ``path`` (``config`` as given, or the JSON file it names, by default ``path``
    with ``.json``) and a description of where it came from, for error messages."""
    if isinstance(config, Mapping):
        return config, "(given as a dict)"
    config_path = path.with_suffix(".json") if config is None else Path(config)
    if not config_path.is_file():
        raise HSpaceError(
            f"classifier {path} needs a JSON config at {config_path} (or pass config=...): "
            "{'attributes': [...], 'input': {'size': ..., 'mean': [...], 'std': [...]}"
            + (", 'architecture': ...}" if path.suffix.lower() == ".safetensors" else "}")
        )
    try:
        return json.loads(config_path.read_text()), str(config_path)
    except (ValueError, UnicodeDecodeError) as error:
        raise HSpaceError(f"classifier config {config_path} is not valid JSON ({error})") from None
