"""The viewer end to end in a real headless Chromium (Debian's ``chromium`` driven by Python playwright,
never a downloaded browser): load the page, change the seed, move psi, click a pixel, interpolate, screenshot.

Outside CI these tests skip (with the reason) when Chromium or playwright is missing; with CI=true they fail.
"""

import contextlib
import os
import shutil
import threading
import time

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 120_000  # generous: a render of the tiny model takes well under a second even on a loaded CPU

pytestmark = pytest.mark.browser


def chromium_path() -> str | None:
    for candidate in (os.environ.get("STYLENAT_CHROMIUM"), "chromium", "chromium-browser"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    return None


def missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}: .ci/run installs chromium (apt-get) and the test extra playwright")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Python playwright is not installed (pip install 'stylenat[test]')")
    path = chromium_path()
    if path is None:
        missing("no Chromium found (apt-get install chromium, or set STYLENAT_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def serving(G, info=None):
    """uvicorn serving G's app in a thread, on a free port of 127.0.0.1 -> (url, renderer)."""
    uvicorn = pytest.importorskip("uvicorn", reason="the viewer extra is not installed")
    from stylenat.viewer.app import create_app
    from stylenat.viewer.render import Renderer
    from stylenat.viewer.server import bind_socket

    renderer = Renderer(G, "cpu", info)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(renderer), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", renderer
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server(tiny_G, tiny_snapshot):
    from stylenat.viewer.server import snapshot_info

    with serving(tiny_G, snapshot_info(tiny_snapshot)) as served:
        yield served


PIXELS = """() => {
  const img = document.getElementById('image');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
}"""


def wait_image(page, contains: str):
    """Until the image shown was rendered for parameters containing ``contains``."""
    page.wait_for_function(
        "(s) => (document.getElementById('image').dataset.params || '').split('&').includes(s)",
        arg=contains, timeout=TIMEOUT_MS,
    )


def test_page_end_to_end(browser, server, tmp_path):
    url, renderer = server
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url + "/", timeout=TIMEOUT_MS)
    wait_image(page, "seed=0")
    assert "2.5 kimg" in page.inner_text("#snapshot")
    first = page.evaluate(PIXELS)

    # change the seed: the number field, then the image
    page.fill("#seed", "5")
    wait_image(page, "seed=5")
    second = page.evaluate(PIXELS)
    assert second != first and len(second) == 16 * 16 * 4
    assert float(page.inner_text("#render-ms")) >= 0

    # move psi with the keyboard (one request per step: the newest wins, the page ends on the last)
    page.focus("#psi")
    for _ in range(6):
        page.keyboard.press("ArrowLeft")
    assert page.input_value("#psi") == "0.7"
    wait_image(page, "psi=0.70")
    assert page.evaluate(PIXELS) != second
    assert page.inner_text("#psi-out") == "0.70"

    # click a pixel: one overlay per head group of every NA layer, the local window and the dilated grid
    box = page.locator("#image").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.3)
    page.wait_for_selector("#attention-layers canvas.overlay", timeout=TIMEOUT_MS)
    assert page.locator("#attention-layers canvas.overlay").count() == 6  # 2 + 2 layers x (1, 2) groups
    assert "y=4, x=11" in page.inner_text("#attention-query")
    captions = page.inner_text("#attention-layers")
    assert "(local)" in captions and "(dilated)" in captions and "mean distance here" in captions

    # interpolation strip and its loop
    page.click("#strip-button")
    page.wait_for_selector("#strip[src]", timeout=TIMEOUT_MS)
    page.click("#play")
    page.wait_for_function("document.getElementById('loop').dataset.frame !== '0'", timeout=TIMEOUT_MS)
    assert "api/video?seed_a=5&seed_b=1" in page.get_attribute("#video-link", "href")

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    assert page.inner_text("#error") == ""
    page.close()


def test_bad_input_shows_the_server_message(browser, server):
    url, _ = server
    page = browser.new_page()
    page.goto(url + "/", timeout=TIMEOUT_MS)
    wait_image(page, "seed=0")
    page.check("#mix")
    wait_image(page, "mix_seed=1")
    page.evaluate("document.getElementById('mix-seed').value = '99999999999'; "
                  "document.getElementById('mix-seed').dispatchEvent(new Event('input'))")
    page.wait_for_function("document.getElementById('error').textContent.startsWith('mix_seed')",
                           timeout=TIMEOUT_MS)
    page.close()


def test_class_selector_of_a_conditional_generator(browser, conditional_G):
    with serving(conditional_G) as (url, _):
        page = browser.new_page()
        page.goto(url + "/", timeout=TIMEOUT_MS)
        wait_image(page, "class_idx=0")
        assert page.is_visible("#class") and page.locator("#class option").count() == 3
        before = page.evaluate(PIXELS)
        page.select_option("#class", "2")
        wait_image(page, "class_idx=2")
        assert page.evaluate(PIXELS) != before
        page.close()
