"""``hspace pca``, ``hspace jacobian`` and ``hspace edit``: unsupervised directions (Sec. IV) and their pictures.

Registered in :data:`flows.cli.COMMAND_MODULES`; each sub-command's ``run(args)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flows.cli_args import floats, ints
from hspace.errors import HSpaceError

SEEDS_HELP = ("corpus sample ids whose edits to show, e.g. 0,1,2: sample i is regenerated from its own seed "
              "(derived from the corpus base seed), so the gamma = 0 column is exactly the corpus's x0[i]")


def _steps(text: str) -> list[int] | None:
    return None if text == "all" else ints(text)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``pca fit``, ``pca info``, ``jacobian`` and ``edit`` to the ``hspace`` command."""
    pca = commands.add_parser("pca", help="PCA directions of a corpus, per step (Sec. IV-A)")
    pca_commands = pca.add_subparsers(dest="pca_command", required=True)
    fit = pca_commands.add_parser("fit", help="fit (or resume) a PCA run: one PCA of vec(h_t) per step, "
                                              "signs aligned across steps")
    fit.add_argument("url", help="the corpus (path or fsspec URL)")
    fit.add_argument("--components", type=int, required=True, help="k, components per step")
    fit.add_argument("--run", dest="run_name", default="default", help="run name, stored at pca/<run> in the corpus")
    fit.add_argument("--steps", type=_steps, default=None,
                     help="corpus step indices to fit (sampling order), e.g. 0,5,10, or all (default)")
    fit.add_argument("--method", default=None, help="estimator of hspace.pca.StreamingPCA (default: its default)")
    fit.add_argument("--batch-size", type=int, default=None,
                     help="rows per partial_fit; whole shards are gathered until at least this many")
    fit.add_argument("--device", default="cpu", help="cpu or cuda (where the estimator runs)")
    _add_runner_arguments(fit)
    fit.add_argument("--json", action="store_true", help="print the run's info as one JSON object")
    fit.set_defaults(run=_pca_fit)

    info = pca_commands.add_parser("info", help="parameters, progress and explained variance of a PCA run")
    info.add_argument("url")
    info.add_argument("--run", dest="run_name", default="default")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--plot", default=None, help="write a PNG of the cumulative explained variance per step")
    info.set_defaults(run=_pca_info)

    jacobian = commands.add_parser(
        "jacobian", help="image-specific directions: top singular vectors of d eps / d h_t at a corpus sample's "
                         "step (Sec. IV-B)")
    jacobian.add_argument("url", help="the corpus (path or fsspec URL)")
    jacobian.add_argument("--sample", type=ints, required=True, help="corpus sample id(s), e.g. 3 or 3,7")
    jacobian.add_argument("--step", type=ints, required=True, help="step index(es) in sampling order, e.g. 5")
    jacobian.add_argument("--k", type=int, required=True, help="directions per (sample, step)")
    jacobian.add_argument("--mask", default=None,
                          help="PNG of the image region (eq. 9-10): white = region; resized to the image size by "
                               "nearest neighbour, binarised at 128")
    jacobian.add_argument("--algorithm", choices=("batched", "sequential"), default="batched",
                          help="batched = Alg. 1, sequential = Alg. 2 (SM -E)")
    jacobian.add_argument("--block", type=int, default=None, help="b of Alg. 2 (sequential only; default 1)")
    jacobian.add_argument("--tol", type=float, default=1e-3, help="relative residual to stop at")
    jacobian.add_argument("--max-iter", type=int, default=100)
    jacobian.add_argument("--run", dest="run_name", default=None,
                          help="run name, stored at jacobian/<run> (default: sample<ids>-step<steps>-k<k>, "
                               "plus -mask<sha256[:8]> with a mask)")
    jacobian.add_argument("--device", default="cpu", help="cpu or cuda")
    _add_runner_arguments(jacobian)
    jacobian.add_argument("--json", action="store_true", help="print the run's info as one JSON object")
    jacobian.set_defaults(run=_jacobian)

    edit = commands.add_parser(
        "edit", help="a picture grid of edits along PCA or Jacobian directions: rows = directions, columns = "
                     "gamma per seed (Fig. 3-5)")
    edit.add_argument("url", help="the corpus (path or fsspec URL)")
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--pca", metavar="RUN", help="a complete PCA run (hspace pca fit)")
    source.add_argument("--jacobian", metavar="RUN", help="a Jacobian run (hspace jacobian)")
    edit.add_argument("--sample", type=int, default=None,
                      help="with --jacobian: the sample id whose directions to use")
    edit.add_argument("--step", type=int, default=None,
                      help="with --jacobian: the step they were found at (they are applied at every step)")
    edit.add_argument("--directions", type=ints, required=True, help="direction indices, e.g. 0,1,2")
    edit.add_argument("--seeds", type=ints, default=None,
                      help=SEEDS_HELP + " (default: the --sample with --jacobian, else 0,1,2)")
    edit.add_argument("--gammas", type=floats, default=[-4.0, -2.0, 0.0, 2.0, 4.0],
                      help="edit strengths; 0 is always shown (default -4,-2,0,2,4)")
    edit.add_argument("--random-baseline", action="store_true",
                      help="add a row along a random direction with the per-step norm of the first one (Fig. 4)")
    edit.add_argument("--out", required=True, help="PNG to write")
    edit.add_argument("--device", default="cpu", help="cpu or cuda")
    edit.set_defaults(run=_edit)
    # `--gammas -4,-2,0,2,4` (the natural spelling) starts with '-': let this parser read a comma-separated
    # list of numbers after a dash as a value, not as an option (argparse only knows single numbers).
    edit._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,[-+]?[\d.eE+-]+)*$")



