"""Does h control the testbed's factors? The measurements behind the testbed model's acceptance.

Each function takes a model and an annotator (scores of generated images; the renderer's labels do not
exist for generated samples) and returns plain dicts of numbers:

* :func:`sample_quality`: how often samples are faces, and how far each factor's distribution over
  samples is from the training data's (both scored by the same annotator, so its bias cancels).
* :func:`supervised_effects`: eq. 11 directions from top-k vs bottom-k annotated samples, applied to
  other samples at several gamma; the factor's change in units of its std over samples, against
  random directions with the same per-step norm (Fig. 4's baseline), and whether the edit is still a face.
* :func:`h_swap`: Fig. 2a, keep x_T and z of one sample and take h_{T:1} from another; how often each
  factor follows the h donor.
* :func:`per_step_r2`: held-out R^2 of a ridge regression from h_t to each factor, per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from hspace.annotators.base import Annotator
from hspace.directions import random_direction_like, supervised_direction, top_bottom
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.sampler import derive_seeds
from hspace.scoring import Samples, generate
from hspace.testbed.faces import BINARY_FACTORS, FACTORS, render_dataset

FACE_THRESHOLD = 0.5
STILL_A_FACE = 0.9  # share of edited samples the annotator must call faces


def _is_face(scores: dict[str, np.ndarray]) -> np.ndarray:
    return scores["face"] > FACE_THRESHOLD


def _wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    # Between two 1-D empirical distributions: mean gap of matched quantiles.
    q = np.linspace(0, 1, 201)
    return float(np.mean(np.abs(np.quantile(a, q) - np.quantile(b, q))))


def sample_quality(samples: Samples, annotator: Annotator, *, renders: int = 2000, seed: int = 12345) -> dict:
    """Face rate, and per factor: W1 distance between sample and training-data scores over the data's std
    (continuous factors) or the gap of positive rates (binary factors)."""
    images, _ = render_dataset(renders, seed=seed)
    reference = annotator.scores_by_attribute(images)
    distances = {}
    for factor in FACTORS:
        ours, theirs = samples.scores[factor], reference[factor]
        if factor in BINARY_FACTORS:
            ours_rate, theirs_rate = float((ours > 0.5).mean()), float((theirs > 0.5).mean())
            distances[factor] = {
                "measure": "|rate gap|",
                "value": abs(ours_rate - theirs_rate),
                "samples": ours_rate,
                "data": theirs_rate,
            }
        else:
            distances[factor] = {
                "measure": "W1 / data std",
                "value": _wasserstein1(ours, theirs) / float(theirs.std()),
                "samples": [float(ours.mean()), float(ours.std())],
                "data": [float(theirs.mean()), float(theirs.std())],
            }
    return {"face_rate": float(_is_face(samples.scores).mean()), "n": len(samples.seeds), "distances": distances}


def supervised_effects(
    model: LoadedModel,
    annotator: Annotator,
    corpus: Samples,
    *,
    k: int,
    eval_seeds: Sequence[int],
    steps: int,
    gammas: Sequence[float],
    factors: Sequence[str] = FACTORS,
    random_seed: int = 0,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """For each factor: the eq. 11 direction from the corpus (top-k minus bottom-k by the factor's score; a
    binary factor's k drawn from each side of 0.5, ``hspace.directions.top_bottom``), applied to fresh
    samples ``eval_seeds`` at each gamma, against a random direction with the same per-step norm (Fig. 4's
    baseline) at the same gamma.

    Effects are in units of the factor's std over the unedited samples. The direction's effect is the mean
    signed change; the random direction's is the mean *absolute* change, so a random edit that pushes
    samples both ways is not credited with cancelling out. A factor passes at the smallest gamma where the
    direction moves it by >= 1 std, >= 3x the random effect, with >= 90% of edits still faces.

    Returns
    -------
    figures : dict
    directions : dict of factor -> Tensor (T, C, H, W)
    """
    if corpus.h is None:
        raise HSpaceError("supervised_effects needs a corpus with captured h")
    base = generate(model, annotator, eval_seeds, steps=steps)
    n = len(eval_seeds)
    names = list(factors)
    generator = torch.Generator().manual_seed(random_seed)
    directions = {
        f: supervised_direction(
            *(corpus.h[i] for i in top_bottom(corpus.scores[f], k, threshold=annotator.class_thresholds.get(f)))
        )
        for f in names
    }
    randoms = {f: random_direction_like(v, generator) for f, v in directions.items()}
    stds = {a: float(base.scores[a].std()) or 1.0 for a in FACTORS}
    results: dict[str, dict] = {f: {"std": stds[f], "gammas": {}} for f in names}
    for gamma in gammas:
        # Every factor's edit and its random twin in one pass: per-sample deltas.
        delta = torch.cat([gamma * d[f].expand(n, *d[f].shape) for d in (directions, randoms) for f in names])
        edited = generate(model, annotator, list(eval_seeds) * (2 * len(names)), steps=steps, delta=delta)
        for j, (kind, f) in enumerate((kind, f) for kind in ("direction", "random") for f in names):
            part = slice(j * n, (j + 1) * n)
            change = {a: (edited.scores[a][part] - base.scores[a]) / stds[a] for a in FACTORS}
            faces = _is_face({a: s[part] for a, s in edited.scores.items()})
            # Side effects among the pairs where both images are faces: the factor scores of a non-face mean
            # nothing (the annotator was never asked to read factors off one).
            both = faces & _is_face(base.scores)
            results[f]["gammas"][str(gamma)] = results[f]["gammas"].get(str(gamma), {}) | {
                kind: {
                    "change_in_std": float(change[f].mean()),
                    "abs_change_in_std": float(np.abs(change[f]).mean()),
                    "face_rate": float(faces.mean()),
                    "others_in_std": {o: float(change[o].mean()) for o in FACTORS if o != f},
                    "others_in_std_faces": (
                        {o: float(change[o][both].mean()) for o in FACTORS if o != f} if both.any() else None
                    ),
                }
            }
    base_face_rate = float(_is_face(base.scores).mean())
    for result in results.values():
        # Two readings of "the image is still a face": the acceptance's absolute one (>= 90% of edits are
        # faces), and one relative to the unedited samples (the edit keeps >= 90% of their face rate), which
        # separates what an edit destroys from what the model never drew.
        result["passes_at_gamma"] = passing_gamma(result, STILL_A_FACE)
        result["passes_at_gamma_vs_base"] = passing_gamma(result, STILL_A_FACE * base_face_rate)
    return {
        "k": k,
        "corpus_samples": len(corpus.seeds),
        "eval_samples": n,
        "base_face_rate": base_face_rate,
        "factors": results,
    }, directions


def passing_gamma(result: dict, faces_needed: float) -> float | None:
    """The smallest gamma of one factor's :func:`supervised_effects` entry where the direction moves the factor
    by >= 1 std, >= 3x the random direction, with a share ``faces_needed`` of the edits still faces."""
    passing = [
        float(g)
        for g, e in result["gammas"].items()
        if e["direction"]["change_in_std"] >= 1.0
        and e["direction"]["face_rate"] >= faces_needed
        and e["direction"]["change_in_std"] >= 3 * e["random"]["abs_change_in_std"]
    ]
    return min(passing) if passing else None


def h_swap(
    model: LoadedModel, annotator: Annotator, corpus: Samples, *, pairs: int, steps: int
) -> tuple[dict, np.ndarray]:
    """Fig. 2a on ``pairs`` pairs of corpus samples: sample i (i < pairs) keeps its x_T and z and takes
    h_{T:1} from sample pairs + i. Per factor, among the pairs where the two differ (binary: on opposite
    sides of 0.5; continuous: more than half a std apart), the share of results closer to the h donor.

    Returns the figures and the swapped images (uint8, (pairs, 3, S, S))."""
    if corpus.h is None or len(corpus.seeds) < 2 * pairs:
        raise HSpaceError(
            f"h_swap needs a corpus with captured h and at least {2 * pairs} samples; got {len(corpus.seeds)}"
        )
    noise, donor = slice(0, pairs), slice(pairs, 2 * pairs)
    swapped = generate(model, annotator, corpus.seeds[noise], steps=steps, replace_h=corpus.h[donor])
    result = {}
    for f in FACTORS:
        sa, sb, sw = corpus.scores[f][noise], corpus.scores[f][donor], swapped.scores[f]
        if f in BINARY_FACTORS:
            differ = (sa > 0.5) != (sb > 0.5)
            follows = (sw > 0.5) == (sb > 0.5)
        else:
            differ = np.abs(sa - sb) > 0.5 * float(corpus.scores[f].std())
            follows = np.abs(sw - sb) < np.abs(sw - sa)
        result[f] = {
            "pairs_that_differ": int(differ.sum()),
            "follows_h_donor": float(follows[differ].mean()) if differ.any() else None,
        }
    return {"pairs": pairs, "face_rate": float(_is_face(swapped.scores).mean()), "factors": result}, swapped.images


def per_step_r2(corpus: Samples, *, train_fraction: float = 0.75) -> dict:
    """Held-out R^2 of a ridge regression (alpha by cross-validation) from h_t to each factor's score, per
    step (binary factors regress their probability)."""
    from sklearn.linear_model import RidgeCV

    if corpus.h is None:
        raise HSpaceError("per_step_r2 needs a corpus with captured h")
    n, steps = corpus.h.shape[:2]
    cut = int(n * train_fraction)
    r2: dict[str, list[float]] = {f: [] for f in FACTORS}
    for t in range(steps):
        x = corpus.h[:, t].flatten(1).numpy().astype(np.float64)
        for f in FACTORS:
            y = corpus.scores[f].astype(np.float64)
            fitted = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x[:cut], y[:cut])
            r2[f].append(float(fitted.score(x[cut:], y[cut:])))
    return {"train": cut, "test": n - cut, "r2": r2}


def report(
    model: LoadedModel,
    annotator: Annotator,
    *,
    samples: int = 512,
    eval_samples: int = 64,
    k: int | None = None,
    steps: int = 50,
    gammas: Sequence[float] = (1.0, 2.0),
    seed: int = 0,
    swap_pairs: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Everything above on one corpus of ``samples`` samples (eta 1).

    Returns a dict: ``figures`` (JSON-ready), ``directions`` (factor -> (T, C, H, W)), ``corpus``
    (:class:`Samples`) and ``swapped`` (the h-swap images)."""
    say = progress or (lambda message: None)
    if samples < max(2 * swap_pairs, 8):
        raise HSpaceError(f"samples must be at least {max(2 * swap_pairs, 8)} (twice the h-swap pairs); got {samples}")
    say(f"sampling and annotating {samples} samples with h_{{T:1}} ({steps} steps)")
    corpus = generate(model, annotator, derive_seeds(seed, 0, samples), steps=steps, capture=True)
    k = k or samples // 4
    say(f"supervised directions (k = {k}) on {eval_samples} fresh samples at gamma {list(gammas)}")
    supervised, directions = supervised_effects(
        model, annotator, corpus, k=k, steps=steps, gammas=gammas, eval_seeds=derive_seeds(seed + 1, 0, eval_samples)
    )
    say(f"h swap on {swap_pairs} pairs")
    swap, swapped = h_swap(model, annotator, corpus, pairs=swap_pairs, steps=steps)
    say("per-step R^2")
    figures = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "steps": steps,
        "eta": 1.0,
        "seed": seed,
        "annotator": annotator.name,
        "quality": sample_quality(corpus, annotator),
        "supervised": supervised,
        "h_swap": swap,
        "per_step_r2": per_step_r2(corpus),
    }
    return {"figures": figures, "directions": directions, "corpus": corpus, "swapped": swapped}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def to_markdown(figures: dict) -> str:
    """The figures of :func:`report` as a markdown document."""
    quality = figures["quality"]
    lines = [
        f"# Testbed report: {figures['model']} (fingerprint {figures['fingerprint'][:12]}...)",
        "",
        f"{quality['n']} samples, {figures['steps']} DDIM steps, eta {figures['eta']}, seed {figures['seed']}; "
        f"scores from the `{figures['annotator']}` annotator.",
        *_quality_section(quality),
        *_supervised_section(figures["supervised"]),
        *_swap_section(figures["h_swap"]),
        *_r2_section(figures["per_step_r2"]),
    ]
    return "\n".join(lines) + "\n"


