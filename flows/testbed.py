"""Flow ``train_testbed``: train the testbed model on procedural faces and export it with its data card."""

from __future__ import annotations

from prefect import flow

from hspace.models import SHIPPED
from hspace.testbed.train import TrainConfig
from tasks.testbed import export_testbed_model, train_testbed_model


@flow(name="train-testbed")
def train_testbed(
    steps: int = 9000,
    seed: int = 0,
    batch: int = 32,
    lr: float = 3e-4,
    init_from: str | None = None,
    checkpoints: str = ".train/testbed-ckpt",
    out: str = str(SHIPPED["testbed"]),
    progress: bool = True,
) -> str:
    """Train (resuming from ``checkpoints``) and export to ``out``; returns the weights' sha256."""
    config = TrainConfig(steps=steps, seed=seed, batch=batch, lr=lr, init_from=init_from)
    train_testbed_model(checkpoints, config, progress)
    command = f"hspace testbed train --steps {steps} --seed {seed} --batch {batch} --lr {lr:g}" + (
        f" --init-from {init_from}" if init_from else ""
    )
    return export_testbed_model(checkpoints, out, command)
