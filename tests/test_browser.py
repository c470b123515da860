"""The panel in a real browser: JupyterLab on loopback, headless Chromium driven by Playwright.

Runs a copy of notebooks/04-panel.ipynb top to bottom, waits for the panel's rows, clicks Stop
on the running job and sees it become Stopped, clicks Receive and sees the job's output in the
panel, and saves a screenshot (its path is printed). Setup facts (flags, settings, selectors)
are the measured ones of ../shared/browser-testing-notes.md. Needs /usr/bin/chromium (apt-get
install chromium; never `playwright install`): under CI=true its absence fails the test,
elsewhere the test is skipped saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers import in_ci

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RJOBS_CHROMIUM", "/usr/bin/chromium")  # Debian's; never a downloaded one
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
ARTIFACTS = Path(__file__).parent / "artifacts"  # ignored by git


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install {module})"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is not None:
        if in_ci():
            pytest.fail(f"the browser test cannot run: {reason}")
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(tmp_path: Path, notebooks: list[Path], app: str = "lab") -> Iterator[Lab]:
    """JupyterLab (``app="lab"``) or Notebook 7 (``"notebook"``) on 127.0.0.1 with a token, every Jupyter
    directory temporary, the notebooks copied in; stopped (with its kernels) at the end."""
    dirs = {name: tmp_path / name for name in ("root", "config", "data", "runtime", "settings", "workspaces", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True)
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    for notebook in notebooks:
        shutil.copy(notebook, dirs["root"])
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        IPYTHONDIR=str(dirs["ipython"]),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / f"jupyter-{app}.log"
    command = [
        sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={dirs['root']}", "--ServerApp.port_retries=0", "--allow-root",
    ]
    with open(log, "wb") as log_file:
        server = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=dirs["root"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _answers(f"{url}/api/status?token={token}"):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"jupyter {app} did not start (exit {server.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Lab(url, token, dirs["root"], log)
    finally:
        server.send_signal(signal.SIGTERM)  # it shuts its kernels down
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


@pytest.fixture
def lab(browser_ready: None, tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with a copy of notebooks/04-panel.ipynb."""
    with serve(tmp_path, [REPO / "notebooks" / "04-panel.ipynb"]) as server:
        yield server


def run_all_when_ready(page: Any, *, notebook_scope: bool, expect: Any) -> Any:
    """Wait for the one visible notebook and its kernel, then Run > Run All Cells; returns the
    notebook's locator. ``notebook_scope``: the kernel's name and status are looked for inside the
    notebook (JupyterLab's panel) rather than anywhere on the page (Notebook 7's header)."""
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook).to_have_count(1, timeout=90_000)
    scope = notebook if notebook_scope else page

    def kernel_ready() -> bool:  # the indicator says idle before the kernel exists: check its name too
        name = (scope.locator(".jp-KernelName").first.text_content() or "").strip()
        idle = scope.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
        return idle and name not in ("", "No Kernel")

    eventually(kernel_ready, 90, "the kernel to be ready")
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()
    return notebook


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Retry ``check`` until it returns something true (or ``timeout`` seconds pass: fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - the page is still changing
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(0.2)


def test_the_panel_in_jupyterlab(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    page_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1100})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.set_default_timeout(60_000)
            page.goto(f"{lab.url}/lab/tree/04-panel.ipynb?reset&token={lab.token}")
            notebook = run_all_when_ready(page, notebook_scope=True, expect=expect)

            panel = notebook.locator(".jp-OutputArea-output .rjob-panel")
            expect(panel).to_have_count(1, timeout=90_000)
            long_runner = panel.locator(".rjob-row", has_text="long-runner")
            expect(long_runner.locator(".rjob-state")).to_have_attribute("data-state", "Running", timeout=60_000)
            expect(panel.locator(".rjob-row", has_text="counting").locator(".rjob-state")).to_have_attribute(
                "data-state", "Completed", timeout=60_000
            )  # finished jobs turn over as they end

            long_runner.locator("button.widget-button", has_text="Stop").click()
            expect(long_runner.locator(".rjob-state")).to_have_attribute("data-state", "Stopped", timeout=60_000)

            talker = panel.locator(".rjob-row", has_text="talker")
            expect(talker.locator(".rjob-state")).to_have_attribute("data-state", "Completed", timeout=60_000)
            talker.locator("button.widget-button", has_text="Receive").click()
            output = panel.locator(".widget-output")
            expect(output).to_contain_text("hello from the talker 2", timeout=60_000)
            expect(output).to_contain_text("talked", timeout=10_000)
            expect(panel.locator(".widget-label").last).to_contain_text("received", timeout=10_000)

            screenshot = tmp_path / "panel.png"
            panel.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(screenshot, ARTIFACTS / "browser-panel.png")
            print(f"screenshot: {screenshot} (copy: {ARTIFACTS / 'browser-panel.png'})")
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
    serious = [e for e in page_errors if "reading 'schema'" not in e]  # Notebook 7's harmless one (see the notes)
    assert serious == [], serious
