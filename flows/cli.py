"""The ``hspace`` command.

Exit status 0 on success; on failure a one-line reason on stderr and status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# Before Prefect is imported: no telemetry, and only warnings from Prefect's own loggers on the terminal.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

DEFAULT_MODEL = "tiny"


def _eta(text: str) -> float | list[float]:
    """``1.0`` for every step, or one value per step: ``0,0.5,1``."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"eta must be a number or comma-separated numbers; got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hspace", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)

    corpus = commands.add_parser("corpus", help="build and inspect h-space corpora")
    corpus_commands = corpus.add_subparsers(dest="corpus_command", required=True)
    build = corpus_commands.add_parser("build", help="generate samples and record h_{T:1} into a Zarr corpus")
    _add_build_arguments(build, model_default=None)
    info = corpus_commands.add_parser("info", help="settings and progress of a corpus")
    info.add_argument("url")
    info.add_argument("--json", action="store_true", help="print one JSON object")

    testbed = commands.add_parser("testbed", help="the project's own trained model of procedural faces")
    testbed_commands = testbed.add_subparsers(dest="testbed_command", required=True)
    train = testbed_commands.add_parser("train", help="train (or resume) the testbed model and export it")
    train.add_argument("--steps", type=int, default=8000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--checkpoints", default=".train/testbed-ckpt", help="resumable checkpoint folder")
    train.add_argument("--out", default=None, help="model folder to write (default: the shipped testbed model)")
    train.add_argument("--no-progress", action="store_true")

    demo = commands.add_parser("demo", help="the main job on the embedded default: corpus, then a picture grid")
    demo.add_argument("--out", default="hspace-demo", help="folder for the corpus and pictures")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("--samples", type=int, default=256)
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    return parser


def _add_build_arguments(parser: argparse.ArgumentParser, *, model_default: str | None) -> None:
    parser.add_argument("--model", required=model_default is None, default=model_default,
                        help="built-in name (tiny, celebahq-shape), model directory or hub id")
    parser.add_argument("--samples", type=int, required=True, help="number of samples N")
    parser.add_argument("--steps", type=int, required=True, help="DDIM steps T")
    parser.add_argument("--eta", type=_eta, default=1.0, help="eta in [0, 1], or one per step (default 1)")
    parser.add_argument("--batch", type=int, required=True,
                        help="samples per shard and per task; the last shard is short if it does not divide N")
    parser.add_argument("--seed", type=int, required=True, help="base seed; sample i's seed derives from it")
    parser.add_argument("--out", required=True, help="corpus location: a path or an fsspec URL")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype of h")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run a local Dask cluster of N worker processes")
    where.add_argument("--dask-address", help="use an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--threads", type=int, default=1, help="threads of the default (in-process) runner")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build(args: argparse.Namespace) -> dict[str, Any]:
    from flows.corpus import run_build_corpus

    return run_build_corpus(
        workers=args.workers, dask_address=args.dask_address, threads=args.threads,
        model=args.model, samples=args.samples, steps=args.steps, out=args.out, eta=args.eta, batch=args.batch,
        seed=args.seed, dtype=args.dtype, device=args.device, progress=not args.no_progress,
    )


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key == "timesteps" and len(value) > 12:
            value = f"{value[:6]} ... {value[-3:]}"
        print(f"{key:<{width}}  {value}")


def _demo(args: argparse.Namespace) -> None:
    from flows.corpus import run_build_corpus
    from hspace.render import save_grid
    from storage.corpus import Corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url = str(out / "corpus.zarr")
    run_build_corpus(model=args.model, samples=args.samples, steps=args.steps, out=url, eta=1.0, batch=args.batch,
                     seed=args.seed, dtype="float16", device="cpu")
    corpus = Corpus.open(url)
    grid = save_grid(corpus.read_x0(slice(0, 64)), out / "samples.png")
    _print_info(corpus.info(), as_json=False)
    print(f"samples grid: {grid}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hspace.errors import HSpaceError

    try:
        if args.command == "corpus" and args.corpus_command == "build":
            _print_info(_build(args), as_json=False)
        elif args.command == "corpus" and args.corpus_command == "info":
            from storage.corpus import Corpus

            _print_info(Corpus.open(args.url).info(), as_json=args.json)
        elif args.command == "testbed" and args.testbed_command == "train":
            from flows.testbed import train_testbed
            from hspace.models import SHIPPED

            sha = train_testbed(steps=args.steps, seed=args.seed, batch=args.batch, checkpoints=args.checkpoints,
                                out=args.out or str(SHIPPED["testbed"]), progress=not args.no_progress)
            print(f"testbed model written to {args.out or SHIPPED['testbed']} (sha256 {sha})")
        elif args.command == "demo":
            _demo(args)
    except HSpaceError as error:
        print(f"hspace: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hspace: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
