"""Train, measure and save the testbed annotator; ``python -m hspace.testbed.train_annotator`` rebuilds the shipped one.

    python -m hspace.testbed.train_annotator [--steps N] [--seed S] [--batch B] [--out PATH]

Trains :class:`hspace.testbed.annotator.FaceAnnotatorNet` on fresh renders and non-faces
(:mod:`hspace.testbed.augment`), measures it on held-out renders (:func:`evaluate_annotator`) and writes
``weights/annotator.safetensors`` with its card (sha256, report, command; :func:`save_annotator`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from hspace.annotators.base import Annotator
from hspace.errors import HSpaceError
from hspace.files import atomic_write, atomic_write_bytes, sha256_of
from hspace.testbed.annotator import (
    ATTRIBUTES,
    CENTER,
    CONTINUOUS_COLUMNS,
    CONTINUOUS_FACTORS,
    DEFAULT_ARCHITECTURE,
    DEFAULT_WEIGHTS,
    SCALE,
    FaceAnnotatorNet,
    TestbedAnnotator,
    to_input,
)
from hspace.testbed.augment import NEGATIVE_KINDS, augment_faces, make_negatives
from hspace.testbed.faces import BINARY_FACTORS, FACTORS, render_dataset


def _step_seed(seed: int, step: int) -> int:
    # Batch k depends on (seed, k) alone, as in hspace.testbed.train.
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _targets(factors: dict[str, np.ndarray]) -> torch.Tensor:
    """(n, 9) training targets: face = 1, binary factors as 0/1, continuous ones standardised."""
    n = len(factors["yaw"])
    y = torch.empty(n, len(ATTRIBUTES))
    y[:, 0] = 1.0
    for name in FACTORS:
        y[:, ATTRIBUTES.index(name)] = torch.from_numpy(factors[name])
    y[:, CONTINUOUS_COLUMNS] = (y[:, CONTINUOUS_COLUMNS] - CENTER) / SCALE
    return y


def _loss(raw: torch.Tensor, y: torch.Tensor, is_face: torch.Tensor) -> torch.Tensor:
    """BCE for face (all images); BCE and MSE (standardised) for the factors of faces only, averaged per head."""
    face_loss = F.binary_cross_entropy_with_logits(raw[:, 0], y[:, 0])
    binary_cols = [ATTRIBUTES.index(name) for name in BINARY_FACTORS]
    faces = raw[is_face]
    binary_loss = F.binary_cross_entropy_with_logits(faces[:, binary_cols], y[is_face][:, binary_cols])
    regression_loss = F.mse_loss(faces[:, CONTINUOUS_COLUMNS], y[is_face][:, CONTINUOUS_COLUMNS])
    # Per-head means: 1 face head, 3 binary, 5 continuous.
    return (face_loss + 3 * binary_loss + 5 * regression_loss) / len(ATTRIBUTES)


def _batch(step_seed: int, n_face: int, n_negative: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: augmented fresh renders, then non-faces; inputs (n, 3, 32, 32) and targets (n, 9)."""
    images, factors = render_dataset(n_face, seed=step_seed)
    rng = np.random.default_rng([step_seed, 1])
    negatives = make_negatives(n_negative, rng)
    generator = torch.Generator().manual_seed(step_seed)
    x = torch.cat([augment_faces(to_input(images), generator), to_input(negatives)])
    y = torch.cat([_targets(factors), torch.zeros(n_negative, len(ATTRIBUTES))])
    return x, y


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_annotator(
    steps: int,
    seed: int,
    *,
    batch: int = 128,
    negative_share: float = 0.25,
    lr: float = 2e-3,
    architecture: dict | None = None,
    eval_faces: int = 2000,
    eval_negatives: int = 2000,
    eval_seed: int = 20_250_101,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[FaceAnnotatorNet, dict]:
    """Train a :class:`FaceAnnotatorNet` on fresh renders and non-faces, then measure it on held-out ones.

    Deterministic given ``seed`` (on one CPU thread): the weights come from ``torch.manual_seed(seed)``,
    batch k's faces from ``render_dataset(.., seed=SeedSequence([seed, k]))`` and its negatives and
    augmentation noise from generators seeded with the same.

    Parameters
    ----------
    steps : int
        Optimiser steps, positive.
    seed : int
        Seed of everything random in training.
    batch : int
        Images per step, faces and negatives together.
    negative_share : float
        Share of each batch that is non-faces (label ``face`` = 0, factor losses masked out), in (0, 1).
    lr : float
        Peak AdamW learning rate (linear warm-up over 5% of steps, cosine decay to 2% of it).
    architecture : dict, optional
        ``{"widths": [4 ints], "hidden": int}``; default :data:`DEFAULT_ARCHITECTURE`.
    eval_faces, eval_negatives : int
        Held-out set sizes; positive.
    eval_seed : int
        Seed of the held-out set; training seeds are 32-bit hashes of (seed, step), so they do not meet it
        in practice.
    progress : callable, optional
        Called as ``progress(step, loss)`` after every step.

    Returns
    -------
    net : FaceAnnotatorNet
        The trained network, in eval mode.
    report : dict
        ``steps``, ``seed``, ``batch``, ``negative_share``, ``lr``, ``architecture``, ``parameters``,
        ``train_seconds``, ``final_loss`` (mean of the last 10% of steps) and ``held_out`` (see
        :func:`evaluate_annotator`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise HSpaceError(f"steps must be a positive integer; got {steps!r}")
    if not 0 < negative_share < 1 or batch < 2:
        raise HSpaceError(f"need batch >= 2 and 0 < negative_share < 1; got {batch}, {negative_share}")
    architecture = dict(DEFAULT_ARCHITECTURE if architecture is None else architecture)
    n_negative = max(1, round(batch * negative_share))
    n_face = batch - n_negative
    if n_face < 1:
        raise HSpaceError(f"batch {batch} with negative_share {negative_share} leaves no faces: lower the share")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FaceAnnotatorNet(architecture["widths"], architecture["hidden"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    is_face = torch.cat([torch.ones(n_face, dtype=torch.bool), torch.zeros(n_negative, dtype=torch.bool)])
    losses: list[float] = []
    net.train()
    started = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps, warmup)
        x, y = _batch(_step_seed(seed, step), n_face, n_negative)
        loss = _loss(net(x), y, is_face)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, losses[-1])
    train_seconds = time.monotonic() - started
    net.eval()
    report = {
        "steps": steps,
        "seed": seed,
        "batch": batch,
        "negative_share": negative_share,
        "lr": lr,
        "architecture": architecture,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(train_seconds, 1),
        "final_loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "held_out": evaluate_annotator(
            TestbedAnnotator(net), faces=eval_faces, negatives=eval_negatives, seed=eval_seed
        ),
    }
    return net, report


def evaluate_annotator(
    annotator: Annotator, *, faces: int = 2000, negatives: int = 2000, seed: int = 20_250_101
) -> dict:
    """Accuracy of an annotator with :data:`ATTRIBUTES` on fresh renders and non-faces.

    Parameters
    ----------
    annotator : Annotator
        Scores with at least the columns of :data:`ATTRIBUTES`.
    faces, negatives : int
        Number of renders (``render_dataset(faces, seed)``) and of non-faces (``make_negatives`` from
        ``default_rng([seed, 1])``); positive.
    seed : int
        Seed of the set.

    Returns
    -------
    dict
        ``faces``, ``negatives``, ``seed``; ``face_accuracy`` (threshold 0.5, faces and non-faces together),
        ``face_recall`` (clean renders called faces), ``face_recall_noisy`` (renders after the training
        augmentation called faces), ``negative_rejection`` (non-faces called non-faces) and
        ``negative_rejection_by_kind``; ``binary_accuracy`` {factor: share of renders right at 0.5};
        ``r2`` and ``mae`` {continuous factor: on renders, in factor units}.
    """
    if faces <= 0 or negatives <= 0:
        raise HSpaceError(f"evaluation needs at least one face and one non-face; got {faces}, {negatives}")
    images, factors = render_dataset(faces, seed=seed)
    rng = np.random.default_rng([seed, 1])
    kinds = rng.integers(0, len(NEGATIVE_KINDS), negatives)
    negative_images = np.concatenate([make_negatives(1, rng, [NEGATIVE_KINDS[k]]) for k in kinds])
    noisy = augment_faces(to_input(images), torch.Generator().manual_seed(seed))
    noisy_uint8 = ((noisy + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    scores = annotator.scores_by_attribute(images)
    negative_face = annotator.scores_by_attribute(negative_images)["face"]
    noisy_face = annotator.scores_by_attribute(noisy_uint8)["face"]
    recall = float((scores["face"] > 0.5).mean())
    rejection = float((negative_face <= 0.5).mean())
    report: dict = {
        "faces": faces,
        "negatives": negatives,
        "seed": seed,
        "face_accuracy": (recall * faces + rejection * negatives) / (faces + negatives),
        "face_recall": recall,
        "face_recall_noisy": float((noisy_face > 0.5).mean()),
        "negative_rejection": rejection,
        "negative_rejection_by_kind": {
            kind: float((negative_face[kinds == i] <= 0.5).mean())
            for i, kind in enumerate(NEGATIVE_KINDS)
            if (kinds == i).any()
        },
        "binary_accuracy": {
            name: float(((scores[name] > 0.5) == (factors[name] > 0.5)).mean()) for name in BINARY_FACTORS
        },
        "r2": {},
        "mae": {},
    }
    for name in CONTINUOUS_FACTORS:
        truth, predicted = factors[name].astype(np.float64), scores[name].astype(np.float64)
        report["r2"][name] = float(1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2))
        report["mae"][name] = float(np.mean(np.abs(predicted - truth)))
    return report


def save_annotator(
    net: FaceAnnotatorNet, report: dict, path: str | Path = DEFAULT_WEIGHTS, *, command: str = ""
) -> dict:
    """Write float32 safetensors weights and their JSON card (sha256, training report, command).

    Each file is written atomically (:func:`hspace.files.atomic_write`), so a crash never leaves a half-written
    file under the real name. The card goes last: a card always describes weights that exist.

    Parameters
    ----------
    net : FaceAnnotatorNet
    report : dict
        As returned by :func:`train_annotator`.
    path : str or Path
        Destination ``.safetensors`` file; the card is written next to it with ``.json``.
    command : str
        The command line that produced the weights.

    Returns
    -------
    dict
        The card.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda staging: save_file(tensors, staging))
    card = {
        "annotator": TestbedAnnotator.name,
        "attributes": list(ATTRIBUTES),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "architecture": report["architecture"],
        "input": "uint8 (n, 3, 32, 32) scaled to [-1, 1]; other sizes resized to 32x32",
        "steps": report["steps"],
        "seed": report["seed"],
        "report": report,
        "command": command,
        "torch": torch.__version__,
    }
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode())
    return card


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
