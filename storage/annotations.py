"""Annotations of a corpus: one score per sample and attribute, written shard by shard (docs/design.md).

Layout inside the corpus group (N samples, shards of b samples, as in :mod:`storage.corpus`):

================================  ============  =======  ==========  ==============
array                             shape         dtype    chunks      dimension_names
================================  ============  =======  ==========  ==============
annotations/<annotator>/<attr>    (N,)          float32  (b,)        sample
annotations/<annotator>/done      (n_shards,)   bool     (1,)        shard
================================  ============  =======  ==========  ==============

A chunk of a score array is exactly one corpus shard, so concurrent tasks, each writing whole shards,
never share a chunk. A task writes every attribute of its shard, then sets ``done[k]`` (a chunk of its
own): scores of a shard whose flag is not set are never trusted, and a rerun rewrites them.

The group ``annotations/<annotator>`` records the annotator in its attribute ``hspace_annotations``:
``name``, ``attributes`` and ``config`` (whatever fixes the scores: weights checksum, prompts, options).
Reopening it with another annotator record is an error that names every differing field; its
``initialized`` turns true only after every array exists, so a crash during creation is repaired by the
next open, exactly like the corpus itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from hspace.errors import HSpaceError
from hspace.names import check_name
from storage.corpus import Corpus
from storage.groups import ShardFlags, array_at, describe_differences, group_at, new_array, read_array

GROUP = "annotations"
ATTRS_KEY = "hspace_annotations"
SCHEMA_VERSION = 1
DONE = "done"


@dataclass(frozen=True, kw_only=True)
class AnnotatorRecord:
    """What fixes an annotator's scores; reopening annotations with any other value is an error.

    Attributes
    ----------
    name : str
        The annotator's name, the group ``annotations/<name>``.
    attributes : tuple of str
        One score array each, in the annotator's column order.
    config : dict
        JSON-ready settings (weights checksum, prompts, load options); compared key by key.
    """

    name: str
    attributes: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "annotator")
        if not self.attributes:
            raise HSpaceError(f"annotator {self.name!r} has no attributes to store")
        for attribute in self.attributes:
            check_name(attribute, "attribute")
            if attribute == DONE:
                raise HSpaceError(
                    f"annotator {self.name!r} has an attribute named {DONE!r}, which is the name of "
                    "the progress flags: rename the attribute"
                )
        if len(set(self.attributes)) != len(self.attributes):
            raise HSpaceError(f"annotator {self.name!r} names an attribute twice: {list(self.attributes)}")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as error:
            raise HSpaceError(f"annotator {self.name!r} has a config that is not JSON ({error})") from None

    def to_attrs(self) -> dict[str, Any]:
        # JSON round trip so that tuples and lists compare equal after reading back.
        return json.loads(
            json.dumps(
                {
                    "schema_version": SCHEMA_VERSION,
                    "name": self.name,
                    "attributes": list(self.attributes),
                    "config": self.config,
                }
            )
        )

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> AnnotatorRecord:
        return cls(name=attrs["name"], attributes=tuple(attrs["attributes"]), config=attrs.get("config", {}))


class Annotations(ShardFlags):
    """The scores of one annotator in a corpus. Create or resume with :meth:`create_or_open`, read with :meth:`open`.

    Resume state: :meth:`done_shards` (the shards whose scores are all written), :meth:`missing_shards`.
    """

    def __init__(self, corpus: Corpus, group: zarr.Group, record: AnnotatorRecord) -> None:
        self.corpus, self.group, self.record = corpus, group, record

    # ----- opening -----------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, corpus: Corpus, record: AnnotatorRecord) -> Annotations:
        """Open ``annotations/<record.name>`` of a corpus opened writable, creating it if absent.

        Raises
        ------
        HSpaceError
            If annotations of that name were written by an annotator with another record (the message
            names every differing field), or the corpus is read-only.
        """
        existing = _read_record_attrs(corpus, record.name)
        if existing is None:
            parent = corpus.group.require_group(GROUP)
            attrs = {ATTRS_KEY: {**record.to_attrs(), "initialized": False}}
            group = parent.create_group(record.name, attributes=attrs, overwrite=True)
            _create_arrays(group, corpus, record)
            return cls(corpus, group, record)
        _check_same(corpus, existing, record)
        group = group_at(corpus.group, f"{GROUP}/{record.name}")
        if not existing.get("initialized", False):
            _create_arrays(group, corpus, record)
        return cls(corpus, group, record)

    @classmethod
    def open(cls, corpus: Corpus, annotator: str) -> Annotations:
        """Open existing annotations by annotator name (for reading, or for shard writes if the corpus is writable)."""
        check_name(annotator, "annotator")
        attrs = _read_record_attrs(corpus, annotator)
        if attrs is None or not attrs.get("initialized", False):
            have = list_annotators(corpus)
            raise HSpaceError(
                f"the corpus at {corpus.url} has no annotations by {annotator!r} "
                f"(it has: {', '.join(have) if have else 'none'}): run `hspace annotate {corpus.url} --annotator "
                f"{annotator}`"
            )
        return cls(corpus, group_at(corpus.group, f"{GROUP}/{annotator}"), AnnotatorRecord.from_attrs(attrs))

    # ----- writing -----------------------------------------------------------------------------
    def write_shard(self, shard: int, scores: dict[str, np.ndarray]) -> None:
        """Write one shard's scores, one whole-chunk write per attribute, then mark the shard done.

        Parameters
        ----------
        shard : int
        scores : dict of str to ndarray of shape (n,)
            One entry per attribute of the record, n the shard's number of samples; finite values.
        """
        start, stop = self.corpus.spec.shard_range(shard)
        if set(scores) != set(self.record.attributes):
            raise HSpaceError(
                f"shard {shard}: scores for {sorted(scores)} but annotator {self.record.name!r} has "
                f"attributes {list(self.record.attributes)}"
            )
        for attribute in self.record.attributes:
            values = np.asarray(scores[attribute], dtype=np.float32)
            if values.shape != (stop - start,):
                raise HSpaceError(
                    f"shard {shard}: {attribute} scores have shape {values.shape}, expected ({stop - start},)"
                )
            if not np.isfinite(values).all():
                raise HSpaceError(
                    f"shard {shard}: annotator {self.record.name!r} gave non-finite {attribute} scores; "
                    "fix the annotator (nothing was written for this shard)"
                )
        for attribute in self.record.attributes:
            array_at(self.group, attribute)[start:stop] = np.asarray(scores[attribute], dtype=np.float32)
        array_at(self.group, DONE)[shard] = True

    # ----- reading -----------------------------------------------------------------------------
    def scores(self, attribute: str) -> np.ndarray:
        """Scores of every sample, float32 (N,); refused unless every shard is annotated.

        Raises
        ------
        HSpaceError
            If the attribute is unknown or some shards are not annotated (the message lists them and
            says what to run).
        """
        if attribute not in self.record.attributes:
            raise HSpaceError(
                f"annotator {self.record.name!r} has no attribute {attribute!r}; it has "
                f"{', '.join(self.record.attributes)}"
            )
        missing = self.missing_shards()
        if missing:
            corpus_missing = self.corpus.missing_shards()
            what = (
                f"finish the corpus (`hspace corpus info {self.corpus.url}` lists "
                f"{len(corpus_missing)} missing shards), then run"
                if corpus_missing
                else "run"
            )
            raise HSpaceError(
                f"annotations {self.record.name!r} of {self.corpus.url} are incomplete: shards "
                f"{_list(missing)} of {self.corpus.spec.n_shards} are not annotated; {what} "
                f"`hspace annotate {self.corpus.url} --annotator {self.record.name}`"
            )
        return read_array(self.group, attribute).astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        """The record and progress, as one JSON-ready dict."""
        done = self.done_shards()
        return {
            "annotator": self.record.name,
            "attributes": list(self.record.attributes),
            "config": self.record.config,
            "shards": int(done.size),
            "shards_done": int(done.sum()),
            "missing_shards": [int(k) for k in np.flatnonzero(~done)],
        }


def list_annotators(corpus: Corpus) -> list[str]:
    """Names of the annotators whose annotation groups exist (complete or not) in the corpus, sorted."""
    try:
        parent = group_at(corpus.group, GROUP)
    except KeyError:
        return []
    return sorted(name for name, node in parent.members() if isinstance(node, zarr.Group))


def find_annotator(corpus: Corpus, attribute: str, annotator: str | None = None) -> Annotations:
    """The annotations holding ``attribute``: the named annotator's, or the only one that has it."""
    if annotator is not None:
        return Annotations.open(corpus, annotator)
    holders = [
        name
        for name in list_annotators(corpus)
        if attribute in (_read_record_attrs(corpus, name) or {}).get("attributes", [])
    ]
    if len(holders) == 1:
        return Annotations.open(corpus, holders[0])
    if not holders:
        raise HSpaceError(
            f"no annotator of the corpus at {corpus.url} has an attribute {attribute!r} "
            f"(annotators: {', '.join(list_annotators(corpus)) or 'none'}): run `hspace annotate`"
        )
    raise HSpaceError(
        f"several annotators have an attribute {attribute!r} ({', '.join(holders)}): choose one with --annotator"
    )


