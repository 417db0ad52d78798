"""``hspace evaluate``: Table I for directions of a corpus, against norm-matched random directions."""

from __future__ import annotations

import argparse
import json
import sys

from flows.cli_args import (
    add_conditioning_arguments,
    add_evaluation_arguments,
    add_precision_argument,
    add_runner_arguments,
    conditioning_arguments,
    names,
    runner_choice,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``hspace`` commands."""
    evaluate = commands.add_parser(
        "evaluate",
        help="Table I: edit fresh samples along directions of a corpus, re-score every attribute, "
        "against norm-matched random directions; writes CSV, markdown and a heatmap",
    )
    evaluate.add_argument("url", help="the corpus")
    evaluate.add_argument(
        "--directions",
        type=names,
        required=True,
        help="comma-separated names: directions of the corpus (`hspace directions list`) and/or "
        "pca-<j> for PCA component j of --pca-run",
    )
    evaluate.add_argument("--pca-run", default=None, help="PCA run for pca-<j> names")
    evaluate.add_argument("--annotator", default="testbed")
    evaluate.add_argument("--gamma", type=float, default=1.0)
    evaluate.add_argument("--samples", type=int, default=100, help="fresh samples per repeat (paper: 100)")
    evaluate.add_argument("--repeats", type=int, default=10, help="repeats with other samples (paper: 10)")
    evaluate.add_argument("--seed", type=int, default=1)
    add_evaluation_arguments(evaluate)
    evaluate.add_argument("--device", default="cpu")
    add_conditioning_arguments(evaluate, edit_branch=True, default="the corpus's")
    add_runner_arguments(evaluate, "the evaluation's blocks")
    add_precision_argument(evaluate, default=None, note="(default: the corpus's; part of the stored result's key)")
    evaluate.add_argument(
        "--report", default="hspace-evaluation", help="folder for evaluation.csv/.md/.png (as rebuild-bank's --report)"
    )
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> None:

    from flows.evaluate import evaluate_directions
    from flows.runner import run_flow
    from hspace.errors import HSpaceError
    from storage.corpus import Corpus
    from storage.evaluations import stored_evaluation
    from tasks.bank import pca_direction_name, write_report
    from tasks.evaluate import EvaluationSpec

    pca = [n for n in args.directions if n.startswith("pca-")]
    if pca and args.pca_run is None:
        raise HSpaceError(f"{pca[0]} names a PCA direction: give --pca-run")
    try:
        top = max((int(n[4:]) for n in pca), default=-1) + 1
    except ValueError:
        raise HSpaceError(f"PCA directions are named pca-<j>, j an integer; got {pca}") from None
    supervised = [n for n in args.directions if n not in {pca_direction_name(j) for j in range(top)}]
    spec = EvaluationSpec(
        url=args.url,
        names=tuple(args.directions),
        supervised=tuple(supervised),
        pca_run=args.pca_run,
        pca_directions=top,
        annotator=args.annotator,
        gamma=args.gamma,
        samples=args.samples,
        repeats=args.repeats,
        seed=args.seed,
        precision=args.precision,
        batch=args.batch,
        block=args.block,
        device=args.device,
        conditioning=conditioning_arguments(args) or None,
    )
    key = run_flow(evaluate_directions, spec, runner=runner_choice(args), progress=not args.no_progress)
    result = stored_evaluation(Corpus.open(args.url), key)
    assert result is not None  # the flow stores it before returning
    paths = write_report(result, args.report)
    if args.json:
        print(json.dumps({"key": key, "files": [str(p) for p in paths], **result.to_dict()}))
    else:
        print(result.to_markdown("std"))
        print(f"written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
