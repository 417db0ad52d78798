"""Overhead of h capture + shard writes over the bare sampling loop, side by side in one run.

    python bench/bench_corpus.py [--models celebahq-shape tiny] [--repeats 3]

For each model, over the same few shards: (a) the bare DDIM loop (U-Net + DDIMScheduler.step, same
per-sample noise and the same one-sample-per-pass CPU batching, no hook, nothing stored); (b) the real task
`generate_shards` (hook with capture, sampling, then each shard's float16 cast and whole-shard Zarr write of
h, x0, seed and the done flag in the writer thread while the next shard is sampled); and (c) the same work
with each write after its shard's sampling, one after the other (what (b) was before writes overlapped).
Runs alternate (a, b, c, a, b, c, ...) so that machine noise hits all three; medians and minima are compared
(this machine's run-to-run noise is large, +-15% on `tiny`: prefer the minima and many repeats, and
measure on an idle machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from hspace.sampler import derive_seeds, make_scheduler
from storage.corpus import Corpus
from tasks.corpus import cached_model, corpus_model, generate_shards, prepare_corpus, sample_shard

SETTINGS = {"celebahq-shape": {"batch": 2, "steps": 3, "shards": 3}, "tiny": {"batch": 32, "steps": 50, "shards": 4}}


def bare_loop(model_name: str, seeds: list[int], steps: int) -> torch.Tensor:
    model = cached_model(model_name, "cpu")
    scheduler = make_scheduler(model.scheduler_config, steps)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = model.image_shape
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = torch.cat([model.unet(x[i : i + 1], t).sample for i in range(x.shape[0])])
            z = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
            x = scheduler.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
    return x


def write_after_each(url: str, shards: list[int]) -> None:
    """(c): sample a shard, write it, then the next; the write is not overlapped."""
    corpus = Corpus.open(url, writable=True)
    model = corpus_model(corpus)
    for shard in shards:
        corpus.write_shard(shard, **sample_shard(corpus, model, shard))


def bench(model_name: str, repeats: int) -> dict[str, list[float]]:
    s = SETTINGS[model_name]
    batch, steps, shards = s["batch"], s["steps"], list(range(s["shards"]))
    settings = dict(
        model=model_name,
        samples=batch * len(shards),
        steps=steps,
        eta=1.0,
        batch=batch,
        seed=0,
        dtype="float16",
        device="cpu",
    )
    cached_model(model_name, "cpu")
    bare_loop(model_name, derive_seeds(0, 0, 1), 1)  # warm-up
    times: dict[str, list[float]] = {"bare": [], "overlapped": [], "sequential": []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(repeats):
            runs: dict[str, Callable[[], object]] = {
                "bare": lambda: [
                    bare_loop(model_name, derive_seeds(0, k * batch, (k + 1) * batch), steps) for k in shards
                ],  # noqa: E501
                "overlapped": lambda r=r: generate_shards.fn(f"{scratch}/b{r}.zarr", shards, "cpu"),
                "sequential": lambda r=r: write_after_each(f"{scratch}/c{r}.zarr", shards),
            }
            for name in ("b", "c"):
                prepare_corpus(out=f"{scratch}/{name}{r}.zarr", **settings)
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating runs each")
    print(
        f"{'model':<16}{'batch':>6}{'steps':>6}{'shards':>7}{'stat':>8}{'bare s':>9}{'overlapped s':>14}"
        f"{'overhead':>10}{'write-after s':>15}{'overhead':>10}"
    )
    for name in args.models:
        times = bench(name, args.repeats)
        s = SETTINGS[name]
        for stat, reduce in (("median", statistics.median), ("min", min)):
            a, b, c = (reduce(times[k]) for k in ("bare", "overlapped", "sequential"))
            print(
                f"{name:<16}{s['batch']:>6}{s['steps']:>6}{s['shards']:>7}{stat:>8}{a:>9.3f}{b:>14.3f}"
                f"{100 * (b / a - 1):>9.1f}%{c:>15.3f}{100 * (c / a - 1):>9.1f}%"
            )


if __name__ == "__main__":
    main()
