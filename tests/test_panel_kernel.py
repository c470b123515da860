"""The panel in a real kernel, driven through jupyter_client as JupyterLab drives it: the widget
state the front end receives (comm messages) follows the jobs, a click sent as a front end
sends it works, and nothing the panel does lands in any cell's output."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_helpers import KernelSession, describe, execute_results  # noqa: E402

pytestmark = pytest.mark.kernel
CLICK = {"method": "custom", "content": {"event": "click"}}


def updates_of(comm_id: str, key: str, needle: str) -> Any:
    """A predicate: a widget update message for ``comm_id`` whose ``key`` contains ``needle``."""

    def accept(msg: dict[str, Any]) -> bool:
        content = msg["content"]
        state = (content.get("data") or {}).get("state") or {}
        return content.get("comm_id") == comm_id and needle in str(state.get(key, ""))

    return accept


def test_the_panel_follows_jobs_and_answers_clicks_without_touching_cells(kernel: KernelSession) -> None:
    shown = kernel.run("panel = %rjob panel --interval 0.1\npanel")
    views = [o.content["data"].get("application/vnd.jupyter.widget-view+json") for o in execute_results(shown)]
    assert views and views[0]["model_id"] == kernel.value("panel.model_id"), describe(shown)
    started = kernel.submit(
        "%%rjob start --thread --name ticker\nimport time\nfor i in range(1200):\n    print('tick', i, flush=True)\n    time.sleep(0.05)"
    )
    kernel.wait(started)
    kernel.run("import time\nwhile not panel._rows_in_use:\n    time.sleep(0.02)")  # the row is drawn
    state_cell = kernel.value("panel._rows[0].cells['State'].model_id")
    kernel.wait_for_comm(updates_of(state_cell, "value", "data-state='Running'"))

    # While the job prints and the panel redraws, another cell shows only its own output.
    other = kernel.submit("import time\ntime.sleep(0.5)\nprint('B done')")
    kernel.wait(other)
    assert [(o.msg_type, o.text) for o in other.outputs] == [("stream", "B done\n")], describe(other.outputs)

    kernel.send_comm(kernel.value("panel._rows[0].stop.model_id"), CLICK)  # the Stop button, clicked
    kernel.wait_for_comm(updates_of(state_cell, "value", "data-state='Stopped'"))
    kernel.send_comm(kernel.value("panel._rows[0].receive.model_id"), CLICK)
    output_widget = kernel.value("panel.output.model_id")
    kernel.wait_for_comm(updates_of(output_widget, "outputs", "tick 0"))
    status = kernel.value("panel.status.model_id")
    kernel.wait_for_comm(updates_of(status, "value", "received"))
    kernel.send_comm(kernel.value("panel._rows[0].stop.model_id"), CLICK)  # stopping it again: said, not raised
    kernel.wait_for_comm(updates_of(status, "value", "has already ended (Stopped)"))

    kernel.drain(0.3)
    stray = [o for o in kernel.messages if re.search(r"tick \d", o.text) or "Traceback" in o.text]
    assert stray == [], describe(stray)  # the job's output went into the panel only

    before = kernel.value("len(get_ipython().magics_manager.registry['RJobMagics'].manager._listeners)")
    after = kernel.value(
        "(panel.close(), len(get_ipython().magics_manager.registry['RJobMagics'].manager._listeners),"
        " [t.name for t in __import__('threading').enumerate() if t.name.startswith('rjob-panel')])[1:]"
    )
    assert after == [before - 1, []]
