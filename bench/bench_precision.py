"""bf16 and fp16 vs fp32 on the CPU: how far h and the images move, and what bf16 does to the testbed's edits.

    python bench/bench_precision.py [--samples 8] [--steps 50] [--eta 1] [--big-samples 1] [--big-steps 10]
                                    [--corpus 64] [--k 16] [--eval-samples 16] [--gamma 1] [--microbatch 64]
                                    [--eval-batch 128] [--threads N] [--skip-big] [--skip-directions]
                                    [--skip-bf16-corpus] [--out bench/results/precision-cpu.json]

Drift (``testbed`` and ``celebahq-shape``). The same seeds (``derive_seeds(0, 0, n)``) and eta are sampled
with the U-Net loaded in fp32, bf16 and fp16 (``load_model(precision=...)``; the scheduler stays float32),
one sample per U-Net pass (the sampler's CPU default). Per step t and sample: the relative error
|h_p,t - h_32,t| / |h_32,t|; the table gives its mean over samples at the first and last step, and the mean
and max of that over steps. Images: mean |x0_p - x0_32| in [0, 1] units, and in uint8 levels of the rounded
images (``to_uint8``, what a corpus stores) with the largest level difference. ``--samples``/``--steps`` size
the testbed, ``--big-samples``/``--big-steps`` celebahq-shape (113.7M parameters, 256x256, random weights:
about 7-20 s per forward on 2 loaded cores, so 1 x 10 is about 5 minutes for the three precisions).

Supervised directions (testbed). The library's eq. 11 as ``hspace demo`` applies it (``top_bottom`` with the
annotator's class thresholds for binary factors, then ``supervised_direction``) on a corpus of ``--corpus``
samples (base seed 0, ``hspace.evaluate.generate``, ``--microbatch`` samples per pass), one direction per
attribute of ``ATTRIBUTES``. (a) The fp32 corpus's directions are evaluated (``evaluate_directions``: the
same ``--eval-samples`` fresh seeds, base seed 1, one repeat, gamma ``--gamma``, no random baseline, every
edit and the unedited samples in shared passes of ``--eval-batch``) with the U-Net in fp32 and in bf16; the
own-factor change is the mean annotator score change, edited minus unedited, and its difference between the
two. (b) The same corpus sampled in bf16 gives its own directions (from its own
scores): cosine similarity with the fp32 ones per attribute, their norm ratio, and the share of the eq. 11
examples both corpora pick.

Measured figures: docs/results.md, "Precision: bf16 and fp16 vs fp32 on the CPU". Wall times in the JSON are
those of whatever machine ran it (the load average is recorded beside them): not a speed measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hspace.annotators import load_annotator
from hspace.annotators.base import Annotator
from hspace.directions import supervised_direction, top_bottom
from hspace.evaluate import evaluate_directions
from hspace.models import load_model
from hspace.sampler import derive_seeds, sample, to_uint8
from hspace.scoring import Samples, generate

ATTRIBUTES = ("yaw", "smile", "eyes_open", "glasses", "hat", "skin_tone")
LOWER = ("bf16", "fp16")


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite figure is written as null."""
    return float(x) if np.isfinite(x) else None


# --------------------------------------------------------------------------------------------------------
# Drift of h and of the images


