"""``hspace jacobian``: image-specific directions, the top singular vectors of d eps / d h_t (Sec. IV-B)."""

from __future__ import annotations

import argparse
import json

from flows.cli_args import add_precision_argument, add_runner_arguments, ints, runner_choice


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``jacobian`` to the ``hspace`` commands."""
    jacobian = commands.add_parser(
        "jacobian",
        help="image-specific directions: top singular vectors of d eps / d h_t at a corpus sample's step (Sec. IV-B)",
    )
    jacobian.add_argument("url", help="the corpus (path or fsspec URL)")
    jacobian.add_argument("--sample", type=ints, required=True, help="corpus sample id(s), e.g. 3 or 3,7")
    jacobian.add_argument("--step", type=ints, required=True, help="step index(es) in sampling order, e.g. 5")
    jacobian.add_argument("--k", type=int, required=True, help="directions per (sample, step)")
    jacobian.add_argument(
        "--mask",
        default=None,
        help="PNG of the image region (eq. 9-10): white = region; resized to the image size by "
        "nearest neighbour, binarised at 128",
    )
    jacobian.add_argument(
        "--algorithm",
        choices=("batched", "sequential"),
        default="batched",
        help="batched = Alg. 1, sequential = Alg. 2 (SM -E)",
    )
    jacobian.add_argument("--block", type=int, default=None, help="b of Alg. 2 (sequential only; default 1)")
    jacobian.add_argument("--tol", type=float, default=1e-3, help="relative residual to stop at")
    jacobian.add_argument("--max-iter", type=int, default=100)
    jacobian.add_argument(
        "--run",
        dest="run_name",
        default=None,
        help="run name, stored at jacobian/<run> (default: sample<ids>-step<steps>-k<k>, "
        "plus -mask<sha256[:8]> with a mask)",
    )
    jacobian.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(jacobian, default=None, note="(default: the corpus's; a parameter of the run)")
    add_runner_arguments(jacobian, "the (sample, step) cells")
    jacobian.add_argument("--json", action="store_true", help="print the run's info as one JSON object")
    jacobian.set_defaults(func=_jacobian)


def _run_name(args: argparse.Namespace) -> str:
    """``--run``, or one named after the samples, steps, k and mask (checked either way)."""
    from hspace.errors import HSpaceError
    from hspace.images import read_mask_png
    from storage.corpus import Corpus
    from storage.jacobian_runs import mask_sha256
    from storage.runs import check_run_name

    run = args.run_name
    if run is None:
        corpus = Corpus.open(args.url)
        mask = None if args.mask is None else read_mask_png(args.mask, corpus.spec.noise_shape[1:])
        run = f"sample{'_'.join(map(str, args.sample))}-step{'_'.join(map(str, args.step))}-k{args.k}" + (
            "" if mask is None else f"-mask{str(mask_sha256(mask))[:8]}"
        )
        if len(run) > 64:
            raise HSpaceError("the default run name would exceed 64 characters: name the run with --run")
    return check_run_name(run)


def _jacobian(args: argparse.Namespace) -> None:
    from flows.jacobian import jacobian_directions
    from flows.runner import run_flow
    from storage.corpus import Corpus

    Corpus.open(args.url)  # "no corpus at ..." before anything else
    run = _run_name(args)
    info = run_flow(
        jacobian_directions,
        runner=runner_choice(args),
        url=args.url,
        sample_ids=args.sample,
        steps=args.step,
        k=args.k,
        run=run,
        algorithm=args.algorithm,
        block=args.block,
        mask_png=args.mask,
        tol=args.tol,
        max_iter=args.max_iter,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(info))
        return
    print(f"jacobian run {run!r}: {info['done']} of {len(info['results'])} (sample, step) done")
    for cell in info["results"]:
        values = ", ".join(f"{s:.4g}" for s in cell.get("singular_values", []))
        print(
            f"  sample {cell['sample']} step {cell['step']}: singular values [{values}]"
            + ("" if cell.get("converged", True) else " (not converged)")
        )
