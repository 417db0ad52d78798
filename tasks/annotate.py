"""Annotation tasks: prepare a corpus's annotation group, and score one corpus shard."""

from __future__ import annotations

import functools
import json
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.annotators import Annotator, load_annotator
from hspace.errors import HSpaceError
from storage.annotations import Annotations, AnnotatorRecord
from storage.corpus import Corpus
from tasks.corpus import retry_on_io_error

# What annotate_shard reports for a shard (small things only go through Prefect).
WRITTEN, ALREADY_DONE, CORPUS_NOT_DONE = "written", "already-done", "corpus-shard-not-done"


def options_key(options: dict[str, Any] | None) -> str:
    """Load options as canonical JSON, hashable for the per-process annotator cache."""
    try:
        return json.dumps(options or {}, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise HSpaceError(f"annotator options must be JSON values; got {options!r} ({error})") from None


@functools.lru_cache(maxsize=4)
def cached_annotator(name: str, options: str = "{}") -> Annotator:
    """The annotator, loaded once per process (a Dask worker keeps it across shards); never sent through Prefect.

    Parameters
    ----------
    name : str
        What :func:`hspace.annotators.load_annotator` takes.
    options : str
        JSON object of keyword arguments for the loader (:func:`options_key`); "{}" for none.
    """
    kwargs = json.loads(options)
    if not kwargs:
        return load_annotator(name)
    try:
        return load_annotator(name, **kwargs)
    except TypeError as error:
        raise HSpaceError(f"annotator {name!r} does not take the options {options} ({error})") from None


def annotator_record(annotator: Annotator) -> AnnotatorRecord:
    """The record stored with the scores: name, attributes and the annotator's own ``config``.

    ``config`` (:attr:`hspace.annotators.base.Annotator.config`) is the annotator's statement of what fixes its scores
    (weights checksum, prompts, preprocessing). Load options are not recorded as such: some (batch, device)
    never change a score, and those that do belong in ``config``.
    """
    return AnnotatorRecord(name=annotator.name, attributes=tuple(annotator.attributes), config=dict(annotator.config))


def prepare_annotations(url: str, annotator: str, options: dict[str, Any] | None = None) -> Annotations:
    """Load the annotator and create or reopen its annotations in the corpus (refusing another config)."""
    key = options_key(options)
    corpus = Corpus.open(url, writable=True)
    return Annotations.create_or_open(corpus, annotator_record(cached_annotator(annotator, key)))


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="annotate-shard-{shard}",
)
def annotate_shard(url: str, shard: int, annotator: str, options: str = "{}") -> tuple[int, str]:
    """Score one corpus shard's x0 and write the scores; returns (shard, what happened).

    A shard already annotated is skipped; a corpus shard not yet generated is skipped too (its x0 are
    not trusted), and the next run annotates it.
    """
    corpus = Corpus.open(url, writable=True)
    if not corpus.done_shards()[shard]:
        return shard, CORPUS_NOT_DONE
    loaded = cached_annotator(annotator, options)
    record = annotator_record(loaded)
    annotations = Annotations.open(corpus, record.name)
    if annotations.record != record:
        raise HSpaceError(
            f"the annotator {annotator!r} on this worker ({record.config}) differs from the one the annotations "
            f"were created with ({annotations.record.config}): every worker must see the same annotator files"
        )
    if annotations.done_shards()[shard]:
        return shard, ALREADY_DONE
    start, stop = corpus.spec.shard_range(shard)
    annotations.write_shard(shard, loaded.scores_by_attribute(corpus.read_x0(slice(start, stop))))
    return shard, WRITTEN
