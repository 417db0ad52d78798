"""Flow ``fit_pca``: one task per step of a PCA run (Sec. IV-A), then sign alignment across steps."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from storage.pca_runs import PCARun
from tasks.pca import align_pca_run, fit_pca_step, prepare_pca


def check_fit_pca(parameters: dict[str, Any]) -> None:
    """The arguments, the corpus and the run are checked here (and the run created)."""
    prepare_pca(parameters["url"], **{k: parameters[k] for k in ("components", "run", "steps", "method", "batch_size")})


@checked_by(check_fit_pca)
@flow(name="fit-pca", task_runner=ThreadPoolTaskRunner(max_workers=1))
def fit_pca(
    url: str,
    components: int,
    run: str = "default",
    steps: list[int] | None = None,
    method: str | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit every missing step of PCA run ``run`` on the corpus at ``url``, align signs, return its info."""
    pca = prepare_pca(url, components=components, run=run, steps=steps, method=method, batch_size=batch_size)
    missing = pca.missing_steps()
    total = len(pca.spec.steps)
    bar = Progress(total=total, done=total - len(missing), desc=f"pca {run}", show=progress)
    submit_all(fit_pca_step, [(url, run, step, device) for step in missing], bar, device=device)
    # Signs only after every step is written (one writer of the sign array).
    align_pca_run.submit(url, run).result()
    return PCARun.open(url, run).info()
