"""Do the unsupervised directions (Sec. IV) mean something on the testbed? Full-size figures, as tables.

    python bench/bench_unsupervised_testbed.py [--samples 256] [--eval-samples 32] [--steps 50] [--eta 1]
                                               [--components 5] [--gammas -1,-0.5,0.5,1] [--jacobian-seeds 4]
                                               [--jacobian-step 40] [--jacobian-gamma 1] [--threads N]
                                               [--skip-pca] [--skip-jacobian]

PCA (Sec. IV-A). A corpus of ``--samples`` samples (base seed 0, eta 1) with h_{T:1}; per step an exact-mean
``hspace.pca.StreamingPCA`` of the n vectors vec(h_t); signs aligned across steps (``align_signs``); direction
j = component j at every step (``pca_direction``, unit norm per step). **Scale**: gamma = 1 moves h_t by the
mean norm of h_t over the corpus at that step (``h_scale``), so every direction and its random twin have the
same per-step norm, gamma * mean_i |h_t^(i)|. Each direction is applied to ``--eval-samples`` fresh samples
(base seed 1) at each gamma (0 is the unedited sample); the annotator scores all of them. Per direction the
table gives the factor it moves most (largest |mean change at +max gamma - mean change at -max gamma|), the
mean change at each gamma in units of the factor's std over the unedited samples, whether that is monotone in
gamma, the least-squares slope in std per unit gamma, the random baseline (mean *absolute* change of that
factor under a Gaussian direction with the same per-step norm, at +-max gamma: a random edit that pushes
samples both ways is not credited with cancelling out), their ratio (half the +-max swing over the random
baseline), the share of edits the annotator still calls faces, and the runner-up factor.

Masked Jacobian (Sec. IV-B, eq. 9-10). For ``--jacobian-seeds`` samples (base seed 7): x_t at step
``--jacobian-step``; the top right singular vector of J_t masked by the mouth region (computed from the
renderer's geometry, :func:`mouth_mask`) and of the unmasked J_t; each applied to its own sample with
delta = gamma |h_t| v, either at every step (found at one step, applied at all, as Sec. IV-B does) or at that
step only. Measured: mean |edited - original| pixel change (channel mean, [0, 1] images) inside the mask over the
same outside, per sample, then the mean and range over samples.

Budget on this machine (2 shared CPU cores; ``--threads 1`` is much faster when the machine is loaded):
the defaults sample 256 x 50 steps for the corpus and 5 x 6 x 32 x 50 for the PCA edits, about 3 minutes
idle; the Jacobian part is a minute or two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hspace.annotators import load_annotator
from hspace.directions import random_direction_like
from hspace.editing import change_maps
from hspace.jacobian import jacobian_directions, state_at_step
from hspace.models import load_model
from hspace.pca import StreamingPCA
from hspace.pca_directions import align_signs, pca_direction
from hspace.sampler import derive_seeds
from hspace.testbed.evaluate import FACE_THRESHOLD, generate
from hspace.testbed.faces import FACTORS, mouth_mask


def h_scale(h: torch.Tensor) -> torch.Tensor:
    """Mean norm of h_t over samples, per step: (T,), from h of shape (n, T, C, H, W)."""
    return h.flatten(2).norm(dim=2).mean(0)


def pca_directions(h: torch.Tensor, k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Top-k PCA directions of h_{T:1} (Sec. IV-A): (k, T, C, H, W), unit norm per step, signs aligned.

    Also returns the explained variance ratio, (T, k)."""
    n, steps = h.shape[:2]
    fitted = [StreamingPCA(k).fit(h[:, t].reshape(n, -1)) for t in range(steps)]
    components = np.stack([p.components_ for p in fitted])  # (T, k, D)
    aligned, _ = align_signs(components)
    directions = torch.stack([pca_direction(aligned, j, tuple(h.shape[2:])) for j in range(k)])
    return directions, np.stack([p.explained_variance_ratio_ for p in fitted])


