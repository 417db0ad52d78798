"""``hspace efficiency``: Fig. 8a, how many examples eq. 11 needs in h_{T:1} vs in x_T."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.cli_args import add_precision_argument, add_runner_arguments, ints, runner_choice


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
    efficiency.add_argument(
        "--all-examples",
        action="store_true",
        help="let every pool sample be an example (by default, with an annotator that scores `face`, only the "
        "samples it takes for faces: their factor scores are the only ones that mean something)",
    )
    efficiency.add_argument("--seed", type=int, default=0)
    efficiency.add_argument("--device", default="cpu")
    add_precision_argument(efficiency)
    efficiency.add_argument(
        "--batch", type=int, default=16, help="samples per U-Net pass, each with all its edits (decides the bits)"
    )
    efficiency.add_argument(
        "--block", type=int, default=64, help="samples per task, in whole passes (any block gives the same curve)"
    )
    add_runner_arguments(efficiency, "the pool's and the edits' blocks")
    efficiency.add_argument(
        "--out",
        default="hspace-efficiency",
        help="folder for efficiency.md/.json/.png and the run's parts (parts.zarr: a rerun resumes them)",
    )
    efficiency.add_argument("--json", action="store_true", help="print the curve as one JSON object")
    efficiency.set_defaults(func=_efficiency)


def _efficiency(args: argparse.Namespace) -> None:
    from flows.efficiency import sample_efficiency
    from flows.runner import run_flow
    from tasks.annotate import cached_annotator
    from tasks.efficiency import EfficiencySpec

    spec = EfficiencySpec(
        out=args.out,
        attribute=args.attribute,
        counts=tuple(args.counts),
        model=args.model,
        annotator=args.annotator,
        pool_samples=args.pool,
        eval_samples=args.eval_samples,
        gamma_h=args.gamma_h,
        gamma_x=args.gamma_x,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        normalize=not args.raw,
        # An annotator that says whether an image is a face (the testbed's): factor scores of non-faces mean nothing.
        keep_above=None
        if args.all_examples or "face" not in cached_annotator(args.annotator).attributes
        else ("face", 0.5),
        precision=args.precision,
        device=args.device,
        batch=args.batch,
        block=args.block,
    )
    curve = run_flow(sample_efficiency, spec, runner=runner_choice(args), progress=not args.no_progress)
    files = [str(Path(args.out) / name) for name in ("efficiency.png", "efficiency.md", "efficiency.json")]
    if args.json:
        print(json.dumps({"files": files, **curve.to_dict()}))
    else:
        print(curve.to_markdown())
        print(f"written: {', '.join(files)}", file=sys.stderr)
