"""``hspace serve`` (flows/serve.py) on the tiny model, through FastAPI's TestClient.

Every expected image is ``hspace.edit`` (or ``hspace.photos.edit_image``) called directly, bitwise; the worker is
held, where a test needs edits to wait, by a gate around the ``edit`` it calls (no sleeps as synchronisation).
"""

from __future__ import annotations

import copy
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from starlette.requests import Request

import flows.serve
from flows.serve import Limits, Refused, make_app, publish_random_bank, read_body
from hspace.bank import load_bank
from hspace.editing import edit
from hspace.errors import HSpaceError
from hspace.model_configs import DDPM_LINEAR_CONFIG

pytestmark = pytest.mark.usefixtures("one_thread")  # the server's worker and the oracle: same thread count

NAMES = ("a", "b", "c")
# "a" has a Table I row (own effect 1.5 std, side effect on b 0.2, random twin 0.1: clean); "c" has none.
EVALUATION = {
    "attributes": ["a", "b"],
    "effect": {"mean_in_std": [1.5, -0.2]},
    "random": {"mean_in_std": [0.1, 0.05]},
}
FIELDS = {"a": {"evaluation": EVALUATION, "parameters": {"attribute": "a"}}, "b": {"parameters": {"attribute": "b"}}}
LIMITS = Limits(max_directions=2, max_upload_bytes=3000, max_pixels=5000, max_seed=1000)


@pytest.fixture(scope="module")
def bank(tiny, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("serve") / "bank")
    publish_random_bank(url, tiny, NAMES, steps=4, fields=FIELDS)
    return load_bank(url)


@pytest.fixture(scope="module")
def client(tiny, bank) -> Iterator[TestClient]:
    """One app for the tests that send single requests: it must keep serving whatever came before."""
    with TestClient(make_app(tiny, bank, LIMITS)) as client:
        yield client


def png_image(response) -> np.ndarray:
    """The PNG of a response as uint8 (3, H, W), the layout of hspace.edit's images."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content))).transpose(2, 0, 1)


def png_file(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Elements(HTMLParser):
    """The attributes of every element (by id where it has one), and the text of those with an id."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text: dict[str, str] = {}
        self._open: str | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        key = attributes.get("id") or f"{tag}#{len(self.by_id)}"  # every element, by its id where it has one
        self.by_id[key] = {"tag": tag, **attributes}
        self._open = attributes.get("id")

    def handle_data(self, data):
        if self._open is not None:
            self.text[self._open] = self.text.get(self._open, "") + data

    def handle_endtag(self, tag):
        self._open = None


# ----- the page and /directions -------------------------------------------------------------------------------
def test_the_page_has_a_slider_per_direction_beside_its_evaluation(client, bank, tiny):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = Elements(response.text)
    for name in NAMES:
        slider = page.by_id[f"gamma-{name}"]
        assert (slider["tag"], slider["type"], slider["min"], slider["max"], slider["step"], slider["value"]) == (
            "input",
            "range",
            "-10",
            "10",
            "0.1",
            "0",
        )
    assert page.text["bank-version"] == bank.version == "v0001"
    assert page.text["model-fingerprint"] == tiny.fingerprint
    assert page.by_id["seed"]["type"] == "number" and page.by_id["upload"]["type"] == "file"
    assert page.by_id["edited"]["tag"] == "img"
    # The evaluation row of "a" and its verdict; "c" has none.
    assert (page.text["own-a"], page.text["side-a"], page.text["random-a"]) == ("a 1.50", "b 0.20", "0.10")
    assert page.text["verdict-a"] == "clean" and page.text["verdict-c"] == "unevaluated"
    # Nothing from elsewhere: no URL in the page, and a policy that would block one.
    assert "://" not in response.text and "url(" not in response.text and "@import" not in response.text
    assert not [element for element in page.by_id.values() if {"src", "href"} & set(element)]
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_directions_describe_the_bank(client, bank):
    from hspace.verdicts import verdicts

    expected = verdicts(bank)
    assert expected["a"]["kind"] == "clean" and expected["c"]["kind"] == "unevaluated"
    assert client.get("/directions").json() == {
        "bank": bank.url,
        "version": "v0001",
        "model_fingerprint": bank.fingerprint,
        "steps": 4,
        "conditioning": None,
        "directions": [
            {"name": "a", "method": "random", "evaluation": EVALUATION, "verdict": expected["a"]},
            {"name": "b", "method": "random", "evaluation": None, "verdict": expected["b"]},
            {"name": "c", "method": "random", "evaluation": None, "verdict": expected["c"]},
        ],
        "limits": {
            "max_gamma": 10.0,
            "max_directions": 2,
            "max_upload_bytes": 3000,
            "max_pixels": 5000,
            "max_seed": 1000,
            "queue": 16,
            "batch": 8,
        },
    }
    assert client.get("/healthz").json() == {"status": "ok", "version": "v0001", "waiting": 0}


