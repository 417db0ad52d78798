"""Flow ``rebuild_bank``: corpus -> annotate -> PCA -> supervised -> disentangle -> evaluate -> publish.

Every stage skips the work already done (the corpus its done shards, the annotations their done shards,
PCA its done steps, the evaluation a stored result with the same key, the bank a version with the same
content), so a scheduled rebuild with nothing new publishes nothing new, and a rerun after a crash at any
point finishes the job with the result an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from prefect import flow

from flows.annotate import annotate
from flows.corpus import build_corpus
from flows.directions import disentangled, supervised
from flows.evaluate import evaluate_directions
from flows.pca import fit_pca
from flows.progress import stage_progress
from flows.runner import RunnerChoice, checked_by
from hspace.annotators import class_thresholds
from hspace.conditioning import parse_conditioning
from hspace.errors import HSpaceError
from hspace.names import check_name
from storage.corpus import Corpus
from storage.corpus_spec import ADDED_SETTINGS
from tasks.bank import pca_direction_name, publish_bank
from tasks.corpus import check_build_arguments, prepare_corpus
from tasks.evaluate import EvaluationSpec

CONDITIONING = ("prompt", "negative_prompt", "guidance")

DEFAULT_ATTRIBUTES = ("yaw", "smile", "eyes_open", "glasses", "hat", "skin_tone")
DEFAULT_DISENTANGLE = {"glasses": ["hat"]}  # the testbed's deliberate correlation (hspace/testbed/faces.py)
MADE_BY = "rebuild-bank"
CORPUS_DTYPE = "float16"  # h as stored in the corpus (the authors' choice)


def disentangled_name(name: str) -> str:
    """The name under which eq. 12 publishes ``name`` disentangled."""
    return f"{name}-disentangled"


def disentangle_plan(attributes: Sequence[str], disentangle: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """The eq. 12 pairs to publish: the given ones (each name must be one of ``attributes``), or by default
    those of :data:`DEFAULT_DISENTANGLE` whose attributes are all built."""
    if disentangle is None:
        return {
            a: others
            for a, others in DEFAULT_DISENTANGLE.items()
            if a in attributes and all(o in attributes for o in others)
        }
    unknown = sorted({a for a, others in disentangle.items() for a in [a, *others] if a not in attributes})
    if unknown:
        raise HSpaceError(f"disentangle names {unknown}, which are not among the attributes {list(attributes)}")
    return dict(disentangle)


def threshold_plan(annotator: str, attributes: Sequence[str], thresholds: dict[str, float] | None) -> dict[str, float]:
    """Which attributes are binary, and where their classes split: the given ones (each must be one of
    ``attributes``), or by default those the annotator declares (``Annotator.class_thresholds``) that are built."""
    if thresholds is None:
        return {a: t for a, t in class_thresholds(annotator).items() if a in attributes}
    unknown = sorted(a for a in thresholds if a not in attributes)
    if unknown:
        raise HSpaceError(f"thresholds name {unknown}, which are not among the attributes {list(attributes)}")
    return {a: float(t) for a, t in thresholds.items()}


# Where the settings are read and written, not what they build: left out of the record in the bank, so that
# a rebuild from a moved corpus, on another device or with another report folder publishes nothing new.
# The evaluation's batch and block are how it runs: a stored evaluation is reused whatever they were.
NOT_RECORDED = ("bank", "corpus", "report", "device", "eval_batch", "eval_block")


@dataclass(frozen=True, kw_only=True)
class RebuildSettings:
    """What :func:`rebuild_bank` builds, checked when made (names, thresholds and eq. 12 pairs resolved).

    Parameters
    ----------
    bank, corpus : str
        Locations (paths or fsspec URLs); the corpus is created if missing.
    model, samples, steps, eta, batch, seed, precision, microbatch
        The corpus (see ``build_corpus``); the evaluation runs in its precision, and the bank records it.
    annotator, annotator_options
        Scores every sample (``hspace.annotators.load_annotator``).
    attributes : sequence of str
        One supervised direction each (eq. 11, top-k vs bottom-k by the annotator's score), named after it.
    k : int
        Examples on each side of eq. 11.
    thresholds : dict of str -> float
        Binary attributes: their k examples are drawn from each side of the threshold rather than taken
        from the extremes (``hspace.directions.top_bottom``). Default: those the annotator declares
        (``hspace.annotators.class_thresholds``; the testbed's binary factors at 0.5). ``{}``: none.
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
    eval_batch, eval_block
        Evaluation samples per U-Net pass (each with all its edits) and per task (``flows.evaluate``).
    report : str, optional
        A folder for evaluation.csv / .md / .png.
    device : str
        Where the models run.
    prompt, negative_prompt, guidance : optional
        A text-conditional model's conditioning (a corpus setting; the bank records it); an error for others.
    """

    bank: str
    corpus: str
    model: str = "testbed"
    samples: int = 1024
    steps: int = 50
    eta: float = 1.0
    batch: int = 32
    seed: int = 0
    precision: str = "fp32"
    microbatch: int | None = None
    annotator: str = "testbed"
    annotator_options: dict[str, Any] | None = None
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    k: int = 100
    thresholds: dict[str, float] | None = None
    disentangle: dict[str, list[str]] | None = None
    keep_norm: bool = False
    pca_components: int = 8
    pca_directions: int = 3
    pca_run_name: str = "bank"
    gamma: float = 1.0
    eval_samples: int = 100
    repeats: int = 10
    eval_seed: int = 1
    eval_batch: int = 8
    eval_block: int = 32
    report: str | None = None
    device: str = "cpu"
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        attributes = tuple(self.attributes)
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "disentangle", disentangle_plan(attributes, self.disentangle))
        object.__setattr__(self, "thresholds", threshold_plan(self.annotator, attributes, self.thresholds))
        check_name(self.pca_run_name, "PCA run")
        for name in ("eval_samples", "repeats", "eval_batch", "eval_block"):
            if getattr(self, name) < 1:
                raise HSpaceError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(self, name)}")
        corpus = self.corpus_arguments()
        check_build_arguments(**{k: corpus[k] for k in corpus if k not in ("out", "model", *CONDITIONING)})
        parse_conditioning(self.prompt, self.negative_prompt, self.guidance)

    def corpus_arguments(self) -> dict[str, Any]:
        """The corpus's settings as ``prepare_corpus`` and ``build_corpus`` take them."""
        return {
            "out": self.corpus,
            "model": self.model,
            "samples": self.samples,
            "steps": self.steps,
            "eta": self.eta,
            "batch": self.batch,
            "seed": self.seed,
            "dtype": CORPUS_DTYPE,
            "device": self.device,
            "precision": self.precision,
            "microbatch": self.microbatch,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "guidance": self.guidance,
        }

    def evaluation_spec(
        self, names: list[str], *, supervised: list[str], pca_run: str | None, pca_directions: int
    ) -> EvaluationSpec:
        """The evaluation (Table I) of ``names``: stored directions ``supervised`` and the top PCA ones."""
        return EvaluationSpec(
            url=self.corpus,
            names=tuple(names),
            supervised=tuple(supervised),
            pca_run=pca_run,
            pca_directions=pca_directions,
            annotator=self.annotator,
            annotator_options=self.annotator_options,
            gamma=self.gamma,
            samples=self.eval_samples,
            repeats=self.repeats,
            seed=self.eval_seed,
            batch=self.eval_batch,
            block=self.eval_block,
            device=self.device,
        )

    def record(self) -> dict[str, Any]:
        """The settings that decide the bank's content, JSON-ready (recorded in the version's notes).

        Corpus settings added since records began are left out at the value every earlier rebuild had
        (``storage.corpus.ADDED_SETTINGS``, and the text kind's conditioning when unset), so that such a bank's
        next rebuild with those values publishes nothing new.
        """
        recorded = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_RECORDED}
        added = {**ADDED_SETTINGS, **dict.fromkeys(CONDITIONING)}
        return {k: v for k, v in recorded.items() if k not in added or v != added[k]} | {
            "attributes": list(self.attributes)
        }


def check_rebuild_bank(parameters: dict[str, Any]) -> None:
    """The corpus settings are checked here (the corpus created if missing)."""
    prepare_corpus(**parameters["settings"].corpus_arguments())


@checked_by(check_rebuild_bank)
@flow(name="rebuild-bank")
def rebuild_bank(
    settings: RebuildSettings, runner: RunnerChoice | None = None, progress: bool = False
) -> dict[str, Any]:
    """Rebuild the direction bank ``settings.bank`` from the corpus ``settings.corpus``; returns the version.

    ``runner``: where the corpus generation and the evaluation, the heavy stages, run (threads by default);
    worker processes need a real Prefect server (``PREFECT_API_URL``, or :func:`flows.runner.run_flow` starts
    one). The other stages are light next to them and run in this process.
    """
    s = settings
    runner = runner or RunnerChoice()
    stages = ["corpus", "annotate", *(["pca"] if s.pca_components > 0 else []), "directions", "evaluate", "publish"]

    def stage(name: str) -> contextlib.AbstractContextManager[None]:
        return stage_progress("rebuild-bank", stages.index(name) + 1, len(stages), name, show=progress)

    with stage("corpus"):
        build_corpus.with_options(task_runner=runner.task_runner(s.device))(**s.corpus_arguments(), progress=progress)
        # Results marked stale by `hspace corpus verify --repair` go; the stages below make this rebuild's again.
        dropped = Corpus.open(s.corpus, writable=True).drop_stale()
        if dropped:
            print(f"rebuild-bank: removed stale results, to be recomputed: {', '.join(dropped)}", file=sys.stderr)
    with stage("annotate"):
        annotate(s.corpus, s.annotator, s.annotator_options, progress=progress)
    pca_run = s.pca_run_name if s.pca_components > 0 else None
    if pca_run is not None:
        with stage("pca"):
            fit_pca(s.corpus, s.pca_components, run=pca_run, device=s.device, progress=progress)
    with stage("directions"):
        named = _supervised_directions(s)
    pca_directions = s.pca_directions if pca_run else 0
    names = named + [pca_direction_name(j) for j in range(pca_directions)]
    with stage("evaluate"):
        spec = s.evaluation_spec(names, supervised=named, pca_run=pca_run, pca_directions=pca_directions)
        key = evaluate_directions.with_options(task_runner=runner.task_runner(s.device))(
            spec, report=s.report, progress=progress
        )
    with stage("publish"):
        version = publish_bank(
            s.corpus,
            s.bank,
            names,
            pca_run=pca_run,
            pca_directions=pca_directions,
            supervised=named,
            evaluation_key=key,
            notes=json.dumps({"rebuild_settings": s.record()}, sort_keys=True),
        )
    return {"bank": s.bank, "version": version, "directions": names, "evaluation": key, "corpus": s.corpus}


def _supervised_directions(s: RebuildSettings) -> list[str]:
    """Store the eq. 11 direction of each attribute, then the eq. 12 ones; returns their names in that order."""
    # Tagged, so that a rebuild with other settings replaces its own directions but never one the user
    # stored in this corpus under the same name (that is refused before any work).
    assert s.thresholds is not None and s.disentangle is not None  # resolved by __post_init__
    for attribute in s.attributes:
        supervised(
            s.corpus,
            attribute,
            attribute=attribute,
            annotator=s.annotator,
            k=s.k,
            threshold=s.thresholds.get(attribute),
            made_by=MADE_BY,
        )
    named = list(s.attributes)
    for source, others in s.disentangle.items():
        disentangled(s.corpus, disentangled_name(source), source, others, keep_norm=s.keep_norm, made_by=MADE_BY)
        named.append(disentangled_name(source))
    return named
