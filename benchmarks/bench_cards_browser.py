"""The browser's side of 100 running job cards: JupyterLab in headless Chromium (the tests' set-up,
tests/test_browser.py) runs a notebook of 100 ``%%rjob start`` cells (thread jobs printing a line
every 50 ms), then times a trivial cell from Ctrl+Enter until its output shows, and counts the
animation frames the page draws in 3 s (60 a second is smooth), with cards and with ``--no-card``.
No assertions on time.

    python benchmarks/bench_cards_browser.py [--jobs 100] [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import nbformat
from test_browser import CHROMIUM, CHROMIUM_FLAGS, eventually, serve

JOB = "%%rjob start --thread {flag} --name j{i}\nimport time\nfor k in range(1_000_000):\n    print('line', k, flush=True)\n    time.sleep(0.05)"
SETUP = ("%load_ext jupyter_rjobs\nimport dataclasses\nfrom jupyter_rjobs.ipython.extension import get_manager\n"
         "get_manager().settings = dataclasses.replace(get_manager().settings, max_thread_jobs=1000)")
SHOWN = "(text) => [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.textContent.includes(text))"
FRAMES = "() => new Promise(done => { let n = 0; const t0 = performance.now(); const step = () => { n++; if (performance.now() - t0 < 3000) requestAnimationFrame(step); else done(n / 3); }; requestAnimationFrame(step); })"


def notebook(path: Path, jobs: int, flag: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), *(nbformat.v4.new_code_cell(JOB.format(flag=flag, i=i)) for i in range(jobs)),
                nbformat.v4.new_code_cell("print('ping', 0)")]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


def measure(page: Any, jobs: int, runs: int, cards: bool) -> tuple[list[float], float]:
    cells = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-CodeCell")
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()
    last = cells.nth(jobs + 1)
    eventually(lambda: "ping 0" in (last.locator(".jp-OutputArea").text_content() or ""), 300, "the last cell to run")
    if cards:
        eventually(lambda: page.locator(".rjob-card").count() >= min(jobs, 5), 120, "cards to show")
    time.sleep(3)  # settle
    fps = float(page.evaluate(FRAMES))
    times = []
    for run in range(1, runs + 1):
        last.locator(".jp-InputArea-editor .cm-content").click()
        page.keyboard.press("Control+a")
        page.keyboard.type(f"print('ping', {run})")
        began = time.perf_counter()
        page.keyboard.press("Control+Enter")
        page.wait_for_function(SHOWN, arg=f"ping {run}", polling="raf", timeout=60_000)  # checked every frame
        times.append(time.perf_counter() - began)
    return times, fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"{'scenario':<34} {'trivial cell median':>20} {'max':>9} {'frames/s':>9}")
    for label, flag in ((f"{args.jobs} running jobs, --no-card", "--no-card"), (f"{args.jobs} running jobs with cards", "")):
        with tempfile.TemporaryDirectory() as tmp:
            source = notebook(Path(tmp) / "many.ipynb", args.jobs, flag)
            with serve(Path(tmp) / "server", [source]) as lab, sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.set_default_timeout(120_000)
                    page.goto(f"{lab.url}/lab/tree/{source.name}?reset&token={lab.token}")
                    eventually(lambda page=page: page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
                               and (page.locator(".jp-KernelName").first.text_content() or "").strip() not in ("", "No Kernel"),
                               120, "the kernel")
                    times, fps = measure(page, args.jobs, args.runs, cards=not flag)
                finally:
                    browser.close()
        print(f"{label:<34} {1000 * statistics.median(times):>17.0f} ms {1000 * max(times):>6.0f} ms {fps:>9.1f}")


if __name__ == "__main__":
    main()
