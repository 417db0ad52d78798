"""``hspace directions supervised|disentangle|list|invert``: make and list named directions.

Every command checks its arguments and opens its inputs before a Prefect flow starts, so bad input fails
in seconds with one line (exit 1) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from flows.cli_args import (
    add_conditioning_arguments,
    add_precision_argument,
    add_runner_arguments,
    conditioning_arguments,
    ints,
    names,
    print_info,
    runner_choice,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``directions`` and its sub-commands to the ``hspace`` commands."""
    directions = commands.add_parser("directions", help="make and list named directions").add_subparsers(
        dest="directions_command", required=True
    )
    _add_corpus_command(
        directions,
        "supervised",
        "eq. 11: top-k vs bottom-k samples by an annotation, or explicit sample ids",
        _supervised_arguments,
        _supervised,
    )
    _add_corpus_command(
        directions,
        "disentangle",
        "eq. 12: remove from a direction its projection on others",
        _disentangle_arguments,
        _disentangle,
    )

    listing = directions.add_parser("list", help="the directions stored in a corpus")
    listing.add_argument("url", help="the corpus")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    listing.set_defaults(func=_list)

    invert = directions.add_parser(
        "invert", help="DDIM-invert real images (SM -F): their x_T and h, or eq. 11 on positive vs negative folders"
    )
    invert.add_argument("--model", required=True, help="built-in name, model directory or hub id")
    invert.add_argument("--steps", type=int, required=True, help="DDIM steps T (those the direction is used with)")
    invert.add_argument("--images", help="a folder of PNG/JPEG images: write their x_T and h_{T:1} to --out")
    invert.add_argument("--positives", help="a folder of positive examples (with --negatives: a direction)")
    invert.add_argument("--negatives", help="a folder of negative examples")
    invert.add_argument("--out", help="a .safetensors file to write")
    invert.add_argument("--corpus", help="also store the direction in this corpus (same model and steps)")
    invert.add_argument("--name", help="the direction's name (default: the --out file's stem)")
    invert.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(invert)
    add_conditioning_arguments(invert, default="the corpus's with --corpus, else the empty prompt at 7.5")
    invert.add_argument(
        "--batch",
        type=int,
        help="images per U-Net pass (default: 1 on the CPU, where an image is then bitwise the same in any batch; "
        "16 elsewhere); the passes decide the bits",
    )
    invert.add_argument(
        "--block", type=int, default=16, help="images per task, in whole passes (any block gives the same result)"
    )
    add_runner_arguments(invert, "the inversion's blocks")
    invert.add_argument("--overwrite", action="store_true", help="replace a corpus direction of that name")
    invert.add_argument("--json", action="store_true", help="print one JSON object")
    invert.set_defaults(func=_invert)


def _add_corpus_command(
    directions: argparse._SubParsersAction,
    command: str,
    help_text: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    func: Callable[[argparse.Namespace], None],
) -> None:
    """Add a command that stores ``directions/<name>``: url, --name, its own options, --overwrite, --json."""
    parser = directions.add_parser(command, help=help_text)
    parser.add_argument("url", help="the corpus")
    parser.add_argument("--name", required=True, help="stored as directions/<name>")
    add_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace a direction of that name made another way")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=func)


def _supervised_arguments(supervised: argparse.ArgumentParser) -> None:
    """The options of ``directions supervised``: which examples eq. 11 takes, and in which space."""
    supervised.add_argument("--attribute", help="rank samples by this annotation")
    supervised.add_argument("--annotator", help="whose annotation (needed when several have the attribute)")
    supervised.add_argument("--k", type=int, default=100, help="top-k positives and bottom-k negatives (default 100)")
    supervised.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="a binary attribute (e.g. a probability, 0.5): k drawn at random from each side "
        "of it instead of the k most extreme scores, which follow what the classifier "
        "correlates with (all of the smaller side when it has fewer than k)",
    )
    supervised.add_argument("--space", choices=("h", "xT"), default="h", help="eq. 11 in h_{T:1} (default) or x_T")
    supervised.add_argument("--positives", type=ints, help="explicit positive sample ids, e.g. 1,2,3")
    supervised.add_argument("--negatives", type=ints, help="explicit negative sample ids, e.g. 4,5,6")


def _disentangle_arguments(disentangle: argparse.ArgumentParser) -> None:
    """The options of ``directions disentangle``: the direction eq. 12 starts from and those it leaves alone."""
    disentangle.add_argument("--from", dest="source", required=True, help="the direction to disentangle")
    disentangle.add_argument("--against", type=names, required=True, help="directions to leave alone, e.g. B,C")
    disentangle.add_argument(
        "--keep-norm",
        action="store_true",
        help="rescale the result to the norm of --from, so one gamma edits as far along both "
        "(InterFaceGAN's convention; default: eq. 12 as written, which shortens it)",
    )


def _supervised(args: argparse.Namespace) -> None:
    from flows.directions import supervised
    from flows.runner import run_flow

    arguments = dict(
        name=args.name,
        attribute=args.attribute,
        annotator=args.annotator,
        k=args.k,
        threshold=args.threshold,
        positives=args.positives,
        negatives=args.negatives,
        space=args.space,
        overwrite=args.overwrite,
    )
    print_info(run_flow(supervised, args.url, **arguments), args.json)


def _disentangle(args: argparse.Namespace) -> None:
    from flows.directions import disentangled
    from flows.runner import run_flow

    result = run_flow(
        disentangled, args.url, args.name, args.source, args.against, keep_norm=args.keep_norm, overwrite=args.overwrite
    )
    print_info(result, args.json)


def _list(args: argparse.Namespace) -> None:
    from flows.directions import directions_of

    found = directions_of(args.url)
    if args.json:
        print(json.dumps(found))
        return
    if not found:
        print(f"no directions in {args.url}")
    for d in found:
        what = {
            k: v
            for k, v in d["parameters"].items()
            if k not in ("positives", "negatives", "annotator_config", "positive_files", "negative_files")
        }
        state = "" if d["complete"] else "  (INCOMPLETE: rerun the command that made it)"
        print(
            f"{d['name']:<24} {d['method']:<14} {d['space']:<3} {'x'.join(map(str, d['shape'])):<16} "
            f"{json.dumps(what)}{state}"
        )


def _invert(args: argparse.Namespace) -> None:
    from flows.inversion import invert_images
    from flows.runner import run_flow

    arguments = dict(
        model=args.model,
        steps=args.steps,
        images=args.images,
        positives=args.positives,
        negatives=args.negatives,
        out=args.out,
        corpus=args.corpus,
        name=args.name,
        device=args.device,
        overwrite=args.overwrite,
        precision=args.precision,
        batch=args.batch,
        block=args.block,
        **conditioning_arguments(args),
        progress=not args.no_progress,
    )
    print_info(run_flow(invert_images, runner=runner_choice(args), **arguments), args.json)
