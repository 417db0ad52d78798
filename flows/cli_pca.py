"""``hspace pca fit|info``: PCA directions of a corpus, one PCA of vec(h_t) per step (Sec. IV-A)."""

from __future__ import annotations

import argparse

from flows.cli_args import add_runner_arguments, ints, png_out, print_info, runner_choice, save_png


def _step_indices(text: str) -> list[int] | None:
    return None if text == "all" else ints(text)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``pca fit`` and ``pca info`` to the ``hspace`` commands."""
    pca = commands.add_parser("pca", help="PCA directions of a corpus, per step (Sec. IV-A)")
    sub = pca.add_subparsers(dest="pca_command", required=True)
    fit = sub.add_parser(
        "fit", help="fit (or resume) a PCA run: one PCA of vec(h_t) per step, signs aligned across steps"
    )
    fit.add_argument("url", help="the corpus (path or fsspec URL)")
    fit.add_argument("--components", type=int, required=True, help="k, components per step")
    fit.add_argument("--run", dest="run_name", default="default", help="run name, stored at pca/<run> in the corpus")
    fit.add_argument(
        "--step",
        type=_step_indices,
        default=None,
        help="corpus step index(es) to fit (sampling order), e.g. 0,5,10, or all (default)",
    )
    fit.add_argument("--method", default=None, help="estimator of hspace.pca.StreamingPCA (default: its default)")
    fit.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per partial_fit; whole shards are gathered until at least this many",
    )
    fit.add_argument("--device", default="cpu", help="cpu or cuda (where the estimator runs)")
    add_runner_arguments(fit, "the steps")
    fit.add_argument("--json", action="store_true", help="print the run's info as one JSON object")
    fit.set_defaults(func=_fit)

    info = sub.add_parser("info", help="parameters, progress and explained variance of a PCA run")
    info.add_argument("url")
    info.add_argument("--run", dest="run_name", default="default")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--plot", default=None, help="write a PNG of the cumulative explained variance per step")
    info.set_defaults(func=_info)


def _fit(args: argparse.Namespace) -> None:
    from flows.pca import fit_pca
    from flows.runner import run_flow

    info = run_flow(
        fit_pca,
        runner=runner_choice(args),
        url=args.url,
        components=args.components,
        run=args.run_name,
        steps=args.step,
        method=args.method,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    print_info(info, args.json, skip=("explained_variance_ratio",))  # long; the totals and --json show it


def _info(args: argparse.Namespace) -> None:
    from hspace.render import explained_variance_plot
    from storage.pca_runs import PCARun

    pca = PCARun.open(args.url, args.run_name)
    info = pca.info()
    if args.plot is not None:
        out = png_out(args.plot)
        timesteps = pca.corpus.spec.timesteps
        labels = [f"step {t} (t={timesteps[t]})" for t in pca.spec.steps]
        picture = explained_variance_plot(
            pca.explained_variance_ratio(), labels, title=f"PCA {args.run_name}: cumulative explained variance per step"
        )
        save_png(picture, out)
        info["plot"] = str(out)
    print_info(info, args.json, skip=("explained_variance_ratio",))
