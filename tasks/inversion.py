"""Inversion tasks: x_T and h_{T:1} of DDIM-inverted real images, and eq. 11 directions from them (SM -F).

:func:`plan_invert` checks every argument and opens everything it needs, and raises before any work or
write; :func:`invert_task` runs a plan and writes its result last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.errors import HSpaceError
from hspace.images import load_image_files, load_images
from hspace.inversion import direction_from_images, invert
from hspace.models import LoadedModel, check_same_weights, precision_entry
from hspace.names import check_name
from hspace.sampler import make_scheduler
from storage.corpus import Corpus
from storage.directions import (
    DirectionRecord,
    check_writable,
    new_record,
    write_direction,
    write_direction_file,
)
from tasks.corpus import cached_model
from tasks.directions import direction_summary


@dataclass(frozen=True, kw_only=True)
class InvertPlan:
    """Inputs of an inversion: the model, the images, and where the result goes."""

    model: str
    device: str
    precision: str
    steps: int
    images: dict[str, list[str]]  # "images" or "positives"/"negatives" -> file paths
    out: str | None
    corpus: str | None
    record: DirectionRecord | None  # None: invert only (x_T and h to ``out``)
    overwrite: bool


def plan_invert(
    *,
    model: str,
    steps: int,
    images: str | None = None,
    positives: str | None = None,
    negatives: str | None = None,
    out: str | None = None,
    corpus: str | None = None,
    name: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    overwrite: bool = False,
) -> InvertPlan:
    """Check folders, model, steps and outputs before any image is inverted.

    Either ``images`` (write their x_T and h_{T:1} to ``out``), or ``positives`` and ``negatives`` (eq. 11 on
    their inverted h: a direction, to ``out`` and/or to ``directions/<name>`` of ``corpus``).
    """
    _check_invert_arguments(steps=steps, images=images, positives=positives, negatives=negatives, out=out)
    loaded = cached_model(model, device, precision)
    make_scheduler(loaded.scheduler_config, steps)  # steps within the training timesteps
    if images is not None:
        if out is None:
            raise HSpaceError("--images needs --out FILE.safetensors for the inverted x_T and h")
        if corpus is not None or name is not None:
            raise HSpaceError("--corpus and --name store directions; with --images nothing but --out is written")
        files = {"images": _image_files(images, loaded.image_shape)}
        record: DirectionRecord | None = None
    else:
        files, record = _plan_direction(
            loaded,
            steps=steps,
            positives=positives,
            negatives=negatives,
            out=out,
            corpus=corpus,
            name=name,
            overwrite=overwrite,
        )
    return InvertPlan(
        model=model,
        device=device,
        precision=precision,
        steps=steps,
        images=files,
        out=out,
        corpus=corpus,
        record=record,
        overwrite=overwrite,
    )


def _plan_direction(
    loaded: LoadedModel,
    *,
    steps: int,
    positives: str | None,
    negatives: str | None,
    out: str | None,
    corpus: str | None,
    name: str | None,
    overwrite: bool,
) -> tuple[dict[str, list[str]], DirectionRecord]:
    """The image files and the checked direction record of ``--positives`` vs ``--negatives`` (eq. 11)."""
    if positives is None or negatives is None:
        raise HSpaceError("give --images FOLDER, or both --positives FOLDER and --negatives FOLDER")
    if out is None and corpus is None:
        raise HSpaceError("say where the direction goes: --out FILE.safetensors and/or --corpus URL --name NAME")
    if corpus is not None and name is None:
        raise HSpaceError("--corpus needs --name: the direction is stored as directions/<name>")
    name = name if name is not None else Path(str(out)).stem
    check_name(name, "direction")
    files = {
        "positives": _image_files(positives, loaded.image_shape),
        "negatives": _image_files(negatives, loaded.image_shape),
    }
    parameters = {
        "positives": str(positives),
        "negatives": str(negatives),
        "positive_files": [Path(f).name for f in files["positives"]],
        "negative_files": [Path(f).name for f in files["negatives"]],
        **precision_entry(loaded.precision),
    }
    record = _direction_record(
        loaded,
        name,
        steps=steps,
        corpus=corpus,
        parameters=parameters,
        source=f"{positives} vs {negatives}",
        overwrite=overwrite,
    )
    return files, record


@task(cache_policy=NO_CACHE, task_run_name="invert-images")
def invert_task(plan: InvertPlan) -> dict[str, Any]:
    """Invert the plan's images; write x_T and h (``--images``) or the eq. 11 direction; returns a summary."""
    loaded = cached_model(plan.model, plan.device, plan.precision)
    shape = loaded.image_shape
    if plan.record is None:
        images = load_image_files(plan.images["images"], shape)
        result = invert(loaded, images, steps=plan.steps)
        scheduler = make_scheduler(loaded.scheduler_config, plan.steps)
        metadata = {
            "model": loaded.name,
            "fingerprint": loaded.fingerprint,
            **precision_entry(loaded.precision),
            "steps": plan.steps,
            "timesteps": [int(t) for t in scheduler.timesteps],
            "files": [Path(f).name for f in plan.images["images"]],
        }
        assert plan.out is not None
        write_direction_file(plan.out, {"x_T": result.x_T.numpy(), "h": result.h.numpy()}, metadata)
        return {
            "out": plan.out,
            "images": len(images),
            "x_T_shape": list(result.x_T.shape),
            "h_shape": list(result.h.shape),
        }
    # The plan carries paths, not pixels, through Prefect: the images are read again here.
    direction = direction_from_images(
        loaded,
        load_image_files(plan.images["positives"], shape),
        load_image_files(plan.images["negatives"], shape),
        steps=plan.steps,
    ).numpy()
    if plan.corpus is not None:
        write_direction(Corpus.open(plan.corpus, writable=True), plan.record, direction, overwrite=plan.overwrite)
    if plan.out is not None:
        write_direction_file(plan.out, {"direction": direction}, {**plan.record.to_attrs(), "complete": True})
    return {**direction_summary(plan.record, direction), "out": plan.out, "corpus": plan.corpus}