def pca_effects(
    model,
    annotator,
    directions: torch.Tensor,
    scale: torch.Tensor,
    eval_seeds: list[int],
    *,
    steps: int,
    eta: float,
    gammas: list[float],
    random_seed: int = 0,
) -> list[dict]:
    """Per direction: mean change of every factor at each gamma (in stds of the unedited samples), the random
    baseline at +-max |gamma|, and the face rate of the edits."""
    n = len(eval_seeds)
    base = generate(model, annotator, eval_seeds, steps=steps, eta=eta)
    stds = {a: float(base.scores[a].std()) or 1.0 for a in FACTORS}
    g_max = max(abs(g) for g in gammas)
    generator = torch.Generator().manual_seed(random_seed)
    rows = []
    for j, unit in enumerate(directions):
        v = unit * scale.view(-1, 1, 1, 1)  # per-step norm: mean |h_t|
        r = random_direction_like(v, generator)
        edits = [g * v for g in gammas] + [g_max * r, -g_max * r]
        delta = torch.cat([e.expand(n, *e.shape) for e in edits])
        edited = generate(model, annotator, list(eval_seeds) * len(edits), steps=steps, eta=eta, delta=delta)
        parts = [slice(i * n, (i + 1) * n) for i in range(len(edits))]
        change = {
            a: [float((edited.scores[a][p] - base.scores[a]).mean()) / stds[a] for p in parts[: len(gammas)]]
            for a in FACTORS
        }
        random_abs = {
            a: float(np.abs(edited.scores[a][parts[-2].start :] - np.tile(base.scores[a], 2)).mean()) / stds[a]
            for a in FACTORS
        }
        faces_kept = float((edited.scores["face"][: len(gammas) * n] > FACE_THRESHOLD).mean())
        rows.append(
            {
                "direction": j,
                "change": change,
                "random_abs": random_abs,
                "face_rate": faces_kept,
                "base_face_rate": float((base.scores["face"] > FACE_THRESHOLD).mean()),
            }
        )
    return rows


def summarise(row: dict, gammas: list[float]) -> dict:
    """The factor a direction moves most, its curve over gamma (0 included), slope, monotonicity, ratio."""
    order = np.argsort(gammas)
    g = np.array([0.0] + [gammas[i] for i in order])
    lo, hi = int(np.argmin(gammas)), int(np.argmax(gammas))

    def swing(a: str) -> float:
        return abs(row["change"][a][hi] - row["change"][a][lo])

    ranked = sorted(FACTORS, key=swing, reverse=True)
    best = ranked[0]
    curve = np.array([0.0] + [row["change"][best][i] for i in order])
    by_gamma = curve[np.argsort(g)]
    steps = np.diff(by_gamma)
    return {
        "factor": best,
        "runner_up": ranked[1],
        "runner_up_swing": swing(ranked[1]),
        "curve": dict(zip(np.sort(g).tolist(), by_gamma.tolist(), strict=True)),
        "monotone": bool((steps > 0).all() or (steps < 0).all()),
        "slope": float(np.polyfit(g, curve, 1)[0]),
        "random_abs": row["random_abs"][best],
        "ratio": (swing(best) / 2) / max(row["random_abs"][best], 1e-12),
    }