def _quality_section(quality: dict) -> list[str]:
    lines = [
        "",
        "## Samples",
        "",
        f"Face rate: **{quality['face_rate']:.3f}** (annotator face probability > 0.5).",
        "",
        "| factor | distance to training data | measure | samples | data |",
        "|---|---|---|---|---|",
    ]
    for f, d in quality["distances"].items():
        fmt = (
            (lambda v: f"{v:.3f}")
            if not isinstance(d["samples"], list)
            else (lambda v: f"mean {v[0]:.3f}, std {v[1]:.3f}")
        )
        lines.append(f"| {f} | {d['value']:.3f} | {d['measure']} | {fmt(d['samples'])} | {fmt(d['data'])} |")
    return lines


def _supervised_section(supervised: dict) -> list[str]:
    gammas = list(next(iter(supervised["factors"].values()))["gammas"])
    lines = [
        "",
        f"## Supervised h directions (eq. 11, top {supervised['k']} vs bottom {supervised['k']} of "
        f"{supervised['corpus_samples']}), applied to {supervised['eval_samples']} fresh samples",
        "",
        "Change of the factor's score in stds of the unedited samples: direction (mean signed change) / "
        "random direction with the same per-step norm (mean absolute change) / share of edits still faces. "
        f"Pass: >= 1 std, >= 3x random, and >= 90% of edits faces (absolute) or >= 90% of the unedited "
        f"samples' face rate, {supervised['base_face_rate']:.2f} (vs unedited).",
        "",
        "| factor | "
        + " | ".join(f"gamma {g}" for g in gammas)
        + " | passes at gamma (absolute) | passes at gamma (vs unedited) | largest side effect (largest gamma "
        "with edits still faces; among those pairs) |",
        "|---|" + "---|" * (len(gammas) + 3),
    ]
    for f, result in supervised["factors"].items():
        cells = [
            f"{e['direction']['change_in_std']:+.2f} / {e['random']['abs_change_in_std']:.2f} / "
            f"{e['direction']['face_rate']:.2f}"
            for e in result["gammas"].values()
        ]
        lines.append(
            f"| {f} | " + " | ".join(cells) + f" | {_fmt(result['passes_at_gamma'], 1)} | "
            f"{_fmt(result.get('passes_at_gamma_vs_base'), 1)} | {_largest_side_effect(result)} |"
        )
    return lines


