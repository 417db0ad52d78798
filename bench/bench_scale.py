"""The scale run (issue 18, item 4): every stage at the paper's h width on a 2-worker Dask cluster, measured.

    python bench/bench_scale.py [--n 1024 2048 4096] [--steps 50] [--workers 2] [--out DIR] [--results DIR]
                                [--gpus 1 8 64] [--gpu-tflops 300 | --gpu-sample-seconds S] [--dry]
    python bench/bench_scale.py --pass-time       # one U-Net pass of scale-probe at batch 32, on this CPU

For each N, the built-in ``scale-probe`` (h = 512 x 8 x 8 = 32,768 values per step as google/ddpm-ema-celebahq-256,
64 x 64 images, 1% of its compute) goes through the stages as a user runs them, one ``hspace`` command each in its
own processes, one Prefect server for all: ``corpus build`` (shards of 32, one U-Net pass per shard and step),
``annotate --annotator testbed`` (64 px is box-filtered to its 32; random-weight images score nonsense, the cost
is what counts), ``pca fit --components 25``, all three ``--workers``; ``directions supervised --attribute smile
--k 100`` and ``evaluate --directions smile --samples 16 --repeats 2`` (cost independent of N) in the calling
process (``--workers`` goes to any command that has learnt it).

Per stage: wall time of the command (process, cluster start and stop included; ``first_worker_s`` is when its
first worker appeared), samples/s, MB/s written (growth of the corpus on disk) and read (bytes on disk of what it
reads: x0 for annotate, all of h for pca, the whole shards holding the examples for supervised, the direction
for evaluate), the peak RSS of each process (the kernel's high-water mark VmHWM, polled every 0.25 s with psutil;
the ``hspace`` process is the driver, Dask's spawned processes the workers), and per N the bytes on disk per
stored h value (du of ``h`` / (N x T x 32,768)). Ratios between the two largest N against the issue's goals:
time <= 1.1 x the N ratio (2.2x), peak RSS within 10%, <= 2.04 bytes per h value. One JSON object is printed
(last line of stdout) and written to ``RESULTS/scale-<dry|run>-<UTC time>.json`` after every stage.

Disk: float16 h, N = 4,096 x 50 steps is 13.4 GB. Corpora go to a temporary folder, each deleted once measured
(``--out DIR`` keeps them all, so all must fit); free space is checked first. ``--dry``: N = 16 and 32, 3 steps,
shards of 8 (a test runs it). ``--steps`` lowers T; the output says so and the extrapolation scales by 50 / T.

Extrapolation to the paper's 50,000 x 50 on G GPUs, one worker each (:func:`extrapolate`), simple on purpose:

* corpus: U-Net FLOPs, 496,348,037,120 per forward per sample for celebahq-shape at 256 px (bench/bench_gpu.py),
  at ``--gpu-tflops`` per GPU (300: assumed, ~30% of an H100's dense bf16 peak, not measured yet), or a measured
  ``--gpu-sample-seconds`` (:func:`unet_seconds_per_sample`). h is written behind sampling: the table gives the
  write bandwidth that takes.
* evaluate: U-Net bound. The paper's Table I is 100 samples x 10 repeats x (1 unedited + 10 directions (5
  attributes, original and disentangled) + 10 random twins) = 21,000 generations, each a corpus sample times the
  overhead measured here (s per evaluated generation, start-up included / corpus s per sample), over G GPUs.
* annotate, pca: this CPU's seconds per sample (the slope between the two largest N: fixed costs drop out), times
  50,000 (and 50 / T for pca), from ``--workers`` workers to G (pca to at most T: a task per step). An upper
  bound: both also run on GPUs; a real annotator's cost per 256 px image is not the testbed CNN's.
* supervised: its time per shard read (mean_h reads each shard holding an example, once per side) times the
  shards that 2 x k random examples touch among 50,000 / 32, scaled by T: nearly constant in N.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # distributed's dependency; no stubs installed

PROBE = "scale-probe"
H_VALUES = 512 * 8 * 8  # values of h per step: google/ddpm-ema-celebahq-256's (and the probe's)
IMAGE_BYTES = 3 * 64 * 64
CELEBAHQ_FLOPS_PER_FORWARD = 496_348_037_120  # bench/bench_gpu.py's FLOPS_PER_FORWARD["celebahq-shape"]
PAPER = {"samples": 50_000, "steps": 50, "evaluation_generations": 100 * 10 * (1 + 10 + 10)}
# Stage -> the words of its `hspace` command; in order (each needs the ones before).
COMMANDS = {"corpus": ("corpus", "build"), "annotate": ("annotate",), "pca": ("pca", "fit"),
            "supervised": ("directions", "supervised"), "evaluate": ("evaluate",)}  # fmt: skip
GOALS = {"time_over_n_ratio": 1.1, "peak_rss_change": 0.10, "bytes_per_h_value": 2.04}

log = logging.getLogger("bench_scale")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """Every size of one run: ``batch`` is the samples per shard and per U-Net pass, ``components`` PCA's k,
    ``k`` eq. 11's top/bottom k (at most N / 4)."""

    ns: tuple[int, ...]
    steps: int
    batch: int
    workers: int
    components: int
    k: int
    eval_samples: int
    eval_repeats: int


