"""The GPU path in one call: the authors' sampling against ours, precision error, Alg. 1 vs Alg. 2, pinned workers.

    python bench/bench_gpu.py [--dry] [--parts authors ours precision jacobian workers] [--out DIR] [--commit SHA]

Prints one JSON object and writes it to ``DIR/bench_gpu-<gpu|dry>-<UTC time>.json`` (default
``bench/results/``). Sizes are fixed per mode (:data:`GPU`, :data:`DRY`) so that the whole GPU run takes under
8 minutes on one H200; ``--dry`` runs the same code on the CPU with the ``tiny`` model, a few steps and small
batches (the test ``tests/bench/test_bench_gpu.py`` runs it, so the script never rots). Parts:

* ``authors`` -- (a) the authors' way: batch 1, float32, one image at a time in a Python loop, with torch's
  default fp32 settings (read at start; its loop calls the U-Net itself, without hspace's TF32): samples/s.
* ``ours`` -- (b) ``hspace.sampler.sample`` with capture, one U-Net pass per batch, at each batch size in fp32
  (TF32, as the sampler runs it on CUDA), bf16 and fp16: samples/s, the ratio to (a), model FLOP utilisation
  and peak GPU memory.
* ``precision`` -- (c) on the same seeds, the per-step relative error ||h_p - h_ref|| / ||h_ref|| (max and mean
  over steps) and the mean absolute image error of each setting against float32 with TF32 off (``ieee``).
* ``jacobian`` -- (d) Alg. 1 (k vectors at once) against Alg. 2 with b = 1 (one at a time, deflating), both
  stopped by the same tolerance (``bench/bench_jacobian.py``), in ``ieee`` float32 so that the tolerance is
  reachable; each gets a wall-time budget turned into an iteration cap from a timed one-iteration probe. A
  run that hits its cap says ``converged: false``: if only Alg. 2 does, its time ratio is a lower bound.
* ``text`` -- (f) Stable Diffusion 1.5's shape at 512 px (``sd15-shape``, random weights), guided (two U-Net
  halves per step, ``bench/bench_shapes.py``), in bf16 at each of ``text_batches``: samples/s and utilisation
  (decoding not counted in the FLOPs).
* ``workers`` -- (e) two Dask workers pinned to the same GPU (``local_gpu_cluster(["0", "0"])``) write one
  bf16 corpus; the same corpus built in-process must have the same bytes (on a GPU, bf16 batch passes need not
  be bitwise reproducible across processes: a difference is reported with the largest h difference).

A part that raises records its traceback under ``error`` and the next part runs; the exit status is 1 if any
part failed. Figures: no GPU run yet. Dry figures time the tiny model on a shared CPU: not a speed measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from bench_env import environment
from bench_jacobian import RUNS, compare_runs, time_runs
from bench_shapes import PROMPT, step_inputs
from torch.utils.flop_counter import FlopCounterMode

from hspace.files import sha256_of
from hspace.jacobian import jacobian_directions, state_at_step
from hspace.models import LoadedModel, load_model
from hspace.sampler import derive_seeds, sample

# torch's own fp32 settings (matmul, cuDNN conv), read at start. hspace's sampler runs an fp32 U-Net's passes in
# TF32 only while matmul is at torch's default ("none"): under IEEE below it leaves them IEEE.
TORCH_DEFAULT_FP32 = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
IEEE, TF32 = ("ieee", "ieee"), ("tf32", "tf32")

# U-Net FLOPs per forward of one image. celebahq-shape: forward_flops() (FlopCounterMode, CPU, batch 1, one
# forward) gave 496,348,037,120. Other models are counted the same way when the run starts.
FLOPS_PER_FORWARD = {"celebahq-shape": 496_348_037_120}
# Dense peak TFLOPS by a substring of the device name, per compute dtype; unknown device: utilisation null.
_HOPPER = {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0}
PEAK_TFLOPS = {"H200": _HOPPER, "H100 80GB HBM3": _HOPPER, "H100 SXM": _HOPPER}
PARTS = ("authors", "ours", "precision", "jacobian", "text", "workers")

log = logging.getLogger("bench_gpu")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Every size of one mode. Jacobian budgets are wall seconds, turned into iteration caps by a probe."""

    model: str
    device: str
    steps: int  # DDIM steps of (a), (b), (c) and of the Jacobian's sampling state
    warmup_steps: int  # one warm-up sampling run of this many steps per setting
    authors_images: int  # (a): images timed one at a time
    batches: tuple[int, ...]  # (b)
    precisions: tuple[str, ...]  # (b) and (c)
    error_seeds: int  # (c): one batch of this many seeds per setting
    jacobian_k: int
    jacobian_tol: float
    jacobian_step: int
    jacobian_chunk: int
    jacobian_max_iter: int  # cap per run (per vector for Alg. 2) whatever the budget allows
    jacobian_budget_s: tuple[float, float]  # (Alg. 1, Alg. 2)
    corpus: tuple[int, int, int]  # (e): samples, steps, batch
    text_model: str  # (f)
    text_batches: tuple[int, ...]


