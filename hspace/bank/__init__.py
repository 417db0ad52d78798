"""The direction bank: named h-space directions in immutable, checksummed versions (design.md).

A bank is a folder (a local path or any fsspec URL: ``memory://``, ``s3://`` with ``s3fs``) of
safetensors and JSON files::

    <bank>/latest                                  {"schema_version", "version", "manifest_sha256"}
    <bank>/versions/<version>/manifest.json        everything but the tensors (below)
    <bank>/versions/<version>/<name>.safetensors   one tensor "direction" of shape (T, C, H, W)
    <bank>/versions/.staging-<uuid>/               a local publish in progress (never read)

``manifest.json`` holds ``schema_version``, ``version``, ``created`` (UTC), ``model_fingerprint``,
``h_shape`` (C, H, W), ``sampler`` (``steps`` T, ``eta`` one per step, ``timesteps`` or null: the
settings the directions belong to, so that :func:`edit` samples with the same T), ``notes``,
``package_version``, ``content_sha256`` (over the tensors' dtype, shape and bytes and every field above
except ``version``, ``created`` and ``package_version``: what "the same content" means), the
``directions`` (per name: ``file``, ``sha256`` of the file, ``dtype``, ``shape``, ``method``,
``parameters``, ``source``, ``fingerprint``, ``evaluation``) and last ``manifest_sha256``, the sha256 of
the canonical JSON of all the rest, so a flipped byte anywhere in the manifest is detected.

Decisions, and why:

- **The format lives in the core, not in storage/.** design.md puts the bank under storage/, but the
  notebook API ``hspace.load_bank`` is core, and the core must not import storage/ (layers import only
  those below). The bank is plain safetensors + JSON through fsspec (no Zarr, no Prefect), so its reader
  *and* writer are here, and storage/ or tasks/ call :func:`publish` like anyone else. One format, one
  module.
- **Publishing** writes the whole version, verifies it by reading every file back against its sha256,
  and only then makes it visible; ``latest`` moves last. On a local filesystem the files go into
  ``versions/.staging-<uuid>/``, which is renamed to ``versions/<version>/`` (``os.rename`` of a
  directory is atomic and refuses an existing non-empty target, so two publishers never mix files), and
  ``latest`` is replaced by write, fsync, ``os.replace``. Object stores have no atomic rename, so there
  the tensor files are written in place and ``manifest.json`` is written after they are verified:
  **a version exists only once its manifest exists** (readers and listings ignore folders without
  one; a rerun overwrites them), and ``latest`` (one object, whose PUT is atomic) is written after the
  manifest. Either way a crash leaves ``latest`` at the previous complete version, and it stays readable.
- **Immutable versions, idempotent reruns.** Publishing an existing version name with other content is
  refused; with the same content (``content_sha256``) it writes nothing. Default names count up
  (``v0001``, ``v0002``, ...: one more than the highest such name with a manifest), and publishing
  content identical to the newest version returns that version instead of making a new one. So a rerun
  after a crash at any point gets the same name, and one after a crash between the version and
  ``latest`` just moves ``latest``. ``latest`` always names the newest complete version (by
  ``created``), so publishing again an older version's content does not move it back.
- **Integrity:** every tensor file is read whole, checked against its sha256, and only then parsed, by
  safetensors (never pickle); JSON is the only other format. A tensor is read (and checked) the first
  time it is used and then cached; :meth:`Bank.verify` checks every file now.
- **Names that become paths are validated** (direction and version names: ``NAME``, no ``..``; names that
  differ only in case are refused within a bank, for case-insensitive filesystems), also when read back
  from a manifest or from ``latest``.
- **Safety at edit time:** :func:`edit` refuses a model whose weight fingerprint differs from the bank's,
  an h shape, T or timesteps that differ from the ones the directions were built with, and returns uint8
  images (what pictures, ``hspace.render.image_grid`` and PIL take). For float images or h, call
  :func:`hspace.sampler.sample` with ``delta=bank.delta(gammas)``: the same computation.
- Concurrent publishers never corrupt a version, but ``latest`` is last-writer-wins: run one rebuild at a
  time (one scheduled deployment).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import safetensors.torch
import torch
from fsspec.implementations.local import LocalFileSystem

from hspace import names
from hspace.errors import HSpaceError
from hspace.hook import compose_delta
from hspace.models import LoadedModel
from hspace.sampler import parse_eta

SCHEMA_VERSION = 1
METHODS = ("pca", "jacobian", "supervised", "disentangled", "examples", "inverted", "random")
NAME = names.NAME
AUTO_VERSION = re.compile(r"^v(\d{4,})$")
RESERVED_VERSIONS = ("latest",)
TENSOR_KEY = "direction"
# Fields of a manifest that record one publish, not its content (left out of content_sha256).
BOOKKEEPING = ("version", "created", "package_version", "content_sha256", "manifest_sha256")


EDITED_EXPORT = ("an exported bank version was changed after export ({what}): export it again from the bank; "
                 "to publish edited metadata on purpose, delete manifest_sha256 and content_sha256 from the .json")


def check_name(name: object, what: str = "direction") -> str:
    """``name`` if it can be a file or folder name inside the bank; HSpaceError otherwise."""
    names.check_name(name, what)
    if what == "version" and name in RESERVED_VERSIONS:
        raise HSpaceError(f"{name!r} is reserved (it names the pointer to the newest version); choose another version")
    return name


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
            raise HSpaceError(f"direction {self.name!r} must be a floating tensor of shape (T, C, H, W); got "
                              f"{tensor.dtype} {tuple(tensor.shape)}")
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
            object.__setattr__(self, label, json.loads(_canonical(dict(value), f"{self.name!r} {label}")))

    def record(self) -> dict[str, Any]:
        """The JSON-able metadata (everything but the tensor)."""
        return {"method": self.method, "parameters": self.parameters, "source": self.source,
                "fingerprint": self.fingerprint, "evaluation": self.evaluation}


class Bank:
    """One version of a bank, opened by :func:`load_bank`; tensors are read (and checked) on first use.

    Attributes
    ----------
    url : str
    version : str
    fingerprint : str
        Weight fingerprint of the model the directions belong to.
    names : tuple of str
        The directions, in published order.
    steps : int
        T: every direction has shape (T, C, H, W) and is applied with T sampling steps.
    eta : tuple of float
        One eta per step, the sampler setting the directions were found with.
    timesteps : tuple of int or None
        The T training timesteps in sampling order, when recorded.
    h_shape : tuple of int
        (C, H, W).
    """

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem, root: str, manifest: dict[str, Any]) -> None:
        self.url, self._fs, self._root, self._manifest = url, fs, root, manifest
        self.version: str = manifest["version"]
        self.fingerprint: str = manifest["model_fingerprint"]
        self.names: tuple[str, ...] = tuple(manifest["directions"])
        sampler = manifest["sampler"]
        self.steps: int = int(sampler["steps"])
        self.eta: tuple[float, ...] = tuple(float(e) for e in sampler["eta"])
        self.timesteps: tuple[int, ...] | None = (
            None if sampler["timesteps"] is None else tuple(int(t) for t in sampler["timesteps"]))
        self.h_shape: tuple[int, int, int] = tuple(manifest["h_shape"])  # type: ignore[assignment]
        self.created: str = manifest["created"]
        self.notes: str | None = manifest["notes"]
        self._tensors: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"Bank({self.url!r}, version={self.version!r}, directions={list(self.names)})"

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._manifest["directions"]

    def __getitem__(self, name: str) -> Direction:
        record = self._record(name)
        return Direction(name=name, tensor=self.tensor(name), **{key: record[key] for key in
                                                                 ("method", "parameters", "source", "fingerprint",
                                                                  "evaluation")})

    def tensor(self, name: str) -> torch.Tensor:
        """The direction ``name``, shape (T, C, H, W), after checking its file's sha256."""
        if name not in self._tensors:
            record = self._record(name)
            path = f"{_version_dir(self._root, self.version)}/{record['file']}"
            self._tensors[name] = _parse_tensor(_read(self._fs, path, self.url), record, where=self._where(name))
        return self._tensors[name]

    def delta(self, gammas: Mapping[str, float]) -> torch.Tensor:
        """delta h_{T:1} = sum_j gamma_j v_j over the named directions (Sec. V: directions add), (T, C, H, W)."""
        if not gammas:
            raise HSpaceError("delta needs at least one direction name with its gamma, e.g. {'smile': 4.0}")
        bad = {name: gamma for name, gamma in gammas.items() if not isinstance(gamma, (int, float))}
        if bad:
            raise HSpaceError(f"gammas must be numbers, one per direction name; got {bad}")
        return compose_delta([(self.tensor(name), float(gamma)) for name, gamma in gammas.items()])

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a model whose weights or h shape differ from the ones the directions were built for."""
        if model.fingerprint != self.fingerprint:
            raise HSpaceError(
                f"bank {self.url} version {self.version} was built for the model with weight fingerprint "
                f"{self.fingerprint[:12]}..., but {model.name!r} has {model.fingerprint[:12]}...: load the model "
                "the bank was built for, or rebuild the bank for this model"
            )
        if tuple(model.h_shape) != self.h_shape:
            raise HSpaceError(f"bank {self.url} version {self.version} holds directions for h of shape "
                              f"{self.h_shape}, but {model.name!r} has h of shape {model.h_shape}")

    def verify(self) -> list[str]:
        """Read every tensor file and check it against the manifest; the names checked, or HSpaceError naming
        every damaged file."""
        self._tensors.clear()
        damaged = []
        for name in self.names:
            try:
                self.tensor(name)
            except HSpaceError as error:
                damaged.append(str(error))
        if damaged:
            raise HSpaceError(f"{len(damaged)} of {len(self.names)} directions are damaged: " + "; ".join(damaged))
        return list(self.names)

    def info(self) -> dict[str, Any]:
        """The manifest's settings and direction records as one JSON-able dict (reads no tensor)."""
        manifest = self._manifest
        return {
            "url": self.url,
            "version": self.version,
            "created": self.created,
            "model_fingerprint": self.fingerprint,
            "h_shape": list(self.h_shape),
            "sampler": manifest["sampler"],
            "notes": self.notes,
            "package_version": manifest["package_version"],
            "content_sha256": manifest["content_sha256"],
            "directions": {name: dict(record) for name, record in manifest["directions"].items()},
        }

    def export(self, out: str) -> list[str]:
        """Copy this version out of the bank; the paths written.

        ``out`` ending in ``.safetensors``: one file holding every direction under its name, and beside it
        ``<out without .safetensors>.json``, the manifest (``hspace bank publish --from --meta`` reads the
        pair back). Otherwise ``out`` becomes a bank holding this version (under the same name), which
        :func:`load_bank` opens anywhere.
        """
        tensors = {name: self.tensor(name) for name in self.names}
        out = os.fspath(out)
        if out.endswith(".safetensors"):
            sidecar = out[: -len(".safetensors")] + ".json"
            fs, path = _fs(out)
            _put(fs, path, safetensors.torch.save(tensors))
            _put(fs, _fs(sidecar)[1], (json.dumps(self._manifest, indent=2) + "\n").encode())
            return [out, sidecar]
        directions = [self[name] for name in self.names]
        version = publish(out, directions, model_fingerprint=self.fingerprint, version=self.version, eta=self.eta,
                          timesteps=self.timesteps, notes=self.notes)
        return [f"{out} (version {version})"]

    def _record(self, name: str) -> dict[str, Any]:
        if name not in self._manifest["directions"]:
            raise HSpaceError(f"bank {self.url} version {self.version} has no direction {name!r}; it has "
                              f"{', '.join(self.names)}")
        return self._manifest["directions"][name]

    def _where(self, name: str) -> str:
        return f"direction {name!r} of bank {self.url} version {self.version}"


