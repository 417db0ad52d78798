"""``bench/bench_shapes.py --dry``: the per-sample cost of the three kinds runs end to end on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from hspace.conditioning import Conditioning
from hspace.models import load_model

SCRIPT = Path(__file__).parents[2] / "bench" / "bench_shapes.py"


def test_the_dry_run_reports_every_kind(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--steps", "4", "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    [written] = tmp_path.glob("bench_shapes-dry-*.json")
    assert json.loads(written.read_text()) == report
    rows = {row["model"]: row for row in report["rows"]}
    assert [rows[m]["kind"] for m in ("tiny", "tiny-ldm", "tiny-sd")] == ["pixel", "latent", "text"]
    for row in rows.values():
        once = [p for p in ("decode", "text") if f"{p}_flops" in row]
        assert row["sample_flops"] == 4 * row["step_flops"] + sum(row[f"{p}_flops"] for p in once)
        assert row["step_seconds"] > 0
    assert "decode_flops" not in rows["tiny"] and "text_flops" in rows["tiny-sd"]
    # A guided step is two U-Net halves: twice the FLOPs of one conditional pass, counted here on its own.
    model = load_model("tiny-sd", conditioning=Conditioning(guidance=1.0))
    cond = model.text.embed(["a photo of a smiling face"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.unet(torch.zeros(1, *model.latent_shape), 500, encoder_hidden_states=cond)
    assert rows["tiny-sd"]["step_flops"] == 2 * counter.get_total_flops()
