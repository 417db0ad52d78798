"""Rebuild the shipped testbed annotator: ``python -m hspace.testbed.train_annotator [--steps N] [--seed S]``.

Trains :class:`hspace.testbed.annotator.FaceAnnotatorNet` on fresh renders and non-faces, measures it on
held-out renders and writes ``weights/annotator.safetensors`` with its card (sha256, report, command).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from hspace.testbed.annotator import DEFAULT_WEIGHTS, save_annotator, train_annotator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hspace.testbed.train_annotator", description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # determinism: the same seed gives the same weights
    with tqdm(total=args.steps, desc="train annotator", unit="step") as bar:
        def report(step: int, loss: float) -> None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")

        net, result = train_annotator(args.steps, args.seed, batch=args.batch, progress=report)
    command = f"python -m hspace.testbed.train_annotator --steps {args.steps} --seed {args.seed} --batch {args.batch}"
    card = save_annotator(net, result, args.out, command=command)
    print(json.dumps(card["report"]["held_out"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
