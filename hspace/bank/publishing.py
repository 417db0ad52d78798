"""Writing a bank: :func:`publish` one new immutable version, and :func:`parse_meta` for tensors and JSON from files.

The rules (immutable versions, idempotent reruns, names that count up, ``latest`` moved last) are in
:mod:`hspace.bank`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from hspace.bank.manifest import BOOKKEEPING, METHODS, Direction, body_sha256, check_name, new_manifest, seal
from hspace.bank.store import open_fs, point_latest, read_manifest, scan, write_version
from hspace.errors import HSpaceError

AUTO_VERSION = re.compile(r"^v(\d{4,})$")
EDITED_EXPORT = (
    "an exported bank version was changed after export ({what}): export it again from the bank; "
    "to publish edited metadata on purpose, delete manifest_sha256 and content_sha256 from the .json"
)


def publish(
    url: str,
    directions: Iterable[Direction],
    *,
    model_fingerprint: str,
    version: str | None = None,
    eta: float | Sequence[float] = 1.0,
    timesteps: Sequence[int] | None = None,
    notes: str | None = None,
    precision: str = "fp32",
    conditioning: dict[str, Any] | None = None,
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
        The eta the directions were found with; :func:`hspace.editing.edit` samples with it by default.
    timesteps : sequence of T int, optional
        The training timesteps of the T sampling steps (``SampleResult.timesteps``); :func:`hspace.editing.edit`
        then refuses a model whose scheduler gives others.
    notes : str, optional
    precision : str
        The U-Net precision the directions were found in (``hspace.models.PRECISIONS``);
        :func:`hspace.editing.edit` samples in it by default.
    conditioning : dict, optional
        A text-conditional model's prompt, negative prompt and guidance the directions were found with
        (``Conditioning.sampling()``); :func:`hspace.editing.edit` refuses a model sampling with others.

    Raises
    ------
    HSpaceError
        For invalid directions or names, or a version name that exists with other content.
    """
    payloads, manifest = new_manifest(directions, model_fingerprint, eta, timesteps, notes, precision, conditioning)
    fs, root = open_fs(url)
    published = scan(fs, root)
    newest = published[-1] if published else None
    if version is None:
        if newest is not None and newest[1] is not None and newest[1]["content_sha256"] == manifest["content_sha256"]:
            point_latest(fs, root, url)
            return newest[0]
        numbers = [int(m.group(1)) for name, _ in published if (m := AUTO_VERSION.match(name))]
        version = f"v{max(numbers, default=0) + 1:04d}"
    check_name(version, "version")
    if any(name == version for name, _ in published):
        existing = read_manifest(fs, root, version, url)
        if existing["content_sha256"] != manifest["content_sha256"]:
            raise HSpaceError(
                f"version {version} of bank {url} exists with other content and versions are "
                "immutable: publish under another version name (or leave --version out)"
            )
        point_latest(fs, root, url)
        return version
    created = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    manifest = {"schema_version": manifest.pop("schema_version"), "version": version, "created": created, **manifest}
    files = {manifest["directions"][name]["file"]: data for name, data in payloads.items()}
    write_version(fs, root, url, version, files, seal(manifest))
    point_latest(fs, root, url)
    return version


def parse_meta(meta: Any, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Keyword arguments of :func:`publish` from named tensors and their JSON metadata.

    ``meta`` is ``{"model_fingerprint", "sampler": {"eta", "timesteps"?, "precision"?}?, "notes"?, "directions": {name:
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
        raise HSpaceError(
            f"the metadata's directions {sorted(records) if isinstance(records, dict) else records} "
            f"must name exactly the tensors in the file: {sorted(tensors)}"
        )
    if "manifest_sha256" in meta and meta["manifest_sha256"] != body_sha256(meta):
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
        raise HSpaceError(
            "the metadata's sampler must be a JSON object with eta and optionally timesteps and precision"
        )
    arguments = {
        "directions": directions,
        "model_fingerprint": fingerprint,
        "eta": sampler.get("eta", 1.0),
        "timesteps": sampler.get("timesteps"),
        "notes": meta.get("notes"),
        "precision": sampler.get("precision", "fp32"),
        "conditioning": sampler.get("conditioning"),
    }
    if "content_sha256" in meta:
        # An exported manifest seals the tensors too (by content_sha256): a changed byte in the
        # .safetensors beside it must not be republished as the version it claims to copy.
        _, resealed = new_manifest(
            directions,
            fingerprint,
            arguments["eta"],
            arguments["timesteps"],
            arguments["notes"],
            arguments["precision"],
            arguments["conditioning"],
        )
        if resealed["content_sha256"] != meta["content_sha256"]:
            raise HSpaceError(EDITED_EXPORT.format(what="the tensors or metadata do not match its content_sha256"))
    return arguments
