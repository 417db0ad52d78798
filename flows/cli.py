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

from flows.cli_args import floats

# Before Prefect is imported: no telemetry, and only warnings from Prefect's own loggers on the terminal.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

DEFAULT_MODEL = "testbed"
DEMO_ATTRIBUTES = ("yaw", "smile", "eyes_open", "glasses", "hat")
DEMO_GAMMA = 1.0

# Command groups that live in modules of their own (one per area, so that each area's parsing and printing
# sits next to the flows it calls). Each module has ``add_commands(commands)``, which adds its sub-parsers
# to the top-level ``commands`` and gives each a ``run`` default: ``run(args) -> int | None``.
COMMAND_MODULES: tuple[str, ...] = ("flows.cli_bank", "flows.cli_directions", "flows.cli_rebuild", "flows.cli_annotate")


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
    train.add_argument("--steps", type=int, default=9000)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warm-up, then cosine to 10%%)")
    train.add_argument("--init-from", default=None, metavar="MODEL",
                       help="start from this model folder's weights (or the shipped testbed) with a new optimizer, "
                            "to train on when a run's checkpoint is gone; the card records it")
    train.add_argument("--checkpoints", default=".train/testbed-ckpt", help="resumable checkpoint folder")
    train.add_argument("--out", default=None, help="model folder to write (default: the shipped testbed model)")
    train.add_argument("--no-progress", action="store_true")
    report = testbed_commands.add_parser(
        "report", help="measure what h controls in a model of the testbed faces: sample quality, supervised "
                       "directions vs random, h swap (Fig. 2a), per-step R^2; writes report.json/.md and pictures")
    report.add_argument("--model", default="testbed")
    report.add_argument("--out", default="hspace-testbed-report", help="folder for report.json, report.md, *.png")
    report.add_argument("--samples", type=int, default=512, help="annotated samples with h (corpus)")
    report.add_argument("--eval-samples", type=int, default=64, help="fresh samples each direction edits")
    report.add_argument("--k", type=int, default=None, help="top-k / bottom-k for eq. 11 (default samples / 4)")
    report.add_argument("--gammas", type=floats, default=[0.5, 1.0, 2.0], help="edit strengths, e.g. 0.5,1,2")
    report.add_argument("--steps", type=int, default=50)
    report.add_argument("--swap-pairs", type=int, default=64)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--json", action="store_true", help="print the figures as one JSON object")

    demo = commands.add_parser("demo", help="the main job on the embedded default: corpus, then a picture grid")
    demo.add_argument("--out", default="hspace-demo", help="folder for the corpus and pictures")
    demo.add_argument("--model", default=DEFAULT_MODEL)
    demo.add_argument("--samples", type=int, default=256)
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--gamma", type=float, default=DEMO_GAMMA, help="edit strength of the evaluation and pictures")
    demo.add_argument("--eval-samples", type=int, default=16, help="fresh samples per evaluation repeat")

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
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
    """corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> bank, then pictures of edits."""
    import torch

    from flows.bank import run_rebuild_bank
    from hspace.bank import load_bank
    from hspace.sampler import sample, to_uint8
    from hspace.models import load_model
    from hspace.render import labeled_grid, save_grid
    from storage.corpus import Corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    url, bank_url = str(out / "corpus.zarr"), str(out / "bank")
    result = run_rebuild_bank(
        bank=bank_url, corpus=url, model=args.model, samples=args.samples, steps=args.steps, eta=1.0,
        batch=args.batch, seed=args.seed, annotator="testbed", attributes=list(DEMO_ATTRIBUTES), k=args.samples // 4,
        pca_components=4, pca_directions=2, gamma=args.gamma, eval_samples=args.eval_samples, repeats=2,
        report=str(out), progress=True)
    corpus = Corpus.open(url)
    save_grid(corpus.read_x0(slice(0, 64)), out / "samples.png")
    # Fig. 3's layout: one row per bank direction, per seed the columns -2g, -g, 0, g, 2g.
    bank, model = load_bank(bank_url), load_model(args.model)
    gammas = [-2 * args.gamma, -args.gamma, 0.0, args.gamma, 2 * args.gamma]
    seeds = [int(s) for s in corpus.read_seeds(slice(0, 3))]
    bank.check_model(model)
    deltas = torch.stack([g * bank.tensor(name) for name in bank.names for _ in seeds for g in gammas])
    images = sample(model, [s for _ in bank.names for s in seeds for _ in gammas], steps=bank.steps, eta=1.0,
                    delta=deltas, capture=False, microbatch=len(deltas)).images
    rows = to_uint8(images).numpy().reshape(len(bank.names), len(seeds) * len(gammas), *images.shape[1:])
    labeled_grid(rows, list(bank.names), [f"{g:+g}" for _ in seeds for g in gammas],
                 column_groups=[f"seed {i}" for i in range(len(seeds)) for _ in gammas]).save(out / "edits.png")
    _print_info(corpus.info(), as_json=False)
    print(f"bank {bank_url}: version {result['version']} with {', '.join(result['directions'])}")
    for name in ("samples.png", "edits.png", "evaluation.png", "evaluation.md"):
        print(f"{name}: {out / name}")


