"""Named directions: ``directions/<name>`` arrays in a corpus, and single safetensors files.

In the corpus group (T steps, h of shape (C, H, W), images of shape (3, S, S)):

======================  =============  =======  =============  ===========================================
array                   shape          dtype    chunks         dimension_names
======================  =============  =======  =============  ===========================================
directions/<name>       (T, C, H, W)   float32  (1, C, H, W)   step, h_channel, h_height, h_width (space h)
directions/<name>       (3, S, S)      float32  one chunk      image_channel, image_height, image_width (xT)
======================  =============  =======  =============  ===========================================

Each array's attribute ``hspace_direction`` is a :class:`DirectionRecord` (method, parameters, source,
model and fingerprint, steps and timesteps) plus ``complete``. A write creates the array with
``complete: false``, writes the data, and only then sets ``complete: true``: a direction whose write was
cut short is never read back (:func:`read_direction` refuses it) and the next write replaces it.

Outside a corpus (directions from real images, SM -F), :func:`write_direction_file` writes a safetensors
file (tensors plus the record as JSON in the metadata) by write-then-rename.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.files import atomic_write
from hspace.names import check_name
from storage.corpus import Corpus
from storage.groups import describe_differences, group_at, new_array, read_array

GROUP = "directions"
ATTRS_KEY = "hspace_direction"
SCHEMA_VERSION = 1
SPACES = ("h", "xT")
# Methods of the bank (docs/design.md); supervised-xT is eq. 11 in x_T (Fig. 8a's comparison), inverted is SM -F.
METHODS = ("supervised", "supervised-xT", "examples", "disentangled", "inverted", "pca", "jacobian")
FILE_METADATA_KEY = "hspace"


@dataclass(frozen=True, kw_only=True)
class DirectionRecord:
    """Where a direction came from; stored with it.

    Attributes
    ----------
    name : str
    method : str
        One of :data:`METHODS`.
    space : str
        ``h`` (shape (T, C, H, W), added to h_t at every step) or ``xT`` (shape (3, S, S), added to x_T).
    parameters : dict
        JSON-ready; e.g. annotator, attribute, k, positive and negative sample ids.
    source : str
        The corpus URL (or the image folders) the examples came from.
    model, fingerprint : str
        The model the direction belongs to; a direction applies only to weights with this fingerprint.
    shape : tuple of int
    steps : int
    timesteps : tuple of int
        The T timesteps in sampling order; ``direction[t]`` is added at ``timesteps[t]``.
    """

    name: str
    method: str
    space: str
    parameters: dict[str, Any]
    source: str
    model: str
    fingerprint: str
    shape: tuple[int, ...]
    steps: int
    timesteps: tuple[int, ...]

    def __post_init__(self) -> None:
        check_name(self.name, "direction")
        if self.method not in METHODS:
            raise HSpaceError(f"direction method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.space not in SPACES:
            raise HSpaceError(f"direction space must be one of {', '.join(SPACES)}; got {self.space!r}")

    def to_attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps({"schema_version": SCHEMA_VERSION, **asdict(self)}))

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> DirectionRecord:
        values = {
            k: attrs[k] for k in ("name", "method", "space", "parameters", "source", "model", "fingerprint", "steps")
        }
        return cls(**values, shape=tuple(attrs["shape"]), timesteps=tuple(attrs["timesteps"]))


def direction_shape(corpus: Corpus, space: str) -> tuple[int, ...]:
    """(T, C, H, W) for h-space directions of this corpus, (3, S, S) for x_T directions."""
    if space not in SPACES:
        raise HSpaceError(f"--space must be one of {', '.join(SPACES)}; got {space!r}")
    return (corpus.spec.steps, *corpus.spec.h_shape) if space == "h" else tuple(corpus.spec.noise_shape)


def new_record(
    corpus: Corpus, name: str, *, method: str, space: str, parameters: dict[str, Any], source: str | None = None
) -> DirectionRecord:
    """A record for a direction of this corpus's model and steps."""
    spec = corpus.spec
    return DirectionRecord(
        name=name,
        method=method,
        space=space,
        parameters=parameters,
        source=corpus.url if source is None else source,
        model=spec.model,
        fingerprint=spec.fingerprint,
        shape=direction_shape(corpus, space),
        steps=spec.steps,
        timesteps=tuple(spec.timesteps),
    )


def check_writable(corpus: Corpus, record: DirectionRecord, *, overwrite: bool = False) -> None:
    """Refuse, before any work, a name already holding a complete direction made another way (unless overwrite)."""
    if record.fingerprint != corpus.spec.fingerprint or tuple(record.timesteps) != tuple(corpus.spec.timesteps):
        raise HSpaceError(
            f"direction {record.name!r} belongs to model {record.model!r} (sha256 "
            f"{record.fingerprint[:12]}, {record.steps} steps) but the corpus at {corpus.url} to "
            f"another (sha256 {corpus.spec.fingerprint[:12]}, {corpus.spec.steps} steps)"
        )
    if overwrite:
        return
    existing = _read_attrs(corpus, record.name)
    if existing is None or not existing.get("complete", False):
        return
    wanted = record.to_attrs()
    # A producer that tags its directions (parameters["made_by"], e.g. rebuild-bank) may replace what it made
    # itself with other settings, but never a direction a user made another way.
    made_by = wanted["parameters"].get("made_by")
    if made_by is not None and (existing.get("parameters") or {}).get("made_by") == made_by:
        return
    differing = describe_differences(existing, wanted, labels=("stored", "requested"))
    if differing:
        remedy = (
            "Choose another --name, or pass --overwrite"
            if made_by is None
            else f"{made_by} replaces only the directions it made itself: rename or delete the stored one, or "
            "use another corpus"
        )
        raise HSpaceError(
            f"the corpus at {corpus.url} already has a direction {record.name!r} made another way: "
            f"{'; '.join(differing)}. {remedy}"
        )


