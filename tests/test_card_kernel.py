"""The job card in a real kernel (jupyter_client, as a notebook drives it): ``%%rjob start`` shows
a widget in its own cell's output, whose comm updates follow the job while another cell runs and
gets nothing of the job; ``--no-card`` and ``%config RJobMagics.card = False`` give the table; a
terminal IPython shows the table."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_helpers import KernelSession, describe, execute_results  # noqa: E402

pytestmark = pytest.mark.kernel
VIEW = "application/vnd.jupyter.widget-view+json"
CLICK = {"method": "custom", "content": {"event": "click"}}
CARD = "__import__('jupyter_rjobs.ipython.card', fromlist=['card_of']).card_of(__import__('jupyter_rjobs').ipython.extension.get_manager().get({!r}))"


def update_of(comm_id: str, needle: str) -> Any:
    """A predicate: a widget update for ``comm_id`` whose value contains ``needle``."""

    def accept(msg: dict[str, Any]) -> bool:
        content = msg["content"]
        state = (content.get("data") or {}).get("state") or {}
        return content.get("comm_id") == comm_id and needle in str(state.get("value", ""))

    return accept


def shown(outputs: list[Any]) -> dict[str, Any]:
    results = execute_results(outputs)
    assert len(results) == 1, describe(outputs)
    data: dict[str, Any] = results[0].content["data"]
    return data


def test_start_shows_a_live_card_that_leaves_other_cells_alone(kernel: KernelSession) -> None:
    kernel.run("import threading\ngo = threading.Event()")
    started = kernel.run(
        "%%rjob start --thread --name ticker\nimport time\ngo.wait()\nfor i in range(15):\n    print('tick', i, flush=True)\n    time.sleep(0.02)\n'all done'"
    )
    data = shown(started)
    assert data[VIEW]["model_id"] == kernel.value(CARD.format("ticker") + ".model_id"), describe(started)
    assert "PSJobTypeName" in data["text/plain"] and "<table" in data["text/html"]  # the table, for where widgets are not
    head = kernel.value(CARD.format("ticker") + "._head.model_id")
    body = kernel.value(CARD.format("ticker") + "._body.model_id")

    # while the job prints and its card redraws, another cell shows only its own output
    other = kernel.submit("go.set()\nimport time\nwhile __import__('jupyter_rjobs').ipython.extension.get_manager().get('ticker').state.value == 'Running':\n    time.sleep(0.01)\nprint('B done')")
    kernel.wait(other)
    assert [(o.msg_type, o.text) for o in other.outputs] == [("stream", "B done\n")], describe(other.outputs)
    kernel.wait_for_comm(update_of(head, "data-state='Completed'"))
    kernel.wait_for_comm(update_of(body, "tick 14"))
    kernel.wait_for_comm(update_of(body, "value: &#x27;all done&#x27;"))

    received = kernel.run("%rjob receive ticker")  # the card only looked: everything is still there
    assert "".join(o.text for o in received if o.msg_type == "stream") == "".join(f"tick {i}\n" for i in range(15))
    kernel.drain(0.3)
    assert kernel.outputs_not_of(*kernel.cells) == []  # nothing landed outside the cells that made it


def test_stop_on_a_card_stops_its_job(kernel: KernelSession) -> None:
    kernel.run("%%rjob start --name sleeper\nimport time\nprint('up', flush=True)\ntime.sleep(300)")
    head = kernel.value(CARD.format("sleeper") + "._head.model_id")
    kernel.wait_for_comm(update_of(kernel.value(CARD.format("sleeper") + "._body.model_id"), "up"))
    kernel.send_comm(kernel.value(CARD.format("sleeper") + "._buttons['stop'].model_id"), CLICK)
    kernel.wait_for_comm(update_of(head, "data-state='Stopped'"), timeout=60)


def test_no_card_and_the_setting_give_the_table(kernel: KernelSession) -> None:
    data = shown(kernel.run("%rjob start --thread --no-card -- 1"))
    assert VIEW not in data and "<table" in data["text/html"] and "ThreadJob" in data["text/plain"]
    kernel.run("%config RJobMagics.card = False")
    data = shown(kernel.run("%%rjob start --thread --out j\n2"))
    assert VIEW not in data and "<table" in data["text/html"]
    assert kernel.value("type(j).__name__") == "Job"  # --out is unchanged
    kernel.run("%config RJobMagics.card = True\n%config RJobMagics.card_lines = 3")
    assert VIEW in shown(kernel.run("%%rjob start --thread --out j2\n3"))
    assert kernel.value("__import__('jupyter_rjobs.ipython.card', fromlist=['card_of']).card_of(j2).tail.lines.maxlen") == 3
    assert VIEW not in shown(kernel.run("j2"))  # a later cell shows the job as the table: the card is in its own cell


def test_a_terminal_ipython_shows_the_table(tmp_path: Any) -> None:
    script = "%load_ext jupyter_rjobs\n%rjob start --thread --name term -- 6*7\nexit\n"
    env = dict(os.environ, IPYTHONDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "IPython", "--simple-prompt", "--colors=NoColor", "--no-banner"],
        input=script, capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    shown_out = done.stdout.split("Out[2]:", 1)[-1]
    assert "Out[2]:" in done.stdout and "PSJobTypeName" in shown_out and "term" in shown_out, done.stdout
    assert "JobCard" not in done.stdout + done.stderr and "widget" not in (done.stdout + done.stderr).lower()
