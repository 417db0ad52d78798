"""``hspace corpus build|info|verify``: generate a corpus of samples with their h_{T:1}, inspect one, check it."""

from __future__ import annotations

import argparse

from flows.cli_args import (
    add_conditioning_arguments,
    add_microbatch_argument,
    add_precision_argument,
    add_runner_arguments,
    conditioning_arguments,
    eta,
    print_info,
    runner_choice,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``corpus build`` and ``corpus info`` to the ``hspace`` commands."""
    corpus = commands.add_parser("corpus", help="build and inspect h-space corpora")
    sub = corpus.add_subparsers(dest="corpus_command", required=True)
    build = sub.add_parser("build", help="generate samples and record h_{T:1} into a Zarr corpus (resumable)")
    build.add_argument("url", help="the corpus to create or resume: a path or an fsspec URL")
    build.add_argument(
        "--model",
        required=True,
        help="built-in name (tiny, tiny-ldm, tiny-sd, ...), pipeline folder (DDPM, LDM, Stable Diffusion) or hub id",
    )
    build.add_argument("--samples", type=int, required=True, help="number of samples N")
    build.add_argument("--steps", type=int, required=True, help="DDIM steps T")
    build.add_argument("--eta", type=eta, default=1.0, help="eta in [0, 1], or one per step (default 1)")
    build.add_argument(
        "--batch",
        type=int,
        required=True,
        help="samples per shard and per task; the last shard is short if it does not divide N",
    )
    build.add_argument("--seed", type=int, required=True, help="base seed; sample i's seed derives from it")
    build.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype of h")
    build.add_argument("--device", default="cpu", help="cpu or cuda")
    add_precision_argument(build, note="(a corpus setting: a resume uses the same)")
    add_conditioning_arguments(build, prompt_list=True)
    build.add_argument(
        "--latents", action="store_true", help="latent models: also store each sample's final latent (a corpus setting)"
    )
    add_microbatch_argument(build)
    add_runner_arguments(build, "the shards")
    build.set_defaults(func=_build)

    info = sub.add_parser("info", help="settings and progress of a corpus")
    info.add_argument("url")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_info)

    verify = sub.add_parser(
        "verify",
        help="read every chunk of a corpus and report damaged ones (exit status 1 if any); --repair prepares "
        "their regeneration",
    )
    verify.add_argument("url")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="clear the done flags of damaged shards (the next `corpus build` with the same settings regenerates "
        "exactly those) and mark stale the results that may hold their data (`rebuild-bank` recomputes them)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(func=_verify)


def _build(args: argparse.Namespace) -> None:
    from flows.corpus import build_corpus
    from flows.runner import run_flow

    print_info(
        run_flow(
            build_corpus,
            runner=runner_choice(args),
            model=args.model,
            samples=args.samples,
            steps=args.steps,
            out=args.url,
            eta=args.eta,
            batch=args.batch,
            seed=args.seed,
            dtype=args.dtype,
            device=args.device,
            precision=args.precision,
            microbatch=args.microbatch,
            **conditioning_arguments(args),
            latents=args.latents,
            progress=not args.no_progress,
        ),
        as_json=False,
    )


def _info(args: argparse.Namespace) -> None:
    from storage.corpus import Corpus

    print_info(Corpus.open(args.url).info(), as_json=args.json)


def _verify(args: argparse.Namespace) -> int:
    import json

    from flows.progress import Progress, track
    from storage.corpus import Corpus
    from storage.verify import repair, result_arrays, to_json, verify

    corpus = Corpus.open(args.url, writable=args.repair)
    results = result_arrays(corpus.group)  # listed once: on an object store a walk is many requests
    progress = Progress(
        total=corpus.spec.n_shards + len(results), unit="unit", desc="verify", show=not args.no_progress
    )
    with track(progress) as bar:
        damaged = verify(corpus, results, bar.update)
    repaired = repair(corpus, damaged) if args.repair and damaged else None
    report = {
        "url": args.url,
        "checksummed": corpus.checksummed,
        "damaged": [to_json(d) for d in damaged],
        "repaired": repaired,
        "stale": corpus.stale(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        _print_verify(report, args.url)
    return 1 if damaged else 0


def _print_verify(report: dict, url: str) -> None:
    damaged, repaired = report["damaged"], report["repaired"]
    if not report["checksummed"]:
        print("note: this corpus has no chunk checksums (schema version 1): only chunks that fail to decode are found")
    for d in damaged:
        print(f"damaged: {d['array']}, {d['where']}: {d['reason']}")
    if not damaged:
        print(f"no damaged chunk in {url}")
    elif repaired is None:
        print(f"{len(damaged)} damaged; `hspace corpus verify {url} --repair` prepares their regeneration")
    else:
        if repaired["shards_to_rebuild"]:
            print(
                f"shards to regenerate: {repaired['shards_to_rebuild']}: run `hspace corpus build {url}` with the "
                "settings it was built with (`hspace corpus info` shows them)"
            )
        for member in repaired["stale"]:
            print(f"stale: {member}: `hspace rebuild-bank` recomputes it")