FULL = Sizes(ns=(1024, 2048, 4096), steps=50, batch=32, workers=2, components=25, k=100, eval_samples=16,
             eval_repeats=2)  # fmt: skip
DRY = Sizes(ns=(16, 32), steps=3, batch=8, workers=2, components=4, k=4, eval_samples=4, eval_repeats=2)


def disk_bytes(path: Path) -> int:
    """Bytes on disk under ``path``, as du counts them (allocated blocks)."""
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]  # nothing for a path that does not exist
    return sum(getattr(s, "st_blocks", 0) * 512 or s.st_size for s in stats)


def high_water_mark(process: psutil.Process) -> int:
    """Peak RSS of a live process so far: Linux's VmHWM, else its current RSS."""
    status = Path(f"/proc/{process.pid}/status")
    lines = status.read_text().splitlines() if status.exists() else []
    peaks = [int(line.split()[1]) * 1024 for line in lines if line.startswith("VmHWM:")]
    return peaks[0] if peaks else int(process.memory_info().rss)


class PeakRSS(threading.Thread):
    """Follows a process and its descendants every ``interval`` s: each one's peak RSS and role."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.started = psutil.Process(pid), interval, time.perf_counter()
        self.peaks: dict[int, tuple[str, int]] = {}
        self.first_worker_s: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            try:
                role = self.peaks[process.pid][0] if process.pid in self.peaks else self._role(process)
                peak = high_water_mark(process)
            except (psutil.Error, OSError):  # gone since it was listed
                continue
            self.peaks[process.pid] = (role, max(peak, self.peaks.get(process.pid, (role, 0))[1]))
            if role == "worker" and self.first_worker_s is None:
                self.first_worker_s = time.perf_counter() - self.started

    def _role(self, process: psutil.Process) -> str:
        if process.pid == self.root.pid:
            return "driver"
        # Dask's LocalCluster spawns its workers with multiprocessing; anything else (a resource tracker) is other.
        return "worker" if "spawn_main" in " ".join(process.cmdline()) else "other"

    def of(self, role: str) -> list[int]:
        return sorted((peak for r, peak in self.peaks.values() if r == role), reverse=True)


def run_command(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``hspace *argv`` in a new process; its wall time and the peak RSS of its processes. Fails loudly."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watcher = PeakRSS(process.pid)
    watcher.start()
    _, err = process.communicate()
    wall = time.perf_counter() - start
    watcher.done.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"hspace {' '.join(argv)} exited {process.returncode}: {err.strip()[-2000:]}")
    driver, workers = watcher.of("driver"), watcher.of("worker")
    return {"command": "hspace " + " ".join(argv), "wall_s": wall, "first_worker_s": watcher.first_worker_s,
            "peak_rss_bytes": max(driver + workers, default=0), "peak_rss_driver_bytes": max(driver, default=0),
            "peak_rss_worker_bytes": workers}  # fmt: skip


def cli_options(words: tuple[str, ...]) -> set[str]:
    """The option strings ``hspace <words>`` takes (``--workers`` goes only where a command has it)."""
    from flows.cli import parser

    command = parser()
    for word in words:
        [sub] = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        command = sub.choices[word]
    return set(command._option_string_actions)


def stage_arguments(corpus: Path, n: int, sizes: Sizes, report: Path) -> dict[str, list[str]]:
    """Each stage's arguments after its command words and the corpus."""
    return {
        "corpus": ["--model", PROBE, "--samples", str(n), "--steps", str(sizes.steps), "--seed", "0"]
        + ["--batch", str(sizes.batch), "--microbatch", str(sizes.batch)],
        "annotate": ["--annotator", "testbed"],
        "pca": ["--components", str(sizes.components), "--run", "scale"],
        "supervised": ["--name", "smile", "--attribute", "smile", "--k", str(min(sizes.k, n // 4))],
        "evaluate": ["--directions", "smile", "--samples", str(sizes.eval_samples), "--report", str(report)]
        + ["--repeats", str(sizes.eval_repeats)],
    }


def stage_reads(stage: str, corpus: Path, n: int, sizes: Sizes) -> tuple[int, int, str]:
    """(samples the stage handles, bytes on disk it reads, what it reads)."""
    if stage == "corpus":
        return n, 0, "nothing (writes h, x0, seed)"
    if stage == "annotate":
        return n, disk_bytes(corpus / "x0"), "x0, every sample"
    if stage == "pca":
        return n, disk_bytes(corpus / "h"), "h, every sample and step"
    if stage == "supervised":
        from storage.corpus import Corpus
        from storage.directions import list_directions

        [record] = [d for d in list_directions(Corpus.open(str(corpus))) if d["name"] == "smile"]
        rows = [record["parameters"]["positives"], record["parameters"]["negatives"]]
        # mean_h reads whole shards, once for the positives and once for the negatives.
        touched = sum(len({i // sizes.batch for i in side}) for side in rows)
        shards = -(-n // sizes.batch)
        return sum(map(len, rows)), disk_bytes(corpus / "h") * touched // shards, "h of the shards with the examples"
    generations = sizes.eval_samples * sizes.eval_repeats * 3  # unedited, the direction, its random twin
    return generations, disk_bytes(corpus / "directions"), "the direction (generates fresh samples)"


def run_stage(stage: str, corpus: Path, n: int, sizes: Sizes, env: dict[str, str], report: Path) -> dict[str, Any]:
    """Run one stage's command on the corpus and measure it."""
    options = cli_options(COMMANDS[stage])
    runner = ["--workers", str(sizes.workers)] if "--workers" in options else []
    runner += ["--no-progress"] if "--no-progress" in options else []
    before = disk_bytes(corpus)
    argv = [*COMMANDS[stage], str(corpus), *stage_arguments(corpus, n, sizes, report)[stage], *runner]
    measured = run_command(argv, env)
    written = disk_bytes(corpus) - before
    samples, read, what = stage_reads(stage, corpus, n, sizes)
    wall, workers = measured["wall_s"], sizes.workers if runner[:1] == ["--workers"] else 0
    return measured | {"workers": workers, "samples": samples, "samples_per_s": samples / wall, "reads": what,
                       "bytes_written": written, "mb_per_s_written": written / wall / 1e6,
                       "bytes_read": read, "mb_per_s_read": read / wall / 1e6}  # fmt: skip


def run_n(n: int, sizes: Sizes, folder: Path, env: dict[str, str], result: dict, save: Callable[[], None]) -> None:
    """Every stage at N = n into a new corpus in ``folder``, measured into ``result``; ``save()`` after each stage."""
    corpus = folder / f"scale-{n}x{sizes.steps}.zarr"
    result.update(corpus=str(corpus), stages={})
    for stage in COMMANDS:
        measured = run_stage(stage, corpus, n, sizes, env, folder / f"report-{n}")
        result["stages"][stage] = measured
        if stage == "corpus":
            h_values = n * sizes.steps * H_VALUES
            result.update(h_bytes=disk_bytes(corpus / "h"), h_values=h_values)
            result["bytes_per_h_value"] = result["h_bytes"] / h_values
        result["corpus_bytes"] = disk_bytes(corpus)
        save()
        workers = ", ".join(f"{b / 2**20:.0f}" for b in measured["peak_rss_worker_bytes"]) or "none"
        log.info("N=%d %-10s %7.1f s %8.2f samples/s  write %6.2f MB/s  read %6.2f MB/s  peak RSS MiB %.0f, workers %s",
                 n, stage, measured["wall_s"], measured["samples_per_s"], measured["mb_per_s_written"],
                 measured["mb_per_s_read"], measured["peak_rss_driver_bytes"] / 2**20, workers)  # fmt: skip


def ratios(runs: dict[str, Any], ns: tuple[int, ...]) -> dict[str, Any]:
    """Time and peak-RSS ratios between the two largest N, bytes per h value of each, against the goals."""
    small, large = runs[str(ns[-2])]["stages"], runs[str(ns[-1])]["stages"]
    time_goal = GOALS["time_over_n_ratio"] * ns[-1] / ns[-2]
    times = {s: large[s]["wall_s"] / small[s]["wall_s"] for s in COMMANDS}
    rss = {s: large[s]["peak_rss_bytes"] / small[s]["peak_rss_bytes"] for s in COMMANDS}
    per_value = {n: run["bytes_per_h_value"] for n, run in runs.items()}
    return {"between": [ns[-2], ns[-1]], "time": times, "time_goal": time_goal, "peak_rss": rss,
            "time_met": {s: r <= time_goal for s, r in times.items()},
            "peak_rss_met": {s: abs(r - 1) <= GOALS["peak_rss_change"] for s, r in rss.items()},
            "bytes_per_h_value": per_value,
            "bytes_per_h_value_met": all(b <= GOALS["bytes_per_h_value"] for b in per_value.values())}  # fmt: skip


def unet_seconds_per_sample(steps: int, gpu_tflops: float, flops: int = CELEBAHQ_FLOPS_PER_FORWARD) -> float:
    """The GPU FLOP part: seconds one GPU takes for a ``steps``-step sample at ``gpu_tflops`` sustained."""
    return steps * flops / (gpu_tflops * 1e12)


def marginal_seconds(runs: dict[str, Any], ns: tuple[int, ...], stage: str) -> float:
    """Seconds per extra sample of a stage: its slope between the two largest N, where fixed costs (process and
    cluster start) drop out; its mean per sample at the largest N where noise makes that slope <= 0."""
    small, large = ns[-2:]
    wall = {n: runs[str(n)]["stages"][stage]["wall_s"] for n in (small, large)}
    slope = (wall[large] - wall[small]) / (large - small)
    return slope if slope > 0 else wall[large] / large


def extrapolate(measured_s: dict[str, float], sizes: Sizes, gpus: int, gpu_sample_s: float) -> dict[str, float]:
    """Hours of each stage for the paper's 50,000 x 50 on ``gpus`` GPUs, from seconds measured here.

    ``measured_s``: seconds on ``sizes.workers`` workers at ``sizes.steps`` steps, per sample for ``corpus``,
    ``annotate`` and ``pca`` (:func:`marginal_seconds`), per generation for ``evaluate``, per shard read for
    ``supervised``. ``gpu_sample_s``: GPU seconds per 50-step celebahq sample (:func:`unet_seconds_per_sample`, or
    measured). The assumptions are the module docstring's.
    """
    samples, more_steps, workers = PAPER["samples"], PAPER["steps"] / sizes.steps, sizes.workers
    overhead = measured_s["evaluate"] / measured_s["corpus"]  # an evaluated generation over a corpus sample
    shards = -(-samples // sizes.batch)
    shards_read = 2 * shards * (1 - (1 - 1 / shards) ** sizes.k)  # expected, k random rows per side
    seconds = {
        "corpus": samples * gpu_sample_s / gpus,
        "annotate": measured_s["annotate"] * samples * workers / gpus,
        "pca": measured_s["pca"] * samples * more_steps * workers / min(gpus, PAPER["steps"]),
        "supervised": measured_s["supervised"] * shards_read * more_steps,
        "evaluate": PAPER["evaluation_generations"] * gpu_sample_s * overhead / gpus,
    }
    return {stage: s / 3600 for stage, s in seconds.items()}


def extrapolation(runs: dict[str, Any], sizes: Sizes, gpus: list[int], gpu_sample_s: float) -> dict[str, Any]:
    """:func:`extrapolate` for each number of GPUs, the stage that bounds each, and the corpus's write rate."""
    large = runs[str(sizes.ns[-1])]
    evaluation = large["stages"]["evaluate"]
    measured = {s: marginal_seconds(runs, sizes.ns, s) for s in ("corpus", "annotate", "pca")}
    supervised, shards = large["stages"]["supervised"], -(-sizes.ns[-1] // sizes.batch)
    measured |= {"supervised": supervised["wall_s"] / (supervised["bytes_read"] / (large["h_bytes"] / shards))}
    measured |= {"evaluate": evaluation["wall_s"] / evaluation["samples"]}
    hours = {str(g): extrapolate(measured, sizes, g, gpu_sample_s) for g in gpus}
    corpus_bytes = PAPER["samples"] * PAPER["steps"] * H_VALUES * large["bytes_per_h_value"]
    write = {g: corpus_bytes / (h["corpus"] * 3600) / 1e6 for g, h in hours.items()}
    return {"from_n": list(sizes.ns[-2:]), "measured_seconds": measured, "gpu_seconds_per_sample": gpu_sample_s,
            "evaluation_overhead": measured["evaluate"] / measured["corpus"], "hours": hours,
            "bound_by": {g: max(COMMANDS, key=lambda s: h[s]) for g, h in hours.items()},
            "corpus_bytes": corpus_bytes, "corpus_write_mb_per_s_needed": write}  # fmt: skip


def print_summary(report: dict[str, Any]) -> None:
    """The ratios and the extrapolation table, on stderr."""
    r, e = report["ratios"], report["extrapolation"]
    say = lambda text="": print(text, file=sys.stderr)  # noqa: E731
    say(f"\nN = {r['between'][1]} over N = {r['between'][0]} (goal: time <= {r['time_goal']:.2f}x, RSS within 10%)")
    for stage in COMMANDS:
        say(f"  {stage:<11} time {r['time'][stage]:5.2f}x   peak RSS {r['peak_rss'][stage]:5.2f}x")
    values = ", ".join(f"N={n}: {b:.4f}" for n, b in r["bytes_per_h_value"].items())
    say(f"  bytes per stored h value (goal <= {GOALS['bytes_per_h_value']}): {values}")
    gpus = list(e["hours"])
    say(
        f"\nextrapolated to {PAPER['samples']:,} x {PAPER['steps']} steps, hours (from N = {e['from_n']}, "
        f"{e['gpu_seconds_per_sample']:.3f} GPU-s per celebahq sample; assumptions: bench/bench_scale.py docstring)"
    )
    say("  stage       " + "".join(f"{'G=' + g:>11}" for g in gpus))
    for stage in COMMANDS:
        say(f"  {stage:<11} " + "".join(f"{e['hours'][g][stage]:11.2f}" for g in gpus))
    say("  bound by    " + "".join(f"{e['bound_by'][g]:>11}" for g in gpus))
    needed = ", ".join(f"{e['corpus_write_mb_per_s_needed'][g]:.0f} MB/s (G={g})" for g in gpus)
    say(f"  corpus: {e['corpus_bytes'] / 1e9:.1f} GB of h, written at {needed}")
    if report["settings"]["steps"] != PAPER["steps"]:
        say(f"  measured at {report['settings']['steps']} steps, not {PAPER['steps']}: scaled by T")


def refusal(sizes: Sizes, folder: Path, keep: bool) -> str | None:
    """Why the corpora cannot go to ``folder`` (one of them exists, or too little space), or None. They need all
    at once if kept, else the largest (each is deleted once measured)."""
    existing = sorted(folder.glob("scale-*.zarr"))
    results = sizes.steps * (sizes.components + 4) * H_VALUES * 4  # PCA, directions
    each = [int(n * sizes.steps * H_VALUES * 2 * 1.05) + n * IMAGE_BYTES + results for n in sizes.ns]
    needed, free = (sum(each) if keep else max(each)) + 2**28, shutil.disk_usage(folder).free
    if existing:
        return f"{existing[0].name} exists"
    return f"the corpora need {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free" if needed > free else None


def pass_time(batch: int = 32, repeats: int = 5) -> dict[str, Any]:
    """Seconds of one forward pass of scale-probe at ``batch`` on this CPU (min and median of ``repeats``)."""
    import torch

    from hspace.models import load_model

    unet = load_model(PROBE).unet
    x, t = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    unet(x, t)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        unet(x, t)
        times.append(time.perf_counter() - start)
    return {"model": PROBE, "batch": batch, "seconds_min": min(times), "seconds_median": statistics.median(times),
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}  # fmt: skip


def measure(sizes: Sizes, args: argparse.Namespace, folder: Path, report: dict[str, Any], path: Path) -> None:
    """Run every N into ``report``, writing it to ``path`` after each stage; corpora go in ``folder``."""
    from flows.server import local_prefect_server

    start = time.perf_counter()

    def save() -> None:
        report["total_seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(report, indent=1) + "\n")

    with local_prefect_server() as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        for n in sizes.ns:
            run_n(n, sizes, folder, env, report["runs"].setdefault(str(n), {}), save)
            if args.out is None:
                shutil.rmtree(folder / f"scale-{n}x{sizes.steps}.zarr")
    report["ratios"] = ratios(report["runs"], sizes.ns)
    gpu_sample_s = args.gpu_sample_seconds or unet_seconds_per_sample(PAPER["steps"], args.gpu_tflops)
    report["extrapolation"] = extrapolation(report["runs"], sizes, args.gpus, gpu_sample_s)
    save()


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", help=f"sample counts, at least two (default {FULL.ns})")
    parser.add_argument("--steps", type=int, help=f"DDIM steps T (default {FULL.steps}, the paper's)")
    parser.add_argument("--workers", type=int, help=f"Dask worker processes (default {FULL.workers})")
    parser.add_argument("--out", type=Path, help="keep the corpora in this folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results", help="folder of the JSON")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64], help="G of the extrapolation")
    parser.add_argument("--gpu-tflops", type=float, default=300.0, help="assumed sustained TFLOP/s per GPU")
    parser.add_argument("--gpu-sample-seconds", type=float, help="measured GPU seconds per 50-step celebahq sample")
    parser.add_argument("--dry", action="store_true", help="N = 16 and 32, 3 steps, shards of 8: checks the script")
    parser.add_argument("--pass-time", action="store_true", help="only time one scale-probe pass at batch 32")
    args = parser.parse_args(argv)
    given: dict[str, Any] = {"ns": args.n and tuple(args.n), "steps": args.steps, "workers": args.workers}
    sizes = replace(DRY if args.dry else FULL, **{k: v for k, v in given.items() if v is not None})
    if len(sizes.ns) < 2 or min(sizes.ns) < 4 or min(sizes.steps, sizes.workers) < 1:
        parser.error("give at least two --n of 4 or more, --steps and --workers of 1 or more")
    return args, sizes


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.pass_time:
        print(json.dumps(pass_time()))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        refused = refusal(sizes, folder, keep=args.out is not None)
        if refused:
            print(f"bench_scale: {refused} in {folder}: free space, or give another --out, fewer --n or --steps",
                  file=sys.stderr)  # fmt: skip
            return 1
        if sizes.steps != PAPER["steps"]:
            log.info("%d steps, not the paper's %d: per-sample figures scale with T", sizes.steps, PAPER["steps"])
        started = datetime.now(UTC)
        report: dict[str, Any] = {
            "mode": "dry" if args.dry else "run", "started": started.isoformat(timespec="seconds"), "model": PROBE,
            "settings": asdict(sizes) | {"paper_steps": PAPER["steps"], "annotator": "testbed"},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
            "runs": {},
        }  # fmt: skip
        args.results.mkdir(parents=True, exist_ok=True)
        path = args.results / f"scale-{report['mode']}-{started:%Y%m%dT%H%M%SZ}.json"
        measure(sizes, args, folder, report, path)
    print_summary(report)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
