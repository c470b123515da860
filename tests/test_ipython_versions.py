"""The extension on the IPython that is installed (CI runs the newest and the oldest declared):
callbacks take IPython's arguments, %reload_ext and %unload_ext leave exactly what they should,
and job tracebacks keep IPython's formatting."""

from __future__ import annotations

import re

import IPython
import pytest
from IPython.utils.capture import capture_output

from jupyter_rjobs.agent.execute import format_error


def ours(shell) -> list:
    return [
        cb for cb in shell.events.callbacks["pre_run_cell"]
        if getattr(cb, "_rjobs_callback", False) or getattr(getattr(cb, "__wrapped__", None), "_rjobs_callback", False)
    ]


def test_a_cell_after_load_ext_shows_no_callback_error(ip):
    with capture_output() as out:
        ip.run_cell("x_seen = 1 + 1", store_history=True)
    assert "Error in callback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert out.stderr == ""
    assert ip.user_ns["x_seen"] == 2


def test_reload_registers_once_and_unload_unregisters(ip):
    assert len(ours(ip)) == 1
    for _ in range(3):
        ip.run_line_magic("reload_ext", "jupyter_rjobs")
    assert len(ours(ip)) == 1, f"IPython {IPython.__version__}: {ip.events.callbacks['pre_run_cell']}"
    ip.run_line_magic("unload_ext", "jupyter_rjobs")
    try:
        assert ours(ip) == []
        with capture_output() as out:
            ip.run_cell("y_seen = 3")
        assert out.stderr == "" and "Error in callback" not in out.stdout
    finally:
        ip.run_line_magic("load_ext", "jupyter_rjobs")
    assert len(ours(ip)) == 1


def test_job_tracebacks_keep_ipythons_formatting():
    import linecache

    source = "def f():\n    return 1 / 0\nf()\n"
    linecache.cache["<rjob 9>"] = (len(source), None, source.splitlines(True), "<rjob 9>")  # as the agent does
    code = compile(source, "<rjob 9>", "exec")
    try:
        exec(code, {})
    except ZeroDivisionError as exc:
        error = format_error(exc, "<rjob 9>")
    text = "\n".join(error["traceback"])
    assert "IPython could not format" not in text, text
    assert "\x1b[" in text  # IPython's colours, which the plain fallback never has
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert re.search(r"----> *2 .*return 1 / 0", plain), plain  # IPython's context arrow at the failing line
    assert error["ename"] == "ZeroDivisionError"


@pytest.mark.parametrize("cell", ["print('a')", "%rjob list"])
def test_cells_run_in_the_shell_show_nothing_unexpected(ip, cell):
    with capture_output() as out:
        ip.run_cell(cell)
    assert "Error in callback" not in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
