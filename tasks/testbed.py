"""Testbed tasks: train the testbed diffusion model (resumable), export it as a shipped model folder."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from hspace.testbed.train import TrainConfig, export_model, train


@task(cache_policy=NO_CACHE)
def train_testbed_model(checkpoints: str, config: TrainConfig, progress: bool = True) -> int:
    """Train to ``config.steps`` from the last checkpoint in ``checkpoints``; returns the steps done."""
    with tqdm(total=config.steps, desc="train testbed", unit="step", disable=not progress) as bar:

        def report(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.refresh()

        log = train(config, Path(checkpoints), progress=report)
    return int(log["step"])


@task(cache_policy=NO_CACHE)
def export_testbed_model(checkpoints: str, out: str, command: str) -> str:
    """Write the EMA weights and data card into ``out``; returns the weights' sha256."""
    return str(export_model(Path(checkpoints), Path(out), command=command)["sha256"])