# ----- private helpers ---------------------------------------------------------------------------
def _read_record_attrs(corpus: Corpus, name: str) -> dict[str, Any] | None:
    return corpus.read_member_attrs(
        f"{GROUP}/{name}",
        node_type=zarr.Group,
        key=ATTRS_KEY,
        version=SCHEMA_VERSION,
        what="an hspace annotation group",
    )


def _check_same(corpus: Corpus, attrs: dict[str, Any], record: AnnotatorRecord) -> None:
    wanted = record.to_attrs()
    differing = describe_differences(attrs, wanted, labels=("stored", "this annotator"))
    if differing:
        raise HSpaceError(
            f"annotations {record.name!r} of {corpus.url} were written by an annotator with another config: "
            f"{'; '.join(differing)}. Use the same annotator settings to resume, or give the annotator another name"
        )


def _create_arrays(group: zarr.Group, corpus: Corpus, record: AnnotatorRecord) -> None:
    """Create (or recreate, after a crash during creation) every array, then mark the group ready."""
    spec = corpus.spec
    for attribute in record.attributes:
        new_array(
            group,
            attribute,
            shape=(spec.samples,),
            dtype="float32",
            chunks=(spec.shard_size,),
            fill_value=np.nan,
            dimension_names=("sample",),
            overwrite=True,
        )
    new_array(
        group,
        DONE,
        shape=(spec.n_shards,),
        dtype="bool",
        chunks=(1,),
        fill_value=False,
        dimension_names=("shard",),
        overwrite=True,
    )
    group.attrs.update({ATTRS_KEY: {**record.to_attrs(), "initialized": True}})


def _list(shards: list[int], limit: int = 12) -> str:
    text = ", ".join(map(str, shards[:limit]))
    return text + (f", ... ({len(shards)} in all)" if len(shards) > limit else "")
