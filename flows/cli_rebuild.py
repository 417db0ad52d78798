"""``hspace evaluate`` (Table I for a corpus's directions) and ``hspace rebuild-bank`` (the whole pipeline)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
    rebuild.add_argument("--disentangle", action="append", default=None, metavar="A:B,C",
                         help="also publish A-disentangled, A with B, C projected out (eq. 12); repeatable")
    rebuild.add_argument("--pca-components", type=int, default=8)
    rebuild.add_argument("--pca-directions", type=int, default=3)
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
        attributes=args.attributes or list(DEFAULT_ATTRIBUTES), k=args.k, disentangle=_disentangle(args.disentangle),
        pca_components=args.pca_components, pca_directions=args.pca_directions, gamma=args.gamma,
        eval_samples=args.eval_samples, repeats=args.repeats, report=args.report, device=args.device,
        threads=args.threads, workers=args.workers, dask_address=args.dask_address, progress=True)
    result = run_rebuild_bank(**arguments)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bank {result['bank']}: version {result['version']} with {', '.join(result['directions'])}")
    return 0