def _add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run a local Dask cluster of N worker processes")
    where.add_argument("--dask-address", help="use an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--threads", type=int, default=1, help="threads of the default (in-process) runner")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----- pca ---------------------------------------------------------------------------------------
def _pca_fit(args: argparse.Namespace) -> int:
    from flows.pca import run_fit_pca

    info = run_fit_pca(workers=args.workers, dask_address=args.dask_address, threads=args.threads, url=args.url,
                       components=args.components, run=args.run_name, steps=args.steps, method=args.method,
                       batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    _print(info, args.json)
    return 0


def _pca_info(args: argparse.Namespace) -> int:
    from hspace.render import explained_variance_plot
    from storage.results import PCARun

    pca = PCARun.open(args.url, args.run_name)
    info = pca.info()
    if args.plot is not None:
        out = _check_out(args.plot)
        timesteps = pca.corpus.spec.timesteps
        labels = [f"step {t} (t={timesteps[t]})" for t in pca.spec.steps]
        picture = explained_variance_plot(pca.explained_variance_ratio(), labels,
                                          title=f"PCA {args.run_name}: cumulative explained variance per step")
        _write_png(picture, out)
        info["plot"] = str(out)
    _print(info, args.json)
    return 0


# ----- jacobian ----------------------------------------------------------------------------------
def _jacobian(args: argparse.Namespace) -> int:
    from flows.jacobian import run_jacobian_directions
    from storage.corpus import Corpus
    from storage.results import check_run_name, mask_sha256, read_mask_png

    corpus = Corpus.open(args.url)
    run = args.run_name
    if run is None:
        mask = None if args.mask is None else read_mask_png(args.mask, corpus.spec.image_shape[1:])
        run = (f"sample{'_'.join(map(str, args.sample))}-step{'_'.join(map(str, args.step))}-k{args.k}"
               + ("" if mask is None else f"-mask{mask_sha256(mask)[:8]}"))
        if len(run) > 64:
            raise HSpaceError("the default run name would exceed 64 characters: name the run with --run")
    check_run_name(run)
    info = run_jacobian_directions(
        workers=args.workers, dask_address=args.dask_address, threads=args.threads, url=args.url,
        sample_ids=args.sample, steps=args.step, k=args.k, run=run, algorithm=args.algorithm, block=args.block,
        mask_png=args.mask, tol=args.tol, max_iter=args.max_iter, device=args.device, progress=not args.no_progress)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"jacobian run {run!r}: {info['done']} of {len(info['results'])} (sample, step) done")
        for cell in info["results"]:
            values = ", ".join(f"{s:.4g}" for s in cell.get("singular_values", []))
            print(f"  sample {cell['sample']} step {cell['step']}: singular values [{values}]"
                  + ("" if cell.get("converged", True) else " (not converged)"))
    return 0