# ----- private helpers ---------------------------------------------------------------------------
def _check_invert_arguments(
    *, steps: int, images: str | None, positives: str | None, negatives: str | None, out: str | None
) -> None:
    """Refuse a bad --steps, --images together with --positives/--negatives, or an --out that cannot be written."""
    if not isinstance(steps, int) or steps <= 0:
        raise HSpaceError(f"--steps must be a positive integer; got {steps!r}")
    if images is not None and (positives is not None or negatives is not None):
        raise HSpaceError("give either --images (invert them) or --positives and --negatives (a direction), not both")
    if out is not None and not str(out).endswith(".safetensors"):
        raise HSpaceError(f"--out must be a .safetensors file; got {out!r}")
    if out is not None and not Path(out).resolve().parent.is_dir():
        raise HSpaceError(f"the folder of --out ({Path(out).parent}) does not exist")


def _direction_record(
    loaded: LoadedModel,
    name: str,
    *,
    steps: int,
    corpus: str | None,
    parameters: dict[str, Any],
    source: str,
    overwrite: bool,
) -> DirectionRecord:
    """The record of an inverted direction: checked against ``corpus`` (model, steps, name) when one is given."""
    if corpus is not None:
        opened = Corpus.open(corpus, writable=True)
        check_same_weights(
            loaded,
            opened.spec.fingerprint,
            owner=f"the corpus at {corpus}",
            advice=f"invert with the corpus's model ({opened.spec.model!r})",
        )
        if opened.spec.steps != steps:
            raise HSpaceError(
                f"the corpus at {corpus} has {opened.spec.steps} steps; invert with --steps "
                f"{opened.spec.steps} so the direction applies to its samples"
            )
        record = new_record(opened, name, method="inverted", space="h", parameters=parameters, source=source)
        check_writable(opened, record, overwrite=overwrite)
        return record
    scheduler = make_scheduler(loaded.scheduler_config, steps)
    return DirectionRecord(
        name=name,
        method="inverted",
        space="h",
        parameters=parameters,
        source=source,
        model=loaded.name,
        fingerprint=loaded.fingerprint,
        shape=(steps, *loaded.h_shape),
        steps=steps,
        timesteps=tuple(int(t) for t in scheduler.timesteps),
    )


def _image_files(folder: str, shape: tuple[int, int, int]) -> list[str]:
    """The image files of a folder, each read once now so an empty folder or a broken file fails before any
    inversion."""
    return [str(path) for path in load_images(folder, shape)[1]]
