"""Editing photos that are not samples of the model: reconstruction error and edit effects on the testbed (issue 20).

    python bench/bench_photos.py --bank hspace-demo/bank [--faces 32] [--gamma 2] [--seed 777]
    python bench/bench_photos.py --dry          # the tiny model, a bank of random directions, 2 photos, 4 steps

``--faces`` faces rendered by the testbed's renderer (``hspace.testbed.faces.render_dataset``: drawn, not sampled
from the model) go through :func:`hspace.photos.edit_image` with the bank's smile, glasses and hat directions (the
disentangled glasses where the bank has it) at ``--gamma``. Printed: the reconstruction error (mean absolute, in
0-255 levels, and PSNR) over the faces, and per edit the change of every testbed attribute score as in Table I:
mean over the faces of (edited - reconstructed) in stds of the reconstructions' scores, the own factor's change and
the largest other's. The bound :data:`hspace.photos.MAX_ERROR` comes from this measurement.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

import hspace
from hspace.annotators import load_annotator
from hspace.photos import edit_image
from hspace.testbed.faces import render_dataset

EDITS = {"smile": "smile", "glasses": "glasses", "hat": "hat"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", help="a bank of the testbed model (hspace demo writes hspace-demo/bank)")
    parser.add_argument("--faces", type=int, default=32)
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--dry", action="store_true", help="tiny model, random bank, 2 photos: a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as Dask workers run; bits depend on it
    if args.dry:
        dry_run()
        return
    if not args.bank:
        parser.error("--bank is required (or --dry)")
    model, bank = hspace.load_model("testbed"), hspace.load_bank(args.bank)
    names = {own: _direction(bank, own) for own in EDITS}
    faces, _ = render_dataset(args.faces, seed=args.seed, size=model.image_shape[1])
    start = time.perf_counter()
    result = edit_image(model, list(faces), [{name: args.gamma} for name in names.values()], bank)
    seconds = time.perf_counter() - start
    mae = np.array([e["mae"] for e in result.errors])
    psnr = np.array([e["psnr"] for e in result.errors])
    print(f"{args.faces} rendered faces, T = {bank.steps}, {seconds:.0f} s (inversion + {len(names) + 1} samplings)")
    print(
        f"reconstruction: mean |error| {mae.mean():.2f} levels (max {mae.max():.2f}), PSNR {psnr.mean():.1f} dB "
        f"(min {psnr.min():.1f}); warned: {sum(e['warning'] is not None for e in result.errors)}"
    )
    annotator = load_annotator("testbed")
    base = annotator.scores_by_attribute(result.reconstructions)
    rows = {}
    for (own, name), edited in zip(names.items(), result.edited, strict=True):
        scores = annotator.scores_by_attribute(edited)
        change = {a: float((scores[a] - base[a]).mean() / max(base[a].std(), 1e-12)) for a in base}
        others = {a: v for a, v in change.items() if a != own}
        largest = max(others, key=lambda a: abs(others[a]))
        rows[name] = {"own": own, "own_change": change[own], "largest_other": [largest, others[largest]], "all": change}
        print(
            f"{name:>22} gamma {args.gamma:g}: {own} {change[own]:+.2f} std, largest other {largest} "
            f"{others[largest]:+.2f}"
        )
    print(json.dumps({"mae_mean": mae.mean(), "mae_max": mae.max(), "psnr_mean": psnr.mean(), "edits": rows}))


def _direction(bank: hspace.Bank, own: str) -> str:
    disentangled = f"{own}-disentangled"
    if disentangled in bank:
        return disentangled
    if own in bank:
        return own
    raise SystemExit(f"bank {bank.url} has no {own!r} direction; it has {', '.join(bank.names)}")


def dry_run() -> None:
    model = hspace.load_model("tiny")
    generator = torch.Generator().manual_seed(0)
    directions = [
        hspace.Direction(
            name=n,
            tensor=torch.randn((4, *model.h_shape), generator=generator),
            method="supervised",
            fingerprint=model.fingerprint,
        )
        for n in ("smile", "hat")
    ]
    with tempfile.TemporaryDirectory() as folder:
        timesteps = hspace.sample(model, [0], steps=4, capture=False).timesteps
        hspace.publish(folder, directions, model_fingerprint=model.fingerprint, eta=1.0, timesteps=timesteps)
        photos = list(np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8))
        result = edit_image(model, photos, [{"smile": 1.0}], hspace.load_bank(folder))
    print(f"dry: {len(photos)} photos, mean |error| {np.mean([e['mae'] for e in result.errors]):.2f} levels")


if __name__ == "__main__":
    main()
