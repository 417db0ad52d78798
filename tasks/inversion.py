"""Inversion tasks: x_T and h_{T:1} of DDIM-inverted real images, and eq. 11 directions from them (SM -F).

:func:`plan_invert` checks every argument and opens everything it needs (every image is read and hashed),
and raises before any work or write. Then :func:`invert_passes` tasks invert blocks of images, storing each
image's x_T and h under ``inversions/<key>`` (:mod:`storage.inversions`) with a done flag per pass, and
:func:`finish_inversion` reduces them in image order into what the plan writes, last. The images are cut into
U-Net passes of ``batch`` images, so the result is bitwise the same for any split of the passes into tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from hspace.conditioning import Conditioning, parse_conditioning
from hspace.errors import HSpaceError
from hspace.images import load_image_files, load_images
from hspace.inversion import invert
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
from storage.groups import group_at
from storage.inversions import (
    INVERSIONS,
    InversionParts,
    image_digest,
    inversion_key,
    remove_standalone,
    standalone_root,
)
from tasks.corpus import cached_model
from tasks.directions import direction_summary

DEFAULT_BLOCK = 16  # images per task
EQ11_BATCH = 16  # images per float64 partial sum: hspace.inversion.direction_from_images' default, the same bits


@dataclass(frozen=True, kw_only=True)
class InvertPlan:
    """Inputs of an inversion: the model, the images, how they are cut into passes and tasks, where the result goes."""

    model_name: str
    device: str
    precision: str
    steps: int
    images: dict[str, list[str]]  # "images" or "positives"/"negatives" -> file paths
    digests: dict[str, list[str]]  # the same sides -> each image's storage.inversions.image_digest
    out: str | None
    corpus: str | None
    record: DirectionRecord | None  # None: invert only (x_T and h to ``out``)
    overwrite: bool
    batch: int  # images per U-Net pass (on a GPU it decides the bits)
    block: int  # images per task, in whole passes (at least one): any block gives the same bits
    settings: dict[str, Any]  # what decides the bits besides the images; hashed with them into ``key``
    key: str
    conditioning: dict[str, Any] | None = None  # a text model's (Conditioning.record()): it inverts with it

    def model(self) -> LoadedModel:
        """The model, loaded once per process, with the plan's conditioning."""
        loaded = cached_model(self.model_name, self.device, self.precision)
        return loaded if self.conditioning is None else loaded.conditioned(Conditioning(**self.conditioning))

    @property
    def passes_per_task(self) -> int:
        return max(1, self.block // self.batch)

    @property
    def standalone(self) -> str:
        """Where the parts are kept without a corpus: a Zarr folder next to ``out``, removed once it is written."""
        return str(Path(str(self.out)).resolve().with_suffix(".inversion.zarr"))


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
    batch: int | None = None,
    block: int = DEFAULT_BLOCK,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    guidance: float | None = None,
) -> InvertPlan:
    """Check folders, model, steps, outputs, ``batch`` and ``block`` before any image is inverted.

    A text-conditional model inverts with ``prompt``, ``negative_prompt`` and ``guidance``, those unset taken
    from ``corpus`` where given (else the defaults: the empty prompt at 7.5); an unconditional model refuses them.

    Either ``images`` (write their x_T and h_{T:1} to ``out``), or ``positives`` and ``negatives`` (eq. 11 on
    their inverted h: a direction, to ``out`` and/or to ``directions/<name>`` of ``corpus``). ``batch``:
    images per U-Net pass (default 1 on the CPU, where an image is then bitwise the same in any batch, else
    16); ``block``: images per task.
    """
    _check_invert_arguments(steps=steps, images=images, positives=positives, negatives=negatives, out=out)
    batch = _check_batch_and_block(batch, block, device)
    recorded = None if corpus is None else Corpus.open(corpus).spec.conditioning
    conditioning = parse_conditioning(prompt, negative_prompt, guidance, recorded=recorded)
    loaded = cached_model(model, device, precision).conditioned(conditioning)
    scheduler = make_scheduler(loaded.scheduler_config, steps)  # steps within the training timesteps
    if images is not None:
        if out is None:
            raise HSpaceError("--images needs --out FILE.safetensors for the inverted x_T and h")
        if corpus is not None or name is not None:
            raise HSpaceError("--corpus and --name store directions; with --images nothing but --out is written")
        files, digests = _image_files({"images": images}, loaded.image_shape)
        record: DirectionRecord | None = None
    else:
        files, digests, record = _plan_direction(
            loaded,
            steps=steps,
            positives=positives,
            negatives=negatives,
            out=out,
            corpus=corpus,
            name=name,
            overwrite=overwrite,
        )
    settings = {
        "fingerprint": loaded.fingerprint,
        **precision_entry(loaded.precision),
        "device": torch.device(device).type,
        "steps": steps,
        "timesteps": [int(t) for t in scheduler.timesteps],
        "batch": batch,
        **({} if loaded.conditioning is None else {"conditioning": loaded.conditioning.record()}),
    }
    return InvertPlan(
        model_name=model,
        conditioning=settings.get("conditioning"),
        device=device,
        precision=precision,
        steps=steps,
        images=files,
        digests=digests,
        out=out,
        corpus=corpus,
        record=record,
        overwrite=overwrite,
        batch=batch,
        block=block,
        settings=settings,
        key=inversion_key(digests, settings),
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
) -> tuple[dict[str, list[str]], dict[str, list[str]], DirectionRecord]:
    """The image files, their digests and the checked direction record of ``--positives`` vs ``--negatives``."""
    if positives is None or negatives is None:
        raise HSpaceError("give --images FOLDER, or both --positives FOLDER and --negatives FOLDER")
    if out is None and corpus is None:
        raise HSpaceError("say where the direction goes: --out FILE.safetensors and/or --corpus URL --name NAME")
    if corpus is not None and name is None:
        raise HSpaceError("--corpus needs --name: the direction is stored as directions/<name>")
    name = name if name is not None else Path(str(out)).stem
    check_name(name, "direction")
    files, digests = _image_files({"positives": positives, "negatives": negatives}, loaded.image_shape)
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
    return files, digests, record


