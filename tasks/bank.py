"""Bank tasks: gather a corpus's directions, publish them with their evaluation (``tasks.evaluate``) as a bank version.

Each task reads its inputs from storage and returns small things (names, a version, a path).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.bank import Direction, publish
from hspace.errors import HSpaceError
from hspace.evaluate import EvaluationResult
from hspace.files import browser_link, write_whole_files
from hspace.render import png_bytes
from storage.corpus import Corpus
from storage.directions import read_direction
from storage.evaluations import stored_evaluation
from storage.pca_runs import PCARun, read_pca_directions


def pca_direction_name(j: int) -> str:
    return f"pca-{j}"


def gather_directions(
    url: str, *, supervised: list[str], pca_run: str | None, pca_directions: int
) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """name -> (tensor (T, C, H, W), bank metadata) for the named corpus directions and the top PCA ones.

    PCA direction j is component j at every step (Sec. IV-A), scaled at each step by the square root of that
    step's explained variance, so that gamma = 1 moves h_t by one standard deviation of the samples along
    the component: comparable across steps and with supervised directions, whose size eq. 11 fixes.
    """
    corpus = Corpus.open(url)
    out: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for name in supervised:
        tensor, record = read_direction(corpus, name)
        if record.space != "h":
            raise HSpaceError(f"direction {name!r} lives in x_T; a bank holds h-space directions (T, C, H, W)")
        out[name] = (tensor, {"method": record.method, "parameters": record.parameters, "source": record.source})
    if pca_run is not None and pca_directions > 0:
        run = PCARun.open(url, pca_run)
        if pca_directions > run.spec.components:
            raise HSpaceError(
                f"PCA run {pca_run!r} has {run.spec.components} components; asked for the top {pca_directions}"
            )
        directions = read_pca_directions(url, pca_run, list(range(pca_directions)))
        variances = run.explained_variances()
        for j in range(pca_directions):
            scaled = directions[j].copy()
            for i, step in enumerate(run.spec.steps):
                scaled[step] *= float(np.sqrt(variances[i, j]))
            out[pca_direction_name(j)] = (
                scaled,
                {
                    "method": "pca",
                    "source": url,
                    "parameters": {
                        "run": pca_run,
                        "component": j,
                        "components": run.spec.components,
                        "method": run.spec.method,
                        "scale": "sqrt(explained variance) per step",
                    },
                },
            )
    return out


def write_report(result: EvaluationResult, folder: str) -> list[str]:
    """evaluation.csv, evaluation.md and evaluation.png, each written whole, into ``folder`` (a path or a URL)."""
    return write_whole_files(
        folder,
        {
            "evaluation.csv": result.to_csv().encode(),
            "evaluation.md": (result.to_markdown("std") + "\n" + result.to_markdown("score")).encode(),
            "evaluation.png": png_bytes(result.heatmap("std")),
        },
    )


def report_markdown(result: EvaluationResult, files: list[str]) -> str:
    """The evaluation's artifact: Table I in stds, and its heatmap, shown where the report's store gives it an
    address a browser can load (``hspace.files.browser_link``), else named."""
    picture = next(f for f in files if f.endswith(".png"))
    link = browser_link(picture)
    shown = f"![Table I heatmap]({link})" if link else f"Heatmap: `{picture}` (a local file: the UI cannot show it)"
    return f"{result.to_markdown('std')}\n\n{shown}\n"


def direction_evaluation(result: EvaluationResult, name: str) -> dict[str, Any]:
    """One direction's row of Table I (and its random twin's) for the bank's ``evaluation`` field."""
    rows = list(result.rows)
    summary: dict[str, Any] = {"settings": result.settings, "attributes": list(result.attributes)}
    for label, row in (("effect", name), ("random", f"random({name})")):
        if row in rows:
            i = rows.index(row)
            summary[label] = {
                "mean": result.mean()[i].tolist(),
                "std": result.std()[i].tolist(),
                "mean_in_std": result.mean("std")[i].tolist(),
            }
    return summary


@task(cache_policy=NO_CACHE, task_run_name="publish-bank")
def publish_bank(
    url: str,
    bank: str,
    names: list[str],
    *,
    pca_run: str | None,
    pca_directions: int,
    supervised: list[str],
    evaluation_key: str | None,
    notes: str | None = None,
) -> str:
    """Publish ``names`` with their evaluation rows as a new bank version (a no-op if the newest version
    already holds exactly this content); returns the version."""
    corpus = Corpus.open(url)
    spec = corpus.spec
    found = gather_directions(url, supervised=supervised, pca_run=pca_run, pca_directions=pca_directions)
    result = None if evaluation_key is None else stored_evaluation(corpus, evaluation_key)
    if evaluation_key is not None and result is None:
        raise HSpaceError(f"evaluation {evaluation_key} is not in the corpus at {url}; rerun the evaluation")
    directions = [
        Direction(
            name=name,
            tensor=torch.from_numpy(np.ascontiguousarray(found[name][0], dtype=np.float32)),
            method=found[name][1]["method"],
            parameters=found[name][1]["parameters"],
            source=found[name][1]["source"],
            fingerprint=spec.fingerprint,
            evaluation={} if result is None else direction_evaluation(result, name),
        )
        for name in names
    ]
    return publish(
        bank,
        directions,
        model_fingerprint=spec.fingerprint,
        eta=list(spec.eta),
        timesteps=list(spec.timesteps),
        notes=notes,
        precision=spec.precision,
        conditioning=spec.conditioning,
    )
