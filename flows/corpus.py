"""Flow ``build_corpus``: fan the missing shards of a corpus out over threads or Dask workers."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from tasks.corpus import generate_shards, prepare_corpus

# Shards per task, at most: each task overlaps its writes with its next shard's sampling (but not its last
# write), so longer runs hide more writes; enough tasks are left for progress and load balance.
MAX_TASK_SHARDS = 8
MIN_TASKS = 16


def shard_runs(missing: list[int]) -> list[list[int]]:
    """The missing shards cut into consecutive runs, one per task: at most MAX_TASK_SHARDS each, and at least
    MIN_TASKS runs where there are that many shards."""
    size = max(1, min(MAX_TASK_SHARDS, len(missing) // MIN_TASKS))
    return [missing[i : i + size] for i in range(0, len(missing), size)]


def check_build_corpus(parameters: dict[str, Any]) -> None:
    """Bad arguments, an unknown model or a mismatching corpus fail here (the corpus is created if missing)."""
    prepare_corpus(**{k: v for k, v in parameters.items() if k != "progress"})


@checked_by(check_build_corpus)
@flow(name="build-corpus", task_runner=ThreadPoolTaskRunner(max_workers=1))
def build_corpus(
    model: str,
    samples: int,
    steps: int,
    out: str,
    eta: float | list[float] = 1.0,
    batch: int = 8,
    seed: int = 0,
    dtype: str = "float16",
    device: str = "cpu",
    precision: str = "fp32",
    microbatch: int | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
    prompts: list[str] | None = None,
    latents: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate every missing shard of the corpus at ``out`` and return its info.

    ``precision`` is the U-Net's dtype (``hspace.models.PRECISIONS``), ``microbatch`` the samples per U-Net
    pass (default: one on the CPU, so a sample is bitwise the same in any batch); both are corpus settings.
    A text-conditional model's ``prompt`` (or ``prompts``, one per sample), ``negative_prompt`` and
    ``guidance`` are too (``tasks.corpus.prepare_corpus``), and ``latents`` (store the final latents).
    """
    corpus = prepare_corpus(
        out=out,
        model=model,
        samples=samples,
        steps=steps,
        eta=eta,
        batch=batch,
        seed=seed,
        dtype=dtype,
        device=device,
        precision=precision,
        microbatch=microbatch,
        prompt=prompt,
        negative_prompt=negative_prompt,
        guidance=guidance,
        prompts=prompts,
        latents=latents,
    )
    missing = corpus.missing_shards()

    def size(shards: list[int]) -> int:
        return sum(stop - start for start, stop in map(corpus.spec.shard_range, shards))

    bar = Progress(total=samples, done=samples - size(missing), unit="sample", desc="corpus", show=progress)
    runs = shard_runs(missing)
    submit_all(generate_shards, [(out, run, device) for run in runs], bar, device=device, weight=size)
    return corpus.info()
