"""Progress of a stage, in one place: a tqdm bar on stderr and, inside a Prefect run, a progress artifact.

:func:`track` follows the units of one stage (samples, shards, blocks, steps): the bar shows them as they
complete, and the artifact (key ``<desc>-progress``, one per run of the stage) shows the percentage in the
Prefect UI, updated at most once per :data:`ARTIFACT_INTERVAL_S` and per whole percent, so that a run of
10,000 shards makes a few hundred API calls at most, and set to its final value at the end.
:func:`flows.runner.submit_all` uses it for every fan-out; a stage that loops in one process uses it
directly::

    with track(Progress(total=len(blocks), unit="block", desc="evaluate")) as progress:
        for block in blocks:
            ...
            progress.update(1)

:func:`stage_progress` shows a parent flow's "stage i of n" (a line on stderr, one artifact per flow run).
Outside a flow or task run there is no artifact (Prefect deprecates artifacts without a run), only the bar.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from tqdm import tqdm

ARTIFACT_INTERVAL_S = 1.0  # at most one artifact update per second (and per whole percent)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A stage's progress: ``total`` units, ``done`` of them before this run; the bar is hidden unless ``show``.

    ``desc`` names the stage (the bar's label); the Prefect artifact's key is ``key``, by default
    ``<desc>-progress`` in lowercase letters, digits and dashes (what Prefect keys allow). The artifact is
    made whatever ``show`` says: the UI has no stderr to clutter.
    """

    total: int
    done: int = 0
    unit: str = "step"
    desc: str = ""
    show: bool = True
    key: str | None = None

    def artifact_key(self) -> str:
        """The artifact's key: ``key``, or one made from ``desc``."""
        return self.key if self.key is not None else artifact_key(self.desc, "progress")


def artifact_key(*words: str) -> str:
    """A Prefect artifact key from ``words``: lowercase letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(words).lower()).strip("-")


def in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (where artifacts belong to the run)."""
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


class ProgressArtifact:
    """A Prefect progress artifact of this run (its id), updated with a throttle; :meth:`create` makes one.

    An update is sent when at least ``interval`` seconds have passed since the last one and the whole
    percentage has changed, or when forced. The artifact is a view: a failing API call is logged and ends
    the updates, it never fails the stage whose progress it shows.
    """

    def __init__(
        self,
        artifact_id: UUID | None,
        percent: float,
        *,
        interval: float = ARTIFACT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = artifact_id
        self.percent = percent
        self.interval = interval
        self.clock = clock
        self._sent_at = clock()

    @classmethod
    def create(cls, key: str, percent: float, description: str) -> ProgressArtifact:
        """A new artifact ``key`` of this run at ``percent``."""
        artifact = cls(None, percent)
        with artifact.failures_logged():
            # _sync: the blocking call even inside an async flow (as Prefect's own sync callers do).
            created = create_progress_artifact(percent, key=key, description=description, _sync=True)  # type: ignore[call-arg]
            artifact.id = cast(UUID, created)
        return artifact

    def report(self, percent: float, description: str, *, force: bool = False) -> None:
        """Show ``percent`` (0 to 100) and ``description``, unless throttled."""
        if self.id is None:
            return
        now = self.clock()
        if not force and (int(percent) == int(self.percent) or now - self._sent_at < self.interval):
            return
        self.percent, self._sent_at = percent, now
        with self.failures_logged():
            update_progress_artifact(self.id, percent, description=description, _sync=True)  # type: ignore[call-arg]

    @contextlib.contextmanager
    def failures_logged(self) -> Iterator[None]:
        """Log an API call's failure and stop the updates, rather than fail the stage."""
        try:
            yield
        except Exception as error:  # a view: an unreachable API must not stop hours of work
            logger.warning("progress artifact not updated (%s: %s); the run goes on", type(error).__name__, error)
            self.id = None


class ProgressTracker:
    """One stage's bar and artifact; :meth:`update` (from one thread) advances both by completed units."""

    def __init__(self, progress: Progress, bar: tqdm, artifact: ProgressArtifact | None = None) -> None:
        self.progress = progress
        self.done = progress.done
        self.bar = bar
        self.artifact = artifact

    @property
    def percent(self) -> float:
        """Units done, in percent of the total (100 for an empty stage)."""
        total = self.progress.total
        return 100.0 if total <= 0 else min(100.0, 100.0 * self.done / total)

    def description(self, note: str = "") -> str:
        """What the artifact says: the stage, its units done of the total, and ``note``."""
        p = self.progress
        return f"{p.desc or 'progress'}: {self.done:,} of {p.total:,} {p.unit}s{note}"

    def update(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.done += n
        self.bar.update(n)
        if self.artifact is not None:
            self.artifact.report(self.percent, self.description())

    def close(self, note: str = "") -> None:
        """Send the final value to the artifact (100 when every unit is done), whatever the throttle."""
        if self.artifact is not None:
            self.artifact.report(self.percent, self.description(note), force=True)


@contextlib.contextmanager
def track(progress: Progress) -> Iterator[ProgressTracker]:
    """Follow one stage: a tqdm bar (labelled ``progress.desc``, in ``progress.unit``) while inside, and a
    progress artifact when inside a Prefect run, created at ``done / total`` and ending at its final value."""
    with tqdm(
        total=progress.total,
        initial=progress.done,
        unit=progress.unit,
        desc=progress.desc,
        disable=not progress.show,
        file=sys.stderr,
    ) as bar:
        tracker = ProgressTracker(progress, bar)
        if in_prefect_run():
            tracker.artifact = ProgressArtifact.create(progress.artifact_key(), tracker.percent, tracker.description())
        try:
            yield tracker
        except BaseException:
            tracker.close(" (stopped)")
            raise
        tracker.close()


@contextlib.contextmanager
def stage_progress(flow_name: str, i: int, n: int, stage: str, *, show: bool = True) -> Iterator[None]:
    """Stage ``i`` of ``n`` (from 1) of a parent flow, around the stage's work.

    On entry: a line ``<flow_name>: stage i of n: <stage>`` on stderr (unless not ``show``) and, inside a
    Prefect run, the flow run's artifact ``<flow_name>-stages`` at (i - 1) / n; on a clean exit, at i / n,
    so that the last stage's exit shows 100. The artifact is made by the first call in the flow run and
    found again by the later ones.
    """
    if not 1 <= i <= n:
        raise ValueError(f"stage {i} of {n}: i must be from 1 to n")
    label = f"{flow_name}: stage {i} of {n}: {stage}"
    if show:
        tqdm.write(label, file=sys.stderr)
    artifact = _stage_artifact(artifact_key(flow_name, "stages"), 100.0 * (i - 1) / n, label)
    yield
    if artifact is not None:
        artifact.report(100.0 * i / n, f"{label} (done)", force=True)


def _stage_artifact(key: str, percent: float, description: str) -> ProgressArtifact | None:
    """This flow run's artifact ``key``, showing ``percent``: the one made by an earlier stage, else a new one."""
    if not in_prefect_run():
        return None
    artifact = ProgressArtifact(None, percent)
    with artifact.failures_logged():
        artifact.id = _find_run_artifact(key)
    if artifact.id is None:
        return ProgressArtifact.create(key, percent, description)
    artifact.report(percent, description, force=True)
    return artifact


def _find_run_artifact(key: str) -> UUID | None:
    """The id of this flow run's newest artifact with ``key``, if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    artifact_filter = ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run.id)])
    )
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=artifact_filter, sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0].id if found else None
