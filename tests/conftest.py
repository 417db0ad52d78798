"""Shared fixtures: the tiny model, built corpora, the in-process CLI, tree bytes, one Prefect test harness and one
real Prefect server per session.

Every test runs by default (CI runs them all); ``pytest -m "not slow"`` leaves out the end-to-end checks that start
subprocesses, Prefect servers or Dask clusters, for a quick loop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from hspace.models import LoadedModel, load_model  # noqa: E402


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread, from the first test of the module that asks until the module ends.

    CPU kernels' last bits depend on torch's thread count, so a bitwise comparison with a flow's result runs
    on one thread, as Dask's workers do; tiny models also run faster so on a shared 2-core machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model("tiny")


@pytest.fixture(scope="session")
def corpus_factory(tmp_path_factory) -> Callable[..., str]:
    """``corpus_factory(samples=, steps=, batch=, seed=, ...)``: the url of a tiny-model corpus with these settings.

    Each set of settings is built once per session, in this process (``generate_shards.fn``: the flow's own
    task, without a Prefect run), and shared: copy it (``copy_corpus``) before writing to it.
    """
    from tasks.corpus import generate_shards, prepare_corpus

    built: dict[str, str] = {}

    def build(
        *,
        samples: int,
        steps: int,
        batch: int,
        seed: int,
        model: str = "tiny",
        eta: float = 1.0,
        dtype: str = "float16",
        device: str = "cpu",
        precision: str = "fp32",
    ) -> str:
        settings = dict(
            model=model,
            samples=samples,
            steps=steps,
            eta=eta,
            batch=batch,
            seed=seed,
            dtype=dtype,
            device=device,
            precision=precision,
        )
        key = repr(sorted(settings.items()))
        if key not in built:
            url = str(tmp_path_factory.mktemp("corpus") / "c.zarr")
            corpus = prepare_corpus(out=url, **settings)
            generate_shards.fn(url, corpus.missing_shards(), device)
            built[key] = url
        return built[key]

    return build


@pytest.fixture
def copy_corpus(tmp_path) -> Callable[[str], str]:
    """``copy_corpus(url)``: the url of a fresh copy of that corpus in this test's ``tmp_path`` (``c.zarr``)."""

    def copy(url: str) -> str:
        fresh = str(tmp_path / "c.zarr")
        shutil.copytree(url, fresh)
        return fresh

    return copy


@pytest.fixture
def cli(capsys) -> Callable[..., int]:
    """``cli(*args)``: run ``hspace *args`` in this process (arguments passed through ``str``) and return its exit
    status; ``capsys.readouterr()`` then holds what this command printed, and nothing from before it."""
    import flows.cli

    def run(*args: object) -> int:
        capsys.readouterr()
        return flows.cli.main([str(arg) for arg in args])

    return run


@pytest.fixture
def no_mid_block_model(tmp_path) -> str:
    """The path of a saved UNet2DModel without a mid block (and a DDPM scheduler): a model hspace must refuse."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
    )
    unet.save_pretrained(tmp_path / "model")
    DDPMScheduler().save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def read_tree(root: str | Path, under: str = "") -> dict[str, bytes]:
    """Every file below ``root/under``, by its path relative to ``root``, with its bytes."""
    base = Path(root)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted((base / under).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tree_bytes() -> Callable[..., dict[str, bytes]]:
    """``tree_bytes(root, under="")``: {relative path: bytes} of every file below ``root/under``, to check that a
    command wrote nothing, or that two runs wrote the same bytes."""
    return read_tree


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


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """moto's standalone S3 server (a real S3 API over HTTP) on a free loopback port; yields its endpoint URL."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3 server that accepts any credentials (the test ones below)."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_server_checking_credentials() -> Iterator[str]:
    """An S3 server that refuses every request whose credentials it does not know (moto's IAM checks on)."""
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """``s3://<a new, empty bucket>`` on the moto server; this process and its children reach it through the
    standard AWS environment variables (test credentials only)."""
    import uuid

    import s3fs

    for name, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # one made before these variables would keep its endpoint
    bucket = f"hspace-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}"


class OutageProxy:
    """A TCP proxy on loopback in front of an S3 server, that can go down the way a restarting server does: while
    stopped nothing listens on its port (connections are refused) and every open connection is dropped; started
    again, it listens on the same port. moto keeps its objects in memory, so the server itself must keep running.
    """

    def __init__(self, upstream: str) -> None:
        import threading

        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.connections: set = set()
        self.trigger: tuple[bytes, float | None] | None = None
        self.outages = 0
        self.closed = False
        self.listener = None
        self.port = 0
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again, on the same port) and forward every connection to the server."""
        import socket
        import threading

        with self.lock:
            if self.listener is not None or self.closed:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self.listener, self.port = listener, listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self, seconds: float | None = None) -> None:
        """Refuse new connections and drop the open ones; start again after ``seconds`` (None: on :meth:`start`)."""
        import threading

        with self.lock:
            listener, self.listener = self.listener, None
            dropped, self.connections = self.connections, set()
        if listener is not None:
            listener.close()
            self.outages += 1
        for connection in dropped:
            _close(connection)
        if seconds is not None:
            timer = threading.Timer(seconds, self.start)
            timer.daemon = True
            timer.start()

    def close(self) -> None:
        """Stop for good."""
        self.closed = True
        self.stop()

    def stop_after(self, marker: bytes, seconds: float | None = None) -> None:
        """:meth:`stop` right after forwarding the first request that contains ``marker`` (its answer is lost)."""
        self.trigger = (marker, seconds)

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stopped
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                stopped = self.listener is not listener
                if not stopped:
                    self.connections |= {client, server}
            if stopped:  # meanwhile
                _close(client)
                _close(server)
                continue
            threading.Thread(target=self._forward, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._forward, args=(server, client, False), daemon=True).start()

    def _forward(self, source, target, requests: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                with self.lock:
                    trigger = self.trigger if requests and self.trigger and self.trigger[0] in data else None
                    if trigger is not None:
                        self.trigger = None
                if trigger is not None:
                    self.stop(trigger[1])
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)


def _close(connection) -> None:
    import socket

    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


@pytest.fixture
def s3_outage(s3_server, s3_bucket, monkeypatch) -> Iterator[OutageProxy]:
    """An :class:`OutageProxy` in front of the S3 server, through which this process (and its children) reach
    ``s3_bucket``: ``stop``/``start`` it, or ``stop_after`` a given request, to take the store away for a while."""
    import s3fs

    proxy = OutageProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy
    proxy.close()
    s3fs.S3FileSystem.clear_instance_cache()
