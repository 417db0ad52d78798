"""Jacobian tasks (Sec. IV-B): the top singular vectors of J_t for one corpus sample at one step."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

import hspace
from hspace.errors import HSpaceError
from hspace.jacobian import check_k, jacobian_directions, parse_block, state_at_step
from hspace.models import check_precision
from hspace.sampler import derive_seeds
from storage.corpus import Corpus
from storage.jacobian_runs import JacobianCell, JacobianRun, JacobianSpec, mask_sha256
from storage.runs import check_run_name, corpus_settings, h_dim
from tasks.corpus import corpus_model, retry_on_io_error

# The smallest tolerance Alg. 1 reaches per precision: in bf16 (7 mantissa bits) the residuals of the testbed's
# directions stalled at 4.3e-3 and 5.3e-3 (10 steps, step 3, k = 2, 40 iterations); fp16 and fp32 reach 1e-3.
MIN_TOL = {"bf16": 1e-2}


def sample_seed(corpus: Corpus, sample_id: int) -> int:
    """The seed of corpus sample ``sample_id`` (derived from the base seed, as the corpus build does)."""
    if not 0 <= sample_id < corpus.spec.samples:
        raise HSpaceError(f"sample {sample_id} is out of range: the corpus has samples 0..{corpus.spec.samples - 1}")
    return derive_seeds(corpus.spec.base_seed, sample_id, sample_id + 1)[0]


def prepare_jacobian(
    url: str,
    *,
    sample_ids: Sequence[int],
    steps: Sequence[int],
    k: int,
    run: str = "default",
    algorithm: str = "batched",
    block: int | None = None,
    mask: np.ndarray | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    precision: str | None = None,
) -> JacobianRun:
    """Check the arguments, then create or reopen the run (refusing other parameters).

    ``mask`` is M of eq. 10 as (S, S) 0/1 (e.g. from :func:`hspace.images.read_mask_png`); ``precision`` the
    U-Net's (default: the corpus's), a parameter of the run.
    """
    check_run_name(run)
    corpus = Corpus.open(url, writable=True)
    d_in = h_dim(corpus)
    mask = None if mask is None else np.asarray(mask, dtype=np.uint8)
    channels = corpus.spec.noise_shape[0]
    d_out = int(np.prod(corpus.spec.noise_shape)) if mask is None else channels * int(mask.sum())
    if not isinstance(k, int):
        raise HSpaceError(f"k must be a positive integer; got {k!r}")
    check_k(k, d_in, d_out, masked=mask is not None)
    parse_block(algorithm, block, k)
    if not tol > 0:
        raise HSpaceError(f"tol must be a positive number (relative residual); got {tol}")
    if max_iter < 1:
        raise HSpaceError(f"max_iter must be at least 1; got {max_iter}")
    precision = check_precision(corpus.spec.precision if precision is None else precision)
    if tol < MIN_TOL.get(precision, 0.0):
        raise HSpaceError(
            f"a {precision} U-Net cannot reach --tol {tol:g}: its rounding leaves relative residuals near 5e-3 "
            f"(measured); give --tol {MIN_TOL[precision]:g} or more, or --precision fp32"
        )
    spec = JacobianSpec(
        sample_ids=tuple(int(s) for s in sample_ids),
        steps=tuple(int(t) for t in steps),
        k=k,
        algorithm=algorithm,
        block=block,
        mask_sha256=mask_sha256(mask),
        tol=float(tol),
        max_iter=int(max_iter),
        precision=precision,
        corpus=corpus_settings(corpus),
        package_version=hspace.__version__,
    )
    return JacobianRun.create_or_open(corpus, run, spec, mask)


def find_cell(jacobian: JacobianRun, sample_id: int, step: int, *, device: str = "cpu") -> JacobianCell:
    """Replay the sample to step t (x_t), then the top-k singular triplets of J_t there."""
    corpus, spec = jacobian.corpus, jacobian.spec
    model = corpus_model(corpus, device, spec.precision)
    state = state_at_step(
        model, sample_seed(corpus, sample_id), steps=corpus.spec.steps, step=step, eta=list(corpus.spec.eta)
    )
    mask = jacobian.mask()
    result = jacobian_directions(
        model,
        state.x_t,
        state.t,
        spec.k,
        algorithm=spec.algorithm,
        block=spec.block,
        mask=mask,
        tol=spec.tol,
        max_iter=spec.max_iter,
    )
    return JacobianCell(
        singular_values=result.singular_values.numpy(),
        directions=result.directions.numpy(),
        image_changes=result.image_changes.numpy(),
        residuals=result.residuals.numpy(),
        iterations=result.iterations,
        converged=result.converged,
    )


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="jacobian-{run}-sample-{sample_id}-step-{step}",
)
def compute_jacobian(url: str, run: str, sample_id: int, step: int, device: str = "cpu") -> tuple[int, int]:
    """Find and write the directions of one (sample id, step); one already done is skipped."""
    jacobian = JacobianRun.open(url, run, writable=True)
    i, j = jacobian.index(sample_id, step)
    if not jacobian.done()[i, j]:
        jacobian.write(sample_id, step, find_cell(jacobian, sample_id, step, device=device))
    return sample_id, step
