"""``hspace rebuild-bank``: corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> publish."""

from __future__ import annotations

import argparse
import json

from flows.cli_args import (
    add_conditioning_arguments,
    add_evaluation_arguments,
    add_microbatch_argument,
    add_precision_argument,
    add_runner_arguments,
    conditioning_arguments,
    names,
    runner_choice,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rebuild-bank`` to the ``hspace`` commands."""
    rebuild = commands.add_parser(
        "rebuild-bank",
        help="corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> publish a "
        "new bank version; every stage skips work already done",
    )
    rebuild.add_argument("bank", help="the bank's location (path or fsspec URL)")
    rebuild.add_argument("--corpus", required=True, help="the corpus's location (created if missing)")
    rebuild.add_argument("--model", default="testbed")
    rebuild.add_argument("--samples", type=int, default=1024)
    rebuild.add_argument("--steps", type=int, default=50, help="DDIM steps T")
    rebuild.add_argument("--eta", type=float, default=1.0)
    rebuild.add_argument("--batch", type=int, default=32)
    rebuild.add_argument("--seed", type=int, default=0)
    add_precision_argument(rebuild, note="(a corpus setting; the bank records it and `edit` uses it)")
    add_microbatch_argument(rebuild)
    rebuild.add_argument("--annotator", default="testbed")
    rebuild.add_argument(
        "--attributes",
        type=names,
        default=None,
        help="comma-separated attributes, one supervised direction each (default: the testbed's)",
    )
    rebuild.add_argument("--k", type=int, default=100, help="top-k vs bottom-k examples (eq. 11)")
    rebuild.add_argument(
        "--thresholds",
        default=None,
        metavar="A=T,B=T",
        help="binary attributes: draw their k examples from each side of T instead of the "
        "extremes (default: those the annotator declares, for testbed eyes_open, glasses, "
        "hat at 0.5; 'none': no attribute)",
    )
    rebuild.add_argument(
        "--disentangle",
        action="append",
        default=None,
        metavar="A:B,C",
        help="also publish A-disentangled, A with B, C projected out (eq. 12); repeatable",
    )
    keep_norm = "rescale each disentangled direction to its original's norm (`hspace directions disentangle`)"
    rebuild.add_argument("--keep-norm", action="store_true", help=keep_norm)
    rebuild.add_argument("--pca-components", type=int, default=8)
    rebuild.add_argument("--pca-directions", type=int, default=3)
    rebuild.add_argument(
        "--pca-run",
        default="bank",
        help="the corpus's PCA run to fit or resume (another name for other --pca-components)",
    )
    rebuild.add_argument("--gamma", type=float, default=1.0)
    rebuild.add_argument("--eval-samples", type=int, default=100)
    rebuild.add_argument("--repeats", type=int, default=10)
    add_evaluation_arguments(rebuild, "eval-")
    rebuild.add_argument("--report", default=None, help="folder for the evaluation's CSV, markdown and heatmap")
    rebuild.add_argument("--device", default="cpu")
    add_conditioning_arguments(rebuild)
    add_runner_arguments(rebuild, "the corpus generation and the evaluation")
    rebuild.add_argument("--json", action="store_true")
    rebuild.set_defaults(func=_rebuild)


def _thresholds(value: str | None) -> dict[str, float] | None:
    """``--thresholds glasses=0.5,hat=0.5`` (or ``none``)."""
    from hspace.errors import HSpaceError

    if value is None:
        return None
    if value.strip().lower() == "none":
        return {}
    out = {}
    for item in value.split(","):
        name, _, number = item.partition("=")
        try:
            out[name.strip()] = float(number)
        except ValueError:
            raise HSpaceError(f"--thresholds takes A=T[,B=T...] (T a number), or none; got {item!r}") from None
        if not name.strip():
            raise HSpaceError(f"--thresholds takes A=T[,B=T...]; {item!r} has no attribute name")
    return out


def _disentangle(values: list[str] | None) -> dict[str, list[str]] | None:
    """``--disentangle A:B,C`` (repeatable) as ``{A: [B, C]}``."""
    from hspace.errors import HSpaceError

    if values is None:
        return None
    out = {}
    for value in values:
        source, _, others = value.partition(":")
        if not source or not others.strip(", "):
            raise HSpaceError(f"--disentangle takes A:B[,C...] (A with B, C projected out); got {value!r}")
        out[source] = [name.strip() for name in others.split(",") if name.strip()]
    return out


def _rebuild(args: argparse.Namespace) -> None:
    from flows.bank import DEFAULT_ATTRIBUTES, RebuildSettings, rebuild_bank
    from flows.runner import run_flow

    runner = runner_choice(args)
    settings = RebuildSettings(
        bank=args.bank,
        corpus=args.corpus,
        model=args.model,
        samples=args.samples,
        steps=args.steps,
        eta=args.eta,
        batch=args.batch,
        seed=args.seed,
        precision=args.precision,
        microbatch=args.microbatch,
        annotator=args.annotator,
        attributes=args.attributes or DEFAULT_ATTRIBUTES,
        k=args.k,
        thresholds=_thresholds(args.thresholds),
        disentangle=_disentangle(args.disentangle),
        keep_norm=args.keep_norm,
        pca_components=args.pca_components,
        pca_directions=args.pca_directions,
        pca_run_name=args.pca_run,
        gamma=args.gamma,
        eval_samples=args.eval_samples,
        repeats=args.repeats,
        eval_batch=args.eval_batch,
        eval_block=args.eval_block,
        report=args.report,
        device=args.device,
        **conditioning_arguments(args),
    )
    result = run_flow(rebuild_bank, settings=settings, runner=runner, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bank {result['bank']}: version {result['version']} with {', '.join(result['directions'])}")
