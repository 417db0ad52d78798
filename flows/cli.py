"""The ``hspace`` command.

Exit status 0 on success; on failure a one-line reason on stderr and status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

# Before Prefect is imported: no telemetry, and only warnings from Prefect's own loggers on the terminal.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

# One module per command (``hspace <command>`` is in ``flows/cli_<command>.py``). Each has
# ``add_commands(commands)``, which adds its sub-parsers to the top-level ``commands`` and gives each a
# ``func`` default, ``func(args) -> int | None``. None of them imports torch, diffusers or Prefect before
# a command runs, so ``hspace --help`` answers at once.
COMMAND_MODULES: tuple[str, ...] = (
    "flows.cli_demo",
    "flows.cli_corpus",
    "flows.cli_annotate",
    "flows.cli_pca",
    "flows.cli_jacobian",
    "flows.cli_directions",
    "flows.cli_edit",
    "flows.cli_evaluate",
    "flows.cli_efficiency",
    "flows.cli_bank",
    "flows.cli_rebuild_bank",
    "flows.cli_testbed",
    "flows.cli_serve",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hspace")
    except PackageNotFoundError:
        return "unknown (not installed)"


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line, which says what to run for help (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    """The ``hspace`` argument parser with every command module's commands."""
    top = OneLineErrors(prog="hspace", description=__doc__.splitlines()[0] if __doc__ else None)
    top.add_argument("--version", action="version", version=f"hspace {_version()}")
    top.add_argument(
        "--verbose",
        action="store_true",
        help="print failures with their tracebacks (by default one line; the Prefect run log has them in full)",
    )
    commands = top.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the ``hspace`` command ``argv``; returns the exit status."""
    args = parser().parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", "flows.logs.OneLineConsole")
    from hspace.errors import HSpaceError

    try:
        return int(args.func(args) or 0)
    except HSpaceError as error:
        print(f"hspace: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a run-time failure that is not ours: one line, the traceback on request
        if args.verbose:
            raise
        print(f"hspace: error: {_failure(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hspace: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _failure(error: Exception) -> str:
    """One line for an exception that is not an HSpaceError: what failed and what to do."""
    if type(error).__name__ == "KilledWorker":  # distributed.scheduler.KilledWorker, without importing Dask
        return (
            f"a Dask worker died too often while running {error.args[0] if error.args else 'a task'} (out of "
            "memory, or a crash): see the workers' logs, then rerun the same command to resume"
        )
    return (
        f"{type(error).__name__}: {error}; rerun with `hspace --verbose ...` for the traceback (a flow's run log in "
        "Prefect has it too), and the same command resumes what was done"
    )


if __name__ == "__main__":
    sys.exit(main())