def inversion_parts(plan: InvertPlan, *, create: bool = False) -> InversionParts:
    """The parts of ``plan`` (in its corpus, else next to ``out``): made or reopened with ``create``, else reopened."""
    if plan.corpus is not None:
        root = Corpus.open(plan.corpus, writable=True).group
    else:
        root = standalone_root(plan.standalone)
    if not create:
        return InversionParts(group_at(root, f"{INVERSIONS}/{plan.key}"))
    loaded = plan.model()
    return InversionParts.create_or_open(
        root,
        plan.key,
        plan.settings,
        counts={side: len(files) for side, files in plan.images.items()},
        noise_shape=loaded.latent_shape,
        h_shape=(plan.steps, *loaded.h_shape),
        batch=plan.batch,
    )


@task(cache_policy=NO_CACHE, task_run_name="invert-side-{side}-passes-{passes}")
def invert_passes(plan: InvertPlan, side: int, passes: list[int]) -> int:
    """DDIM-invert ``passes`` of side ``side`` and store each (its done flag last); returns the images inverted."""
    loaded = plan.model()
    parts = inversion_parts(plan)
    name = parts.sides[side]
    inverted = 0
    for p in passes:
        start, stop = parts.pass_range(side, p)
        # The plan carries paths, not pixels, through Prefect: the images are read again here, and checked.
        images = load_image_files(plan.images[name][start:stop], loaded.image_shape)
        if [image_digest(image) for image in images] != plan.digests[name][start:stop]:
            raise HSpaceError(f"{name} images {start} to {stop - 1} changed since the inversion began: rerun it")
        result = invert(loaded, images, steps=plan.steps, microbatch=plan.batch)
        parts.write(side, p, result.x_T.numpy(), result.h.numpy())
        inverted += stop - start
    return inverted


@task(cache_policy=NO_CACHE, task_run_name="finish-inversion")
def finish_inversion(plan: InvertPlan) -> dict[str, Any]:
    """From every stored pass: write x_T and h (``--images``) or the eq. 11 direction, last; returns a summary."""
    parts = inversion_parts(plan)
    parts.check_complete()
    summary = _write_inversions(plan, parts) if plan.record is None else _write_direction(plan, parts)
    if plan.corpus is None:
        remove_standalone(plan.standalone)
    return summary


# ----- private helpers ---------------------------------------------------------------------------
def _mean_h(parts: InversionParts, side: int) -> torch.Tensor:
    """Mean h of a side's images, float64, summed as :func:`hspace.inversion.direction_from_images` sums them."""
    n = parts.counts[parts.sides[side]]
    total = torch.zeros(parts.read(side, "h", 0, 1).shape[1:], dtype=torch.float64)
    for start in range(0, n, EQ11_BATCH):
        total += torch.from_numpy(parts.read(side, "h", start, start + EQ11_BATCH)).double().sum(0)
    return total / n


def _write_direction(plan: InvertPlan, parts: InversionParts) -> dict[str, Any]:
    """eq. 11 on the stored h: the positives' mean minus the negatives' mean, written where the plan says."""
    assert plan.record is not None
    direction = (_mean_h(parts, 0) - _mean_h(parts, 1)).float().numpy()
    if plan.corpus is not None:
        write_direction(Corpus.open(plan.corpus, writable=True), plan.record, direction, overwrite=plan.overwrite)
    if plan.out is not None:
        write_direction_file(plan.out, {"direction": direction}, {**plan.record.to_attrs(), "complete": True})
    return {**direction_summary(plan.record, direction), "out": plan.out, "corpus": plan.corpus}


def _write_inversions(plan: InvertPlan, parts: InversionParts) -> dict[str, Any]:
    """Every image's x_T and h to ``out`` (safetensors), with the model, steps and file names."""
    x_T, h = parts.read(0, "x_T"), parts.read(0, "h")
    metadata = {
        "model": plan.model_name,
        "fingerprint": plan.settings["fingerprint"],
        **precision_entry(plan.precision),
        "steps": plan.steps,
        "timesteps": plan.settings["timesteps"],
        "files": [Path(f).name for f in plan.images["images"]],
        **({} if plan.conditioning is None else {"conditioning": plan.conditioning}),
    }
    assert plan.out is not None
    write_direction_file(plan.out, {"x_T": x_T, "h": h}, metadata)
    return {"out": plan.out, "images": len(x_T), "x_T_shape": list(x_T.shape), "h_shape": list(h.shape)}


def _check_batch_and_block(batch: int | None, block: int, device: str) -> int:
    """Refuse a ``batch`` or ``block`` that is not a positive integer; returns the batch, its default filled in."""
    batch = (1 if torch.device(device).type == "cpu" else 16) if batch is None else batch
    for option, value in (("batch", batch), ("block", block)):
        if not isinstance(value, int) or value <= 0:
            raise HSpaceError(f"--{option} must be a positive integer; got {value!r}")
    return batch


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


def _image_files(
    folders: dict[str, str], shape: tuple[int, int, int]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each side's image files (absolute, sorted by name) and digests: every image is read now, so an empty
    folder or a broken file fails before any inversion."""
    files, digests = {}, {}
    for side, folder in folders.items():
        images, paths = load_images(folder, shape)
        files[side] = [str(path.resolve()) for path in paths]
        digests[side] = [image_digest(image) for image in images]
    return files, digests
