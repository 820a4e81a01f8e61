"""`vidiff app` in a real browser: the app runs in a subprocess on a free loopback port with the built-in demo,
headless Chromium (Debian's, driven by Playwright) types a prompt, presses Generate and waits for the clip; the
clip is in the out dir and the page's screenshot is a PNG; a file that is not a video, uploaded to the edit tab,
shows its one-line error; the page fetches nothing from beyond the app.

Needs `make browser-deps` (Debian's chromium + the playwright package; no `playwright install`): run by
`make test-all` and `make test-browser`, skipped by `make test`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
# This machine's closed network: no sandbox (containers), no GPU, nothing Chromium fetches by itself
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
STARTUP_SECONDS = 180   # torch + gradio imports on a busy 2-core machine
REQUEST_MS = 180_000    # one demo-base clip (4 steps) or one refused upload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vidiff app exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"vidiff app did not answer at {url} within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(url, out dir) of `vidiff app` (the built-in demo) on a free loopback port; stopped afterwards."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser-deps`")
    pytest.importorskip("playwright.sync_api", reason="playwright is missing: run `make browser-deps`")
    root = tmp_path_factory.mktemp("app")
    port, out_dir, log = free_port(), root / "out", root / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_TEMP_DIR=str(root / "gradio"), OMP_NUM_THREADS="1")
    with open(log, "wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "vidiff", "app", "--port", str(port), "--out-dir",
                                   str(out_dir), "--max-upload-mb", "5"], cwd=root, env=env, stdout=sink,
                                  stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, server, log)
        yield url, out_dir
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def page(app, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    url, _ = app
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1000})
        tab = browser.new_page()
        tab.requests = []
        tab.on("request", lambda request: tab.requests.append(request.url))
        tab.goto(url)
        tab.wait_for_selector("#generate-button")
        yield tab
        browser.close()


def test_generate_in_the_browser(app, page, tmp_path):
    _, out_dir = app
    page.locator("#generate-prompt textarea").fill("a red circle moving right")
    page.locator("#generate-model").get_by_text("base model only").click()
    page.locator("#generate-steps textarea").fill("4")
    page.locator("#generate-seed textarea").fill("7")
    page.locator("#generate-button").click()
    page.wait_for_selector("#generate-video video", timeout=REQUEST_MS)
    status = page.locator("#generate-status textarea").input_value()
    assert status.startswith("wrote generate-") and "seed 7" in status

    clips = list(out_dir.glob("generate-*.mp4"))
    assert len(clips) == 1 and clips[0].stat().st_size > 0 and clips[0].name in status
    assert {p.suffix for p in out_dir.glob(f"{clips[0].stem}.*")} == {".mp4", ".gif", ".png", ".json"}
    sidecar = json.loads(clips[0].with_suffix(".json").read_text())
    assert (sidecar["prompt"], sidecar["num_inference_steps"], sidecar["seed"]) == ("a red circle moving right", 4, 7)
    assert page.locator("#generate-gif img").count() == 1 and page.locator("#generate-sheet img").count() == 1
    page.wait_for_function("document.querySelectorAll('#generate-files a[download]').length >= 4", timeout=30_000)
    links = page.eval_on_selector_all("#generate-files a[download]", "links => links.map(a => a.href)")
    assert sorted(link.rsplit("/", 1)[-1] for link in links) == sorted(
        clips[0].stem + suffix for suffix in (".gif", ".json", ".mp4", ".png"))  # every file offered for download
    page.locator("#generate-settings").get_by_text('"num_inference_steps"').wait_for(timeout=30_000)

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_a_bad_upload_shows_the_error(app, page, tmp_path):
    _, out_dir = app
    before = set(out_dir.iterdir())
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is not a video")
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-upload input[type=file]").set_input_files(str(bad))
    page.locator("#edit-prompt textarea").fill("a blue circle moving right")
    page.locator("#edit-button").click()
    status = page.locator("#edit-status textarea")
    page.wait_for_function("document.querySelector('#edit-status textarea').value.length > 0", timeout=REQUEST_MS)
    text = status.input_value()
    assert text.startswith("error: Video 'holiday.mp4' is not readable (") and "\n" not in text
    assert "Traceback" not in page.content()
    assert set(out_dir.iterdir()) == before  # nothing written


def test_the_page_fetches_nothing_from_outside(app, page):
    url, _ = app
    outside = [u for u in page.requests if not u.startswith((url, "data:", "blob:"))]
    assert page.requests and not outside, outside
