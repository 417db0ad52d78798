"""Reading a bank: :func:`load_bank` opens one version as a :class:`Bank`; tensors are read (and checked) on use."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import fsspec
import safetensors.torch
import torch

from hspace.bank.manifest import Direction, check_name, parse_tensor
from hspace.bank.publishing import publish
from hspace.bank.store import list_versions, open_fs, read_file, read_latest, read_manifest, version_dir, write_export
from hspace.conditioning import Conditioning
from hspace.errors import HSpaceError
from hspace.hook import compose_delta
from hspace.models import LoadedModel


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
    precision : str
        The U-Net precision the directions were found in (``hspace.models.PRECISIONS``; a manifest
        without one, as every bank published before precisions existed, means fp32).
    h_shape : tuple of int
        (C, H, W).
    conditioning : dict or None
        A text-conditional model's prompt, negative prompt and guidance the directions were found with.
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
            None if sampler["timesteps"] is None else tuple(int(t) for t in sampler["timesteps"])
        )
        self.precision: str = sampler.get("precision", "fp32")
        self.conditioning: dict[str, Any] | None = sampler.get("conditioning")
        self.h_shape: tuple[int, int, int] = tuple(manifest["h_shape"])
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
        return Direction(
            name=name,
            tensor=self.tensor(name),
            **{key: record[key] for key in ("method", "parameters", "source", "fingerprint", "evaluation")},
        )

    def tensor(self, name: str) -> torch.Tensor:
        """The direction ``name``, shape (T, C, H, W), after checking its file's sha256."""
        if name not in self._tensors:
            record = self._record(name)
            path = f"{version_dir(self._root, self.version)}/{record['file']}"
            self._tensors[name] = parse_tensor(read_file(self._fs, path, self.url), record, where=self._where(name))
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
        # Not hspace.models.check_same_weights: this message names the bank version, and callers match on it.
        if model.fingerprint != self.fingerprint:
            raise HSpaceError(
                f"bank {self.url} version {self.version} was built for the model with weight fingerprint "
                f"{self.fingerprint[:12]}..., but {model.name!r} has {model.fingerprint[:12]}...: load the model "
                "the bank was built for, or rebuild the bank for this model"
            )
        if tuple(model.h_shape) != self.h_shape:
            raise HSpaceError(
                f"bank {self.url} version {self.version} holds directions for h of shape "
                f"{self.h_shape}, but {model.name!r} has h of shape {model.h_shape}"
            )
        sampling = None if model.conditioning is None else model.conditioning.sampling()
        if sampling != self.conditioning:
            raise HSpaceError(
                f"bank {self.url} version {self.version} was made with {_describe(self.conditioning)}, but "
                f"{model.name!r} samples with {_describe(sampling)}: edit with the bank's prompt, negative prompt "
                "and guidance (the defaults of `hspace bank edit`), or rebuild the bank with these"
            )

    def sampling(self, edit_branch: str = "both") -> Conditioning | None:
        """The conditioning to sample with for these directions: the recorded prompt, negative prompt and
        guidance, with ``edit_branch`` (an edit-time choice); None for an unconditional model's bank."""
        return None if self.conditioning is None else Conditioning(**self.conditioning, edit_branch=edit_branch)

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
            "sampler": {**manifest["sampler"], "precision": self.precision},
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
            fs, path = open_fs(out)
            write_export(
                fs,
                {
                    path: safetensors.torch.save(tensors),
                    open_fs(sidecar)[1]: (json.dumps(self._manifest, indent=2) + "\n").encode(),
                },
            )
            return [out, sidecar]
        directions = [self[name] for name in self.names]
        version = publish(
            out,
            directions,
            model_fingerprint=self.fingerprint,
            version=self.version,
            eta=self.eta,
            timesteps=self.timesteps,
            notes=self.notes,
            precision=self.precision,
            conditioning=self.conditioning,
        )
        return [f"{out} (version {version})"]

    def _record(self, name: str) -> dict[str, Any]:
        if name not in self._manifest["directions"]:
            raise HSpaceError(
                f"bank {self.url} version {self.version} has no direction {name!r}; it has {', '.join(self.names)}"
            )
        return self._manifest["directions"][name]

    def _where(self, name: str) -> str:
        return f"direction {name!r} of bank {self.url} version {self.version}"


def load_bank(url: str, version: str = "latest", *, fingerprint: str | None = None) -> Bank:
    """Open one version of the bank at ``url`` (``"latest"``: the one its ``latest`` pointer names).

    ``fingerprint``, when given, must equal the bank's model fingerprint (refused otherwise).
    """
    fs, root = open_fs(url)
    if version == "latest":
        pointer = read_latest(fs, root, url)
        manifest = read_manifest(fs, root, pointer["version"], url)
        if manifest["manifest_sha256"] != pointer["manifest_sha256"]:
            raise HSpaceError(
                f"bank {url}: latest names version {pointer['version']}, but that version's manifest "
                "is not the one it pointed at; the bank was changed by hand: republish it"
            )
    else:
        check_name(version, "version")
        if not fs.exists(f"{version_dir(root, version)}/manifest.json"):
            known = list_versions(url)
            raise HSpaceError(f"bank {url} has no version {version!r}; it has {', '.join(known) or 'none'}")
        manifest = read_manifest(fs, root, version, url)
    bank = Bank(str(url), fs, root, manifest)
    if fingerprint is not None and fingerprint != bank.fingerprint:
        raise HSpaceError(
            f"bank {url} version {bank.version} was built for the model with weight fingerprint "
            f"{bank.fingerprint[:12]}..., not {fingerprint[:12]}...: load the bank built for this model"
        )
    return bank


def _describe(conditioning: dict[str, Any] | None) -> str:
    if conditioning is None:
        return "no prompt (an unconditional model)"
    return (
        f"prompt {conditioning['prompt']!r}, negative prompt {conditioning['negative_prompt']!r} and guidance "
        f"{conditioning['guidance']:g}"
    )
