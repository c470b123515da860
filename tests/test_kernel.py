"""End-to-end tests through a real IPython kernel, driven by jupyter_client as a notebook
front end drives it: cells are executed, and the iopub messages of each cell (matched by
parent msg_id) are what the notebook would show under that cell. No mocks."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernel_helpers, whatever the import mode

from kernel_helpers import (  # noqa: E402
    ChildSubreaper,
    KernelSession,
    descendants,
    describe,
    describe_pids,
    display_datas,
    errors,
    execute_results,
    pid_gone,
    proc_state,
    stream_text,
    strip_ansi,
)

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc"),
]


@pytest.fixture
def subreaper() -> Iterator[ChildSubreaper]:
    """Orphaned processes come to this process to be reaped (see ChildSubreaper)."""
    with ChildSubreaper() as reaper:
        yield reaper


# --------------------------------------------------------------------------- 1. routing
TICKS = 20


def test_thread_job_output_stays_out_of_other_cells(kernel: KernelSession) -> None:
    cell_a = kernel.submit(
        "%%rjob start --thread --name ticker\n"
        "import time\n"
        f"for i in range({TICKS}):\n"
        "    print(f'tick {i:02d}', flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    kernel.wait(cell_a)
    assert not errors(cell_a.outputs), describe(cell_a.outputs)
    assert "ticker" in "".join(o.text for o in execute_results(cell_a.outputs)), describe(cell_a.outputs)

    # Cell B runs while the job prints: B shows its own print and nothing of the job's.
    cell_b = kernel.submit("import time\ntime.sleep(1)\nprint('B done')")
    kernel.wait(cell_b)
    assert [(o.msg_type, o.content.get("name"), o.text) for o in cell_b.outputs] == [
        ("stream", "stdout", "B done\n")
    ], describe(cell_b.outputs)

    # Cell C receives the job: every line, in order, exactly once.
    cell_c = kernel.submit("%rjob receive ticker --wait")
    kernel.wait(cell_c, timeout=30)
    assert cell_c.reply["status"] == "ok", describe(cell_c.outputs)
    expected = "".join(f"tick {i:02d}\n" for i in range(TICKS))
    assert stream_text(cell_c.outputs) == expected, describe(cell_c.outputs)
    assert stream_text(cell_c.outputs, "stderr") == "", describe(cell_c.outputs)

    # The notebook's own print still goes to the notebook once the job is over.
    assert stream_text(kernel.run("print('after', 6 * 7)")) == "after 42\n"

    # Late output of any cell (ipykernel sends a thread's output to the cell that started
    # it): after a pause, no job line has landed anywhere but in cell C.
    kernel.drain(0.5)
    stray = [o for o in kernel.outputs_not_of(cell_c.msg_id) if re.search(r"tick \d\d", o.text)]
    assert not stray, "job output shown outside the receiving cell:\n" + describe(stray)
    # ...and nothing was shown twice in C either (stream text checked above; no other kinds).
    assert all(o.msg_type == "stream" for o in cell_c.outputs), describe(cell_c.outputs)


# --------------------------------------------------------------------------- 2. rich output
RICH_JOB = """\
from IPython.display import display, HTML

class Rich:
    def _repr_html_(self):
        return "<i>rich value</i>"

    def __repr__(self):
        return "Rich()"

display(HTML("<b>hi</b>"))
print("printed")
Rich()
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_display_and_rich_value_are_received(kernel: KernelSession, kind: str) -> None:
    start = kernel.run(f"%%rjob start --{kind} --name rich\n{RICH_JOB}")
    assert not display_datas(start), "display() of the job showed up in the starting cell:\n" + describe(start)
    kernel.run("%rjob wait rich --timeout 20", timeout=30)

    outputs = kernel.run("%rjob receive rich")
    shown = display_datas(outputs)
    assert [o.content["data"].get("text/html") for o in shown] == ["<b>hi</b>"], describe(outputs)
    results = execute_results(outputs)
    assert len(results) == 1, describe(outputs)
    assert results[0].content["data"].get("text/html") == "<i>rich value</i>", describe(outputs)
    assert results[0].content["data"].get("text/plain") == "Rich()", describe(outputs)
    # In order: the display, then the print, then the value.
    kinds = [o.msg_type for o in outputs]
    assert kinds.index("display_data") < kinds.index("stream") < kinds.index("execute_result"), describe(outputs)
    assert stream_text(outputs) == "printed\n", describe(outputs)

    # Received once: a second receive shows nothing new (the value is not repeated either).
    again = kernel.run("%rjob receive rich")
    assert not display_datas(again) and not execute_results(again) and not stream_text(again), describe(again)
    # The rich display went nowhere else.
    elsewhere = [o for o in kernel.outputs_not_of(results[0].parent) if "<b>hi</b>" in o.text]
    assert not elsewhere, describe(elsewhere)


