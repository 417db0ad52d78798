"""Flow ``build_corpus``: fan the missing shards of a corpus out over threads or Dask workers."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from tasks.corpus import generate_shard, prepare_corpus


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
    progress: bool = True,
) -> dict[str, Any]:
    """Generate every missing shard of the corpus at ``out`` and return its info."""
    corpus = prepare_corpus(
        out=out, model=model, samples=samples, steps=steps, eta=eta, batch=batch, seed=seed, dtype=dtype, device=device
    )
    missing = corpus.missing_shards()

    def size(shard: int) -> int:
        start, stop = corpus.spec.shard_range(shard)
        return stop - start

    bar = Progress(total=samples, done=samples - sum(map(size, missing)), unit="sample", desc="corpus", show=progress)
    submit_all(generate_shard, [(out, shard, device) for shard in missing], bar, device=device, weight=size)
    return corpus.info()
