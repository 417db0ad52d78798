"""Corpus tasks: prepare a corpus, and generate some of its shards."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

import hspace
from hspace.conditioning import Conditioning, check_prompts, parse_conditioning
from hspace.errors import HSpaceError
from hspace.models import LoadedModel, check_precision, check_same_weights, load_model
from hspace.sampler import derive_seeds, make_scheduler, parse_eta, sample, to_uint8
from storage.corpus import Corpus
from storage.corpus_spec import H_DTYPES, CorpusSpec

T = TypeVar("T")
P = TypeVar("P")


@functools.lru_cache(maxsize=2)
def cached_model(name: str, device: str, precision: str = "fp32") -> LoadedModel:
    """The model, loaded once per process (a Dask worker keeps it across shards); never sent through Prefect."""
    return load_model(name, device=device, precision=precision)


def check_build_arguments(
    *,
    samples: int,
    steps: int,
    eta: float | list[float],
    batch: int,
    seed: int,
    dtype: str,
    device: str,
    precision: str = "fp32",
    microbatch: int | None = None,
) -> tuple[float, ...]:
    """Reject bad arguments before anything is loaded or created; returns eta per step."""
    for name, value in (("samples", samples), ("batch", batch), ("steps", steps)):
        if not isinstance(value, int) or value <= 0:
            raise HSpaceError(f"{name} must be a positive integer; got {value!r}")
    if microbatch is not None and (not isinstance(microbatch, int) or microbatch <= 0):
        raise HSpaceError(f"microbatch must be a positive integer (samples per U-Net pass); got {microbatch!r}")
    check_precision(precision)
    if seed < 0:
        raise HSpaceError(f"seed must be a non-negative integer; got {seed}")
    if dtype not in H_DTYPES:
        raise HSpaceError(f"dtype must be one of {', '.join(H_DTYPES)}; got {dtype!r}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HSpaceError(f"device must be cpu or cuda; got {device!r}")
    return parse_eta(eta, steps)


def corpus_spec(
    model: LoadedModel,
    *,
    samples: int,
    steps: int,
    eta: tuple[float, ...],
    batch: int,
    seed: int,
    dtype: str,
    microbatch: int | None = None,
    prompts: tuple[str, ...] | None = None,
    latents: bool = False,
) -> CorpusSpec:
    """The settings that fix a corpus's content, from the model (with its conditioning) and the sampler
    arguments."""
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
        precision=model.precision,
        microbatch=microbatch,
        latent_shape=None if model.kind == "pixel" else model.latent_shape,
        conditioning=None if model.conditioning is None else model.conditioning.sampling(),
        prompts=prompts,
        latents=latents,
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
    precision: str = "fp32",
    microbatch: int | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    prompts: list[str] | None = None,
    latents: bool = False,
) -> Corpus:
    """Check the arguments, load the model, and create or reopen the corpus (refusing other settings).

    A text-conditional model samples with ``prompt`` (default: the empty prompt), ``negative_prompt`` (default:
    empty) and ``guidance`` (default 7.5), or with ``prompts``, one per sample; all are refused for an
    unconditional model. ``latents`` also stores each sample's final latent (latent models only)."""
    etas = check_build_arguments(
        samples=samples,
        steps=steps,
        eta=eta,
        batch=batch,
        seed=seed,
        dtype=dtype,
        device=device,
        precision=precision,
        microbatch=microbatch,
    )
    conditioning = parse_conditioning(prompt, negative_prompt, guidance, prompts=prompts)
    if prompts is not None:
        prompts = list(check_prompts(prompts, samples))
    # On the CPU: only the fingerprint and shapes are needed here, and the GPU belongs to the workers.
    loaded = cached_model(model, "cpu", precision).conditioned(conditioning)
    spec = corpus_spec(
        loaded,
        samples=samples,
        steps=steps,
        eta=etas,
        batch=batch,
        seed=seed,
        dtype=dtype,
        microbatch=microbatch,
        prompts=None if prompts is None else tuple(prompts),
        latents=latents,
    )
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


def corpus_model(corpus: Corpus, device: str = "cpu", precision: str | None = None) -> LoadedModel:
    """The model the corpus names, loaded once per process in ``precision`` (default: the corpus's), refused if
    its weights differ from the corpus's; a text-conditional one samples with the corpus's conditioning."""
    spec = corpus.spec
    loaded = cached_model(spec.model, device, spec.precision if precision is None else precision)
    if spec.conditioning is not None:
        loaded = loaded.conditioned(Conditioning(**spec.conditioning))
    check_same_weights(
        loaded,
        corpus.spec.fingerprint,
        owner="the corpus",
        advice="use the same model files (every worker must see the same ones)",
    )
    return loaded


def write_behind(items: Iterable[T], produce: Callable[[T], P], write: Callable[[T, P], None]) -> None:
    """``write(item, produce(item))`` for every item, each write overlapping the next item's production.

    ``produce`` runs in the calling thread, ``write`` in one writer thread, one write at a time: item i+1 is
    produced while item i is written, and is handed over only once that write has finished, so at most two
    items are held at once. A write that raises stops the production and is raised here (after the item
    being produced then); when ``produce`` raises, the write under way finishes first, so nothing written
    is left half done by this function.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hspace-writer") as writer:
        pending: Future[None] | None = None
        for item in items:
            try:
                produced = produce(item)
            except BaseException as error:
                if pending is not None and pending.exception() is not None:
                    # Both failed: raise the write's (an I/O error the task retries), the other chained.
                    raise pending.exception() from error  # type: ignore[misc]
                raise
            if pending is not None:
                pending.result()
            pending = writer.submit(write, item, produced)
        if pending is not None:
            pending.result()


def sample_shard(corpus: Corpus, model: LoadedModel, shard: int) -> dict[str, np.ndarray]:
    """h_{T:1}, x_0 and the seeds of one shard's samples, ready for :meth:`Corpus.write_shard`."""
    spec = corpus.spec
    start, stop = spec.shard_range(shard)
    seeds = derive_seeds(spec.base_seed, start, stop)
    prompts = None if spec.prompts is None else spec.prompts[start:stop]
    result = sample(
        model, seeds, steps=spec.steps, eta=spec.eta, capture=True, microbatch=spec.microbatch, prompts=prompts
    )
    assert result.h is not None
    data = {"h": result.h.numpy(), "x0": to_uint8(result.images).numpy(), "seeds": np.asarray(seeds, dtype=np.int64)}
    if spec.latents:
        assert result.latents is not None  # a latent model's corpus (CorpusSpec checks)
        data["latents"] = result.latents.numpy()
    return data


@task(
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_on_io_error,
    cache_policy=NO_CACHE,
    task_run_name="generate-shards-{shards}",
)
def generate_shards(out: str, shards: list[int], device: str) -> list[int]:
    """Generate and write some shards (all T steps of b samples each) with the corpus's own model (checked by
    :func:`corpus_model`), each write overlapping the next shard's sampling (:func:`write_behind`); shards
    already done are skipped. Each shard is marked done once its own data is written."""
    corpus = Corpus.open(out, writable=True)
    done = corpus.done_shards()
    todo = [k for k in shards if not done[k]]
    if todo:
        model = corpus_model(corpus, device)
        write_behind(
            todo,
            lambda shard: sample_shard(corpus, model, shard),
            lambda shard, data: corpus.write_shard(shard, **data),
        )
    return shards
