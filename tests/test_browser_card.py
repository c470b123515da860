"""The live job card in a real browser, in JupyterLab and in Notebook 7 (headless Chromium driven by
Playwright; the server machinery is test_browser.py's).

A notebook starts a thread job whose card is seen Running with its last lines, then (released by
another cell that is still running) Completed; a second job's card is stopped with its Stop
button; the other cell's output holds nothing of the jobs; after a kernel restart the card says
the kernel restarted. Screenshots go to tests/artifacts (paths printed).
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import unavailable
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, Lab, browser_ready, eventually, run_all_when_ready, serve  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CELLS = [
    "%load_ext jupyter_rjobs\nimport threading\ngate = threading.Event()",
    "%%rjob start --thread --name worker\nfor i in range(12):\n    print('worker line', i, flush=True)\ngate.wait()\n'worker done'",
    "%%rjob start --name forever\nimport time\nprint('forever is up', flush=True)\nwhile True:\n    time.sleep(0.1)",
    "import os, time\nprint('other cell started', flush=True)\nwhile not os.path.exists('go-1'):\n    time.sleep(0.05)\n"
    "gate.set()\nwhile not os.path.exists('go-2'):\n    time.sleep(0.05)\nprint('other cell done')",
]
URLS = {"lab": "/lab/tree/{name}?reset&token={token}", "notebook": "/notebooks/{name}?token={token}"}


def _notebook(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(notebook, path)
    return path


def _kill_kernel(lab: Lab) -> None:
    """SIGKILL the notebook's kernel (a crash, an out-of-memory kill): the server restarts it by itself."""
    with urllib.request.urlopen(f"{lab.url}/api/sessions?token={lab.token}", timeout=10) as response:
        sessions = json.load(response)
    assert len(sessions) == 1, sessions
    needle = f"kernel-{sessions[0]['kernel']['id']}.json".encode()
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and needle in _cmdline(entry)]
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def _restart_kernel(page: Any) -> None:
    """Restart the kernel as a user does: the Kernel menu, Restart Kernel, the dialog's Restart."""
    page.locator(".lm-MenuBar-item", has_text="Kernel").first.click()
    page.locator('li.lm-Menu-item[data-command="kernelmenu:restart"]').click()
    page.locator(".jp-Dialog-button.jp-mod-accept").click()


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_the_card_in_a_browser(app: str, browser_ready: None, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    try:
        __import__(app if app == "notebook" else "jupyterlab")
    except ImportError:
        unavailable("the card's browser test", f"the {app} package (pip install {app})")
    from playwright.sync_api import expect, sync_playwright

    source = _notebook(tmp_path / "card.ipynb")
    page_errors: list[str] = []
    with serve(tmp_path / "server", [source], app=app) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.set_default_timeout(60_000)
            page.goto(lab.url + URLS[app].format(name=source.name, token=lab.token))
            _drive(page, lab, app, expect)
        finally:
            browser.close()
    serious = [e for e in page_errors if "reading 'schema'" not in e]  # Notebook 7's harmless one (see the notes)
    assert serious == [], serious


def _drive(page: Any, lab: Lab, app: str, expect: Any) -> None:
    notebook = run_all_when_ready(page, notebook_scope=False, expect=expect)

    cells = notebook.locator(".jp-Notebook .jp-CodeCell")
    worker = cells.nth(1).locator(".rjob-card")
    expect(worker.locator(".rjob-card-head .rjob-state")).to_have_attribute("data-state", "Running", timeout=90_000)
    tail = worker.locator("pre.rjob-card-tail")
    expect(tail).to_contain_text("worker line 11", timeout=60_000)
    assert "worker line 1\n" not in (tail.text_content() or "") + "\n"  # the last 10 lines: 2 to 11
    other = cells.nth(3).locator(".jp-OutputArea")
    expect(other).to_contain_text("other cell started", timeout=60_000)

    (lab.root / "go-1").write_text("")  # the other cell releases the worker and keeps running
    expect(worker.locator(".rjob-card-head .rjob-state")).to_have_attribute("data-state", "Completed", timeout=60_000)
    expect(worker.locator(".rjob-card-outcome")).to_contain_text("value: 'worker done'", timeout=10_000)
    assert "other cell done" not in (other.text_content() or "")  # it was running all along

    (lab.root / "go-2").write_text("")
    expect(other).to_contain_text("other cell done", timeout=60_000)
    eventually(lambda: page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0, 60, "the kernel to be idle")
    text = other.text_content() or ""
    assert "worker" not in text and "forever" not in text, text  # nothing of the jobs in another cell

    # a click is a message to the kernel: it is handled once no cell runs (ipykernel's one shell queue)
    forever = cells.nth(2).locator(".rjob-card")
    expect(forever.locator("pre.rjob-card-tail")).to_contain_text("forever is up", timeout=60_000)
    expect(forever.locator(".rjob-card-head .rjob-state")).to_have_attribute("data-state", "Running")
    forever.locator("button.widget-button", has_text="Stop").click()
    expect(forever.locator(".rjob-card-head .rjob-state")).to_have_attribute("data-state", "Stopped", timeout=60_000)
    expect(forever.locator(".rjob-card-status")).to_contain_text("Stopped", timeout=10_000)
    assert "forever" not in (other.text_content() or "")
    _screenshot(page, worker, f"browser-card-{app}.png")

    if app == "lab":
        _restart_kernel(page)  # Kernel, Restart Kernel
    else:
        _kill_kernel(lab)  # a crash: the server restarts the kernel by itself
    expect(worker.locator(".rjob-card-gone")).to_be_visible(timeout=60_000)
    expect(worker.locator(".rjob-card-gone")).to_contain_text("kernel restarted")
    _screenshot(page, worker, f"browser-card-{app}-after-restart.png")


def _screenshot(page: Any, near: Any, name: str) -> None:
    near.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000