# ----- edit --------------------------------------------------------------------------------------
def _edit(args: argparse.Namespace) -> int:
    import torch

    from hspace.directions import random_direction_like
    from hspace.render import labeled_grid
    from storage.corpus import Corpus
    from storage.results import read_jacobian_directions, read_pca_directions
    from tasks.jacobian import corpus_model

    corpus = Corpus.open(args.url)
    spec = corpus.spec
    if args.jacobian is not None and (args.sample is None or args.step is None):
        raise HSpaceError("--jacobian needs --sample ID and --step T: the sample and step its directions were found at")
    if args.pca is not None and (args.sample is not None or args.step is not None):
        raise HSpaceError("--sample and --step select Jacobian directions; with --pca give only --directions")
    seeds_ids = args.seeds if args.seeds is not None else ([args.sample] if args.jacobian else [0, 1, 2])
    bad = [i for i in seeds_ids if not 0 <= i < spec.samples]
    if bad:
        raise HSpaceError(f"sample {bad[0]} is out of range: the corpus has samples 0..{spec.samples - 1}")
    gammas = sorted(set(args.gammas) | {0.0})
    out = _check_out(args.out)
    if args.pca is not None:
        directions = torch.from_numpy(read_pca_directions(args.url, args.pca, args.directions))
        labels = [f"pca {j}" for j in args.directions]
    else:
        found = torch.from_numpy(read_jacobian_directions(args.url, args.jacobian, args.sample, args.step,
                                                          args.directions))
        # Found at one step, applied at every step (Sec. IV-B).
        directions = found[:, None].expand(len(found), spec.steps, *spec.h_shape).contiguous()
        labels = [f"jac {j}" for j in args.directions]
    if args.random_baseline:
        baseline = random_direction_like(directions[0], torch.Generator().manual_seed(0))
        directions = torch.cat([directions, baseline[None]])
        labels.append("random")
    model = corpus_model(corpus, args.device)
    seeds = [int(corpus_seed) for corpus_seed in _sample_seeds(corpus, seeds_ids)]
    images = edit_images(model, seeds, directions, gammas, steps=spec.steps, eta=list(spec.eta))
    picture = labeled_grid(images, labels, [f"{g:+g}" for g in gammas] * len(seeds),
                           column_groups=[f"sample {i}" for i in seeds_ids for _ in gammas])
    _write_png(picture, out)
    print(f"edit grid written to {out} ({len(labels)} directions x {len(seeds)} samples x {len(gammas)} gammas)")
    return 0


def _sample_seeds(corpus: Any, sample_ids: Sequence[int]) -> list[int]:
    from tasks.jacobian import sample_seed

    return [sample_seed(corpus, i) for i in sample_ids]


def edit_images(model: Any, seeds: Sequence[int], directions: Any, gammas: Sequence[float], *, steps: int,
                eta: float | list[float]) -> np.ndarray:
    """uint8 (n directions, len(seeds) * len(gammas), 3, S, S): sample ``seeds[s]`` edited by
    ``gammas[g] * directions[d]`` (delta h_t = gamma v_t at every step, Sec. III) in row d, column
    s * len(gammas) + g. Each sample replays its own x_T and z_{T:1}, so gamma = 0 is the unedited sample."""
    import torch

    from hspace.sampler import sample, to_uint8

    row_seeds = [s for _ in range(len(directions)) for s in seeds for _ in gammas]
    deltas = torch.stack([g * v for v in directions for _ in seeds for g in gammas])
    result = sample(model, row_seeds, steps=steps, eta=eta, delta=deltas, capture=False)
    images = to_uint8(result.images).numpy()
    return images.reshape(len(directions), len(seeds) * len(gammas), *images.shape[1:])


# ----- helpers -----------------------------------------------------------------------------------
def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key == "explained_variance_ratio":
            continue  # long; the totals and --json show it
        if isinstance(value, list) and len(value) > 12:
            value = f"{value[:6]} ... {value[-3:]} ({len(value)} values)"
        print(f"{key:<{width}}  {value}")


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise HSpaceError(f"--out/--plot must name a .png file; got {path}")
    if not out.parent.is_dir():
        raise HSpaceError(f"the folder {out.parent} does not exist: create it first")
    return out


def _write_png(picture: Any, out: Path) -> None:
    # Write-then-rename: a crash never leaves a half-written PNG under the final name.
    staging = out.with_name(f".{out.name}.tmp")
    picture.save(staging, format="PNG")
    staging.replace(out)
