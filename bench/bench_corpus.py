"""Overhead of h capture + shard writes over the bare sampling loop, side by side in one run.

    python bench/bench_corpus.py [--models celebahq-shape tiny] [--repeats 3]

For each model: (a) the bare DDIM loop (U-Net + DDIMScheduler.step, same per-sample noise and the same
one-sample-per-pass CPU batching, no hook, nothing stored) and (b) the real task `generate_shards`
(hook with capture, sampling, float16 cast, one whole-shard Zarr write of h, x0, seed, the done flag).
Runs alternate (a, b, a, b, ...) so that machine noise hits both; medians and minima are compared
(this machine's run-to-run noise is large, +-15% on `tiny`: prefer the minima and many repeats).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from hspace.sampler import derive_seeds, make_scheduler
from tasks.corpus import cached_model, generate_shards, prepare_corpus

SETTINGS = {"celebahq-shape": {"batch": 2, "steps": 3}, "tiny": {"batch": 32, "steps": 50}}


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


def bench(model_name: str, repeats: int) -> tuple[list[float], list[float]]:
    batch, steps = SETTINGS[model_name]["batch"], SETTINGS[model_name]["steps"]
    seeds = derive_seeds(0, 0, batch)
    cached_model(model_name, "cpu")
    bare_loop(model_name, seeds[:1], 1)  # warm-up
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(repeats):
            t0 = time.perf_counter()
            bare_loop(model_name, seeds, steps)
            bare.append(time.perf_counter() - t0)
            url = f"{scratch}/c{r}.zarr"
            prepare_corpus(
                out=url,
                model=model_name,
                samples=batch,
                steps=steps,
                eta=1.0,
                batch=batch,
                seed=0,
                dtype="float16",
                device="cpu",
            )
            t0 = time.perf_counter()
            generate_shards.fn(url, [0], "cpu")
            ours.append(time.perf_counter() - t0)
    return bare, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} alternating runs each")
    print(
        f"{'model':<16}{'batch':>6}{'steps':>6}{'stat':>8}{'bare loop s':>13}{'capture+write s':>17}{'ratio':>8}"
        f"{'overhead':>10}"
    )
    for name in args.models:
        bare, ours = bench(name, args.repeats)
        s = SETTINGS[name]
        for stat, reduce in (("median", statistics.median), ("min", min)):
            a, b = reduce(bare), reduce(ours)
            print(
                f"{name:<16}{s['batch']:>6}{s['steps']:>6}{stat:>8}{a:>13.3f}{b:>17.3f}{b / a:>8.3f}"
                f"{100 * (b / a - 1):>9.1f}%"
            )


if __name__ == "__main__":
    main()
