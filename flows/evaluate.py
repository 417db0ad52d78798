"""Flow ``evaluate_directions``: Table I as a fan-out of (repeat, block of samples) tasks, then one summary.

The evaluation samples are cut into U-Net passes of ``batch`` samples (each with all its edits), and the
passes not yet done into tasks of ``block`` samples; each task stores its passes' scores in the corpus
(``evaluations/<key>``, a done flag per pass, set last), so a rerun after a crash computes only the missing
passes. The passes fix the bits, so the result is the single-process one for any block size, worker count
or crash (``hspace.evaluate``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import Progress, checked_by, submit_all
from storage.corpus import Corpus
from storage.evaluations import stored_evaluation
from tasks.bank import report_markdown, write_report
from tasks.evaluate import EvaluationSpec, evaluate_passes, evaluation_inputs, finish_evaluation, open_parts


def pass_blocks(missing: list[tuple[int, int]], per_task: int) -> list[tuple[int, list[int]]]:
    """The missing (repeat, pass) pairs cut into tasks: up to ``per_task`` passes of one repeat each."""
    blocks: list[tuple[int, list[int]]] = []
    for repeat, p in missing:
        if blocks and blocks[-1][0] == repeat and len(blocks[-1][1]) < per_task:
            blocks[-1][1].append(p)
        else:
            blocks.append((repeat, [p]))
    return blocks


def check_evaluation(parameters: dict[str, Any]) -> None:
    """Unknown directions, a missing corpus or a per-step eta fail here, before anything is written."""
    evaluation_inputs(parameters["spec"])


@checked_by(check_evaluation)
@flow(name="evaluate-directions", task_runner=ThreadPoolTaskRunner(max_workers=1))
def evaluate_directions(spec: EvaluationSpec, report: str | None = None, progress: bool = True) -> str:
    """Evaluate ``spec`` (a stored result with the same key is reused) and return the key.

    With ``report``, the CSV, the markdown table and the heatmap are also written to that folder, and the
    markdown goes into a Prefect artifact.
    """
    key, parts = open_parts(spec)
    if parts is not None:
        missing = parts.missing()

        def size(passes: list[int]) -> int:
            return sum(stop - start for start, stop in map(parts.pass_range, passes))

        total = spec.samples * spec.repeats
        todo = sum(size([p]) for _, p in missing)
        bar = Progress(total=total, done=total - todo, unit="sample", desc="evaluation", show=progress)
        blocks = pass_blocks(missing, spec.passes_per_task)
        submit_all(
            evaluate_passes,
            [(spec, key, repeat, passes) for repeat, passes in blocks],
            bar,
            device=spec.device,
            weight=lambda scored: scored,
        )
        finish_evaluation(spec, key)
    if report is not None:
        result = stored_evaluation(Corpus.open(spec.url), key)
        assert result is not None  # stored above, or found stored
        files = write_report(result, report)
        create_markdown_artifact(
            markdown=report_markdown(result, files),
            key="bank-evaluation",
            description="Table I: change of each attribute (stds) per direction",
        )
    return key
