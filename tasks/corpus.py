"""Corpus tasks: prepare a corpus, and generate one shard of it."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

import hspace
from hspace.errors import HSpaceError
from hspace.models import LoadedModel, check_same_weights, load_model
from hspace.sampler import derive_seeds, make_scheduler, parse_eta, sample, to_uint8
from storage.corpus import H_DTYPES, Corpus, CorpusSpec


@functools.lru_cache(maxsize=2)
def cached_model(name: str, device: str) -> LoadedModel:
    """The model, loaded once per process (a Dask worker keeps it across shards); never sent through Prefect."""
    return load_model(name, device=device)


def check_build_arguments(
    *, samples: int, steps: int, eta: float | list[float], batch: int, seed: int, dtype: str, device: str
) -> tuple[float, ...]:
    """Reject bad arguments before anything is loaded or created; returns eta per step."""
    for name, value in (("samples", samples), ("batch", batch), ("steps", steps)):
        if not isinstance(value, int) or value <= 0:
            raise HSpaceError(f"{name} must be a positive integer; got {value!r}")
    if seed < 0:
        raise HSpaceError(f"seed must be a non-negative integer; got {seed}")
    if dtype not in H_DTYPES:
        raise HSpaceError(f"dtype must be one of {', '.join(H_DTYPES)}; got {dtype!r}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HSpaceError(f"device must be cpu or cuda; got {device!r}")
    return parse_eta(eta, steps)


def corpus_spec(
    model: LoadedModel, *, samples: int, steps: int, eta: tuple[float, ...], batch: int, seed: int, dtype: str
) -> CorpusSpec:
    """The settings that fix a corpus's content, from the model and the sampler arguments."""
    scheduler = make_scheduler(model.scheduler_config, steps)
    return CorpusSpec(
        model=model.name,
        fingerprint=model.fingerprint,
        scheduler_class=type(scheduler).__name__,
        # diffusers' private keys (_use_default_values is a set-ordered list) vary between processes.
        scheduler_config={k: v for k, v in scheduler.config.items() if not k.startswith("_")},
        samples=samples,
        shard_size=min(batch, samples),
        steps=steps,
        timesteps=tuple(int(t) for t in scheduler.timesteps),
        eta=eta,
        h_shape=model.h_shape,
        h_dtype=dtype,
        image_shape=model.image_shape,
        base_seed=seed,
        package_version=hspace.__version__,
    )


def prepare_corpus(
    *,
    out: str,
    model: str,
    samples: int,
    steps: int,
    eta: float | list[float],
    batch: int,
    seed: int,
    dtype: str,
    device: str,
) -> Corpus:
    """Check the arguments, load the model, and create or reopen the corpus (refusing other settings)."""
    etas = check_build_arguments(
        samples=samples, steps=steps, eta=eta, batch=batch, seed=seed, dtype=dtype, device=device
    )
    loaded = cached_model(model, device)
    spec = corpus_spec(loaded, samples=samples, steps=steps, eta=etas, batch=batch, seed=seed, dtype=dtype)
    return Corpus.create_or_open(out, spec)


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry storage hiccups (network filesystems, object stores), nothing else.

    A bad argument fails the same way twice, so only ``OSError`` and ``TimeoutError`` are retried.
    """
    try:
        state.result()
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def corpus_model(corpus: Corpus, device: str = "cpu") -> LoadedModel:
    """The model the corpus names, loaded once per process, refused if its weights differ from the corpus's."""
    loaded = cached_model(corpus.spec.model, device)
    check_same_weights(
        loaded,
        corpus.spec.fingerprint,
        owner="the corpus",
        advice="use the same model files (every worker must see the same ones)",
    )
    return loaded


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="generate-shard-{shard}",
)
def generate_shard(out: str, shard: int, device: str) -> int:
    """Generate and write one shard (all T steps of b samples) with the corpus's own model (checked by
    :func:`corpus_model`); a shard already done is skipped."""
    corpus = Corpus.open(out, writable=True)
    if corpus.done_shards()[shard]:
        return shard
    spec = corpus.spec
    loaded = corpus_model(corpus, device)
    start, stop = spec.shard_range(shard)
    seeds = derive_seeds(spec.base_seed, start, stop)
    result = sample(loaded, seeds, steps=spec.steps, eta=spec.eta, capture=True)
    assert result.h is not None
    corpus.write_shard(
        shard,
        h=result.h.numpy(),
        x0=to_uint8(result.images).numpy(),
        seeds=np.asarray(seeds, dtype=np.int64),
    )
    return shard
