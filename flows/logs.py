"""What a run prints on the terminal when it fails: one line, from the ``hspace`` command (issue 19).

A failed task or flow run makes Prefect log its failure, with the whole traceback, at ERROR on the run's
loggers; the ``hspace`` command then ends with the reason in one line. :class:`OneLineConsole` replaces
Prefect's console handler (``PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS``, set by ``flows/cli.py`` unless
``--verbose``; an environment variable, so Dask workers started from the command use it too): it leaves
the failure reports to the run log that Prefect's API handler keeps (``prefect flow-run logs``, the UI), and
prints other records without their tracebacks.
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import PrefectConsoleHandler

# The loggers whose ERROR records are the failure reports of flow and task runs.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class OneLineConsole(PrefectConsoleHandler):
    """Prefect's console handler without tracebacks and without the runs' failure reports."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and record.name.startswith(RUN_LOGGERS):
            return
        if record.exc_info or record.exc_text or record.stack_info:
            # A copy: the same record goes on to the API handler, which keeps the traceback.
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        super().emit(record)
