"""``hspace testbed train|report``: the project's own model of procedural faces, and what h controls in it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flows.cli_args import check_positive, floats, progress_printer


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``testbed train`` and ``testbed report`` to the ``hspace`` commands."""
    testbed = commands.add_parser("testbed", help="the project's own trained model of procedural faces")
    sub = testbed.add_subparsers(dest="testbed_command", required=True)
    train = sub.add_parser("train", help="train (or resume) the testbed model and export it")
    train.add_argument("--steps", type=int, default=9000, help="optimizer steps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (warm-up, then cosine to 10%%)")
    train.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL",
        help="start from this model folder's weights (or the shipped testbed) with a new optimizer, "
        "to train on when a run's checkpoint is gone; the card records it",
    )
    train.add_argument("--checkpoints", default=".train/testbed-ckpt", help="resumable checkpoint folder")
    train.add_argument("--out", default=None, help="model folder to write (default: the shipped testbed model)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_train)

    report = sub.add_parser(
        "report",
        help="measure what h controls in a model of the testbed faces: sample quality, supervised "
        "directions vs random, h swap (Fig. 2a), per-step R^2; writes report.json/.md and pictures",
    )
    report.add_argument("--model", default="testbed")
    report.add_argument("--out", default="hspace-testbed-report", help="folder for report.json, report.md, *.png")
    report.add_argument("--samples", type=int, default=512, help="annotated samples with h (corpus)")
    report.add_argument("--eval-samples", type=int, default=64, help="fresh samples each direction edits")
    report.add_argument("--k", type=int, default=None, help="top-k / bottom-k for eq. 11 (default samples / 4)")
    report.add_argument("--gammas", type=floats, default=[0.5, 1.0, 2.0], help="edit strengths, e.g. 0.5,1,2")
    report.add_argument("--steps", type=int, default=50, help="DDIM steps T")
    report.add_argument("--swap-pairs", type=int, default=64)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    report.set_defaults(func=_report)


def _train(args: argparse.Namespace) -> None:
    from flows.testbed import train_testbed
    from hspace.models import SHIPPED

    out = args.out or str(SHIPPED["testbed"])
    sha = train_testbed(
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        lr=args.lr,
        init_from=args.init_from,
        checkpoints=args.checkpoints,
        out=out,
        progress=not args.no_progress,
    )
    print(f"testbed model written to {out} (sha256 {sha})")


def _report(args: argparse.Namespace) -> None:
    figures = _write_report(args)
    if args.json:
        print(json.dumps(figures))
    else:
        passing = [f for f, r in figures["supervised"]["factors"].items() if r["passes_at_gamma"] is not None]
        print(
            f"testbed report written to {args.out}/report.md (face rate {figures['quality']['face_rate']:.3f}; "
            f"factors passing: {passing})"
        )


def _write_report(args: argparse.Namespace) -> dict[str, Any]:
    from hspace.annotators import load_annotator
    from hspace.files import write_whole_files
    from hspace.models import load_model
    from hspace.render import png_bytes
    from hspace.testbed.evaluate import report, to_markdown

    check_positive(args, "samples", "eval_samples", "steps", "swap_pairs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, annotator = load_model(args.model), load_annotator("testbed")
    say = progress_printer("testbed report")
    result = report(
        model,
        annotator,
        samples=args.samples,
        eval_samples=args.eval_samples,
        k=args.k,
        steps=args.steps,
        gammas=args.gammas,
        seed=args.seed,
        swap_pairs=args.swap_pairs,
        progress=say,
    )
    figures = result["figures"]
    say("pictures")
    # Pictures first, the figures last: a report.json on disk means the whole report was written.
    pictures = _report_pictures(model, result, args)
    write_whole_files(
        str(out),
        {
            **{name: png_bytes(picture) for name, picture in pictures.items()},
            "report.md": to_markdown(figures).encode(),
            "report.json": (json.dumps(figures, indent=2) + "\n").encode(),
        },
    )
    return figures


def _report_pictures(model: Any, result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The report's pictures by file name: samples, edits along each direction, h swaps, per-step R^2."""
    import torch

    from hspace.editing import edit_grid
    from hspace.render import heatmap, image_grid

    figures, corpus = result["figures"], result["corpus"]
    span = max(abs(g) for g in args.gammas)
    gammas = [-2 * span, -span, 0.0, span, 2 * span]
    seeds = corpus.seeds[:3]
    edits = edit_grid(
        model,
        seeds,
        result["directions"],
        gammas,
        steps=args.steps,
        microbatch=len(result["directions"]) * len(seeds) * len(gammas),
    )
    return {
        "samples.png": image_grid(corpus.images[:64], columns=8),
        "edits.png": image_grid(edits.reshape(-1, *edits.shape[2:]), columns=edits.shape[1]),
        # Triples (noise donor, h donor, result), four per row (Fig. 2a).
        "swap.png": image_grid(
            _swap_triples(corpus.images, result["swapped"], pairs=min(16, args.swap_pairs)), columns=12
        ),
        "r2.png": heatmap(
            torch.tensor(list(figures["per_step_r2"]["r2"].values())).numpy(),
            list(figures["per_step_r2"]["r2"]),
            title="held-out R^2 of h_t -> factor, step 1..T",
        ),
    }


def _swap_triples(images: Any, swapped: Any, *, pairs: int) -> Any:
    """(noise donor, h donor, result) for the first ``pairs`` h-swap pairs, flattened for a grid."""
    import numpy as np

    total = len(swapped)
    return np.stack([image for i in range(pairs) for image in (images[i], images[total + i], swapped[i])])
