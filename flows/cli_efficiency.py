"""``hspace efficiency``: Fig. 8a, how many examples eq. 11 needs in h_{T:1} vs in x_T."""

from __future__ import annotations

import argparse
import json
import sys

from flows.cli_args import add_precision_argument, check_positive, ints, progress_printer


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``efficiency`` to the ``hspace`` commands."""
    efficiency = commands.add_parser(
        "efficiency",
        help="Fig. 8a: how many examples eq. 11 needs in h_{T:1} vs in x_T; writes efficiency.md, "
        ".json and a line plot",
    )
    efficiency.add_argument("--model", default="testbed")
    efficiency.add_argument("--annotator", default="testbed")
    efficiency.add_argument("--attribute", required=True, help="the attribute that ranks the pool's samples")
    efficiency.add_argument(
        "--counts",
        type=ints,
        default=[2, 5, 10, 25, 50, 100],
        help="numbers of examples n (top n vs bottom n), e.g. 2,5,10,25,50,100",
    )
    efficiency.add_argument("--pool", type=int, default=512, help="annotated samples to draw examples from")
    efficiency.add_argument("--eval-samples", type=int, default=64, help="fresh samples every direction edits")
    efficiency.add_argument("--gamma-h", type=float, default=1.0)
    efficiency.add_argument("--gamma-x", type=float, default=1.0)
    efficiency.add_argument("--steps", type=int, default=50, help="DDIM steps T")
    efficiency.add_argument("--eta", type=float, default=0.0, help="0 (DDIM), as the paper's Fig. 8a")
    efficiency.add_argument(
        "--raw",
        action="store_true",
        help="apply eq. 11 as it comes (its norm shrinks with n) instead of rescaling every "
        "direction to the norm of the largest n's",
    )
    efficiency.add_argument("--seed", type=int, default=0)
    efficiency.add_argument("--device", default="cpu")
    add_precision_argument(efficiency)
    efficiency.add_argument("--out", default="hspace-efficiency", help="folder for efficiency.md/.json/.png")
    efficiency.add_argument("--json", action="store_true", help="print the curve as one JSON object")
    efficiency.set_defaults(func=_efficiency)


def _efficiency(args: argparse.Namespace) -> None:
    from pathlib import Path

    from hspace.annotators import load_annotator
    from hspace.efficiency import sample_efficiency
    from hspace.errors import HSpaceError
    from hspace.models import load_model
    from hspace.render import write_files

    check_positive(args, "pool", "eval_samples", "steps")
    if not 0.0 <= args.eta <= 1.0:
        raise HSpaceError(f"--eta must lie in [0, 1]; got {args.eta}")
    annotator = load_annotator(args.annotator)
    if args.attribute not in annotator.attributes:
        raise HSpaceError(
            f"annotator {annotator.name!r} has no attribute {args.attribute!r}; it scores "
            f"{', '.join(annotator.attributes)}"
        )
    model = load_model(args.model, device=args.device, precision=args.precision)
    # An annotator that says whether an image is a face (the testbed's): factor scores of non-faces mean nothing.
    keep = (lambda scores: scores["face"] > 0.5) if "face" in annotator.attributes else None
    curve = sample_efficiency(
        model,
        annotator,
        attribute=args.attribute,
        gamma_h=args.gamma_h,
        gamma_x=args.gamma_x,
        steps=args.steps,
        example_counts=args.counts,
        pool_samples=args.pool,
        eval_samples=args.eval_samples,
        eta=args.eta,
        seed=args.seed,
        normalize=not args.raw,
        keep=keep,
        progress=progress_printer("efficiency"),
    )
    paths = write_files(
        Path(args.out),
        {
            "efficiency.png": lambda p: curve.plot().save(p, format="PNG"),
            "efficiency.md": lambda p: p.write_text(curve.to_markdown()),
            "efficiency.json": lambda p: p.write_text(json.dumps(curve.to_dict(), indent=1) + "\n"),
        },
    )
    if args.json:
        print(json.dumps({"files": [str(p) for p in paths], **curve.to_dict()}))
    else:
        print(curve.to_markdown())
        print(f"written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