def _testbed_report(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hspace.annotators import load_annotator
    from hspace.errors import HSpaceError
    from hspace.models import load_model
    from hspace.render import heatmap, image_grid, write_files
    from hspace.testbed.evaluate import edit_grid, report, to_markdown

    for name in ("samples", "eval_samples", "steps", "swap_pairs"):
        if getattr(args, name) <= 0:
            raise HSpaceError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, annotator = load_model(args.model), load_annotator("testbed")
    result = report(model, annotator, samples=args.samples, eval_samples=args.eval_samples, k=args.k,
                    steps=args.steps, gammas=args.gammas, seed=args.seed, swap_pairs=args.swap_pairs,
                    progress=lambda message: print(f"[testbed report] {message}", file=sys.stderr, flush=True))
    figures, corpus = result["figures"], result["corpus"]
    print("[testbed report] pictures", file=sys.stderr, flush=True)
    # Pictures first, the figures last: a report.json on disk means the whole report was written.
    span = max(abs(g) for g in args.gammas)
    gammas = [-2 * span, -span, 0.0, span, 2 * span]
    seeds = corpus.seeds[:3]
    pictures = {
        "samples.png": image_grid(corpus.images[:64], columns=8),
        "edits.png": image_grid(edit_grid(model, seeds, result["directions"], gammas, steps=args.steps),
                                columns=len(seeds) * len(gammas)),
        # Triples (noise donor, h donor, result), four per row (Fig. 2a).
        "swap.png": image_grid(_swap_triples(corpus.images, result["swapped"], pairs=min(16, args.swap_pairs)),
                               columns=12),
        "r2.png": heatmap(torch.tensor(list(figures["per_step_r2"]["r2"].values())).numpy(),
                          list(figures["per_step_r2"]["r2"]), title="held-out R^2 of h_t -> factor, step 1..T"),
    }
    write_files(out, {
        **{name: lambda path, picture=picture: picture.save(path, format="PNG") for name, picture in pictures.items()},
        "report.md": lambda path: path.write_text(to_markdown(figures)),
        "report.json": lambda path: path.write_text(json.dumps(figures, indent=2) + "\n"),
    })
    return figures


def _swap_triples(images: Any, swapped: Any, *, pairs: int) -> Any:
    """(noise donor, h donor, result) for the first ``pairs`` h-swap pairs, flattened for a grid."""
    import numpy as np

    total = len(swapped)
    return np.stack([image for i in range(pairs) for image in (images[i], images[total + i], swapped[i])])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hspace.errors import HSpaceError

    try:
        if getattr(args, "run", None) is not None:
            return int(args.run(args) or 0)
        if args.command == "corpus" and args.corpus_command == "build":
            _print_info(_build(args), as_json=False)
        elif args.command == "corpus" and args.corpus_command == "info":
            from storage.corpus import Corpus

            _print_info(Corpus.open(args.url).info(), as_json=args.json)
        elif args.command == "testbed" and args.testbed_command == "train":
            from flows.testbed import train_testbed
            from hspace.models import SHIPPED

            sha = train_testbed(steps=args.steps, seed=args.seed, batch=args.batch, lr=args.lr,
                                init_from=args.init_from, checkpoints=args.checkpoints,
                                out=args.out or str(SHIPPED["testbed"]), progress=not args.no_progress)
            print(f"testbed model written to {args.out or SHIPPED['testbed']} (sha256 {sha})")
        elif args.command == "testbed" and args.testbed_command == "report":
            figures = _testbed_report(args)
            if args.json:
                print(json.dumps(figures))
            else:
                print(f"testbed report written to {args.out}/report.md (face rate "
                      f"{figures['quality']['face_rate']:.3f}; factors passing: "
                      f"{[f for f, r in figures['supervised']['factors'].items() if r['passes_at_gamma'] is not None]})")
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
