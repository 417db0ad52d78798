"""``hspace demo``: the main job on the embedded default model, then pictures of what it found."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli_args import add_precision_argument, print_info, save_png

DEMO_ATTRIBUTES = ("yaw", "smile", "eyes_open", "glasses", "hat")
# 32 samples per pass: about 3x the CPU throughput of one (docs/results.md), the demo's main cost; its samples
# are then not bitwise those of a one-per-pass corpus, which the demo does not need.
DEMO_MICROBATCH = 32


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``hspace`` commands."""
    demo = commands.add_parser("demo", help="the main job on the embedded default: corpus, then a picture grid")
    demo.add_argument("--out", default="hspace-demo", help="folder for the corpus, the bank and the pictures")
    demo.add_argument("--model", default="testbed")
    demo.add_argument("--samples", type=int, default=256)
    demo.add_argument("--steps", type=int, default=50, help="DDIM steps T")
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    add_precision_argument(demo)
    demo.add_argument(
        "--microbatch",
        type=int,
        help=f"samples per U-Net pass (default {DEMO_MICROBATCH}; a demo folder made before keeps its corpus's)",
    )
    demo.add_argument("--gamma", type=float, default=1.0, help="edit strength of the evaluation and pictures")
    demo.add_argument("--eval-samples", type=int, default=16, help="fresh samples per evaluation repeat")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> None:
    """corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> bank, then pictures of edits."""
    from flows.bank import RebuildSettings, rebuild_bank
    from flows.runner import run_flow
    from hspace.bank import load_bank
    from hspace.editing import edit_grid
    from hspace.models import load_model
    from hspace.render import labeled_grid, save_grid
    from storage.corpus import Corpus

    out = Path(args.out)
    url, bank_url = str(out / "corpus.zarr"), str(out / "bank")
    settings = RebuildSettings(
        bank=bank_url,
        corpus=url,
        model=args.model,
        samples=args.samples,
        steps=args.steps,
        eta=1.0,
        batch=args.batch,
        seed=args.seed,
        precision=args.precision,
        microbatch=_microbatch(args.microbatch, out / "corpus.zarr"),
        annotator="testbed",
        attributes=DEMO_ATTRIBUTES,
        k=args.samples // 4,
        pca_components=4,
        pca_directions=2,
        gamma=args.gamma,
        eval_samples=args.eval_samples,
        repeats=2,
        report=str(out),
    )
    out.mkdir(parents=True, exist_ok=True)  # once the settings are checked: bad input creates nothing
    result = run_flow(rebuild_bank, settings=settings, progress=True)
    corpus = Corpus.open(url)
    save_grid(corpus.read_x0(slice(0, 64)), out / "samples.png")
    # Fig. 3's layout: one row per bank direction, per seed the columns -2g, -g, 0, g, 2g.
    bank, model = load_bank(bank_url), load_model(args.model, precision=args.precision)
    gammas = [-2 * args.gamma, -args.gamma, 0.0, args.gamma, 2 * args.gamma]
    seeds = [int(s) for s in corpus.read_seeds(slice(0, 3))]
    bank.check_model(model)
    rows = edit_grid(
        model,
        seeds,
        {name: bank.tensor(name) for name in bank.names},
        gammas,
        steps=bank.steps,
        eta=1.0,
        microbatch=len(bank.names) * len(seeds) * len(gammas),
    )
    grid = labeled_grid(
        rows,
        list(bank.names),
        [f"{g:+g}" for _ in seeds for g in gammas],
        column_groups=[f"seed {i}" for i in range(len(seeds)) for _ in gammas],
    )
    save_png(grid, out / "edits.png")
    print_info(corpus.info(), as_json=False)
    print(f"bank {bank_url}: version {result['version']} with {', '.join(result['directions'])}")
    for name in ("samples.png", "edits.png", "evaluation.png", "evaluation.md"):
        print(f"{name}: {out / name}")


def _microbatch(given: int | None, corpus: Path) -> int | None:
    """The demo corpus's samples per pass: as given; else its own where it exists (one made before the default
    moved to 32 resumes with null); else :data:`DEMO_MICROBATCH`."""
    from storage.corpus import Corpus

    if given is not None:
        return given
    return Corpus.open(str(corpus)).spec.microbatch if (corpus / "zarr.json").exists() else DEMO_MICROBATCH
