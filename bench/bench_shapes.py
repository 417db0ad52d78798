"""The cost of one 50-step sample for the real shapes of the three model kinds, on this machine.

    python bench/bench_shapes.py [--dry] [--models celebahq-shape ldm-celebahq-shape sd15-shape] [--steps 50]
                                 [--repeats 3] [--out DIR]

For each model (random weights, the exact architectures of ``google/ddpm-ema-celebahq-256``,
``CompVis/ldm-celebahq-256`` and Stable Diffusion 1.5 at 512 px): FLOPs of one sampling step (one U-Net pass;
for the text kind the guided pass at batch 2, unconditional and conditional), of the decoder and of the text
encoder (FlopCounterMode, batch 1), and their wall times (minimum of ``--repeats``, after a warm-up). One
sample of T steps then costs T step times + one decode (+ one text encoding of the prompt and the negative
prompt): the step is timed, not the whole loop, because a 50-step Stable Diffusion sample takes many minutes on
a 2-core CPU; the sampler's own per-step overhead (scheduler arithmetic, the h hook) is small beside a pass and
is left out. ``--dry`` runs the same code on the tiny models (``tests/bench/test_bench_shapes.py``).

Prints a table and one JSON object, also written to ``DIR/bench_shapes-<cpu|dry>-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from bench_env import environment
from torch.utils.flop_counter import FlopCounterMode

from hspace.conditioning import Conditioning
from hspace.models import LoadedModel, load_model
from hspace.sampler import guidance_of

MODELS = ("celebahq-shape", "ldm-celebahq-shape", "sd15-shape")
DRY_MODELS = ("tiny", "tiny-ldm", "tiny-sd")
PROMPT = Conditioning(prompt="a photo of a smiling face")  # guidance 7.5: two U-Net halves per step


def step_inputs(model: LoadedModel) -> tuple[torch.Tensor, dict[str, Any]]:
    """x_t and keyword arguments of one sampling step's U-Net pass for one sample (batch 2 when guided)."""
    dtype = next(model.unet.parameters()).dtype
    x = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(0)).to(model.unet.device, dtype)
    guidance = guidance_of(model, 1, None)
    if guidance is None:
        return x, {}
    if guidance.uncond is None:
        return x, {"encoder_hidden_states": guidance.cond}
    return torch.cat([x, x]), {"encoder_hidden_states": torch.cat([guidance.uncond, guidance.cond])}


def parts(model: LoadedModel) -> dict[str, Callable[[], object]]:
    """The work of one sample, by part: one step, the decoding, the text encoding (where the model has them)."""
    x, kwargs = step_inputs(model)
    work: dict[str, Callable[[], object]] = {"step": lambda: model.unet(x, 500, **kwargs)}
    if model.autoencoder is not None:
        latents = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(1))
        work["decode"] = lambda: model.decode(latents, 1)
    if model.text is not None and model.conditioning is not None:
        text, conditioning = model.text, model.conditioning
        work["text"] = lambda: text.embed([conditioning.prompt, conditioning.negative_prompt])
    return work


def flops(run: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def seconds(run: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` runs, after one warm-up."""
    times = []
    with torch.no_grad():
        run()
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, steps: int, repeats: int) -> dict[str, Any]:
    model = load_model(name)
    if model.kind == "text":
        model = model.conditioned(PROMPT)
    work = parts(model)
    row: dict[str, Any] = {
        "model": name,
        "kind": model.kind,
        "image_shape": list(model.image_shape),
        "latent_shape": list(model.latent_shape),
        "h_shape": list(model.h_shape),
        "parameters": sum(p.numel() for p in model.unet.parameters()),
        "guided": model.kind == "text",
    }
    for part, run in work.items():
        row[f"{part}_flops"] = flops(run)
        row[f"{part}_seconds"] = seconds(run, repeats)
    once = [part for part in work if part != "step"]
    row["sample_flops"] = steps * row["step_flops"] + sum(row[f"{p}_flops"] for p in once)
    row["sample_seconds"] = steps * row["step_seconds"] + sum(row[f"{p}_seconds"] for p in once)
    return row


def table(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        f"| model | kind | h | U-Net step (GFLOP / s) | decode (GFLOP / s) | {steps}-step sample (TFLOP / s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        decode = f"{r['decode_flops'] / 1e9:.0f} / {r['decode_seconds']:.2f}" if "decode_flops" in r else "-"
        lines.append(
            f"| {r['model']} | {r['kind']}{' (guided)' if r['guided'] else ''} | {'x'.join(map(str, r['h_shape']))} "
            f"| {r['step_flops'] / 1e9:.0f} / {r['step_seconds']:.2f} | {decode} "
            f"| {r['sample_flops'] / 1e12:.2f} / {r['sample_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="the tiny models: checks the script, measures nothing")
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder of the JSON")
    args = parser.parse_args(argv)
    names = args.models or (DRY_MODELS if args.dry else MODELS)
    started = datetime.now(UTC)
    rows = [measure(name, args.steps, args.repeats) for name in names]
    report = {
        "mode": "dry" if args.dry else "cpu",
        "started": started.isoformat(timespec="seconds"),
        "environment": environment("cpu"),
        "steps": args.steps,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"bench_shapes-{report['mode']}-{started:%Y%m%dT%H%M%SZ}.json").write_text(
        json.dumps(report, indent=1) + "\n"
    )
    print(table(rows, args.steps))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
