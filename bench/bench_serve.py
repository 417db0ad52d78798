"""``hspace serve``: POST /edit latency for one seed, one client at a time and with concurrent clients.

    python bench/bench_serve.py [--bank PATH] [--model testbed] [--steps 50] [--requests 100] [--clients 8]
                                [--gamma 2] [--threads N] [--dry] [--out FILE]

The app (``flows.serve.make_app``) runs in this process under uvicorn, on a free loopback port, with the model
and bank loaded once as ``hspace serve`` loads them. ``--bank``: a bank built for ``--model`` (its precision is
used); without it, a bank of random directions for ``--model`` with ``--steps`` T is published in a temporary
folder (random directions cost what real ones do). Every request edits one seed (seed i for request i) along
the bank's first direction by ``--gamma``, as a JSON POST over HTTP (urllib, a new connection each).

Two runs of ``--requests`` each: sequential (one client), then ``--clients`` threads sharing the requests. For
each: p50 and p95 latency, requests per second, and the model calls the worker made (concurrent edits with the
same gammas are batched into one ``hspace.edit`` call); then the ratios concurrent / sequential. ``--dry``: the
tiny model, T = 4, 10 requests, one torch thread unless ``--threads``: a check that everything runs, in
seconds; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn

import flows.serve
from flows.serve import Limits, make_app, publish_random_bank
from hspace.bank import Bank, load_bank
from hspace.editing import edit
from hspace.models import LoadedModel, load_model


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", help="a bank built for --model (default: random directions in a temp folder)")
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--steps", type=int, default=50, help="T of the random bank (the demo bank's is 50)")
    parser.add_argument("--requests", type=int, default=100, help="requests per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second run")
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dry", action="store_true", help="tiny model, T = 4, 10 requests: a quick check")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.dry:
        args.model, args.steps, args.requests = "tiny", 4, 10
        # On a busy 2-core machine two intra-op threads made the tiny model ~40x slower (tests/conftest.py).
        args.threads = args.threads or 1
    return args


def model_and_bank(args: argparse.Namespace, folder: Path) -> tuple[LoadedModel, Bank]:
    if args.bank is not None:
        bank = load_bank(args.bank)
        return load_model(args.model, precision=bank.precision), bank
    model = load_model(args.model)
    publish_random_bank(str(folder / "bank"), model, ("a", "b", "c"), steps=args.steps)
    return model, load_bank(str(folder / "bank"))


class CountedEdit:
    """``hspace.edit`` as the worker calls it, counting the calls and the seeds in each."""

    def __init__(self, edit: Callable[..., np.ndarray]) -> None:
        self.edit, self.batches = edit, []  # seeds per call

    def __call__(self, model: LoadedModel, seeds: list[int], gammas: dict[str, float], bank: Bank) -> np.ndarray:
        self.batches.append(len(seeds))
        return self.edit(model, seeds, gammas, bank)


def post_edit(address: str, seed: int, gammas: dict[str, float]) -> float:
    """Seconds from sending one edit to having read its whole PNG."""
    body = json.dumps({"seed": seed, "gammas": gammas}).encode()
    request = urllib.request.Request(address, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        png = answer.read()
    elapsed = time.perf_counter() - start
    if answer.status != 200 or not png.startswith(b"\x89PNG"):
        raise RuntimeError(f"POST /edit answered {answer.status} {png[:200]!r}")
    return elapsed


def run(address: str, seeds: range, gammas: dict[str, float], clients: int, counted: CountedEdit) -> dict[str, Any]:
    """Send one edit per seed from ``clients`` threads; latency percentiles, rate and the worker's calls."""
    counted.batches.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.array(list(pool.map(lambda seed: post_edit(address, seed, gammas), seeds)))
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(seeds),
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "requests_per_s": len(seeds) / wall,
        "model_calls": len(counted.batches),
        "largest_batch": max(counted.batches),
    }


def serving(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """``app`` under uvicorn on a thread, on a free loopback port; the server, its thread and /edit's URL."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{listening.getsockname()[1]}/edit"


def summary(report: dict[str, Any]) -> str:
    """The report in three lines: each run, then the ratios."""
    lines = []
    for name in ("sequential", "concurrent"):
        part = report[name]
        lines.append(
            f"{name:>10} ({part['clients']} clients): p50 {part['p50_s'] * 1e3:.1f} ms, "
            f"p95 {part['p95_s'] * 1e3:.1f} ms, {part['requests_per_s']:.2f} requests/s, "
            f"{part['model_calls']} model calls (largest batch {part['largest_batch']})"
        )
    lines.append(
        f"concurrent / sequential: p50 {report['p50_ratio']:.2f}x, p95 {report['p95_ratio']:.2f}x, "
        f"throughput {report['throughput_ratio']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model, bank = model_and_bank(args, Path(folder))
        counted = flows.serve.edit = CountedEdit(edit)  # the worker's edit, counted
        app = make_app(model, bank, Limits(queue=max(16, args.clients), batch=args.clients))
        server, thread, address = serving(app)
        gammas = {bank.names[0]: args.gamma}
        try:
            post_edit(address, 0, gammas)  # warm-up: the first pass allocates
            sequential = run(address, range(args.requests), gammas, 1, counted)
            concurrent = run(address, range(args.requests, 2 * args.requests), gammas, args.clients, counted)
        finally:
            server.should_exit = True
            thread.join()
            flows.serve.edit = edit
    report = {
        "model": args.model,
        "bank": args.bank or f"random directions, T = {args.steps}",
        "steps": bank.steps,
        "torch_threads": torch.get_num_threads(),
        "sequential": sequential,
        "concurrent": concurrent,
        "p50_ratio": concurrent["p50_s"] / sequential["p50_s"],
        "p95_ratio": concurrent["p95_s"] / sequential["p95_s"],
        "throughput_ratio": concurrent["requests_per_s"] / sequential["requests_per_s"],
    }
    print(summary(report), file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