# ----- edits -----------------------------------------------------------------------------------------------------
def test_an_edit_is_hspace_edit_bitwise(client, bank, tiny):
    gammas = {"a": 2.0, "b": -1.5}
    shown = png_image(client.post("/edit", json={"seed": 3, "gammas": gammas}))
    expected = edit(tiny, [3], gammas, bank)[0]
    assert shown.shape == expected.shape == (3, 16, 16)  # the model's size: no resizing
    assert np.array_equal(shown, expected)
    assert not np.array_equal(expected, edit(tiny, [3], {}, bank)[0])  # the edit changes the image
    assert np.array_equal(png_image(client.post("/edit", json={"seed": 3})), edit(tiny, [3], {}, bank)[0])


def test_a_text_models_bank_is_served_with_its_prompt(tmp_path):
    from hspace.conditioning import Conditioning
    from hspace.models import load_model

    model = load_model("tiny-sd", conditioning=Conditioning(prompt="a <b>face</b>", guidance=3.0))
    url = str(tmp_path / "bank")
    publish_random_bank(url, model, NAMES, steps=3)
    bank = load_bank(url)
    with TestClient(make_app(model, bank, LIMITS)) as client:
        assert client.get("/directions").json()["conditioning"] == {
            "prompt": "a <b>face</b>",
            "negative_prompt": "",
            "guidance": 3.0,
        }
        assert 'prompt <code id="prompt">a &lt;b&gt;face&lt;/b&gt;</code>' in client.get("/").text
        shown = png_image(client.post("/edit", json={"seed": 3, "gammas": {"a": 2.0}}))
    assert np.array_equal(shown, edit(model, [3], {"a": 2.0}, bank)[0])


BAD_JSON = {
    "unknown direction": ({"seed": 1, "gammas": {"smile": 1}}, "unknown direction 'smile'; this bank has a, b, c"),
    "gamma above the bound": ({"seed": 1, "gammas": {"a": 10.5}}, "the gamma of a is 10.5: |gamma| is at most 10"),
    "too many directions": ({"seed": 1, "gammas": {"a": 1, "b": 1, "c": 1}}, "3 directions in one edit; at most 2"),
    "gamma a string": ({"seed": 1, "gammas": {"a": "1"}}, "the gamma of a must be a number; got '1'"),
    "gamma a boolean": ({"seed": 1, "gammas": {"a": True}}, "the gamma of a must be a number; got True"),
    "gammas not an object": ({"seed": 1, "gammas": [1]}, "gammas must be a JSON object"),
    "seed a float": ({"seed": 1.5}, "seed must be an integer in [0, 1000]; got 1.5"),
    "seed a string": ({"seed": "3"}, "seed must be an integer in [0, 1000]; got '3'"),
    "seed negative": ({"seed": -1}, "seed must be an integer in [0, 1000]; got -1"),
    "seed above the bound": ({"seed": 1001}, "seed must be an integer in [0, 1000]; got 1001"),
    "no seed": ({"gammas": {}}, 'send {"seed": int'),
    "unknown field": ({"seed": 1, "path": "/etc/passwd"}, "unknown field 'path'"),
    "not an object": ([1, 2], 'send {"seed": int'),
}
BAD_BODIES = {
    "malformed JSON": (b'{"seed": 1,', "application/json", 400, "malformed JSON: Expecting property name"),
    "NaN": (b'{"seed": 1, "gammas": {"a": NaN}}', "application/json", 400, "malformed JSON: NaN is not a JSON number"),
    "not UTF-8": (b'{"seed": 1, "g\xff": 1}', "application/json", 400, "malformed JSON"),
    "nested too deep": (b"[" * 60000, "application/json", 400, "malformed JSON"),
    "JSON too large": (b" " * 70000 + b"{}", "application/json", 413, "a JSON edit is larger than 65536 bytes"),
    "other content type": (b"seed=1", "text/plain", 415, "Content-Type 'text/plain': send"),
}


