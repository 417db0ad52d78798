"""``hspace serve``: a bank's directions as sliders in a browser, every edit rendered by one worker thread (issue 20).

A person tries a bank the way the paper's figures show it (Fig. 3-5): move a direction's gamma and watch a sample,
or their own photo, change. :func:`make_app` gets a model and a bank that ``hspace serve`` (``flows/cli_serve.py``)
loaded once, so no request ever loads weights.

Decisions, and why:

- **One worker thread runs the U-Net** (:class:`EditWorker`). Threads may share a model for sampling (each attaches
  its own h hook, :mod:`hspace.hook`), but concurrent passes of one U-Net only compete for the same cores or GPU;
  one thread keeps its use serial, and lets edits that wait together be batched.
- **A bounded queue.** A request that finds ``queue`` edits already waiting gets 503 at once, with its reason: a
  server that took every request would answer all of them late. The page tries again a moment later.
- **Batching.** The worker takes the edits waiting (up to ``batch``) and runs the seed edits with the same gammas,
  in the same order, as one ``hspace.edit(model, seeds, gammas, bank)`` call: one sampler loop, on a GPU one U-Net
  pass per step for all of them. Other gammas go one call each (``hspace.edit`` takes one gammas mapping, and a
  stacked per-sample delta would repeat its checks), photos one ``edit_image`` call each. On the CPU the sampler
  runs one sample per pass (its default), so a batched image is bitwise the one a single-seed call gives; on a GPU
  the samples share passes and may differ from it in the last bits.
- **Requests are parsed here and trusted in nothing**: a body is read up to a bound (its Content-Length first, then
  the bytes), JSON may not hold NaN or unknown fields, gammas must name the bank's directions within the bounds,
  an upload must be an image that PIL decodes within a pixel bound. Each refusal is a 4xx with ``{"error": one
  line}``; nothing a client sends becomes a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from flows.serve_page import directions_info, render_page
from hspace.bank import Bank, Direction, publish
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.models import LoadedModel
from hspace.sampler import make_scheduler
from hspace.verdicts import Thresholds

LOG = logging.getLogger("hspace.serve")
JSON_BODY_BYTES = 64 * 1024  # a JSON edit: a seed and a few gammas
FORM_SLACK_BYTES = 64 * 1024  # beside the image: a form's boundaries, part headers and its gammas field
USAGE = 'send {"seed": int, "gammas": {direction: number}} as application/json, or multipart/form-data with a file '
USAGE += "field image and a field gammas holding that JSON object"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for, and how much work may wait (``hspace serve``'s options)."""

    max_gamma: float = 10.0
    max_directions: int = 8
    max_upload_bytes: int = 4_000_000
    max_pixels: int = 36_000_000  # a decoded upload: 6000 x 6000 RGB is 108 MB
    max_seed: int = 2**31 - 1
    queue: int = 16
    batch: int = 8

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise HSpaceError(f"--{name.replace('_', '-')} must be positive; got {value}")


