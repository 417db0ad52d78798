"""``hspace evaluate`` (Table I for a corpus's directions), ``hspace efficiency`` (Fig. 8a) and ``hspace
rebuild-bank`` (the whole pipeline)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.cli_args import ints


def _names(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def add_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="Table I: edit fresh samples along directions of a corpus, re-score every attribute, "
                         "against norm-matched random directions; writes CSV, markdown and a heatmap")
    evaluate.add_argument("url", help="the corpus")
    evaluate.add_argument("--directions", type=_names, required=True,
                          help="comma-separated names: directions of the corpus (`hspace directions list`) and/or "
                               "pca-<j> for PCA component j of --pca-run")
    evaluate.add_argument("--pca-run", default=None, help="PCA run for pca-<j> names")
    evaluate.add_argument("--annotator", default="testbed")
    evaluate.add_argument("--gamma", type=float, default=1.0)
    evaluate.add_argument("--samples", type=int, default=100, help="fresh samples per repeat (paper: 100)")
    evaluate.add_argument("--repeats", type=int, default=10, help="repeats with other samples (paper: 10)")
    evaluate.add_argument("--seed", type=int, default=1)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--out", default="hspace-evaluation", help="folder for evaluation.csv/.md/.png")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.set_defaults(run=_evaluate)

    efficiency = commands.add_parser(
        "efficiency", help="Fig. 8a: how many examples eq. 11 needs in h_{T:1} vs in x_T; writes efficiency.md, "
                           ".json and a line plot")
    efficiency.add_argument("--model", default="testbed")
    efficiency.add_argument("--annotator", default="testbed")
    efficiency.add_argument("--attribute", required=True, help="the attribute that ranks the pool's samples")
    efficiency.add_argument("--counts", type=ints, default=[2, 5, 10, 25, 50, 100],
                            help="numbers of examples n (top n vs bottom n), e.g. 2,5,10,25,50,100")
    efficiency.add_argument("--pool", type=int, default=512, help="annotated samples to draw examples from")
    efficiency.add_argument("--eval-samples", type=int, default=64, help="fresh samples every direction edits")
    efficiency.add_argument("--gamma-h", type=float, default=1.0)
    efficiency.add_argument("--gamma-x", type=float, default=1.0)
    efficiency.add_argument("--steps", type=int, default=50)
    efficiency.add_argument("--eta", type=float, default=0.0, help="0 (DDIM), as the paper's Fig. 8a")
    efficiency.add_argument("--raw", action="store_true",
                            help="apply eq. 11 as it comes (its norm shrinks with n) instead of rescaling every "
                                 "direction to the norm of the largest n's")
    efficiency.add_argument("--seed", type=int, default=0)
    efficiency.add_argument("--device", default="cpu")
    efficiency.add_argument("--out", default="hspace-efficiency", help="folder for efficiency.md/.json/.png")
    efficiency.add_argument("--json", action="store_true", help="print the curve as one JSON object")
    efficiency.set_defaults(run=_efficiency)

    rebuild = commands.add_parser(
        "rebuild-bank", help="corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> publish a "
                             "new bank version; every stage skips work already done")
    rebuild.add_argument("bank", help="the bank's location (path or fsspec URL)")
    rebuild.add_argument("--corpus", required=True, help="the corpus's location (created if missing)")
    rebuild.add_argument("--model", default="testbed")
    rebuild.add_argument("--samples", type=int, default=1024)
    rebuild.add_argument("--steps", type=int, default=50)
    rebuild.add_argument("--eta", type=float, default=1.0)
    rebuild.add_argument("--batch", type=int, default=32)
    rebuild.add_argument("--seed", type=int, default=0)
    rebuild.add_argument("--annotator", default="testbed")
    rebuild.add_argument("--attributes", type=_names, default=None,
                         help="comma-separated attributes, one supervised direction each (default: the testbed's)")
    rebuild.add_argument("--k", type=int, default=100, help="top-k vs bottom-k examples (eq. 11)")
    rebuild.add_argument("--thresholds", default=None, metavar="A=T,B=T",
                         help="binary attributes: draw their k examples from each side of T instead of the "
                              "extremes (default with --annotator testbed: eyes_open, glasses, hat at 0.5; "
                              "'none': no attribute)")
    rebuild.add_argument("--disentangle", action="append", default=None, metavar="A:B,C",
                         help="also publish A-disentangled, A with B, C projected out (eq. 12); repeatable")
    rebuild.add_argument("--keep-norm", action="store_true",
                         help="rescale each disentangled direction to its original's norm (see `hspace directions "
                              "disentangle --keep-norm`)")
    rebuild.add_argument("--pca-components", type=int, default=8)
    rebuild.add_argument("--pca-directions", type=int, default=3)
    rebuild.add_argument("--pca-run", default="bank",
                         help="the corpus's PCA run to fit or resume (another name for other --pca-components)")
    rebuild.add_argument("--gamma", type=float, default=1.0)
    rebuild.add_argument("--eval-samples", type=int, default=100)
    rebuild.add_argument("--repeats", type=int, default=10)
    rebuild.add_argument("--report", default=None, help="folder for the evaluation's CSV, markdown and heatmap")
    rebuild.add_argument("--device", default="cpu")
    where = rebuild.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="a local Dask cluster of N worker processes for the corpus")
    where.add_argument("--dask-address", help="an existing Dask scheduler for the corpus")
    where.add_argument("--threads", type=int, default=1)
    rebuild.add_argument("--json", action="store_true")
    rebuild.set_defaults(run=_rebuild)


def _efficiency(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hspace.annotators import load_annotator
    from hspace.errors import HSpaceError
    from hspace.evaluate import sample_efficiency
    from hspace.models import load_model
    from hspace.render import write_files

    for name in ("pool", "eval_samples", "steps"):
        if getattr(args, name) <= 0:
            raise HSpaceError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if not 0.0 <= args.eta <= 1.0:
        raise HSpaceError(f"--eta must lie in [0, 1]; got {args.eta}")
    annotator = load_annotator(args.annotator)
    if args.attribute not in annotator.attributes:
        raise HSpaceError(f"annotator {annotator.name!r} has no attribute {args.attribute!r}; it scores "
                          f"{', '.join(annotator.attributes)}")
    model = load_model(args.model, device=args.device)
    # An annotator that says whether an image is a face (the testbed's): factor scores of non-faces mean nothing.
    keep = (lambda scores: scores["face"] > 0.5) if "face" in annotator.attributes else None
    curve = sample_efficiency(model, annotator, attribute=args.attribute, gamma_h=args.gamma_h, gamma_x=args.gamma_x,
                              steps=args.steps, example_counts=args.counts, pool_samples=args.pool,
                              eval_samples=args.eval_samples, eta=args.eta, seed=args.seed, normalize=not args.raw,
                              keep=keep, progress=lambda message: print(f"[efficiency] {message}", file=sys.stderr,
                                                                        flush=True))
    paths = write_files(Path(args.out), {
        "efficiency.png": lambda p: curve.plot().save(p, format="PNG"),
        "efficiency.md": lambda p: p.write_text(curve.to_markdown()),
        "efficiency.json": lambda p: p.write_text(json.dumps(curve.to_dict(), indent=1) + "\n"),
    })
    if args.json:
        print(json.dumps({"files": [str(p) for p in paths], **curve.to_dict()}))
    else:
        print(curve.to_markdown())
        print(f"written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


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
    from hspace.errors import HSpaceError

    if values is None:
        return None
    out = {}
    for value in values:
        source, _, others = value.partition(":")
        if not source or not others:
            raise HSpaceError(f"--disentangle takes A:B[,C...] (A with B, C projected out); got {value!r}")
        out[source] = _names(others)
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hspace.errors import HSpaceError
    from storage.corpus import Corpus
    from tasks.bank import evaluate_bank_directions, pca_direction_name, stored_evaluation, write_report

    for name in ("samples", "repeats"):
        if getattr(args, name) <= 0:
            raise HSpaceError(f"--{name} must be a positive integer; got {getattr(args, name)}")
    pca = [n for n in args.directions if n.startswith("pca-")]
    if pca and args.pca_run is None:
        raise HSpaceError(f"{pca[0]} names a PCA direction: give --pca-run")
    try:
        top = max((int(n[4:]) for n in pca), default=-1) + 1
    except ValueError:
        raise HSpaceError(f"PCA directions are named pca-<j>, j an integer; got {pca}") from None
    supervised = [n for n in args.directions if n not in {pca_direction_name(j) for j in range(top)}]
    key = evaluate_bank_directions.fn(args.url, args.directions, pca_run=args.pca_run, pca_directions=top,
                                      supervised=supervised, annotator=args.annotator, annotator_options=None,
                                      gamma=args.gamma, samples=args.samples, repeats=args.repeats, seed=args.seed,
                                      device=args.device, report=None)
    result = stored_evaluation(Corpus.open(args.url), key)
    assert result is not None  # the task stores it before returning
    paths = write_report(result, Path(args.out))
    if args.json:
        print(json.dumps({"key": key, "files": [str(p) for p in paths], **result.to_dict()}))
    else:
        print(result.to_markdown("std"))
        print(f"written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from flows.bank import DEFAULT_ATTRIBUTES, run_rebuild_bank

    arguments: dict[str, Any] = dict(
        bank=args.bank, corpus=args.corpus, model=args.model, samples=args.samples, steps=args.steps, eta=args.eta,
        batch=args.batch, seed=args.seed, annotator=args.annotator,
        attributes=args.attributes or list(DEFAULT_ATTRIBUTES), k=args.k, thresholds=_thresholds(args.thresholds),
        disentangle=_disentangle(args.disentangle),
        keep_norm=args.keep_norm, pca_components=args.pca_components, pca_directions=args.pca_directions,
        pca_run_name=args.pca_run, gamma=args.gamma, eval_samples=args.eval_samples, repeats=args.repeats,
        report=args.report, device=args.device,
        threads=args.threads, workers=args.workers, dask_address=args.dask_address, progress=True)
    result = run_rebuild_bank(**arguments)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bank {result['bank']}: version {result['version']} with {', '.join(result['directions'])}")
    return 0
