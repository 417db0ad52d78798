"""Flow ``rebuild_bank``: corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> publish.

Every stage skips the work already done (the corpus its done shards, the annotations their done shards,
PCA its done steps, the evaluation a stored result with the same key, the bank a version with the same
content), so a scheduled rebuild with nothing new publishes nothing new, and a rerun after a crash at any
point finishes the job with the result an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

from prefect import flow

from flows.annotate import annotate
from flows.corpus import build_corpus, task_runner
from flows.directions import disentangled, supervised
from flows.pca import fit_pca
from flows.server import prefect_api_for_workers
from hspace.errors import HSpaceError
from hspace.names import check_name
from hspace.testbed.annotator import CLASS_THRESHOLDS
from tasks.bank import evaluate_bank_directions, pca_direction_name, publish_bank
from tasks.corpus import prepare_corpus

DEFAULT_ATTRIBUTES = ("yaw", "smile", "eyes_open", "glasses", "hat", "skin_tone")
DEFAULT_DISENTANGLE = {"glasses": ["hat"]}  # the testbed's deliberate correlation (faces.py)
MADE_BY = "rebuild-bank"


def disentangled_name(name: str) -> str:
    return f"{name}-disentangled"


def disentangle_plan(attributes: Sequence[str], disentangle: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The eq. 12 pairs to publish: the given ones (each name must be one of ``attributes``), or by default
    those of :data:`DEFAULT_DISENTANGLE` whose attributes are all built."""
    if disentangle is None:
        return {a: others for a, others in DEFAULT_DISENTANGLE.items()
                if a in attributes and all(o in attributes for o in others)}
    unknown = sorted({a for a, others in disentangle.items() for a in [a, *others] if a not in attributes})
    if unknown:
        raise HSpaceError(f"disentangle names {unknown}, which are not among the attributes {list(attributes)}")
    return dict(disentangle)


def threshold_plan(annotator: str, attributes: Sequence[str], thresholds: dict[str, float] | None) -> dict[str, float]:
    """Which attributes are binary, and where their classes split: the given ones (each must be one of
    ``attributes``), or by default the testbed annotator's binary factors that are built."""
    if thresholds is None:
        return {a: t for a, t in CLASS_THRESHOLDS.items() if a in attributes} if annotator == "testbed" else {}
    unknown = sorted(a for a in thresholds if a not in attributes)
    if unknown:
        raise HSpaceError(f"thresholds name {unknown}, which are not among the attributes {list(attributes)}")
    return {a: float(t) for a, t in thresholds.items()}


