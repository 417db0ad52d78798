"""The bank's format without I/O: names, :class:`Direction`, and the manifest's canonical JSON, digests and seal.

What each manifest field means, and why a version is sealed twice (``content_sha256`` over what the
version holds, ``manifest_sha256`` over the whole manifest), is in :mod:`hspace.bank`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

from hspace import names
from hspace.conditioning import Conditioning
from hspace.errors import HSpaceError
from hspace.models import check_precision, precision_entry
from hspace.sampler import parse_eta

SCHEMA_VERSION = 1
METHODS = ("pca", "jacobian", "supervised", "disentangled", "examples", "inverted", "random")
NAME = names.NAME
RESERVED_VERSIONS = ("latest",)
TENSOR_KEY = "direction"
# Fields of a manifest that record one publish, not its content (left out of content_sha256).
BOOKKEEPING = ("version", "created", "package_version", "content_sha256", "manifest_sha256")


def check_name(name: object, what: str = "direction") -> str:
    """``name`` if it can be a file or folder name inside the bank; HSpaceError otherwise."""
    checked = names.check_name(name, what)
    if what == "version" and checked in RESERVED_VERSIONS:
        raise HSpaceError(f"{name!r} is reserved (it names the pointer to the newest version); choose another version")
    return checked


@dataclass(frozen=True, kw_only=True, eq=False)
class Direction:
    """One named direction in h-space, with where it came from.

    Attributes
    ----------
    name : str
        A :data:`NAME` (it becomes a file name).
    tensor : Tensor of shape (T, C, H, W)
        Floating point, finite, on the CPU; editing adds gamma * tensor[t] to h_t at step t (Sec. III).
    method : str
        One of :data:`METHODS`.
    parameters : dict
        JSON-able settings of the method (k, annotator, attribute, step, ...).
    source : str
        The corpus URL or id it was computed from.
    fingerprint : str
        Weight fingerprint of the model (:func:`hspace.models.weight_fingerprint`).
    evaluation : dict
        JSON-able evaluation results; may be empty.
    """

    name: str
    tensor: torch.Tensor = field(repr=False)
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    fingerprint: str
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        tensor = torch.as_tensor(self.tensor)
        if tensor.ndim != 4 or not tensor.is_floating_point():
            raise HSpaceError(
                f"direction {self.name!r} must be a floating tensor of shape (T, C, H, W); got "
                f"{tensor.dtype} {tuple(tensor.shape)}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise HSpaceError(f"direction {self.name!r} holds NaN or infinite values")
        object.__setattr__(self, "tensor", tensor.detach().to("cpu").contiguous())
        if self.method not in METHODS:
            raise HSpaceError(f"direction {self.name!r} has method {self.method!r}; use one of {', '.join(METHODS)}")
        for label in ("source", "fingerprint"):
            if not isinstance(getattr(self, label), str):
                raise HSpaceError(f"direction {self.name!r}: {label} must be a string")
        for label in ("parameters", "evaluation"):
            value = getattr(self, label)
            if not isinstance(value, Mapping):
                raise HSpaceError(f"direction {self.name!r}: {label} must be a dict")
            # Normalised through JSON (tuples become lists), so a published and a loaded direction are equal.
            object.__setattr__(self, label, json.loads(canonical_json(dict(value), f"{self.name!r} {label}")))

    def record(self) -> dict[str, Any]:
        """The JSON-able metadata (everything but the tensor)."""
        return {
            "method": self.method,
            "parameters": self.parameters,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "evaluation": self.evaluation,
        }


def canonical_json(value: Any, what: str = "manifest") -> str:
    """The one JSON text of ``value`` that every digest is taken over (sorted keys, no spaces, no NaN)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise HSpaceError(
            f"{what} must be JSON-able (dicts, lists, str, finite numbers, bool, None): {error}"
        ) from error


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def body_sha256(manifest: Mapping[str, Any]) -> str:
    """The ``manifest_sha256`` of ``manifest``: over the canonical JSON of every field but itself."""
    return sha256_hex(
        canonical_json({key: value for key, value in manifest.items() if key != "manifest_sha256"}).encode()
    )


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes: the tensor's identity, independent of the file format."""
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_directions(directions: list[Direction], fingerprint: str) -> tuple[int, ...]:
    """The shared shape (T, C, H, W) of the directions of one version; HSpaceError if they cannot be one."""
    if not directions:
        raise HSpaceError("publish needs at least one direction")
    if not all(isinstance(d, Direction) for d in directions):
        raise HSpaceError("publish takes hspace.bank.Direction objects")
    given = [d.name for d in directions]
    folded = [n.casefold() for n in given]
    if len(set(folded)) != len(folded):
        raise HSpaceError(
            f"direction names must be unique (ignoring case, for case-insensitive filesystems); got {given}"
        )
    shapes = {tuple(d.tensor.shape) for d in directions}
    if len(shapes) != 1:
        raise HSpaceError(f"directions of one bank version must share one shape (T, C, H, W); got {sorted(shapes)}")
    others = sorted({d.name for d in directions if d.fingerprint != fingerprint})
    if others:
        raise HSpaceError(
            f"directions {others} were made for another model than model_fingerprint "
            f"{fingerprint[:12]}...: publish each model's directions in a bank of its own"
        )
    return shapes.pop()