def _largest_side_effect(result: dict) -> str:
    """The other factor that moves most, at the largest gamma at which some edited pairs are still faces."""
    found = [
        (g, e["direction"]["others_in_std_faces"])
        for g, e in result["gammas"].items()
        if e["direction"].get("others_in_std_faces")
    ]
    if not found:
        return "n/a"
    gamma, others = found[-1]
    name = max(others, key=lambda o: abs(others[o]))
    return f"{name} {others[name]:+.2f} (gamma {gamma})"


def _swap_section(swap: dict) -> list[str]:
    lines = [
        "",
        f"## h swap (Fig. 2a): x_T and z from one sample, h_{{T:1}} from another, {swap['pairs']} pairs",
        "",
        f"Swapped results that are faces: {swap['face_rate']:.3f}.",
        "",
        "| factor | pairs that differ | share following the h donor |",
        "|---|---|---|",
    ]
    for f, d in swap["factors"].items():
        lines.append(f"| {f} | {d['pairs_that_differ']} | {_fmt(d['follows_h_donor'])} |")
    return lines


def _r2_section(r2: dict) -> list[str]:
    steps = len(next(iter(r2["r2"].values())))
    shown = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    lines = [
        "",
        f"## Per-step R^2 of a ridge regression h_t -> factor score ({r2['train']} train, {r2['test']} held out)",
        "",
        "Step 1 is the first sampling step (t = T). Full curves in report.json and r2.png.",
        "",
        "| factor | " + " | ".join(f"step {i + 1}" for i in shown) + " | best (step) |",
        "|---|" + "---|" * (len(shown) + 1),
    ]
    for f, values in r2["r2"].items():
        best = int(np.argmax(values))
        lines.append(
            f"| {f} | " + " | ".join(f"{values[i]:.2f}" for i in shown) + f" | {values[best]:.2f} ({best + 1}) |"
        )
    return lines
