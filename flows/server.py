"""A real local Prefect server for runs with Dask worker processes.

Prefect's ephemeral mode starts one server per worker process over one SQLite file and fails with
"database is locked"; a real ``prefect server start`` does not. When no
``PREFECT_API_URL`` is set, :func:`prefect_api_for_workers` starts one for the run and stops it after.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hspace.errors import HSpaceError

START_TIMEOUT_S = 120.0
HOW_TO = (
    "start one yourself with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api, "
    "or run without --workers/--dask-address"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def local_prefect_server(home: Path | None = None) -> Iterator[str]:
    """Run ``prefect server start`` on a free loopback port; yields its API URL."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory(prefix="hspace-prefect-") as scratch:
        prefect_home = home or Path(scratch)
        log_path = Path(scratch) / "server.log"
        env = {
            **os.environ,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _healthy(api_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-600:].strip().replace("\n", " | ")
                    raise HSpaceError(f"could not start a local Prefect server ({tail}); {HOW_TO}")
                time.sleep(0.5)
            yield api_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def prefect_api_for_workers() -> Iterator[str]:
    """The Prefect API that worker processes will report to: PREFECT_API_URL, or a server started here."""
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with local_prefect_server() as api_url:
        # Worker processes inherit the environment when the cluster spawns them; this process reads settings.
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                try:
                    yield api_url
                finally:
                    _send_pending_logs()
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _send_pending_logs() -> None:
    """Send this process's queued run logs (a failed run's report, with its traceback) while the server is up:
    after it stops they would fail with Prefect's "Error logging to API" on the terminal."""
    from prefect.logging.handlers import APILogHandler

    for handler in logging.getLogger("prefect.flow_runs").handlers:
        if isinstance(handler, APILogHandler):
            handler.flush()