def h_relative_error(h: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """|h_t - h_32,t| / |h_32,t| per step, mean over samples: (T,) from two (n, T, C, H, W) tensors."""
    diff = (h.double() - reference.double()).flatten(2).norm(dim=2)
    return (diff / reference.double().flatten(2).norm(dim=2)).mean(0).numpy()


def image_error(images: torch.Tensor, reference: torch.Tensor) -> dict:
    """Mean |x0 - x0_32| in [0, 1] units; mean and max difference of the uint8 images in levels."""
    levels = (to_uint8(images).int() - to_uint8(reference).int()).abs()
    return {
        "mae": finite_or_none(float((images.double() - reference.double()).abs().mean())),
        "mae_uint8": float(levels.double().mean()),
        "max_uint8": int(levels.max()),
        "changed_uint8_share": float((levels > 0).double().mean()),
    }


def drift(name: str, samples: int, steps: int, eta: float) -> dict:
    """Sample the same seeds with ``name`` in fp32, bf16 and fp16; h and image errors of each vs fp32."""
    seeds = derive_seeds(0, 0, samples)
    results = {}
    for precision in ("fp32", *LOWER):
        start = time.perf_counter()
        model = load_model(name, precision=precision)
        results[precision] = (sample(model, seeds, steps=steps, eta=eta), time.perf_counter() - start)
        print(f"  {name} {precision}: {results[precision][1]:.0f} s", flush=True)
    reference = results["fp32"][0]
    assert reference.h is not None  # sample captures h by default
    figures: dict = {"model": name, "samples": samples, "steps": steps, "eta": eta, "seeds": seeds}
    figures["wall_s"] = {p: round(t, 1) for p, (_, t) in results.items()}
    for precision in LOWER:
        result = results[precision][0]
        assert result.h is not None
        error = h_relative_error(result.h, reference.h)
        figures[precision] = {
            "h_rel_error_per_step": [finite_or_none(e) for e in error],
            "h_rel_error_mean": finite_or_none(error.mean()),
            "h_rel_error_max": finite_or_none(error.max()),
            "h_rel_error_first": finite_or_none(error[0]),
            "h_rel_error_last": finite_or_none(error[-1]),
            "h_nonfinite": int((~torch.isfinite(result.h)).sum()),
            "image": image_error(result.images, reference.images),
        }
    return figures


def print_drift(rows: list[dict]) -> None:
    """One line per model and precision."""
    print(
        f"\n{'model':>15} {'prec':>5} {'n x T':>7}  {'h rel. error per step: mean':>27} {'max':>8} {'first':>8} "
        f"{'last':>8}  {'image MAE':>9} {'uint8 MAE':>9} {'max':>4} {'changed':>8}"
    )
    for row in rows:
        for precision in LOWER:
            f, im = row[precision], row[precision]["image"]

            def pct(x: float | None) -> str:
                return "nan" if x is None else f"{100 * x:.3f}%"

            mae = "nan" if im["mae"] is None else f"{im['mae']:.2e}"
            print(
                f"{row['model']:>15} {precision:>5} {row['samples']:>3}x{row['steps']:<3}  "
                f"{pct(f['h_rel_error_mean']):>27} {pct(f['h_rel_error_max']):>8} "
                f"{pct(f['h_rel_error_first']):>8} {pct(f['h_rel_error_last']):>8}  {mae:>9} "
                f"{im['mae_uint8']:>9.3f} {im['max_uint8']:>4} {100 * im['changed_uint8_share']:>7.1f}%"
            )


# --------------------------------------------------------------------------------------------------------
# Supervised directions on the testbed


def corpus(precision: str, annotator: Annotator, args: argparse.Namespace) -> Samples:
    """``--corpus`` testbed samples (base seed 0) in ``precision``, with h_{T:1} and the annotator's scores."""
    start = time.perf_counter()
    model = load_model("testbed", precision=precision)
    seeds = derive_seeds(0, 0, args.corpus)
    result = generate(model, annotator, seeds, steps=args.steps, eta=args.eta, capture=True, batch=args.microbatch)
    print(f"  corpus {precision}: {args.corpus} samples, {time.perf_counter() - start:.0f} s", flush=True)
    return result


def directions_of(samples: Samples, annotator: Annotator, k: int) -> tuple[dict, dict]:
    """eq. 11 per attribute as ``hspace demo`` builds it (class thresholds for binary factors).

    Returns the directions, (T, C, H, W) each, and the example indices (positives, negatives) of each."""
    assert samples.h is not None  # corpus() captures h
    examples = {a: top_bottom(samples.scores[a], k, threshold=annotator.class_thresholds.get(a)) for a in ATTRIBUTES}
    directions = {a: supervised_direction(samples.h[pos], samples.h[neg]) for a, (pos, neg) in examples.items()}
    return directions, examples


def own_factor_changes(directions: dict, annotator: Annotator, args: argparse.Namespace) -> dict:
    """Table I of the fp32 directions with the U-Net in fp32 and in bf16: the same seeds, gamma and batches."""
    tables = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        tables[precision] = evaluate_directions(
            load_model("testbed", precision=precision),
            annotator,
            directions,
            gamma=args.gamma,
            steps=args.steps,
            eta=args.eta,
            samples=args.eval_samples,
            repeats=1,
            seed=1,
            random_baseline=False,
            batch=args.eval_batch,
        )
        print(f"  evaluation {precision}: {time.perf_counter() - start:.0f} s", flush=True)
    fp32_std = tables["fp32"].scale  # one unit for both columns: std of the fp32 unedited scores
    own = {}
    for j, a in enumerate(tables["fp32"].attributes):
        if a not in directions:
            continue
        change = {p: t.effect(a, a) for p, t in tables.items()}
        own[a] = {
            "fp32": change["fp32"],
            "bf16": change["bf16"],
            "difference": change["bf16"] - change["fp32"],
            "fp32_std_of_unedited": float(fp32_std[j]),
            "fp32_in_std": change["fp32"] / float(fp32_std[j]),
            "bf16_in_std": change["bf16"] / float(fp32_std[j]),
            "largest_side_effect_gap": largest_gap(tables, a),
        }
    return {"own_factor": own, "tables": {p: t.to_dict() for p, t in tables.items()}}


def largest_gap(tables: dict, row: str) -> dict:
    """The attribute of a row whose change differs most between bf16 and fp32 (score units)."""
    gaps = {a: tables["bf16"].effect(row, a) - tables["fp32"].effect(row, a) for a in tables["fp32"].attributes}
    worst = max(gaps, key=lambda a: abs(gaps[a]))
    return {"attribute": worst, "difference": gaps[worst]}


def direction_agreement(ours: tuple[dict, dict], theirs: tuple[dict, dict]) -> dict:
    """Per attribute: cosine similarity of two corpora's directions (all steps flattened), norm ratio, and the
    share of eq. 11 examples (positives and negatives) that both pick."""
    (v_ours, ex_ours), (v_theirs, ex_theirs) = ours, theirs
    figures = {}
    for a in ATTRIBUTES:
        x, y = v_ours[a].flatten().double(), v_theirs[a].flatten().double()
        shared = sum(len(np.intersect1d(p, q)) for p, q in zip(ex_ours[a], ex_theirs[a], strict=True))
        figures[a] = {
            "cosine": float(x @ y / (x.norm() * y.norm())),
            "norm_ratio": float(x.norm() / y.norm()),
            "shared_examples": shared / sum(len(p) for p in ex_theirs[a]),
        }
    return figures


def supervised(args: argparse.Namespace) -> dict:
    """Parts (a) and (b) of the module docstring."""
    annotator = load_annotator("testbed")
    fp32 = corpus("fp32", annotator, args)
    found32 = directions_of(fp32, annotator, args.k)
    figures = {
        "corpus": args.corpus,
        "k": args.k,
        "eval_samples": args.eval_samples,
        "gamma": args.gamma,
        "microbatch": args.microbatch,
        "eval_batch": args.eval_batch,
        "corpus_face_rate": float((fp32.scores["face"] > 0.5).mean()),
    }
    figures |= own_factor_changes(found32[0], annotator, args)
    if not args.skip_bf16_corpus:
        bf16 = corpus("bf16", annotator, args)
        figures["bf16_corpus_vs_fp32"] = direction_agreement(directions_of(bf16, annotator, args.k), found32)
        assert bf16.h is not None and fp32.h is not None
        figures["corpus_h_rel_error_mean"] = float(h_relative_error(bf16.h, fp32.h).mean())
        figures["corpus_image"] = image_error(
            torch.from_numpy(bf16.images).float() / 255, torch.from_numpy(fp32.images).float() / 255
        )
    return figures


def print_supervised(figures: dict) -> None:
    """Own-factor change in fp32 and bf16, and the bf16 corpus's agreement, one line per attribute."""
    print(
        f"\ntestbed directions from {figures['corpus']} fp32 samples (k {figures['k']}), applied at gamma "
        f"{figures['gamma']:g} to {figures['eval_samples']} fresh samples: own-factor change (score units; "
        "in std of the fp32 unedited scores)"
    )
    agree = figures.get("bf16_corpus_vs_fp32", {})
    print(
        f"{'attribute':>10} {'fp32':>8} {'bf16':>8} {'bf16-fp32':>10} {'fp32 std':>9} {'bf16 std':>9}"
        f"  {'largest other gap':>24}"
        + (f"  {'cos(bf16 corpus)':>16} {'norm ratio':>10} {'shared':>7}" if agree else "")
    )
    for a, f in figures["own_factor"].items():
        gap = f["largest_side_effect_gap"]
        line = (
            f"{a:>10} {f['fp32']:>+8.3f} {f['bf16']:>+8.3f} {f['difference']:>+10.4f} {f['fp32_in_std']:>+9.2f} "
            f"{f['bf16_in_std']:>+9.2f}  {gap['attribute'] + ' ' + format(gap['difference'], '+.4f'):>24}"
        )
        if agree:
            g = agree[a]
            line += f"  {g['cosine']:>16.4f} {g['norm_ratio']:>10.4f} {100 * g['shared_examples']:>6.0f}%"
        print(line)


# --------------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="testbed samples for the drift")
    parser.add_argument("--steps", type=int, default=50, help="testbed DDIM steps (drift and directions)")
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--big-samples", type=int, default=1, help="celebahq-shape samples for the drift")
    parser.add_argument("--big-steps", type=int, default=10, help="celebahq-shape DDIM steps")
    parser.add_argument("--corpus", type=int, default=64, help="testbed corpus for eq. 11")
    parser.add_argument("--k", type=int, default=16, help="eq. 11 examples per side")
    parser.add_argument("--eval-samples", type=int, default=16)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--microbatch", type=int, default=64, help="samples per U-Net pass, corpora")
    parser.add_argument(
        "--eval-batch", type=int, default=8, help="samples per U-Net pass, evaluation (each with all its edits)"
    )
    parser.add_argument("--threads", type=int)
    parser.add_argument("--skip-big", action="store_true", help="no celebahq-shape")
    parser.add_argument("--skip-directions", action="store_true")
    parser.add_argument("--skip-bf16-corpus", action="store_true", help="no part (b)")
    parser.add_argument("--out", default="bench/results/precision-cpu.json")
    return parser.parse_args()


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "load_average_at_start": os.getloadavg(),
        "drift": [],
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {report['cpu']}", flush=True)
    runs = [("testbed", args.samples, args.steps)]
    if not args.skip_big:
        runs.append(("celebahq-shape", args.big_samples, args.big_steps))
    for name, samples, steps in runs:
        report["drift"].append(drift(name, samples, steps, args.eta))
    print_drift(report["drift"])
    if not args.skip_directions:
        report["supervised"] = supervised(args)
        print_supervised(report["supervised"])
    report["load_average_at_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