# --------------------------------------------------------------------------- 3. errors
FAILING_JOB = """\
numerator = 1
print("before the error")
ratio = numerator / 0  # the failing line
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_failed_job_is_an_error_message_and_kernel_lives(kernel: KernelSession, kind: str) -> None:
    kernel.run(f"%%rjob start --{kind} --name boom\n{FAILING_JOB}")
    kernel.run("%rjob wait boom --timeout 20", timeout=30)

    outputs = kernel.run("%rjob receive boom", allow_errors=True)
    errs = errors(outputs)
    assert len(errs) == 1, describe(outputs)
    assert errs[0].content["ename"] == "ZeroDivisionError", describe(outputs)
    assert "division by zero" in errs[0].content["evalue"], describe(outputs)
    traceback = strip_ansi("\n".join(errs[0].content["traceback"]))
    assert "ratio = numerator / 0" in traceback, traceback
    assert stream_text(outputs) == "before the error\n", describe(outputs)
    assert errs[0] is outputs[-1], "the traceback should come after the job's earlier output:\n" + describe(outputs)

    # The kernel is alive and well: same process, and the next cells run normally.
    assert kernel.process.poll() is None
    assert kernel.value("21 * 2") == 42
    listing = kernel.run("%rjob list boom")
    assert "Failed" in "".join(o.text for o in execute_results(listing)), describe(listing)


# --------------------------------------------------------------------------- 4./5. clean-up
SLEEPER_JOB = """\
import os, subprocess, time
child = subprocess.Popen(["sleep", "600"])
print("PIDS", os.getpid(), child.pid, flush=True)
time.sleep(600)
"""


def _start_sleeper(kernel: KernelSession) -> set[int]:
    """Start a long process job that has a child; return every process that must go away
    with the kernel: the pool's workers, the job's process and its child, and anything
    else found below the kernel."""
    kernel.run(f"%%rjob start --process --name sleeper\n{SLEEPER_JOB}")
    deadline = time.monotonic() + 20
    received = ""
    while True:
        received += stream_text(kernel.run("%rjob receive sleeper"))
        match = re.search(r"PIDS (\d+) (\d+)", received)
        if match or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert match, f"the job never printed its pids; received {received!r}"
    job_pid, child_pid = int(match.group(1)), int(match.group(2))

    # Let the pool refill (warm idle workers + the busy one) so no worker is half started.
    kernel.run(
        "import time as _time\n"
        "from jupyter_rjobs.ipython.extension import get_manager\n"
        "_pool = get_manager().backend('process').pool\n"
        "_t = _time.monotonic()\n"
        "while len(_pool.pids) < _pool.warm + 1 and _time.monotonic() - _t < 20:\n"
        "    _time.sleep(0.05)\n"
    )
    pool_pids = set(kernel.value("sorted(_pool.pids)"))
    assert kernel.value("__import__('os').getpid()") == kernel.kernel_pid
    assert job_pid in pool_pids, (job_pid, pool_pids)
    assert len(pool_pids) >= 2, pool_pids  # the busy worker and at least one warm one
    assert child_pid in descendants(job_pid), describe_pids([child_pid])

    everything = pool_pids | {job_pid, child_pid} | set(descendants(kernel.kernel_pid))
    assert all(proc_state(pid) not in (None, "Z") for pid in everything), describe_pids(everything)
    return everything


def _assert_all_gone(pids: set[int], within: float) -> float:
    start = time.monotonic()
    deadline = start + within
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if not pid_gone(pid)}
        if left:
            time.sleep(0.05)
    assert not left, f"still there {within} s later:\n{describe_pids(sorted(left))}"
    return time.monotonic() - start


def test_kernel_shutdown_leaves_no_process(kernel: KernelSession, subreaper: ChildSubreaper) -> None:
    pids = _start_sleeper(kernel)

    started = time.monotonic()
    kernel.shutdown(now=False)
    took = time.monotonic() - started
    # The kernel exited by itself (jupyter_client kills it only if it ignores the request).
    assert kernel.process.wait(5) == 0, f"kernel exit status {kernel.process.returncode} after {took:.1f} s"
    _assert_all_gone(pids, within=5.0)


def test_killed_kernel_leaves_no_process(kernel: KernelSession, subreaper: ChildSubreaper) -> None:
    pids = _start_sleeper(kernel)

    os.kill(kernel.kernel_pid, signal.SIGKILL)
    assert kernel.process.wait(5) == -signal.SIGKILL
    _assert_all_gone(pids, within=5.0)
