"""``hspace annotate``: score every sample of a corpus with an annotator (resumable)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli_args import add_runner_arguments, print_info, runner_choice


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``annotate`` to the ``hspace`` commands."""
    annotate = commands.add_parser("annotate", help="score every sample of a corpus with an annotator (resumable)")
    annotate.add_argument("url", help="the corpus")
    annotate.add_argument("--annotator", required=True, help="annotator name, e.g. testbed")
    annotate.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument of the annotator's loader (JSON value or string); repeatable",
    )
    add_runner_arguments(annotate, "the shards")
    annotate.add_argument("--json", action="store_true", help="print one JSON object")
    annotate.set_defaults(func=_annotate)


def _annotate(args: argparse.Namespace) -> None:
    from flows.annotate import annotate
    from flows.runner import run_flow

    runner = runner_choice(args)
    info = run_flow(
        annotate,
        runner=runner,
        url=args.url,
        annotator=args.annotator,
        options=_options(args.option) or None,
        progress=not args.no_progress,
    )
    print_info(info, args.json)


def _options(pairs: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs: each value read as JSON, else kept as a string."""
    from hspace.errors import HSpaceError

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HSpaceError(f"--option takes KEY=VALUE; got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options
