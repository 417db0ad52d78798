"""Flow ``train_testbed``: train the testbed model on procedural faces and export it with its data card."""

from __future__ import annotations

from prefect import flow

from hspace.models import SHIPPED
from tasks.testbed import export_testbed_model, train_testbed_model


@flow(name="train-testbed")
def train_testbed(steps: int = 9000, seed: int = 0, batch: int = 32, checkpoints: str = ".train/testbed-ckpt",
                  out: str = str(SHIPPED["testbed"]), progress: bool = True) -> str:
    """Train (resuming from ``checkpoints``) and export to ``out``; returns the weights' sha256."""
    train_testbed_model(checkpoints, steps, seed, batch, progress)
    command = f"hspace testbed train --steps {steps} --seed {seed} --batch {batch}"
    return export_testbed_model(checkpoints, out, command)
