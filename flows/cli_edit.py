"""``hspace edit``: a picture grid of edits along PCA or Jacobian directions of a corpus (Fig. 3-5)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from flows.cli_args import (
    add_conditioning_arguments,
    add_precision_argument,
    conditioning_arguments,
    floats,
    ints,
    png_out,
    save_png,
)

SHOW_HELP = (
    "corpus sample ids whose edits to show, e.g. 0,1,2: sample i is regenerated from its own seed "
    "(derived from the corpus base seed), so the gamma = 0 column is exactly the corpus's x0[i]"
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``edit`` to the ``hspace`` commands."""
    edit = commands.add_parser(
        "edit",
        help="a picture grid of edits along PCA or Jacobian directions: rows = directions, columns = "
        "gamma per sample (Fig. 3-5)",
    )
    edit.add_argument("url", help="the corpus (path or fsspec URL)")
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--pca", metavar="RUN", help="a complete PCA run (hspace pca fit)")
    source.add_argument("--jacobian", metavar="RUN", help="a Jacobian run (hspace jacobian)")
    edit.add_argument("--sample", type=int, default=None, help="with --jacobian: the sample id whose directions to use")
    edit.add_argument(
        "--step",
        type=int,
        default=None,
        help="with --jacobian: the step index they were found at (they are applied at every step)",
    )
    edit.add_argument("--directions", type=ints, required=True, help="direction indices, e.g. 0,1,2")
    edit.add_argument(
        "--show", type=ints, default=None, help=SHOW_HELP + " (default: the --sample with --jacobian, else 0,1,2)"
    )
    edit.add_argument(
        "--gammas",
        type=floats,
        default=[-4.0, -2.0, 0.0, 2.0, 4.0],
        help="edit strengths; 0 is always shown (default -4,-2,0,2,4)",
    )
    edit.add_argument(
        "--random-baseline",
        action="store_true",
        help="add a row along a random direction with the per-step norm of the first one (Fig. 4)",
    )
    edit.add_argument("--out", required=True, help="PNG to write")
    edit.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(edit, default=None, note="(default: the corpus's)")
    add_conditioning_arguments(edit, edit_branch=True, default="the corpus's")
    edit.set_defaults(func=_edit)
    # `--gammas -4,-2,0,2,4` (the natural spelling) starts with '-': let this parser read a comma-separated
    # list of numbers after a dash as a value, not as an option (argparse only knows single numbers).
    edit._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(,[-+]?[\d.eE+-]+)*$")


def _directions(args: argparse.Namespace, spec: Any) -> tuple[Any, list[str]]:
    """The directions to edit along, (n, T, C, H, W), and their row labels."""
    import torch

    from hspace.directions import random_direction_like
    from storage.jacobian_runs import read_jacobian_directions
    from storage.pca_runs import read_pca_directions

    if args.pca is not None:
        directions = torch.from_numpy(read_pca_directions(args.url, args.pca, args.directions))
        labels = [f"pca {j}" for j in args.directions]
    else:
        found = torch.from_numpy(
            read_jacobian_directions(args.url, args.jacobian, args.sample, args.step, args.directions)
        )
        # Found at one step, applied at every step (Sec. IV-B).
        directions = found[:, None].expand(len(found), spec.steps, *spec.h_shape).contiguous()
        labels = [f"jac {j}" for j in args.directions]
    if args.random_baseline:
        baseline = random_direction_like(directions[0], torch.Generator().manual_seed(0))
        directions = torch.cat([directions, baseline[None]])
        labels.append("random")
    return directions, labels


def _edit(args: argparse.Namespace) -> None:
    from hspace.conditioning import parse_conditioning
    from hspace.editing import edit_grid
    from hspace.errors import HSpaceError
    from hspace.render import labeled_grid
    from storage.corpus import Corpus
    from tasks.corpus import corpus_model
    from tasks.jacobian import sample_seed

    corpus = Corpus.open(args.url)
    spec = corpus.spec
    if args.jacobian is not None and (args.sample is None or args.step is None):
        raise HSpaceError("--jacobian needs --sample ID and --step T: the sample and step its directions were found at")
    if args.pca is not None and (args.sample is not None or args.step is not None):
        raise HSpaceError("--sample and --step select Jacobian directions; with --pca give only --directions")
    shown = args.show if args.show is not None else ([args.sample] if args.jacobian else [0, 1, 2])
    bad = [i for i in shown if not 0 <= i < spec.samples]
    if bad:
        raise HSpaceError(f"sample {bad[0]} is out of range: the corpus has samples 0..{spec.samples - 1}")
    gammas = sorted(set(args.gammas) | {0.0})
    out = png_out(args.out)
    directions, labels = _directions(args, spec)
    given = conditioning_arguments(args)
    model = corpus_model(corpus, args.device, args.precision)
    if given:
        model = model.conditioned(parse_conditioning(**given, recorded=spec.conditioning))
    seeds = [sample_seed(corpus, i) for i in shown]
    images = edit_grid(model, seeds, directions, gammas, steps=spec.steps, eta=list(spec.eta))
    picture = labeled_grid(
        images,
        labels,
        [f"{g:+g}" for g in gammas] * len(seeds),
        column_groups=[f"sample {i}" for i in shown for _ in gammas],
    )
    save_png(picture, out)
    print(f"edit grid written to {out} ({len(labels)} directions x {len(seeds)} samples x {len(gammas)} gammas)")
