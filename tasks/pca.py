"""PCA tasks (Sec. IV-A): fit one step of a PCA run from the corpus, and align signs across steps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

import hspace
from hspace.errors import HSpaceError
from hspace.pca import METHODS, StreamingPCA, default_batch_size, default_oversampling
from hspace.pca_directions import step_signs
from storage.corpus import Corpus
from storage.pca_runs import PCARun, PCASpec
from storage.runs import check_run_name, corpus_settings
from tasks.corpus import retry_on_io_error


def prepare_pca(
    url: str,
    *,
    components: int,
    run: str = "default",
    steps: Sequence[int] | None = None,
    method: str | None = None,
    batch_size: int | None = None,
) -> PCARun:
    """Check the arguments and the corpus, then create or reopen the run (refusing other parameters).

    ``method`` and ``batch_size`` are those of :class:`hspace.pca.StreamingPCA` (None: its defaults, recorded
    resolved, with the oversampling, so that a run's parameters fix its result). The corpus must be
    complete: PCA at step t uses every sample's h_t.
    """
    check_run_name(run)
    method = "incremental" if method is None else method
    if method not in METHODS:
        raise HSpaceError(f"unknown PCA method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(components, bool) or not isinstance(components, int) or components <= 0:
        raise HSpaceError(f"components must be a positive integer; got {components!r}")
    oversampling = 0 if method == "sklearn" else default_oversampling(components)
    batch_size = default_batch_size(components, oversampling) if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise HSpaceError(f"batch size must be a positive integer; got {batch_size!r}")
    if method == "sklearn" and batch_size < components:
        raise HSpaceError(f"method 'sklearn' needs a batch size >= components ({components}); got {batch_size}")
    corpus = Corpus.open(url, writable=True)
    missing = corpus.missing_shards()
    if missing:
        raise HSpaceError(
            f"the corpus at {url} is not complete ({len(missing)} of {corpus.spec.n_shards} shards "
            f"missing): finish it with `hspace corpus build` first"
        )
    spec = PCASpec(
        components=components,
        method=method,
        steps=tuple(range(corpus.spec.steps)) if steps is None else tuple(int(t) for t in steps),
        batch_size=batch_size,
        oversampling=oversampling,
        corpus=corpus_settings(corpus),
        package_version=hspace.__version__,
    )
    return PCARun.create_or_open(corpus, run, spec)


def fit_step(corpus: Corpus, step: int, spec: PCASpec, *, device: str = "cpu") -> StreamingPCA:
    """:class:`hspace.pca.StreamingPCA` of vec(h_t) at one step, fitted shard by shard in sample order.

    Each read is one shard's inner chunk at that step (docs/design.md); the estimator merges rows in blocks of
    ``spec.batch_size`` whatever the shard size, so the result depends only on the rows.
    """
    estimator = StreamingPCA(
        spec.components,
        method=spec.method,
        batch_size=spec.batch_size,
        oversampling=spec.oversampling if spec.method != "sklearn" else None,
        device=device,
    )
    for shard in range(corpus.spec.n_shards):
        start, stop = corpus.spec.shard_range(shard)
        h = corpus.read_h(slice(start, stop), step)
        estimator.partial_fit(h.reshape(len(h), -1))
    return estimator


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="fit-pca-{run}-step-{step}",
)
def fit_pca_step(url: str, run: str, step: int, device: str = "cpu") -> int:
    """Fit and write one step of a PCA run; a step already done is skipped. Returns the step."""
    pca = PCARun.open(url, run, writable=True)
    if step not in pca.spec.steps:
        raise HSpaceError(f"step {step} is not one of PCA run {run!r}'s steps {list(pca.spec.steps)}")
    if pca.done_steps()[step]:
        return step
    estimator = fit_step(pca.corpus, step, pca.spec, device=device)
    pca.write_step(
        step,
        components=np.asarray(estimator.components_),
        mean=np.asarray(estimator.mean_),
        explained_variance=np.asarray(estimator.explained_variance_),
        explained_variance_ratio=np.asarray(estimator.explained_variance_ratio_),
        n_samples=int(estimator.n_samples_seen_),
    )
    return step


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="align-pca-{run}",
)
def align_pca_run(url: str, run: str) -> str:
    """Align the signs of the components across the run's steps (Sec. IV-A) and write them; returns the run."""
    pca = PCARun.open(url, run, writable=True)
    signs = step_signs(pca.iter_components())  # one step at a time: a run can exceed memory
    pca.write_signs(signs.numpy().astype(np.int8))
    return run
