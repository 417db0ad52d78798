"""Alg. 1 (k vectors at once) against Alg. 2 with b = 1 (one at a time, the authors' way), side by side.

    python bench/bench_jacobian.py [--models tiny celebahq-shape] [--quick] [--k K] [--max-iter N]
                                   [--tol TOL] [--device cpu]

For each model, at one sampling step of one seed, the same J_t (Sec. IV-B) is decomposed three ways, all
stopped by the same test (every relative residual ||J^T u_i - sigma_i v_i|| / sigma_i <= tol, which bounds
each singular value's relative error), so they finish at equal accuracy:

* Alg. 1: all k vectors iterate together, one U-Net pass over k columns per JVP and per VJP;
* Alg. 1 + locking: the same, converged leading vectors stop iterating (``lock=True``);
* Alg. 2, b = 1: one vector at a time, deflating those found.

Printed per row: wall time, subspace iterations, column-iterations (J v and J^T u products computed: the
work), seconds per column-iteration, the largest residual, whether tol was met, the singular values'
largest relative difference to the Alg. 1 row and, for ``tiny``, to a dense SVD of the explicit Jacobian,
and Alg. 2's wall time over the row's.

Budget on this machine (2 CPU cores): ``tiny`` converges at k = 16 in seconds. ``celebahq-shape`` costs
about 21 s per column-iteration (a JVP of the up path, ~13.5 s, and a VJP, ~7.5 s, at 256 x 256; a plain
forward is ~5 s), so one Alg. 1 iteration at k = 16 alone takes ~6 minutes and convergence (hundreds of
column-iterations) takes hours. Its default run is therefore k = 4 and one iteration per vector: equal
work, not equal accuracy, which measures what batching buys per column on this hardware. The projected
line then multiplies that per-column ratio by the column-iteration ratio at equal accuracy measured on
``tiny`` -- a projection across models, labelled as such. Run it to convergence on a GPU with e.g.
``--models celebahq-shape --k 16 --max-iter 500 --device cuda``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hspace.hook import h_hook
from hspace.jacobian import JacobianResult, jacobian_directions, state_at_step
from hspace.models import load_model

# Per model: vectors k, stopping tolerance, iteration cap (per mini-batch for Alg. 2), columns per U-Net
# pass (memory: a celebahq-shape VJP holds ~2 GB of activations per column), and the step.
SETTINGS = {
    "tiny": {"k": 16, "tol": 1e-3, "max_iter": 5000, "chunk": None, "steps": 50, "step": 25},
    "celebahq-shape": {"k": 4, "tol": 1e-3, "max_iter": 1, "chunk": 4, "steps": 50, "step": 0},
}
QUICK = {
    "tiny": {"k": 16, "tol": 1e-2},
    "celebahq-shape": {"k": 2, "max_iter": 1},
}
RUNS = {
    "alg1": {"algorithm": "batched"},
    "alg1+lock": {"algorithm": "batched", "lock": True},
    "alg2 b=1": {"algorithm": "sequential", "block": 1},
}


def explicit_singular_values(model, state, k: int) -> torch.Tensor:
    """Top k singular values of the dense J (reverse mode, column by column): only for small models."""

    def eps_of_delta(delta):
        with h_hook(model.unet) as hook:
            hook.delta = delta.reshape(1, *model.h_shape)
            return model.unet(state.x_t, state.t).sample.reshape(-1)

    jac = torch.autograd.functional.jacobian(
        eps_of_delta, torch.zeros(int(np.prod(model.h_shape)), device=state.x_t.device), vectorize=True
    )
    return torch.linalg.svdvals(jac.double().cpu())[:k]


def time_runs(
    model, state, settings: dict, *, runs: dict[str, dict] | None = None, warm_up: bool
) -> dict[str, tuple[float, JacobianResult]]:
    """Wall time and result of each run (default :data:`RUNS`) on the same J_t, all stopped by ``settings``'
    tolerance; a run's own options (e.g. its ``max_iter``) take precedence over ``settings``.

    The clock is read after ``jacobian_directions`` returns its results on the CPU, so on a GPU it includes all
    the device work. ``warm_up`` first runs one iteration at k and at 1 column (first-call allocations and, on
    a GPU, kernel selection), untimed: cheap on ``tiny`` and on a GPU only.
    """
    options = {key: settings[key] for key in ("tol", "max_iter", "chunk")}
    if warm_up:
        for k in (settings["k"], 1):
            jacobian_directions(model, state.x_t, state.t, k, max_iter=1, chunk=settings["chunk"])
    results = {}
    for label, run in (RUNS if runs is None else runs).items():
        run = {**options, **run}
        if run.get("lock") and run["max_iter"] == 1:
            continue  # with one iteration nothing is ever locked: the same run as alg1
        start = time.perf_counter()
        result = jacobian_directions(model, state.x_t, state.t, settings["k"], **run)
        results[label] = (time.perf_counter() - start, result)
    return results


def bench(name: str, settings: dict, device: str) -> tuple[dict[str, tuple[float, JacobianResult]], str]:
    model = load_model(name, device=device)
    state = state_at_step(model, 0, steps=settings["steps"], step=settings["step"])
    results = time_runs(model, state, settings, warm_up=name == "tiny" or device != "cpu")
    reference = explicit_singular_values(model, state, settings["k"]) if name == "tiny" else None
    return results, _table(name, settings, state.t, results, reference)


def compare_runs(results: dict[str, tuple[float, JacobianResult]], reference: torch.Tensor | None) -> dict[str, dict]:
    """Per run: wall time, iterations, column-iterations (the work), seconds per column-iteration, the largest
    residual, whether tol was met, the singular values' largest relative difference to the ``alg1`` run and to
    ``reference`` (None without one), and the ``alg2 b=1`` run's wall time over this run's."""
    alg1 = results["alg1"][1].singular_values.double()
    alg2_time = results["alg2 b=1"][0]
    rows = {}
    for label, (seconds, r) in results.items():
        sigma = r.singular_values.double()
        rows[label] = {
            "seconds": seconds,
            "iterations": r.iterations,
            "column_iterations": r.column_iterations,
            "seconds_per_column_iteration": seconds / r.column_iterations,
            "max_residual": float(r.residuals.max()),
            "converged": r.converged,
            "dsigma_alg1": float(((sigma - alg1).abs() / alg1).max()),
            "dsigma_exact": None if reference is None else float(((sigma - reference).abs() / reference).max()),
            "alg2_over_this": alg2_time / seconds,
        }
    return rows


def _table(name, settings, t, results, reference) -> str:
    lines = [
        f"\n{name}: k = {settings['k']}, tol = {settings['tol']:g}, max_iter = {settings['max_iter']}, "
        f"chunk = {settings['chunk']}, step {settings['step']} of {settings['steps']} (t = {t}), seed 0"
    ]
    lines.append(
        f"{'run':<11}{'wall s':>9}{'iters':>7}{'col-its':>9}{'s/col-it':>10}{'max resid':>11}{'conv':>6}"
        f"{'dsigma alg1':>13}{'dsigma exact':>14}{'alg2/this':>11}"
    )
    for label, row in compare_runs(results, reference).items():
        exact = "" if row["dsigma_exact"] is None else f"{row['dsigma_exact']:.1e}"
        lines.append(
            f"{label:<11}{row['seconds']:>9.2f}{row['iterations']:>7}{row['column_iterations']:>9}"
            f"{row['seconds_per_column_iteration']:>10.4f}{row['max_residual']:>11.1e}{str(row['converged']):>6}"
            f"{row['dsigma_alg1']:>13.1e}{exact:>14}{row['alg2_over_this']:>11.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="smaller k / looser tol (about a minute in all)")
    parser.add_argument("--k", type=int, help="override k for every model")
    parser.add_argument("--max-iter", type=int, help="override the iteration cap for every model")
    parser.add_argument("--tol", type=float, help="override the tolerance for every model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    per_column = {}
    for name in args.models:
        settings = {**SETTINGS[name], **(QUICK[name] if args.quick else {})}
        settings.update(
            {
                key: value
                for key, value in (("k", args.k), ("max_iter", args.max_iter), ("tol", args.tol))
                if value is not None
            }
        )
        results, table = bench(name, settings, args.device)
        print(table, flush=True)
        per_column[name] = results
    if {"tiny", "celebahq-shape"} <= per_column.keys():
        # Projection: work ratio at equal accuracy (tiny) x per-column cost ratio (celebahq-shape).
        tiny, big = per_column["tiny"], per_column["celebahq-shape"]

        def cost(results, label):
            seconds, r = results[label]
            return seconds / r.column_iterations

        big_ratio = cost(big, "alg2 b=1") / cost(big, "alg1")
        print(
            f"\nprojected celebahq-shape speed-up at equal accuracy (per-column cost ratio {big_ratio:.2f} "
            "measured on celebahq-shape x column-iteration ratio measured on tiny):"
        )
        for label in ("alg1", "alg1+lock"):
            work = tiny["alg2 b=1"][1].column_iterations / tiny[label][1].column_iterations
            print(f"  alg2 b=1 / {label}: {big_ratio:.2f} x {work:.2f} = {big_ratio * work:.2f}")


if __name__ == "__main__":
    main()