def publish(
    url: str,
    directions: Iterable[Direction],
    *,
    model_fingerprint: str,
    version: str | None = None,
    eta: float | Sequence[float] = 1.0,
    timesteps: Sequence[int] | None = None,
    notes: str | None = None,
) -> str:
    """Publish ``directions`` as one new immutable version of the bank at ``url``; the version's name.

    Parameters
    ----------
    url : str
        A local path or fsspec URL; created if absent.
    directions : iterable of Direction
        Unique names, one shape (T, C, H, W), each with ``fingerprint == model_fingerprint``.
    model_fingerprint : str
        The weight fingerprint of the model (``LoadedModel.fingerprint``).
    version : str, optional
        A :data:`NAME`. Default: the newest version if its content is identical (a rerun), otherwise one
        more than the highest ``vNNNN``.
    eta : float or sequence of T floats
        The eta the directions were found with; :func:`edit` samples with it by default.
    timesteps : sequence of T int, optional
        The training timesteps of the T sampling steps (``SampleResult.timesteps``); :func:`edit` then
        refuses a model whose scheduler gives others.
    notes : str, optional

    Raises
    ------
    HSpaceError
        For invalid directions or names, or a version name that exists with other content.
    """
    payloads, manifest = _new_manifest(directions, model_fingerprint, eta, timesteps, notes)
    fs, root = _fs(url)
    published = _scan(fs, root)
    newest = published[-1] if published else None
    if version is None:
        if newest is not None and newest[1] is not None and newest[1]["content_sha256"] == manifest["content_sha256"]:
            _point_latest(fs, root, url)
            return newest[0]
        numbers = [int(m.group(1)) for name, _ in published if (m := AUTO_VERSION.match(name))]
        version = f"v{max(numbers, default=0) + 1:04d}"
    check_name(version, "version")
    if any(name == version for name, _ in published):
        existing = _read_manifest(fs, root, version, url)
        if existing["content_sha256"] != manifest["content_sha256"]:
            raise HSpaceError(f"version {version} of bank {url} exists with other content and versions are "
                              "immutable: publish under another version name (or leave --version out)")
        _point_latest(fs, root, url)
        return version
    created = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    manifest = {"schema_version": manifest.pop("schema_version"), "version": version, "created": created, **manifest}
    files = {manifest["directions"][name]["file"]: data for name, data in payloads.items()}
    _write_version(fs, root, url, version, files, _seal(manifest))
    _point_latest(fs, root, url)
    return version


