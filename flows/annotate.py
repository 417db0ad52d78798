"""Flow ``annotate``: score every generated shard of a corpus with an annotator, over threads or Dask workers.

Resumable: a shard whose scores are done is skipped, so a rerun after a crash scores only what is missing
and gives the same arrays as an uninterrupted run. A corpus shard that is not generated yet is skipped
(not refused) and reported in ``waiting_for_corpus``: annotating may start while ``hspace corpus build``
is still running; a rerun after the build picks those shards up, and readers of the scores refuse them
until then.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from tasks.annotate import CORPUS_NOT_DONE, annotate_shard, options_key, prepare_annotations


def check_annotate(parameters: dict[str, Any]) -> None:
    """An unknown corpus or annotator, or another annotator config, fails here."""
    prepare_annotations(parameters["url"], parameters["annotator"], parameters["options"])


@checked_by(check_annotate)
@flow(name="annotate", task_runner=ThreadPoolTaskRunner(max_workers=1))
def annotate(url: str, annotator: str, options: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Score every generated, not yet annotated shard of the corpus at ``url``; returns the annotations' info.

    Parameters
    ----------
    url : str
        The corpus.
    annotator : str
        A name for :func:`hspace.annotators.load_annotator`.
    options : dict, optional
        Keyword arguments of the annotator's loader (recorded with the scores).
    progress : bool
        A progress bar on stderr.
    """
    annotations = prepare_annotations(url, annotator, options)
    key = options_key(options)
    missing = annotations.missing_shards()
    spec = annotations.corpus.spec

    def size(shard: int) -> int:
        start, stop = spec.shard_range(shard)
        return stop - start

    bar = Progress(
        total=spec.samples,
        done=spec.samples - sum(map(size, missing)),
        unit="sample",
        desc=f"annotate {annotations.record.name}",
        show=progress,
    )
    results = submit_all(
        annotate_shard,
        [(url, shard, annotator, key) for shard in missing],
        bar,
        weight=lambda result: 0 if result[1] == CORPUS_NOT_DONE else size(result[0]),
    )
    waiting = [shard for shard, status in results if status == CORPUS_NOT_DONE]
    if waiting and progress:
        print(
            f"annotate: {len(waiting)} corpus shards are not generated yet and were skipped; finish the corpus "
            f"(`hspace corpus build`), then rerun `hspace annotate {url} --annotator {annotator}`",
            file=sys.stderr,
        )
    return {"url": url, **annotations.info(), "waiting_for_corpus": sorted(waiting)}