def new_manifest(
    directions: Iterable[Direction],
    fingerprint: str,
    eta: float | Sequence[float],
    timesteps: Sequence[int] | None,
    notes: str | None,
    precision: str = "fp32",
    conditioning: dict[str, Any] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The file bytes per direction name, and the manifest without ``version``, ``created`` and its seal."""
    directions = list(directions)
    check_precision(precision)
    steps, *h_shape = check_directions(directions, fingerprint)
    if notes is not None and not isinstance(notes, str):
        raise HSpaceError("notes must be a string")
    if timesteps is not None:
        timesteps = [int(t) for t in timesteps]
        if len(timesteps) != steps:
            raise HSpaceError(f"timesteps has {len(timesteps)} values but the directions have T = {steps} steps")
    files = {d.name: safetensors.torch.save({TENSOR_KEY: d.tensor}) for d in directions}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": fingerprint,
        "h_shape": h_shape,
        "sampler": {
            "steps": steps,
            "eta": list(parse_eta(eta, steps)),
            "timesteps": timesteps,
            **precision_entry(precision),
            # A text-conditional model's prompt, negative prompt and guidance (Conditioning.sampling()); absent
            # for unconditional models, so their manifests and content hashes are what they were.
            **({} if conditioning is None else {"conditioning": dict(Conditioning(**conditioning).sampling())}),
        },
        "notes": notes,
        "directions": {
            d.name: {
                "file": f"{d.name}.safetensors",
                "sha256": sha256_hex(files[d.name]),
                "dtype": str(d.tensor.dtype).removeprefix("torch."),
                "shape": list(d.tensor.shape),
                **d.record(),
            }
            for d in directions
        },
    }
    content = {key: value for key, value in manifest.items() if key != "directions"}
    # The tensors by their bytes, not their files: the same content stays the same across safetensors versions.
    content["directions"] = {
        d.name: {
            **{k: v for k, v in manifest["directions"][d.name].items() if k != "sha256"},
            "tensor": tensor_digest(d.tensor),
        }
        for d in directions
    }
    from hspace import __version__

    manifest["package_version"] = __version__
    manifest["content_sha256"] = sha256_hex(canonical_json(content).encode())
    return files, manifest


def seal(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json``: ``manifest`` with its ``manifest_sha256`` last."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    sealed = {**body, "manifest_sha256": body_sha256(body)}
    return (json.dumps(sealed, indent=2) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in ``data`` after checking its schema version, seal, file names and fields."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise HSpaceError(
            f"{where} is damaged (not valid JSON: {error}); restore it or republish the version"
        ) from error
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise HSpaceError(f"{where} has bank schema version {version}; this hspace reads version {SCHEMA_VERSION}")
    if manifest.get("manifest_sha256") != body_sha256(manifest):
        raise HSpaceError(
            f"{where} is damaged (its content does not match its manifest_sha256); restore it or republish the version"
        )
    try:
        for name, record in manifest["directions"].items():
            check_name(name)
            if record["file"] != f"{name}.safetensors":
                raise HSpaceError(f"{where}: direction {name!r} names file {record['file']!r}")
        missing = [
            key for key in (*BOOKKEEPING, "model_fingerprint", "h_shape", "sampler", "notes") if key not in manifest
        ]
    except (AttributeError, KeyError, TypeError) as error:
        raise HSpaceError(f"{where} is not a bank manifest ({error!r})") from error
    if missing:
        raise HSpaceError(f"{where} is not a bank manifest (it lacks {missing})")
    return manifest


def parse_tensor(data: bytes, record: dict[str, Any], *, where: str) -> torch.Tensor:
    """The direction in one tensor file's ``data``, after checking it against its manifest ``record``."""
    if sha256_hex(data) != record["sha256"]:
        raise HSpaceError(
            f"{where}: file {record['file']} is damaged (sha256 {sha256_hex(data)[:12]}..., the "
            f"manifest records {record['sha256'][:12]}...); restore it or republish the version"
        )
    tensors = safetensors.torch.load(data)
    tensor = tensors.get(TENSOR_KEY)
    if tensor is None or list(tensor.shape) != record["shape"] or str(tensor.dtype) != f"torch.{record['dtype']}":
        raise HSpaceError(
            f"{where}: file {record['file']} does not hold a {record['dtype']} tensor of shape "
            f"{record['shape']} under {TENSOR_KEY!r}"
        )
    return tensor
