"""The direction bank: named h-space directions in immutable, checksummed versions (docs/design.md).

A bank is a folder (a local path or any fsspec URL: ``memory://``, ``s3://`` with ``s3fs``) of
safetensors and JSON files::

    <bank>/latest                                  {"schema_version", "version", "manifest_sha256"}
    <bank>/versions/<version>/manifest.json        everything but the tensors (below)
    <bank>/versions/<version>/<name>.safetensors   one tensor "direction" of shape (T, C, H, W)
    <bank>/versions/.staging-<uuid>/               a local publish in progress (never read)

``manifest.json`` holds ``schema_version``, ``version``, ``created`` (UTC), ``model_fingerprint``,
``h_shape`` (C, H, W), ``sampler`` (``steps`` T, ``eta`` one per step, ``timesteps`` or null, and
``precision`` unless fp32: the settings the directions belong to, so that :func:`hspace.editing.edit`
samples with the same T, in the same precision), ``notes``,
``package_version``, ``content_sha256`` (over the tensors' dtype, shape and bytes and every field above
except ``version``, ``created`` and ``package_version``: what "the same content" means), the
``directions`` (per name: ``file``, ``sha256`` of the file, ``dtype``, ``shape``, ``method``,
``parameters``, ``source``, ``fingerprint``, ``evaluation``) and last ``manifest_sha256``, the sha256 of
the canonical JSON of all the rest, so a flipped byte anywhere in the manifest is detected.

Decisions, and why:

- **The format lives in the core, not in storage/.** docs/design.md puts the bank under storage/, but the
  notebook API ``hspace.load_bank`` is core, and the core must not import storage/ (layers import only
  those below). The bank is plain safetensors + JSON through fsspec (no Zarr, no Prefect), so its reader
  *and* writer are here, and storage/ or tasks/ call :func:`publish` like anyone else. One format, one
  package: :mod:`~hspace.bank.manifest` (the format without I/O), :mod:`~hspace.bank.store` (the files),
  :mod:`~hspace.bank.publishing` (writing a version) and :mod:`~hspace.bank.load` (reading one).
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
- **Safety at edit time:** :func:`hspace.editing.edit` refuses a model whose weight fingerprint differs from
  the bank's, an h shape, T or timesteps that differ from the ones the directions were built with, and returns uint8
  images (what pictures, ``hspace.render.image_grid`` and PIL take). For float images or h, call
  :func:`hspace.sampler.sample` with ``delta=bank.delta(gammas)``: the same computation.
- Concurrent publishers never corrupt a version, but ``latest`` is last-writer-wins: run one rebuild at a
  time (one scheduled deployment).
"""

from __future__ import annotations

from hspace.bank.load import Bank, load_bank
from hspace.bank.manifest import METHODS, NAME, SCHEMA_VERSION, Direction, check_name
from hspace.bank.publishing import parse_meta, publish
from hspace.bank.store import latest_version, list_versions

__all__ = [
    "METHODS",
    "NAME",
    "SCHEMA_VERSION",
    "Bank",
    "Direction",
    "check_name",
    "latest_version",
    "list_versions",
    "load_bank",
    "parse_meta",
    "publish",
]