class Refused(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(eq=False)
class EditJob:
    """One edit waiting for the worker: a seed or a photo, with its gammas; ``done`` gets (PNG bytes, headers)."""

    gammas: dict[str, float]
    seed: int | None = None
    photo: Image.Image | None = None
    done: Future = field(default_factory=Future)


class EditWorker:
    """The one thread that runs the U-Net, fed by a queue of at most ``limits.queue`` waiting edits."""

    def __init__(self, model: LoadedModel, bank: Bank, limits: Limits) -> None:
        self.model, self.bank, self.limits = model, bank, limits
        self._waiting: queue.Queue[EditJob | None] = queue.Queue(maxsize=limits.queue)
        self._thread = threading.Thread(target=self._run, name="hspace-serve-unet", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the edits taken, fail those still waiting, end the thread."""
        self._waiting.put(None)
        self._thread.join()
        while True:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.done.set_running_or_notify_cancel():
                job.done.set_exception(Refused(503, "the server is stopping"))

    @property
    def waiting(self) -> int:
        """Edits in the queue, not yet taken."""
        return self._waiting.qsize()

    def submit(self, job: EditJob) -> Future:
        """Queue ``job``; :class:`Refused` (503) when ``limits.queue`` edits are already waiting."""
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise Refused(503, f"busy: {self.limits.queue} edits are waiting already; try again shortly") from None
        return job.done

    def _run(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._take()
            groups: dict[tuple, list[EditJob]] = {}
            for job in jobs:
                # The gammas in their order: hspace.edit sums the directions in that order, and float addition
                # in another order could differ in the last bits.
                key = ("photo", id(job)) if job.photo is not None else ("seed", *job.gammas.items())
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                self._render(group)

    def _take(self) -> tuple[list[EditJob], bool]:
        """The next edits: one (waiting for it), then those waiting now, up to ``batch``; and whether to stop."""
        jobs: list[EditJob] = []
        job = self._waiting.get()
        while job is not None:
            if job.done.set_running_or_notify_cancel():  # False: its request was cancelled while it waited
                jobs.append(job)
            if len(jobs) == self.limits.batch:
                return jobs, False
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                return jobs, False
        return jobs, True  # the stop marker

    def _render(self, jobs: list[EditJob]) -> None:
        """Run one group: every job gets its result, or the exception of its group's call (the thread goes on)."""
        try:
            if jobs[0].photo is not None:
                results = [self._photo(jobs[0])]
            else:
                # Through the module's name ``edit``, so that a test can count or hold the calls.
                images = edit(self.model, [job.seed for job in jobs], jobs[0].gammas, self.bank)
                results = [(png_bytes(image), {}) for image in images]
        except Exception as error:
            for job in jobs:
                job.done.set_exception(error)
            return
        for job, result in zip(jobs, results, strict=True):
            job.done.set_result(result)

    def _photo(self, job: EditJob) -> tuple[bytes, dict[str, str]]:
        from hspace.photos import edit_image

        result = edit_image(self.model, [job.photo], job.gammas, self.bank)
        error = result.errors[0]
        headers = {
            "X-Reconstruction-MAE": f"{error['mae']:.6g}",
            "X-Reconstruction-PSNR": f"{error['psnr']:.6g}",  # "inf" for an exact reconstruction
            "X-Photo-Fit": result.notes[0],
        }
        if error["warning"]:
            headers["X-Reconstruction-Warning"] = error["warning"]
        # Header values are latin-1: keep them printable ASCII on one line.
        return png_bytes(result.edited[0, 0]), {
            k: cut(v, 300).encode("ascii", "replace").decode() for k, v in headers.items()
        }


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 image of shape (3, S, S) as PNG bytes, pixel for pixel."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def cut(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def quoted(value: Any) -> str:
    """What a client sent, for a one-line reason: its repr, cut short (a client may send anything)."""
    return cut(repr(value), 60)


# ----- parsing requests -----------------------------------------------------------------------------------------
def parse_seed(value: Any, limits: Limits) -> int:
    """A JSON seed: an integer in [0, max_seed]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limits.max_seed:
        raise Refused(400, f"seed must be an integer in [0, {limits.max_seed}]; got {quoted(value)}")
    return value


def parse_gammas(value: Any, bank: Bank, limits: Limits) -> dict[str, float]:
    """JSON gammas: {direction of the bank: number with |gamma| <= max_gamma}, at most max_directions of them."""
    if not isinstance(value, dict):
        raise Refused(400, f"gammas must be a JSON object {{direction: number}}; got {quoted(value)}")
    if len(value) > limits.max_directions:
        raise Refused(400, f"{len(value)} directions in one edit; at most {limits.max_directions}")
    gammas = {}
    for name, gamma in value.items():
        if name not in bank:
            raise Refused(400, f"unknown direction {quoted(name)}; this bank has {', '.join(bank.names)}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise Refused(400, f"the gamma of {name} must be a number; got {quoted(gamma)}")
        if not abs(gamma) <= limits.max_gamma:
            raise Refused(400, f"the gamma of {name} is {quoted(gamma)}: |gamma| is at most {limits.max_gamma:g}")
        gammas[name] = float(gamma)
    return gammas


def parse_json(data: bytes | str) -> Any:
    """JSON as the standard allows it (no NaN or Infinity); 400 otherwise."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(data, parse_constant=refuse)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise Refused(400, f"malformed JSON: {cut(str(error), 200)}") from None


def parse_edit(data: bytes, bank: Bank, limits: Limits) -> tuple[int, dict[str, float]]:
    """The seed and gammas of a JSON edit."""
    body = parse_json(data)
    if not isinstance(body, dict) or "seed" not in body:
        raise Refused(400, USAGE)
    unknown = sorted(set(body) - {"seed", "gammas"})
    if unknown:
        raise Refused(400, f"unknown field {quoted(unknown[0])}: {USAGE}")
    return parse_seed(body["seed"], limits), parse_gammas(body.get("gammas", {}), bank, limits)


def open_upload(data: bytes, limits: Limits) -> Image.Image:
    """The uploaded picture, decoded as RGB, if PIL reads it and it has at most ``max_pixels`` pixels."""
    try:
        picture = Image.open(io.BytesIO(data))
        width, height = picture.size
        if width * height > limits.max_pixels:
            raise Refused(413, f"the image has {width} x {height} pixels; at most {limits.max_pixels} in all")
        picture.load()
        return picture.convert("RGB")
    except Refused:
        raise
    except Exception as error:  # PIL's decoders raise many kinds of error on bytes that are not their format
        raise Refused(400, f"the upload is not an image PIL can read ({type(error).__name__})") from None


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes: by its Content-Length, else once read that far."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise Refused(400, "Content-Length is not a number")
    if declared is not None and int(declared) > limit:
        raise Refused(413, f"{what} is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"{what} is larger than {limit} bytes")
    return bytes(body)


async def parse_upload(request: Request, bank: Bank, limits: Limits) -> tuple[Image.Image, dict[str, float]]:
    """The picture and gammas of a multipart edit (fields ``image`` and ``gammas``)."""
    body = await read_body(request, limits.max_upload_bytes + FORM_SLACK_BYTES, "the form")

    async def replay() -> dict[str, Any]:  # the bytes read above, to Starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=1, max_part_size=FORM_SLACK_BYTES)
    try:
        unknown = sorted(set(form) - {"image", "gammas"})
        if unknown:
            raise Refused(400, f"unknown form field {quoted(unknown[0])}: {USAGE}")
        upload, text = form.get("image"), form.get("gammas", "{}")
        if not isinstance(upload, UploadFile) or not isinstance(text, str):
            raise Refused(400, USAGE)
        data = await upload.read(limits.max_upload_bytes + 1)
    finally:
        await form.close()
    if len(data) > limits.max_upload_bytes:
        raise Refused(413, f"the image is larger than {limits.max_upload_bytes} bytes")
    gammas = parse_gammas(parse_json(text), bank, limits)
    return await run_in_threadpool(open_upload, data, limits), gammas


# ----- the app ----------------------------------------------------------------------------------------------------
def make_app(
    model: LoadedModel, bank: Bank, limits: Limits | None = None, thresholds: Thresholds | None = None
) -> FastAPI:
    """The ``hspace serve`` app: ``GET /``, ``GET /directions``, ``POST /edit``, ``GET /healthz``.

    ``model`` must be the bank's (refused otherwise); its U-Net runs only on the app's :class:`EditWorker`
    (``app.state.worker``), which starts and stops with the app (its lifespan). ``thresholds``: the directions'
    verdicts (``hspace.verdicts``, default thresholds when None).
    """
    limits = limits or Limits()
    bank.check_model(model)
    worker = EditWorker(model, bank, limits)
    info = directions_info(bank, asdict(limits), thresholds)
    page, policy = render_page(info)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    # No /docs: FastAPI's API pages load their scripts from a CDN.
    app = FastAPI(title="hspace serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "Cache-Control": "no-store"})

    @app.get("/directions")
    async def directions() -> dict[str, Any]:
        return info

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": bank.version, "waiting": worker.waiting}

    @app.post("/edit")
    async def post_edit(request: Request) -> Response:
        job = await _job(request, bank, limits)
        png, headers = await asyncio.wrap_future(worker.submit(job))
        return Response(png, media_type="image/png", headers={**headers, "Cache-Control": "no-store"})

    return app


async def _job(request: Request, bank: Bank, limits: Limits) -> EditJob:
    """The edit a ``POST /edit`` asks for, by its Content-Type."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        seed, gammas = parse_edit(await read_body(request, JSON_BODY_BYTES, "a JSON edit"), bank, limits)
        return EditJob(gammas, seed=seed)
    if media_type == "multipart/form-data":
        photo, gammas = await parse_upload(request, bank, limits)
        try:
            import hspace.photos  # noqa: F401
        except ImportError:
            raise Refused(501, "photo edits need hspace.photos, which this installation lacks") from None
        return EditJob(gammas, photo=photo)
    raise Refused(415, f"Content-Type {quoted(media_type)}: {USAGE}")


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal and failure answers ``{"error": one line}``."""

    def error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, str(exc), {"Retry-After": "1"} if exc.status == 503 else None)

    @app.exception_handler(HTTPException)  # Starlette's own: 404, 405, a malformed multipart body
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, cut(str(exc.detail), 300), exc.headers)

    @app.exception_handler(HSpaceError)  # from the edit itself: what the model or bank refused
    async def hspace_error(request: Request, exc: HSpaceError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> JSONResponse:
        LOG.error("edit failed", exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); the server's log has the traceback")


def publish_random_bank(
    url: str,
    model: LoadedModel,
    names: Sequence[str] = ("a", "b", "c"),
    *,
    steps: int = 4,
    seed: int = 0,
    fields: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Publish a bank of Gaussian directions of shape (T, *h_shape) for ``model`` at ``url``; its version.

    To try the server without a corpus: its tests and ``bench/bench_serve.py``. ``fields``: per name, more
    :class:`~hspace.bank.Direction` fields (``evaluation``, ``parameters``).
    """
    generator = torch.Generator().manual_seed(seed)
    directions = [
        Direction(
            name=name,
            tensor=torch.randn((steps, *model.h_shape), generator=generator),
            method="random",
            fingerprint=model.fingerprint,
            **(fields or {}).get(name, {}),
        )
        for name in names
    ]
    timesteps = [int(t) for t in make_scheduler(model.scheduler_config, steps).timesteps]
    conditioning = None if model.conditioning is None else model.conditioning.sampling()
    return publish(url, directions, model_fingerprint=model.fingerprint, timesteps=timesteps, conditioning=conditioning)