def write_direction(
    corpus: Corpus, record: DirectionRecord, direction: np.ndarray, *, overwrite: bool = False
) -> DirectionRecord:
    """Store ``direction`` as ``directions/<record.name>``: data first, ``complete`` last.

    Parameters
    ----------
    corpus : Corpus
        Opened writable.
    record : DirectionRecord
        From :func:`new_record`.
    direction : ndarray of shape ``record.shape``
        Cast to float32; must be finite.
    overwrite : bool
        Replace a complete direction of that name made another way (one made the same way is always
        rewritten, so a rerun is idempotent).
    """
    direction = np.asarray(direction)
    if tuple(direction.shape) != tuple(record.shape):
        raise HSpaceError(
            f"direction {record.name!r} has shape {tuple(direction.shape)}, expected {tuple(record.shape)}"
        )
    if not np.isfinite(direction).all():
        raise HSpaceError(f"direction {record.name!r} has non-finite values; nothing was written")
    check_writable(corpus, record, overwrite=overwrite)
    parent = corpus.group.require_group(GROUP)
    dims = (
        ("step", "h_channel", "h_height", "h_width")
        if record.space == "h"
        else ("image_channel", "image_height", "image_width")
    )
    chunks = (1, *record.shape[1:]) if record.space == "h" else tuple(record.shape)
    array = new_array(
        parent,
        record.name,
        shape=tuple(record.shape),
        dtype="float32",
        chunks=chunks,
        dimension_names=dims,
        overwrite=True,
        attributes={ATTRS_KEY: {**record.to_attrs(), "complete": False}},
    )
    array[...] = direction.astype(np.float32)
    array.attrs.update({ATTRS_KEY: {**record.to_attrs(), "complete": True}})
    return record


def read_direction(corpus: Corpus, name: str) -> tuple[np.ndarray, DirectionRecord]:
    """A complete direction (float32, ``record.shape``) and its record.

    Raises
    ------
    HSpaceError
        If there is no such direction, or its write never finished.
    """
    check_name(name, "direction")
    attrs = _read_attrs(corpus, name)
    if attrs is None:
        have = [d["name"] for d in list_directions(corpus)]
        raise HSpaceError(
            f"the corpus at {corpus.url} has no direction {name!r} (it has: "
            f"{', '.join(have) if have else 'none'}); `hspace directions list {corpus.url}` shows them"
        )
    if not attrs.get("complete", False):
        raise HSpaceError(
            f"direction {name!r} of {corpus.url} was never completely written: rerun the command that made it"
        )
    return read_array(corpus.group, f"{GROUP}/{name}").astype(np.float32, copy=False), DirectionRecord.from_attrs(attrs)


def list_directions(corpus: Corpus) -> list[dict[str, Any]]:
    """Every stored direction's record with ``complete``, sorted by name (incomplete ones included, marked)."""
    try:
        parent = group_at(corpus.group, GROUP)
    except KeyError:
        return []
    out = []
    for _, node in sorted(parent.members(), key=lambda member: member[0]):
        attrs = node.attrs.get(ATTRS_KEY) if isinstance(node, zarr.Array) else None
        if isinstance(attrs, dict):
            out.append({k: v for k, v in attrs.items() if k != "schema_version"})
    return out


# ----- files -------------------------------------------------------------------------------------
def write_direction_file(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write float32 tensors and JSON metadata to a safetensors file, by write-then-rename.

    Parameters
    ----------
    path : str or Path
        Must end in ``.safetensors``; its folder must exist.
    tensors : dict of str to ndarray
    metadata : dict
        JSON-ready; stored under the metadata key ``hspace``.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise HSpaceError(f"--out must be a .safetensors file; got {str(path)!r}")
    if not path.parent.is_dir():
        raise HSpaceError(f"the folder of --out ({path.parent}) does not exist")
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return atomic_write(
        path, lambda staging: save_file(arrays, str(staging), metadata={FILE_METADATA_KEY: json.dumps(metadata)})
    )


def read_direction_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and metadata of a file written by :func:`write_direction_file` (safetensors only: no pickle)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise HSpaceError(f"no direction file at {path}")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = json.loads((handle.metadata() or {}).get(FILE_METADATA_KEY, "{}"))
        return load_file(str(path)), metadata
    except (SafetensorError, ValueError, OSError) as error:
        raise HSpaceError(f"{path} is not a readable hspace safetensors file ({error})") from None


# ----- private helpers ---------------------------------------------------------------------------
def _read_attrs(corpus: Corpus, name: str) -> dict[str, Any] | None:
    return corpus.read_member_attrs(
        f"{GROUP}/{name}", node_type=zarr.Array, key=ATTRS_KEY, version=SCHEMA_VERSION, what="an hspace direction"
    )