def check_refused(response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert reason in error and "\n" not in error


@pytest.fixture(scope="module")
def good_image(tiny, bank) -> np.ndarray:
    return edit(tiny, [5], {"c": 1.0}, bank)[0]


@pytest.fixture
def still_serving(client, good_image):
    """After the test's bad request, a good one is still answered, and right."""
    yield
    assert np.array_equal(png_image(client.post("/edit", json={"seed": 5, "gammas": {"c": 1.0}})), good_image)


@pytest.mark.parametrize("case", BAD_JSON)
def test_a_bad_json_edit_is_refused_and_the_server_goes_on(client, still_serving, case):
    body, reason = BAD_JSON[case]
    check_refused(client.post("/edit", json=body), 400, reason)


@pytest.mark.parametrize("case", BAD_BODIES)
def test_a_bad_body_is_refused_and_the_server_goes_on(client, still_serving, case):
    body, content_type, status, reason = BAD_BODIES[case]
    check_refused(client.post("/edit", content=body, headers={"Content-Type": content_type}), status, reason)


def test_a_body_sent_without_its_length_is_cut_at_the_bound(client, still_serving):
    chunks = (b" " * 8192 for _ in range(20))  # chunked: no Content-Length
    check_refused(client.post("/edit", content=chunks, headers={"Content-Type": "application/json"}), 413, "larger")


def solid_png(width: int, height: int) -> bytes:
    """Few bytes, many pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


SMALL = ("x.png", png_file(8, 8), "image/png")
BAD_UPLOADS = {
    "not an image": ({"image": ("x.png", b"GIF89a but not really", "image/png")}, {}, 400, "not an image PIL can read"),
    "too many bytes": ({"image": ("x.png", png_file(40, 30), "image/png")}, {}, 413, "larger than 3000 bytes"),
    "too many pixels": ({"image": ("x.png", solid_png(100, 60), "image/png")}, {}, 413, "100 x 60 pixels"),
    # (None, value): a part without a file name, which is a plain field.
    "no image": ({"gammas": (None, "{}")}, {}, 400, "multipart/form-data with a file field image"),
    "image not a file": ({"image": (None, "abc")}, {}, 400, "multipart/form-data with a file field image"),
    "two images": ({"image": SMALL, "other": SMALL}, {}, 400, "Too many files"),
    "unknown field": ({"image": SMALL}, {"path": "x"}, 400, "unknown form field 'path'"),
    "gammas malformed": ({"image": SMALL}, {"gammas": "{a"}, 400, "malformed JSON"),
    "unknown direction": ({"image": SMALL}, {"gammas": '{"z": 1}'}, 400, "unknown direction 'z'"),
    "gamma above the bound": ({"image": SMALL}, {"gammas": '{"a": -11}'}, 400, "|gamma| is at most 10"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_refused_and_the_server_goes_on(client, still_serving, case):
    upload, data, status, reason = BAD_UPLOADS[case]
    if case == "too many pixels":
        assert len(upload["image"][1]) < LIMITS.max_upload_bytes  # refused for its pixels, not its bytes
    check_refused(client.post("/edit", files=upload, data=data), status, reason)


def test_a_declared_length_above_the_bound_is_refused_before_reading(client, still_serving):
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(3000 + 65536 + 1)}
    check_refused(client.post("/edit", content=b"x" * (3000 + 65536 + 1), headers=headers), 413, "the form is larger")


@pytest.mark.parametrize("path, method, status", [("/nowhere", "GET", 404), ("/edit", "GET", 405)])
def test_other_paths_answer_json(client, still_serving, path, method, status):
    response = client.request(method, path)
    assert response.status_code == status and set(response.json()) == {"error"}


def test_read_body_stops_reading_past_the_bound():
    """A body without Content-Length is read only until it passes the bound, not to its end."""
    received = []

    async def receive():
        received.append(1024)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}  # an endless body

    def request(headers):
        return Request({"type": "http", "method": "POST", "headers": headers, "path": "/edit"}, receive)

    async def read(headers):
        with pytest.raises(Refused, match="larger than 4096 bytes") as refused:
            await read_body(request(headers), 4096, "it")
        assert refused.value.status == 413

    import asyncio

    asyncio.run(read([]))
    assert sum(received) == 5 * 1024  # the first chunk past 4096 bytes, then no more
    received.clear()
    asyncio.run(read([(b"content-length", b"5000")]))
    assert received == []  # the declared length alone refuses it


def test_a_photo_edit_is_edit_image_bitwise(client, bank, tiny):
    photos = pytest.importorskip("hspace.photos", reason="hspace.photos (photo edits) is not in this checkout yet")
    upload = png_file(20, 12, seed=1)
    assert len(upload) <= LIMITS.max_upload_bytes
    response = client.post("/edit", files={"image": ("me.png", upload, "image/png")}, data={"gammas": '{"a": 2.0}'})
    result = photos.edit_image(tiny, [Image.open(io.BytesIO(upload)).convert("RGB")], {"a": 2.0}, bank)
    assert np.array_equal(png_image(response), result.edited[0, 0])
    error = result.errors[0]
    assert float(response.headers["X-Reconstruction-PSNR"]) == pytest.approx(error["psnr"], rel=1e-5)
    assert float(response.headers["X-Reconstruction-MAE"]) == pytest.approx(error["mae"], rel=1e-5)
    assert (
        response.headers["X-Photo-Fit"]
        == result.notes[0]
        == "photo 0: 20x12 centre-cropped to its 16:16 middle and resized to 16x16"
    )
    assert ("X-Reconstruction-Warning" in response.headers) == (error["warning"] is not None)
    assert not np.array_equal(result.edited[0, 0], result.reconstructions[0])  # the edit changes the photo


# ----- the worker: the queue bound and batching ---------------------------------------------------------------
class Gate:
    """Wraps ``hspace.edit`` for the worker: records each call, and holds the first until ``release`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], dict[str, float]]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, model, seeds, gammas, bank):
        self.calls.append((list(seeds), dict(gammas)))
        self.entered.set()
        assert self.release.wait(timeout=120), "the test never released the worker"
        return edit(model, seeds, gammas, bank)


def post_in_thread(client, body: dict) -> tuple[threading.Thread, list]:
    answer: list = []
    thread = threading.Thread(target=lambda: answer.append(client.post("/edit", json=body)), daemon=True)
    thread.start()
    return thread, answer


def wait_until(condition, what: str, timeout: float = 60) -> None:
    """Wait for ``condition()`` (a state the test caused), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_edits_beyond_the_queue_get_503_and_the_rest_are_served(tiny, bank, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(flows.serve, "edit", gate)
    with TestClient(make_app(tiny, bank, Limits(queue=1, batch=1))) as client:
        worker = client.app.state.worker
        first = post_in_thread(client, {"seed": 0, "gammas": {"a": 1.0}})
        assert gate.entered.wait(timeout=60)  # the worker holds the first edit
        second = post_in_thread(client, {"seed": 1, "gammas": {"a": 1.0}})
        wait_until(lambda: worker.waiting == 1, "the second edit waits in the queue")
        response = client.post("/edit", json={"seed": 2, "gammas": {"a": 1.0}})
        check_refused(response, 503, "busy: 1 edits are waiting already")
        assert response.headers["Retry-After"] == "1"
        gate.release.set()
        for (thread, answer), seed in ((first, 0), (second, 1)):
            thread.join(timeout=120)
            assert np.array_equal(png_image(answer[0]), edit(tiny, [seed], {"a": 1.0}, bank)[0])
        assert np.array_equal(png_image(client.post("/edit", json={"seed": 2})), edit(tiny, [2], {}, bank)[0])
    assert [seeds for seeds, _ in gate.calls] == [[0], [1], [2]]


def test_waiting_edits_with_the_same_gammas_are_one_call(tiny, bank, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(flows.serve, "edit", gate)
    same, other = {"a": 1.0, "b": 0.5}, {"b": 0.5, "a": 1.0}  # the same edit, summed in another order
    bodies = [{"seed": 0, "gammas": same}] + [{"seed": s, "gammas": same} for s in (1, 2, 3)]
    bodies += [{"seed": 4, "gammas": other}, {"seed": 5, "gammas": same}]
    with TestClient(make_app(tiny, bank, Limits(queue=8, batch=8))) as client:
        worker = client.app.state.worker
        posted = [post_in_thread(client, bodies[0])]
        assert gate.entered.wait(timeout=60)
        for i, body in enumerate(bodies[1:], start=1):
            posted.append(post_in_thread(client, body))
            wait_until(lambda i=i: worker.waiting == i, f"edit {i} waits")  # in this order
        gate.release.set()
        for (thread, answer), body in zip(posted, bodies, strict=True):
            thread.join(timeout=120)
            assert np.array_equal(png_image(answer[0]), edit(tiny, [body["seed"]], body["gammas"], bank)[0])
    # 6 requests, 3 calls: the first alone (it came alone), then one per gammas in their order.
    assert gate.calls == [([0], same), ([1, 2, 3, 5], same), ([4], other)]
    assert [list(gammas) for _, gammas in gate.calls] == [["a", "b"], ["a", "b"], ["b", "a"]]


# ----- start-up --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_model(tiny, tmp_path_factory) -> str:
    """The folder of the tiny model with one weight changed: same architecture, another fingerprint."""
    folder = tmp_path_factory.mktemp("other") / "model"
    unet = copy.deepcopy(tiny.unet)
    with torch.no_grad():
        next(unet.parameters()).add_(1e-3)
    unet.save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(DDPM_LINEAR_CONFIG))
    return str(folder)


def test_a_model_the_bank_was_not_built_for_is_refused_at_start_up(cli, capsys, bank, other_model):
    from hspace.models import load_model

    with pytest.raises(HSpaceError, match="weight fingerprint"):
        make_app(load_model(other_model), bank)
    assert cli("serve", bank.url, "--model", other_model, "--port", "1") == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hspace: error: bank ") and "weight fingerprint" in line


def test_a_bank_of_other_timesteps_is_refused_at_start_up(cli, capsys, tiny, tmp_path):
    from hspace.bank import publish

    good, url = str(tmp_path / "good"), str(tmp_path / "bank")
    publish_random_bank(good, tiny)  # T = 4 with this model's timesteps; the same direction with others:
    publish(url, [load_bank(good)["a"]], model_fingerprint=tiny.fingerprint, timesteps=[999, 700, 400, 100])
    assert cli("serve", url, "--model", "tiny") == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hspace: error: bank ") and "was built with timesteps [999, 700, 400, 100]" in line


def test_a_port_in_use_is_one_line(cli, capsys, bank):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli("serve", bank.url, "--model", "tiny", "--port", taken.getsockname()[1]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hspace: error: cannot listen on 127.0.0.1 port")


@pytest.mark.parametrize("option", ["--max-gamma=0", "--queue=0", "--batch=-1", "--max-seed=0"])
def test_limits_must_be_positive(cli, capsys, bank, option):
    assert cli("serve", bank.url, "--model", "tiny", option) == 1
    flag = option.split("=")[0]
    assert capsys.readouterr().err.startswith(f"hspace: error: {flag} must be positive; got ")
