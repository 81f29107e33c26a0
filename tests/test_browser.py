"""Notebook 05 in a real browser: JupyterLab on loopback, driven by Playwright in Debian's
Chromium (no browser download). Runs all cells, presses Transcribe, and checks that the audio
player and the transcript appear; then plays the word-timed player and checks that the
highlighted word moves forward with the audio and that clicking a word seeks there. Skipped,
with a message, where Chromium is not installed."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from maxwhisper.settings import REPO_ROOT, build_dir

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    # serve a copy, so that JupyterLab's autosave can never write outputs into the repository
    served = shutil.copytree(REPO_ROOT / "notebooks", tmp_path / "notebooks")
    jupyter = Path(sys.executable).with_name("jupyter")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"), env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "lab.log").read_text()[-2000:])
    yield base, token
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_demo_notebook_plays_and_transcribes_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    screenshot = build_dir() / "browser-05_transcribe_demo.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/05_transcribe_demo.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus",
                                   timeout=90_000)
            time.sleep(3)  # let the kernel connect
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            button = page.get_by_role("button", name="Transcribe")
            button.wait_for(timeout=300_000)
            page.wait_for_selector("audio", state="attached", timeout=120_000)
            button.first.click()
            page.wait_for_selector(".widget-html .maxwhisper-transcript", timeout=600_000)
            transcript = page.locator(".widget-html .maxwhisper-transcript").first.inner_text()
            moved, seek = _play_and_click_words(page)
            page.screenshot(path=str(screenshot), full_page=False)
        except Exception:
            page.screenshot(path=str(screenshot), full_page=False)
            raise
        finally:
            browser.close()
    assert "country" in transcript.lower(), transcript
    assert moved[1] > moved[0] >= 0, moved  # the highlight followed the audio
    word_start, position, highlighted, index = seek
    # the audio went to the clicked word (it may have played on for a moment) and lit it
    assert 0 <= position - word_start < 0.3 and highlighted in (index, index + 1), seek
    assert screenshot.is_file()


def _play_and_click_words(page) -> tuple[tuple[int, int], tuple[float, float, int, int]]:
    """In a word player on the page (the last one): play, read the highlighted word
    twice a second apart; then pause, click a later word and read where the audio went."""
    page.wait_for_selector(".maxwhisper-words span", timeout=600_000)
    player = page.locator(".maxwhisper-word-audio").last
    words = page.locator(".maxwhisper-words").last.locator("span")

    def highlighted() -> int:
        current = page.locator(".maxwhisper-words").last.locator(".maxwhisper-word-current")
        return int(current.get_attribute("data-index")) if current.count() else -1

    player.evaluate("a => { a.currentTime = 0; return a.play(); }")
    time.sleep(1.5)
    first = highlighted()
    time.sleep(2.0)
    second = highlighted()
    player.evaluate("a => a.pause()")
    index = min(12, words.count() - 1)
    words.nth(index).click()  # seeks and plays: read where it went at once, then pause
    position = float(player.evaluate("a => { a.pause(); return a.currentTime; }"))
    at_click = highlighted()
    word_start = float(words.nth(index).get_attribute("title").split("-")[0])
    return (first, second), (word_start, position, at_click, index)
