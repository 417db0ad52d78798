"""``hspace serve`` in a real browser: the page's script sends the slider's edit and shows ``hspace.edit``'s image.

Starts the command as a subprocess on a free loopback port and drives headless Chromium (Debian's ``chromium``
and ``chromedriver``; ``.ci/run`` installs them) through selenium. Set ``HSPACE_SERVE_SCREENSHOT=docs/serve.png``
to also write the screenshot there (the README's picture); otherwise it goes to the test's folder only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.serve import publish_random_bank
from hspace.bank import load_bank
from hspace.editing import edit

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)",
    ),
    pytest.mark.usefixtures("one_thread"),  # the oracle below, as the server (OMP_NUM_THREADS=1) runs
]
ROOT = Path(__file__).parents[2]
GAMMAS = {"b": 2.5}
SEED = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """``hspace serve`` on a bank of random directions for the tiny model; yields its URL and the bank."""
    tmp_path = tmp_path_factory.mktemp("server")
    url = str(tmp_path / "bank")
    publish_random_bank(url, tiny, ("a", "b", "c"), steps=4)
    port, log = free_port(), (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "flows.cli", "serve", url, "--model", "tiny", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    address = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(address + "healthz", timeout=5) as answer:
                    assert json.load(answer)["status"] == "ok"
                break
            except OSError:
                log.flush()
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "hspace serve did not answer /healthz in 120 s"
                time.sleep(0.1)
        yield address, load_bank(url)
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,800",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def shown_image(browser) -> tuple[str, dict[str, str | None]]:
    """The <img id="edited">'s src and the edit it shows (the page's data attributes)."""
    image = browser.find_element("id", "edited")
    return image.get_attribute("src"), {key: image.get_attribute(f"data-{key}") for key in ("seed", "gammas")}


def decoded(src: str) -> np.ndarray:
    """The PNG of a data: URL as uint8 (3, H, W)."""
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))).transpose(2, 0, 1)


def open_page(browser, address: str):
    """The page, loaded, with its first image (seed 0, unedited) shown; a WebDriverWait."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(address)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda _: shown_image(browser)[1] == {"seed": "0", "gammas": "{}"})
    return wait


MOVE = """
const [slider, gamma] = arguments;
const range = document.getElementById(slider);
range.value = String(gamma);
range.dispatchEvent(new Event("input", {bubbles: true}));
"""


def test_moving_a_slider_shows_hspace_edit(server, browser, tiny, tmp_path):
    address, bank = server
    wait = open_page(browser, address)
    first, _ = shown_image(browser)
    browser.execute_script(f'document.getElementById("seed").value = "{SEED}";' + MOVE, "gamma-b", GAMMAS["b"])
    expected = {"seed": str(SEED), "gammas": json.dumps(GAMMAS, separators=(",", ":"))}
    wait.until(lambda _: shown_image(browser)[1] == expected)
    src, _ = shown_image(browser)
    assert src != first
    shown = decoded(src)
    assert np.array_equal(shown, edit(tiny, [SEED], GAMMAS, bank)[0])
    assert not np.array_equal(shown, edit(tiny, [SEED], {}, bank)[0])
    assert browser.find_element("id", "value-b").text == "2.5"
    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("HSPACE_SERVE_SCREENSHOT"):
        shutil.copyfile(tmp_path / "serve.png", os.environ["HSPACE_SERVE_SCREENSHOT"])


def test_an_uploaded_photo_shows_edit_image(server, browser, tiny, tmp_path):
    from hspace.photos import edit_image

    address, bank = server
    photo = tmp_path / "me.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(photo)
    wait = open_page(browser, address)
    browser.execute_script(MOVE, "gamma-a", -1.5)
    browser.find_element("id", "upload").send_keys(str(photo))  # its change event sends the edit at once
    wait.until(lambda _: shown_image(browser)[1] == {"seed": "", "gammas": '{"a":-1.5}'})
    expected = edit_image(tiny, [Image.open(photo)], {"a": -1.5}, bank)
    assert np.array_equal(decoded(shown_image(browser)[0]), expected.edited[0, 0])
    assert "me.png" in browser.find_element("id", "status").text