@flow(name="rebuild-bank")
def rebuild_bank(
    bank: str,
    corpus: str,
    model: str = "testbed",
    samples: int = 1024,
    steps: int = 50,
    eta: float = 1.0,
    batch: int = 32,
    seed: int = 0,
    annotator: str = "testbed",
    annotator_options: dict[str, Any] | None = None,
    attributes: Sequence[str] = DEFAULT_ATTRIBUTES,
    k: int = 100,
    thresholds: dict[str, float] | None = None,
    disentangle: dict[str, list[str]] | None = None,
    keep_norm: bool = False,
    pca_components: int = 8,
    pca_directions: int = 3,
    pca_run_name: str = "bank",
    gamma: float = 1.0,
    eval_samples: int = 100,
    repeats: int = 10,
    eval_seed: int = 1,
    report: str | None = None,
    device: str = "cpu",
    threads: int = 1,
    workers: int | None = None,
    dask_address: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Rebuild the direction bank at ``bank`` from the corpus at ``corpus`` (created if missing).

    Parameters
    ----------
    bank, corpus : str
        Locations (paths or fsspec URLs).
    model, samples, steps, eta, batch, seed
        The corpus (see ``build_corpus``).
    annotator, annotator_options
        Scores every sample (``hspace.annotators.load_annotator``).
    attributes : sequence of str
        One supervised direction each (eq. 11, top-k vs bottom-k by the annotator's score), named after it.
    k : int
        Examples on each side of eq. 11.
    thresholds : dict of str -> float
        Binary attributes: their k examples are drawn from each side of the threshold rather than taken
        from the extremes (``hspace.directions.top_bottom``). Default: with the ``testbed`` annotator, its
        binary factors at 0.5 (``hspace.testbed.annotator.CLASS_THRESHOLDS``); otherwise none. ``{}``: none.
    disentangle : dict of str -> list of str
        ``{"glasses": ["hat"]}`` also publishes ``glasses-disentangled``: glasses with its projection on hat
        removed (eq. 12). Default: :data:`DEFAULT_DISENTANGLE` where those attributes are built.
    keep_norm : bool
        Rescale each disentangled direction to its original's norm (``hspace.directions.disentangle``), so
        that one gamma edits as far along both; default: eq. 12 as written.
    pca_components, pca_directions
        Components fitted per step (Sec. IV-A); the top ``pca_directions`` are published as ``pca-<j>``.
    pca_run_name : str
        The corpus's PCA run to fit or resume; another name for other ``pca_components``.
    gamma, eval_samples, repeats, eval_seed
        The evaluation (Table I): every direction edits ``eval_samples`` fresh samples per repeat at
        ``gamma``, against a norm-matched random direction.
    report : str, optional
        A folder for evaluation.csv / .md / .png.
    threads, workers, dask_address
        Where the corpus generation runs (as for ``build_corpus``); worker processes need a real Prefect
        server (``PREFECT_API_URL``). The later stages are light next to it and run in this process.
    """
    attributes = list(attributes)
    disentangle = disentangle_plan(attributes, disentangle)
    thresholds = threshold_plan(annotator, attributes, thresholds)
    runner = task_runner(workers=workers, dask_address=dask_address, device=device, threads=threads)
    build_corpus.with_options(task_runner=runner)(model=model, samples=samples, steps=steps, out=corpus, eta=eta,
                                                  batch=batch, seed=seed, device=device, progress=progress)
    annotate(corpus, annotator, annotator_options, progress=progress)
    pca_run = None
    if pca_components > 0:
        pca_run = check_name(pca_run_name, "PCA run")
        fit_pca(corpus, pca_components, run=pca_run, device=device, progress=progress)
    # Tagged, so that a rebuild with other settings replaces its own directions but never one the user
    # stored in this corpus under the same name (that is refused before any work).
    for attribute in attributes:
        supervised(corpus, attribute, attribute=attribute, annotator=annotator, k=k,
                   threshold=thresholds.get(attribute), made_by=MADE_BY)
    named = list(attributes)
    for source, others in disentangle.items():
        disentangled(corpus, disentangled_name(source), source, others, keep_norm=keep_norm, made_by=MADE_BY)
        named.append(disentangled_name(source))
    names = named + [pca_direction_name(j) for j in range(pca_directions if pca_run else 0)]
    common = {"pca_run": pca_run, "pca_directions": pca_directions if pca_run else 0, "supervised": named}
    key = evaluate_bank_directions(corpus, names, annotator=annotator, annotator_options=annotator_options,
                                   gamma=gamma, samples=eval_samples, repeats=repeats, seed=eval_seed, device=device,
                                   report=report, **common)
    version = publish_bank(corpus, bank, names, evaluation_key=key, **common)
    return {"bank": bank, "version": version, "directions": names, "evaluation": key, "corpus": corpus}


def run_rebuild_bank(**arguments: Any) -> dict[str, Any]:
    """Check the corpus settings before any server starts, then run :func:`rebuild_bank`; worker processes
    get a local Prefect server when none is configured."""
    defaults = {name: p.default for name, p in inspect.signature(rebuild_bank.fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings = {**defaults, **arguments}
    # Both fail before anything is written.
    disentangle_plan(list(settings["attributes"]), settings["disentangle"])
    threshold_plan(settings["annotator"], list(settings["attributes"]), settings["thresholds"])
    check_name(settings["pca_run_name"], "PCA run")
    prepare_corpus(out=settings["corpus"], dtype="float16", device=settings["device"],
                   **{key: settings[key] for key in ("model", "samples", "steps", "eta", "batch", "seed")})
    uses_processes = settings["workers"] is not None or settings["dask_address"] is not None
    server = prefect_api_for_workers() if uses_processes else contextlib.nullcontext()
    with server:
        return rebuild_bank(**arguments)