# One H200, estimated: (a) ~10 s, (b) ~60 s, (c) ~20 s, (d) <= 200 s, (e) ~60-90 s, (f) ~30 s (sd15-shape built with
# random weights on the CPU first: ~20 s), plus model loads.
GPU = Sizes(
    model="celebahq-shape",
    device="cuda",
    steps=50,
    warmup_steps=3,
    authors_images=6,
    batches=(16, 32, 64),
    precisions=("fp32", "bf16", "fp16"),
    error_seeds=8,
    jacobian_k=16,
    jacobian_tol=1e-2,  # bounds each sigma_i's relative error; reachable in the budgets
    jacobian_step=25,
    jacobian_chunk=8,  # a VJP column of celebahq-shape holds ~2 GB of activations
    jacobian_max_iter=500,
    jacobian_budget_s=(60.0, 120.0),
    corpus=(16, 20, 4),
    text_model="sd15-shape",
    text_batches=(4, 8),
)
DRY = Sizes(
    model="tiny",
    device="cpu",
    steps=4,
    warmup_steps=1,
    authors_images=2,
    batches=(2, 4),
    precisions=("fp32", "bf16", "fp16"),
    error_seeds=2,
    jacobian_k=2,
    jacobian_tol=1e-2,
    jacobian_step=2,
    jacobian_chunk=2,
    jacobian_max_iter=50,
    jacobian_budget_s=(5.0, 5.0),
    corpus=(4, 3, 2),
    text_model="tiny-sd",
    text_batches=(2,),
)


# --- measuring ---------------------------------------------------------------------------------------


