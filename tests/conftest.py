"""Shared fixtures: the tiny model, one Prefect test harness and one real Prefect server per session."""

from __future__ import annotations

import os

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from hspace.models import LoadedModel, load_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny")


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect backend for every in-process flow test (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_server():
    """A real `prefect server start` on loopback, for Dask worker processes and CLI subprocesses."""
    from flows.server import local_prefect_server

    with local_prefect_server() as api_url:
        yield api_url


@pytest.fixture
def use_prefect_server(prefect_server, monkeypatch):
    """Point this process (settings) and any child process (environment) at the real server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server