def jacobian_locality(
    model, seeds: list[int], *, steps: int, step: int, eta: float, gamma: float, k: int = 1
) -> list[dict]:
    """Inside/outside mean |pixel change| of the masked and unmasked top Jacobian direction, per sample."""
    mask = mouth_mask(model.image_shape[-1])
    inside = torch.from_numpy(mask)
    rows = []
    for seed in seeds:
        state = state_at_step(model, seed, steps=steps, step=step, eta=eta)
        size = float(state.h_t.norm())
        found = {
            "masked": jacobian_directions(model, state.x_t, state.t, k, mask=mask),
            "unmasked": jacobian_directions(model, state.x_t, state.t, k),
        }
        deltas, labels = [], []
        for kind, result in found.items():
            v = gamma * size * result.directions[0]
            for where in ("all steps", "that step"):
                delta = torch.zeros(steps, *model.h_shape)
                if where == "all steps":
                    delta[:] = v
                else:
                    delta[step] = v
                deltas.append(delta)
                labels.append((kind, where))
        change = change_maps(model, seed, deltas, steps=steps, eta=eta)  # (runs, S, S)
        row = {
            "seed": seed,
            "h_norm": size,
            "converged": all(r.converged for r in found.values()),
            "sigma": {kind: float(r.singular_values[0]) for kind, r in found.items()},
        }
        for (kind, where), c in zip(labels, change, strict=True):
            row[(kind, where)] = {
                "inside": float(c[inside].mean()),
                "outside": float(c[~inside].mean()),
                "ratio": float(c[inside].mean() / c[~inside].mean()),
            }
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--components", type=int, default=5)
    parser.add_argument("--gammas", default="-1,-0.5,0.5,1")
    parser.add_argument("--jacobian-seeds", type=int, default=4)
    parser.add_argument("--jacobian-step", type=int, default=40)
    parser.add_argument("--jacobian-gamma", type=float, default=1.0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--skip-pca", action="store_true")
    parser.add_argument("--skip-jacobian", action="store_true")
    return parser.parse_args()


def report_pca(model, annotator, args: argparse.Namespace, gammas: list[float]) -> None:
    """Fit the PCA directions on a corpus, edit fresh samples with them and print one row per direction."""
    start = time.perf_counter()
    corpus = generate(model, annotator, derive_seeds(0, 0, args.samples), steps=args.steps, eta=args.eta, capture=True)
    directions, ratio = pca_directions(corpus.h, args.components)
    scale = h_scale(corpus.h)
    print(
        f"\nPCA corpus: {args.samples} samples (face rate "
        f"{(corpus.scores['face'] > FACE_THRESHOLD).mean():.2f}), {args.components} components per step, "
        f"{time.perf_counter() - start:.0f} s; mean |h_t| {float(scale.min()):.1f}..{float(scale.max()):.1f}; "
        f"explained variance ratio of components 1..{args.components} at the first/middle/last step: "
        + " / ".join(" ".join(f"{x:.3f}" for x in ratio[t]) for t in (0, args.steps // 2, -1)),
        flush=True,
    )
    start = time.perf_counter()
    rows = pca_effects(
        model,
        annotator,
        directions,
        scale,
        derive_seeds(1, 0, args.eval_samples),
        steps=args.steps,
        eta=args.eta,
        gammas=gammas,
    )
    print(
        f"PCA edits on {args.eval_samples} fresh samples (base seed 1), gamma in units of mean |h_t| "
        f"per step, {time.perf_counter() - start:.0f} s; change in stds of the unedited samples "
        f"(base face rate {rows[0]['base_face_rate']:.2f})"
    )
    g_sorted = sorted([0.0] + gammas)
    print(
        f"{'dir':>4} {'factor':>11} "
        + " ".join(f"{'g=' + format(g, 'g'):>7}" for g in g_sorted)
        + f" {'monotone':>9} {'slope':>7} {'random':>7} {'ratio':>7} {'faces':>6}  runner-up (swing)"
    )
    for row in rows:
        s = summarise(row, gammas)
        print(
            f"{row['direction'] + 1:>4} {s['factor']:>11} "
            + " ".join(f"{s['curve'][g]:>+7.2f}" for g in g_sorted)
            + f" {str(s['monotone']):>9} {s['slope']:>+7.3f} {s['random_abs']:>7.3f} {s['ratio']:>7.1f}"
            f" {row['face_rate']:>6.2f}  {s['runner_up']} ({s['runner_up_swing']:.2f})",
            flush=True,
        )


def report_jacobian(model, args: argparse.Namespace) -> None:
    """Find the masked and unmasked top Jacobian directions and print how local their edits are."""
    start = time.perf_counter()
    seeds = derive_seeds(7, 0, args.jacobian_seeds)
    rows = jacobian_locality(
        model, seeds, steps=args.steps, step=args.jacobian_step, eta=args.eta, gamma=args.jacobian_gamma
    )
    mask = mouth_mask(model.image_shape[-1])
    print(
        f"\nJacobian directions (k = 1, tol 1e-3) at step {args.jacobian_step} of {args.steps}, "
        f"{len(seeds)} samples (base seed 7), delta = {args.jacobian_gamma:g} |h_t| v, mouth mask rows "
        f"{np.nonzero(mask.any(1))[0].min()}..{np.nonzero(mask.any(1))[0].max()}, cols "
        f"{np.nonzero(mask.any(0))[0].min()}..{np.nonzero(mask.any(0))[0].max()} "
        f"({mask.mean():.1%} of the image), {time.perf_counter() - start:.0f} s; all converged: "
        f"{all(r['converged'] for r in rows)}"
    )
    print(
        f"{'direction':>10} {'applied at':>11} {'inside':>9} {'outside':>9} {'in/out mean':>12} {'min':>6} {'max':>6}"
    )
    for kind in ("masked", "unmasked"):
        for where in ("all steps", "that step"):
            cells = [r[(kind, where)] for r in rows]
            ratios = [c["ratio"] for c in cells]
            print(
                f"{kind:>10} {where:>11} {np.mean([c['inside'] for c in cells]):>9.4f} "
                f"{np.mean([c['outside'] for c in cells]):>9.4f} {np.mean(ratios):>12.2f} "
                f"{min(ratios):>6.2f} {max(ratios):>6.2f}"
            )


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gammas = [float(g) for g in args.gammas.split(",")]
    model = load_model("testbed")
    annotator = load_annotator("testbed")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; testbed, {args.steps} steps, eta {args.eta}",
        flush=True,
    )
    if not args.skip_pca:
        report_pca(model, annotator, args, gammas)
    if not args.skip_jacobian:
        report_jacobian(model, args)


if __name__ == "__main__":
    main()