def timed(run: Callable[[], object], device: str) -> tuple[float, int | None]:
    """Wall seconds of ``run()`` with the device idle before and after, and its peak GPU memory (None on CPU)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, (torch.cuda.max_memory_allocated() if cuda else None)


@contextlib.contextmanager
def fp32_precision(matmul: str, conv: str) -> Iterator[None]:
    """Set the fp32 precision of CUDA matmuls and cuDNN convolutions ("ieee", "tf32", ...), restore it after."""
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def forward_flops(model: LoadedModel) -> int:
    """FLOPs of one U-Net forward of one image (matmuls, convolutions, attention: FlopCounterMode's count)."""
    if model.name in FLOPS_PER_FORWARD:
        return FLOPS_PER_FORWARD[model.name]
    dtype = next(model.unet.parameters()).dtype
    x = torch.zeros(1, *model.image_shape, device=model.unet.device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet(x, 500)
    return int(counter.get_total_flops())


def utilisation(samples_per_s: float, steps: int, flops: int, compute: str) -> float | None:
    """Achieved over dense peak FLOP/s of this GPU for the compute dtype; None where the peak is not known."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    peaks = next((table for key, table in PEAK_TFLOPS.items() if key in name), None)
    if peaks is None:
        return None
    return samples_per_s * steps * flops / (peaks[compute] * 1e12)


def sampling_rate(model: LoadedModel, seeds: list[int], sizes: Sizes, compute: str, flops: int) -> dict:
    """One warm-up, then samples/s of ``sample`` with capture over all ``seeds`` in one pass per step."""

    def run(steps: int) -> None:
        sample(model, seeds, steps=steps, eta=1.0, capture=True, microbatch=len(seeds))

    run(sizes.warmup_steps)
    seconds, memory = timed(lambda: run(sizes.steps), sizes.device)
    rate = len(seeds) / seconds
    return {
        "batch": len(seeds),
        "precision": model.precision,
        "seconds": seconds,
        "samples_per_s": rate,
        "utilisation": utilisation(rate, sizes.steps, flops, compute),
        "peak_memory_bytes": memory,
    }


# --- the parts ---------------------------------------------------------------------------------------


def part_authors(sizes: Sizes, done: dict) -> dict:
    """(a) Batch 1, float32, one image at a time, torch's default fp32 settings."""
    model = load_model(sizes.model, device=sizes.device, precision="fp32")
    seeds = derive_seeds(0, 0, sizes.authors_images)
    flops = forward_flops(model)
    with fp32_precision(*TORCH_DEFAULT_FP32):
        sample(model, seeds[:1], steps=sizes.warmup_steps, eta=1.0, capture=True)

        def loop() -> None:
            for seed in seeds:
                sample(model, [seed], steps=sizes.steps, eta=1.0, capture=True)

        seconds, memory = timed(loop, sizes.device)
    rate = len(seeds) / seconds
    # Convolutions are most of the FLOPs: their precision picks the peak.
    compute = "tf32" if TORCH_DEFAULT_FP32[1] == "tf32" else "fp32"
    return {
        "images": len(seeds),
        "fp32_precision": dict(zip(("matmul", "conv"), TORCH_DEFAULT_FP32, strict=True)),
        "flops_per_forward": flops,
        "seconds_sampling": seconds,
        "samples_per_s": rate,
        "utilisation": utilisation(rate, sizes.steps, flops, compute),
        "utilisation_peak": compute,
        "peak_memory_bytes": memory,
    }


def part_ours(sizes: Sizes, done: dict) -> dict:
    """(b) The library's sampler, one pass per batch, at each batch size and precision."""
    baseline = done.get("authors", {}).get("samples_per_s")
    settings = []
    for precision in sizes.precisions:
        model = load_model(sizes.model, device=sizes.device, precision=precision)
        flops = forward_flops(model)
        with fp32_precision(*TF32):  # fp32 is fp32 + TF32 here, as the sampler runs it on CUDA
            for batch in sizes.batches:
                row = sampling_rate(
                    model, derive_seeds(0, 0, batch), sizes, "tf32" if precision == "fp32" else precision, flops
                )
                row["over_authors"] = None if baseline is None else row["samples_per_s"] / baseline
                settings.append(row)
                log.info("ours %s batch %d: %.2f samples/s", precision, batch, row["samples_per_s"])
        del model  # before the next precision's: peak memory is one model's
    return {"steps": sizes.steps, "fp32_precision": "tf32", "settings": settings}


def part_precision(sizes: Sizes, done: dict) -> dict:
    """(c) h and image error of each setting against float32 with TF32 off, on the same seeds."""
    seeds = derive_seeds(0, 0, sizes.error_seeds)
    runs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fp32_settings = {"fp32 ieee": IEEE, "fp32 torch default": TORCH_DEFAULT_FP32, "fp32 tf32": TF32}
    for precision in sizes.precisions:
        model = load_model(sizes.model, device=sizes.device, precision=precision)
        for label, flags in fp32_settings.items() if precision == "fp32" else [(precision, TF32)]:
            with fp32_precision(*flags):
                result = sample(model, seeds, steps=sizes.steps, eta=1.0, capture=True, microbatch=len(seeds))
            assert result.h is not None  # capture=True
            runs[label] = (result.h, result.images)
        del model
    h_ref, images_ref = runs.pop("fp32 ieee")
    errors = {}
    for label, (h, images) in runs.items():
        # Per step t: ||h_t - h_ref,t|| / ||h_ref,t|| over all samples (h is (B, T, C, H, W)).
        per_step = (h - h_ref).transpose(0, 1).flatten(1).norm(dim=1) / h_ref.transpose(0, 1).flatten(1).norm(dim=1)
        errors[label] = {
            "h_rel_error_max": float(per_step.max()),
            "h_rel_error_mean": float(per_step.mean()),
            "h_rel_error_last_step": float(per_step[-1]),
            "image_abs_error_mean": float((images - images_ref).abs().mean()),
        }
    return {"reference": "fp32 ieee", "seeds": len(seeds), "steps": sizes.steps, "errors": errors}


def part_jacobian(sizes: Sizes, done: dict) -> dict:
    """(d) Alg. 1 vs Alg. 2 with b = 1 at the same tolerance, each within its wall-time budget."""
    model = load_model(sizes.model, device=sizes.device, precision="fp32")
    k = sizes.jacobian_k
    settings = {"k": k, "tol": sizes.jacobian_tol, "max_iter": sizes.jacobian_max_iter, "chunk": sizes.jacobian_chunk}
    with fp32_precision(*IEEE):  # TF32's rounding (~1e-3) would sit at the tolerance
        state = state_at_step(model, 0, steps=sizes.steps, step=sizes.jacobian_step)
        caps, probes = iteration_caps(model, state, sizes)
        runs = {label: {**RUNS[label], "max_iter": cap} for label, cap in zip(("alg1", "alg2 b=1"), caps, strict=True)}
        results = time_runs(model, state, settings, runs=runs, warm_up=False)
    rows = compare_runs(results, None)
    alg1, alg2 = rows["alg1"], rows["alg2 b=1"]
    return {
        "t": state.t,
        "fp32_precision": "ieee",
        "probe_seconds_per_iteration": probes,
        "max_iter": dict(zip(("alg1", "alg2 b=1"), caps, strict=True)),
        "runs": rows,
        "equal_accuracy": alg1["converged"] and alg2["converged"],
        "alg2_over_alg1_seconds": alg2["seconds"] / alg1["seconds"],
        "ratio_is_lower_bound": alg1["converged"] and not alg2["converged"],
    }


def iteration_caps(model: LoadedModel, state, sizes: Sizes) -> tuple[tuple[int, int], dict]:
    """Iteration caps (Alg. 1; Alg. 2 per vector) that fit the budgets, from one timed iteration at k and at 1
    column after an untimed warm-up of each."""
    k, chunk = sizes.jacobian_k, sizes.jacobian_chunk

    def one_iteration(columns: int) -> None:
        jacobian_directions(model, state.x_t, state.t, columns, max_iter=1, chunk=chunk)

    one_iteration(k)
    one_iteration(1)
    per_iteration = {"alg1": timed(lambda: one_iteration(k), sizes.device)[0]}
    per_iteration["alg2 b=1"] = timed(lambda: one_iteration(1), sizes.device)[0]
    budget1, budget2 = sizes.jacobian_budget_s
    cap1 = int(budget1 / per_iteration["alg1"])
    cap2 = int(budget2 / (k * per_iteration["alg2 b=1"]))  # k vectors, one column-iteration each per iteration
    caps = tuple(max(1, min(sizes.jacobian_max_iter, cap)) for cap in (cap1, cap2))
    return (caps[0], caps[1]), per_iteration


def part_text(sizes: Sizes, done: dict) -> dict:
    """(f) The text-conditional kind at Stable Diffusion 1.5's shape, guided, bf16."""
    model = load_model(sizes.text_model, device=sizes.device, precision="bf16", conditioning=PROMPT)
    x, kwargs = step_inputs(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet(x, 500, **kwargs)
    flops = int(counter.get_total_flops())  # one guided step of one sample
    settings = [sampling_rate(model, derive_seeds(0, 0, batch), sizes, "bf16", flops) for batch in sizes.text_batches]
    return {"model": sizes.text_model, "flops_per_step": flops, "guidance": PROMPT.guidance, "settings": settings}


def part_workers(sizes: Sizes, done: dict) -> dict:
    """(e) Two workers pinned to one GPU write a bf16 corpus; the same corpus built in-process, byte for byte."""
    from flows.corpus import build_corpus
    from flows.runner import RunnerChoice, local_gpu_cluster, run_flow, visible_gpus
    from storage.corpus import Corpus

    arguments = {
        "model": sizes.model,
        **dict(zip(("samples", "steps", "batch"), sizes.corpus, strict=True)),
        "seed": 0,
        "device": sizes.device,
        "precision": "bf16",
        "progress": False,
    }
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        pinned, local = f"{scratch}/pinned.zarr", f"{scratch}/in-process.zarr"
        # ["0", "0"] where CUDA_VISIBLE_DEVICES is unset; this process's own GPU where it names one.
        gpu = (visible_gpus() or ["0"])[0]
        with local_gpu_cluster([gpu, gpu]) as cluster:
            workers = sorted(cluster.workers)
            runner = RunnerChoice(dask_address=cluster.scheduler_address)
            seconds_pinned, _ = timed(lambda: run_flow(build_corpus, runner=runner, out=pinned, **arguments), "cpu")
        seconds_local, _ = timed(lambda: run_flow(build_corpus, out=local, **arguments), "cpu")
        files_pinned, files_local = file_digests(pinned), file_digests(local)
        h_pinned, h_local = (Corpus.open(url).read_h().astype(np.float32) for url in (pinned, local))
    differing = sorted({path for path, _ in set(files_pinned.items()) ^ set(files_local.items())})
    return {
        **{key: arguments[key] for key in ("model", "samples", "steps", "batch", "device", "precision")},
        "workers": workers,
        "seconds_pinned_workers": seconds_pinned,
        "seconds_in_process": seconds_local,
        "files": len(files_pinned),
        "identical": not differing,
        "differing_files": differing[:20],
        "h_max_abs_difference": float(np.abs(h_pinned - h_local).max()),
    }


def file_digests(root: str) -> dict[str, str]:
    """sha256 of every file below ``root``, by its path relative to ``root``."""
    base = Path(root)
    return {str(path.relative_to(base)): sha256_of(path) for path in sorted(base.rglob("*")) if path.is_file()}


# --- the run -----------------------------------------------------------------------------------------

PART_FUNCTIONS: dict[str, Callable[[Sizes, dict], dict]] = {
    "authors": part_authors,
    "ours": part_ours,
    "precision": part_precision,
    "jacobian": part_jacobian,
    "text": part_text,
    "workers": part_workers,
}


def run_part(name: str, sizes: Sizes, done: dict) -> dict:
    """One part's results and wall time; a part that raises gives its traceback under ``error`` instead."""
    log.info("part %s", name)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        result = PART_FUNCTIONS[name](sizes, done)
    except Exception:  # recorded, not hidden: one failure must not lose the other parts' numbers (exit status 1)
        result = {"error": traceback.format_exc()}
        log.error("part %s failed:\n%s", name, result["error"])
    if torch.device(sizes.device).type == "cuda":
        torch.cuda.empty_cache()
    return {"wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the CPU, the tiny model, a few steps, small batches")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: all, in order")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder of the JSON")
    parser.add_argument("--commit", help="the git commit, where the tree is a copy without .git (default: git's)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The flow's logs would go to the server run_flow stops after the pinned run, and be retried at exit for ~1 min.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    sizes = DRY if args.dry else GPU
    if not args.dry and not torch.cuda.is_available():
        parser.error(f"torch {torch.__version__} finds no CUDA GPU here: run with --dry to check the script on the CPU")
    started = datetime.now(UTC)
    start = time.perf_counter()
    report: dict = {
        "mode": "dry" if args.dry else "gpu",
        "started": started.isoformat(timespec="seconds"),
        "environment": {
            **environment(sizes.device),
            "torch_default_fp32_precision": {"matmul": TORCH_DEFAULT_FP32[0], "conv": TORCH_DEFAULT_FP32[1]},
            **({"git_commit": args.commit} if args.commit else {}),
        },
        "sizes": asdict(sizes),
        "parts": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_gpu-{report['mode']}-{started:%Y%m%dT%H%M%SZ}.json"
    for name in (part for part in PARTS if part in args.parts):  # in order: (b) compares with (a)
        report["parts"][name] = run_part(name, sizes, report["parts"])
        report["failed"] = [name for name, part in report["parts"].items() if "error" in part]
        report["total_seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(report, indent=1) + "\n")  # after every part: a killed run keeps what it had
        log.info("wrote %s", path)
    print(json.dumps(report), flush=True)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