def load_bank(url: str, version: str = "latest", *, fingerprint: str | None = None) -> Bank:
    """Open one version of the bank at ``url`` (``"latest"``: the one its ``latest`` pointer names).

    ``fingerprint``, when given, must equal the bank's model fingerprint (refused otherwise).
    """
    fs, root = _fs(url)
    if version == "latest":
        pointer = _read_latest(fs, root, url)
        manifest = _read_manifest(fs, root, pointer["version"], url)
        if manifest["manifest_sha256"] != pointer["manifest_sha256"]:
            raise HSpaceError(f"bank {url}: latest names version {pointer['version']}, but that version's manifest "
                              "is not the one it pointed at; the bank was changed by hand: republish it")
    else:
        check_name(version, "version")
        if not fs.exists(f"{_version_dir(root, version)}/manifest.json"):
            known = list_versions(url)
            raise HSpaceError(f"bank {url} has no version {version!r}; it has {', '.join(known) or 'none'}")
        manifest = _read_manifest(fs, root, version, url)
    bank = Bank(str(url), fs, root, manifest)
    if fingerprint is not None and fingerprint != bank.fingerprint:
        raise HSpaceError(f"bank {url} version {bank.version} was built for the model with weight fingerprint "
                          f"{bank.fingerprint[:12]}..., not {fingerprint[:12]}...: load the bank built for this model")
    return bank


