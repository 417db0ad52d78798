"""Flow ``annotate``: score every generated shard of a corpus with an annotator, over threads or Dask workers.

Resumable: a shard whose scores are done is skipped, so a rerun after a crash scores only what is missing
and gives the same arrays as an uninterrupted run. A corpus shard that is not generated yet is skipped
(not refused) and reported in ``waiting_for_corpus``: annotating may start while ``hspace corpus build``
is still running; a rerun after the build picks those shards up, and readers of the scores refuse them
until then.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.corpus import task_runner
from flows.server import prefect_api_for_workers
from tasks.annotate import CORPUS_NOT_DONE, annotate_shard, options_key, prepare_annotations


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
    corpus = annotations.corpus
    missing = annotations.missing_shards()
    futures = [annotate_shard.submit(url, shard, annotator, key) for shard in missing]
    waiting: list[int] = []
    spec = corpus.spec
    done_before = spec.samples - sum(stop - start for start, stop in map(spec.shard_range, missing))
    with tqdm(total=spec.samples, initial=done_before, unit="sample", desc=f"annotate {annotations.record.name}",
              disable=not progress) as bar:
        for future in as_completed(futures):
            shard, status = future.result()
            if status == CORPUS_NOT_DONE:
                waiting.append(shard)
            else:
                start, stop = spec.shard_range(shard)
                bar.update(stop - start)
    if waiting and progress:
        print(f"annotate: {len(waiting)} corpus shards are not generated yet and were skipped; finish the corpus "
              f"(`hspace corpus build`), then rerun `hspace annotate {url} --annotator {annotator}`", file=sys.stderr)
    return {"url": url, **annotations.info(), "waiting_for_corpus": sorted(waiting)}


def run_annotate(url: str, annotator: str, options: dict[str, Any] | None = None, *, threads: int = 1,
                 workers: int | None = None, dask_address: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run :func:`annotate` on the chosen task runner (as :func:`flows.corpus.run_build_corpus` does)."""
    runner = task_runner(workers=workers, dask_address=dask_address, device="cpu", threads=threads)
    # Fail on an unknown corpus or annotator, or another annotator config, before any server or cluster starts.
    prepare_annotations(url, annotator, options)
    uses_processes = workers is not None or dask_address is not None
    server = prefect_api_for_workers() if uses_processes else contextlib.nullcontext()
    with server:
        return annotate.with_options(task_runner=runner)(url, annotator, options, progress)