def list_versions(url: str) -> list[str]:
    """Names of the published versions (those with a manifest), oldest first (by ``created``).

    Versions whose manifest is damaged are listed first, in name order (their time cannot be trusted).
    """
    fs, root = _fs(url)
    return [name for name, _ in _scan(fs, root)]


def latest_version(url: str) -> str | None:
    """The version ``latest`` names, or None when the bank has no ``latest`` yet."""
    fs, root = _fs(url)
    if not fs.exists(f"{root}/latest"):
        return None
    return _read_latest(fs, root, url)["version"]


# ----- the format -------------------------------------------------------------------------------------
def _canonical(value: Any, what: str = "manifest") -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise HSpaceError(f"{what} must be JSON-able (dicts, lists, str, finite numbers, bool, None): "
                          f"{error}") from error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes: the tensor's identity, independent of the file format."""
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _new_manifest(
    directions: Iterable[Direction], fingerprint: str, eta: float | Sequence[float],
    timesteps: Sequence[int] | None, notes: str | None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The file bytes per direction name, and the manifest without its bookkeeping fields."""
    directions = list(directions)
    if not directions:
        raise HSpaceError("publish needs at least one direction")
    if not all(isinstance(d, Direction) for d in directions):
        raise HSpaceError("publish takes hspace.bank.Direction objects")
    names = [d.name for d in directions]
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise HSpaceError(f"direction names must be unique (ignoring case, for case-insensitive filesystems); got "
                          f"{names}")
    shapes = {tuple(d.tensor.shape) for d in directions}
    if len(shapes) != 1:
        raise HSpaceError(f"directions of one bank version must share one shape (T, C, H, W); got {sorted(shapes)}")
    others = sorted({d.name for d in directions if d.fingerprint != fingerprint})
    if others:
        raise HSpaceError(f"directions {others} were made for another model than model_fingerprint "
                          f"{fingerprint[:12]}...: publish each model's directions in a bank of its own")
    if notes is not None and not isinstance(notes, str):
        raise HSpaceError("notes must be a string")
    steps, *h_shape = shapes.pop()
    if timesteps is not None:
        timesteps = [int(t) for t in timesteps]
        if len(timesteps) != steps:
            raise HSpaceError(f"timesteps has {len(timesteps)} values but the directions have T = {steps} steps")
    files = {d.name: safetensors.torch.save({TENSOR_KEY: d.tensor}) for d in directions}
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_fingerprint": fingerprint,
        "h_shape": h_shape,
        "sampler": {"steps": steps, "eta": list(parse_eta(eta, steps)), "timesteps": timesteps},
        "notes": notes,
        "directions": {d.name: {"file": f"{d.name}.safetensors", "sha256": _sha256(files[d.name]),
                                "dtype": str(d.tensor.dtype).removeprefix("torch."),
                                "shape": list(d.tensor.shape), **d.record()} for d in directions},
    }
    content = {key: value for key, value in manifest.items() if key != "directions"}
    # The tensors by their bytes, not their files: the same content stays the same across safetensors versions.
    content["directions"] = {d.name: {**{k: v for k, v in manifest["directions"][d.name].items() if k != "sha256"},
                                      "tensor": _tensor_digest(d.tensor)} for d in directions}
    from hspace import __version__

    manifest["package_version"] = __version__
    manifest["content_sha256"] = _sha256(_canonical(content).encode())
    return files, manifest


def _seal(manifest: dict[str, Any]) -> bytes:
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    sealed = {**body, "manifest_sha256": _sha256(_canonical(body).encode())}
    return (json.dumps(sealed, indent=2) + "\n").encode()


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise HSpaceError(f"{where} is damaged (not valid JSON: {error}); restore it or republish the "
                          "version") from error
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise HSpaceError(f"{where} has bank schema version {version}; this hspace reads version {SCHEMA_VERSION}")
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    if manifest.get("manifest_sha256") != _sha256(_canonical(body).encode()):
        raise HSpaceError(f"{where} is damaged (its content does not match its manifest_sha256); restore it or "
                          "republish the version")
    try:
        for name, record in manifest["directions"].items():
            check_name(name)
            if record["file"] != f"{name}.safetensors":
                raise HSpaceError(f"{where}: direction {name!r} names file {record['file']!r}")
        missing = [key for key in (*BOOKKEEPING, "model_fingerprint", "h_shape", "sampler", "notes")
                   if key not in manifest]
    except (AttributeError, KeyError, TypeError) as error:
        raise HSpaceError(f"{where} is not a bank manifest ({error!r})") from error
    if missing:
        raise HSpaceError(f"{where} is not a bank manifest (it lacks {missing})")
    return manifest


def _parse_tensor(data: bytes, record: dict[str, Any], *, where: str) -> torch.Tensor:
    if _sha256(data) != record["sha256"]:
        raise HSpaceError(f"{where}: file {record['file']} is damaged (sha256 {_sha256(data)[:12]}..., the manifest "
                          f"records {record['sha256'][:12]}...); restore it or republish the version")
    tensors = safetensors.torch.load(data)
    tensor = tensors.get(TENSOR_KEY)
    if tensor is None or list(tensor.shape) != record["shape"] or str(tensor.dtype) != f"torch.{record['dtype']}":
        raise HSpaceError(f"{where}: file {record['file']} does not hold a {record['dtype']} tensor of shape "
                          f"{record['shape']} under {TENSOR_KEY!r}")
    return tensor


# ----- files ------------------------------------------------------------------------------------------
def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    url = os.fspath(url)
    if not url:
        raise HSpaceError("the bank URL is empty: give a path or an fsspec URL")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise HSpaceError(f"cannot open {url}: {error} (install the fsspec backend for this URL scheme)") from error
    return fs, root.rstrip("/") or root


def _version_dir(root: str, version: str) -> str:
    return f"{root}/versions/{version}"


def _read(fs: fsspec.AbstractFileSystem, path: str, url: str) -> bytes:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise HSpaceError(f"bank {url}: {path} is missing; restore it or republish the version") from None


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one file whole: locally by write, fsync, rename; elsewhere as one object (atomic PUT)."""
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        staging = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(staging, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    else:
        fs.pipe_file(path, data)


def _write_version(fs: fsspec.AbstractFileSystem, root: str, url: str, version: str, files: dict[str, bytes],
                   manifest: bytes) -> None:
    """Write, verify and reveal one version: tensor files first, manifest.json last (module docstring)."""
    target = _version_dir(root, version)
    local = isinstance(fs, LocalFileSystem)
    folder = f"{root}/versions/.staging-{uuid.uuid4().hex}" if local else target
    try:
        for name, data in files.items():
            _put(fs, f"{folder}/{name}", data)
        for name, data in files.items():
            if _sha256(fs.cat_file(f"{folder}/{name}")) != _sha256(data):
                raise HSpaceError(f"bank {url}: {folder}/{name} did not read back as written; check the storage "
                                  "and publish again")
        if local:
            _put(fs, f"{folder}/manifest.json", manifest)
            try:
                os.rename(folder, target)  # atomic; refuses a non-empty target
            except OSError as error:
                raise HSpaceError(f"bank {url}: cannot publish version {version}: {target} exists ({error}); another "
                                  "publish made it (rerun to get the next version) or remove it if it has no "
                                  "manifest.json") from error
        else:
            _put(fs, f"{folder}/manifest.json", manifest)
    finally:
        if local and os.path.isdir(folder):
            fs.rm(folder, recursive=True)


def _read_manifest(fs: fsspec.AbstractFileSystem, root: str, version: str, url: str) -> dict[str, Any]:
    where = f"bank {url} version {version}: manifest.json"
    manifest = _parse_manifest(_read(fs, f"{_version_dir(root, version)}/manifest.json", url), where)
    if manifest.get("version") != version:
        raise HSpaceError(f"{where} names version {manifest.get('version')!r}; the bank was changed by hand")
    return manifest


def _scan(fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(version, manifest or None if damaged) of every folder with a manifest, oldest first."""
    versions = f"{root}/versions"
    if not fs.isdir(versions):
        return []
    found = []
    for path in fs.ls(versions, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not NAME.match(name) or ".." in name or not fs.exists(f"{versions}/{name}/manifest.json"):
            continue  # staging folders, folders of a publish cut short on an object store, strays
        try:
            found.append((name, _read_manifest(fs, root, name, root)))
        except HSpaceError:
            found.append((name, None))
    return sorted(found, key=lambda entry: ("" if entry[1] is None else "1" + entry[1]["created"], entry[0]))


def _read_latest(fs: fsspec.AbstractFileSystem, root: str, url: str) -> dict[str, Any]:
    if not fs.exists(f"{root}/latest"):
        versions = [name for name, _ in _scan(fs, root)]
        if not versions:
            raise HSpaceError(f"no direction bank at {url}: publish one (hspace.bank.publish or `hspace bank publish`)")
        raise HSpaceError(f"bank {url} has versions {versions} but no latest pointer (a publish was cut short): rerun "
                          "the publish, or load a version by name")
    try:
        pointer = json.loads(_read(fs, f"{root}/latest", url))
        check_name(pointer["version"], "version")
        if not isinstance(pointer.get("manifest_sha256"), str):
            raise ValueError("no manifest_sha256")
    except (HSpaceError, ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise HSpaceError(f"bank {url}: the latest pointer is damaged ({error}); rerun the last publish to "
                          "rewrite it") from error
    return pointer


def _point_latest(fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
    """Point ``latest`` at the newest complete version (by ``created``), unless it already does."""
    complete = [(name, manifest) for name, manifest in _scan(fs, root) if manifest is not None]
    if not complete:
        raise HSpaceError(f"bank {url} has no readable version to point latest at")
    name, manifest = complete[-1]
    pointer = {"schema_version": SCHEMA_VERSION, "version": name, "manifest_sha256": manifest["manifest_sha256"]}
    if fs.exists(f"{root}/latest"):
        try:
            if json.loads(fs.cat_file(f"{root}/latest")) == pointer:
                return
        except (ValueError, UnicodeDecodeError):
            pass  # a damaged pointer is rewritten
    _put(fs, f"{root}/latest", (json.dumps(pointer) + "\n").encode())


def parse_meta(meta: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Keyword arguments of :func:`publish` from named tensors and their JSON metadata.

    ``meta`` is ``{"model_fingerprint", "sampler": {"eta", "timesteps"}?, "notes"?, "directions": {name:
    {"method", "parameters"?, "source"?, "fingerprint"?, "evaluation"?}}}``; a manifest (as
    :meth:`Bank.export` writes it) is accepted too, its bookkeeping fields ignored. Every tensor needs an
    entry and every entry a tensor.
    """
    if not isinstance(meta, dict) or not isinstance(meta.get("model_fingerprint"), str):
        raise HSpaceError("the metadata must be a JSON object with a model_fingerprint (str) and directions")
    allowed = {"model_fingerprint", "sampler", "notes", "directions", "schema_version", "h_shape", *BOOKKEEPING}
    unknown = sorted(set(meta) - allowed)
    if unknown:
        raise HSpaceError(f"unknown metadata fields {unknown}; allowed: {sorted(allowed)}")
    records = meta.get("directions")
    if not isinstance(records, dict) or set(records) != set(tensors):
        raise HSpaceError(f"the metadata's directions {sorted(records) if isinstance(records, dict) else records} "
                          f"must name exactly the tensors in the file: {sorted(tensors)}")
    if "manifest_sha256" in meta:
        body = {key: value for key, value in meta.items() if key != "manifest_sha256"}
        if meta["manifest_sha256"] != _sha256(_canonical(body).encode()):
            raise HSpaceError(EDITED_EXPORT.format(what="the metadata does not match its manifest_sha256"))
    fingerprint = meta["model_fingerprint"]
    directions = []
    for name, record in records.items():
        if not isinstance(record, dict):
            raise HSpaceError(f"the metadata of direction {name!r} must be a JSON object")
        keys = {"method", "parameters", "source", "fingerprint", "evaluation"}
        unknown = sorted(set(record) - keys - {"file", "sha256", "dtype", "shape"})
        if unknown:
            raise HSpaceError(f"direction {name!r}: unknown metadata fields {unknown}; allowed: {sorted(keys)}")
        if "method" not in record:
            raise HSpaceError(f"direction {name!r}: the metadata needs a method ({', '.join(METHODS)})")
        given = {key: record[key] for key in keys if key in record}
        directions.append(Direction(name=name, tensor=tensors[name], **{"fingerprint": fingerprint, **given}))
    sampler = meta.get("sampler") or {}
    if not isinstance(sampler, dict):
        raise HSpaceError("the metadata's sampler must be a JSON object with eta and optionally timesteps")
    arguments = {"directions": directions, "model_fingerprint": fingerprint, "eta": sampler.get("eta", 1.0),
                 "timesteps": sampler.get("timesteps"), "notes": meta.get("notes")}
    if "content_sha256" in meta:
        # An exported manifest seals the tensors too (by content_sha256): a changed byte in the
        # .safetensors beside it must not be republished as the version it claims to copy.
        _, resealed = _new_manifest(directions, fingerprint, arguments["eta"], arguments["timesteps"], arguments["notes"])
        if resealed["content_sha256"] != meta["content_sha256"]:
            raise HSpaceError(EDITED_EXPORT.format(what="the tensors or metadata do not match its content_sha256"))
    return arguments
