"""The one renderer of records (jupyter_rjobs/_render.py): the same records give the same text in
a cell (a real kernel), in an ipywidgets Output (the panel's) and on a text stream (a terminal);
what is rendered is capped, what is kept never is."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernel_helpers, whatever the import mode

from kernel_helpers import KernelSession, describe, errors, stream_text  # noqa: E402

from jupyter_rjobs import JobError, JobManager, RecordKind  # noqa: E402
from jupyter_rjobs.ipython.render import MAX_LINE, OutputTarget, Renderer, TextTarget, render_records  # noqa: E402

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# A job that shows one of everything: text on both streams, rich output, progress, a line over
# the cap and an error (so no value: a cell returns values as Out, the panel shows them).
EVERYTHING = (
    "import sys\n"
    "from IPython.display import HTML\n"
    "from jupyter_rjobs import display, progress\n"
    "print('one')\n"
    "sys.stderr.write('two\\n')\n"
    "display(HTML('<b>bold</b>'))\n"
    "progress(1, 2, 'half')\n"
    f"print('y' * {MAX_LINE + 5000})\n"
    "print('after the long line')\n"
    "1 / 0\n"
)


def flatten(outputs: Iterable[dict[str, Any]]) -> str:
    """nbformat-shaped outputs as the text a user reads: streams as they are, a display as its
    text/plain and a newline, an error as its traceback (without colours) and a newline."""
    parts = []
    for output in outputs:
        kind = output["output_type"]
        if kind == "stream":
            parts.append(output["text"])
        elif kind in ("display_data", "execute_result"):
            data = output["data"]
            parts.append((data["text/plain"] if "text/plain" in data else f"[{', '.join(data)}: not shown as text]") + "\n")
        elif kind == "error":
            parts.append(_ANSI.sub("", "\n".join(output["traceback"])) + "\n")
    return "".join(parts)


def text_of(records: list[Any], job: Any, **options: Any) -> str:
    out = io.StringIO()
    render_records(records, Renderer(TextTarget(out, color=False), [job], **options))
    return out.getvalue()


def output_of(records: list[Any], job: Any, **options: Any) -> tuple[Any, ...]:
    output = widgets.Output()
    try:
        render_records(records, Renderer(OutputTarget(output), [job], **options))
        return output.outputs
    finally:
        output.close()


def test_the_same_records_give_the_same_text_in_a_cell_an_output_widget_and_a_terminal(kernel: KernelSession) -> None:
    kernel.run(f"%%rjob start --thread --name everything\n{EVERYTHING}")
    kernel.run("%rjob wait everything --timeout 30")
    cell = kernel.run("%rjob receive everything --keep", allow_errors=True, allow_stderr=True)
    assert [e.content["ename"] for e in errors(cell)] == ["ZeroDivisionError"], describe(cell)
    in_cell = flatten({"output_type": o.msg_type, **o.content} for o in cell)
    kernel.run(
        "import io, ipywidgets\n"
        "from jupyter_rjobs.ipython.render import OutputTarget, Renderer, TextTarget, render_records\n"
        "_manager = get_ipython().magics_manager.registry['RJobMagics'].manager\n"
        "_job = _manager.get('everything')\n"
        "_text, _widget = io.StringIO(), ipywidgets.Output()\n"
        "render_records(_manager.receive(_job, keep=True), Renderer(TextTarget(_text, color=False), [_job], namespace={}))\n"
        "render_records(_manager.receive(_job, keep=True), Renderer(OutputTarget(_widget), [_job], namespace={}))"
    )
    encoded = kernel.value("__import__('base64').b64encode(_j.dumps([_text.getvalue(), [dict(o) for o in _widget.outputs]]).encode()).decode()")
    elsewhere = json.loads(base64.b64decode(encoded))  # encoded: a traceback printed as it is would count as one
    in_terminal, in_widget = elsewhere[0], flatten(elsewhere[1])
    assert in_cell == in_widget == in_terminal
    assert in_cell.startswith("one\ntwo\n<IPython.core.display.HTML object>\n" + "y" * MAX_LINE + "\n[jupyter_rjobs: this line has")
    assert "after the long line\n" in in_cell and "ZeroDivisionError" in in_cell
    assert in_cell.endswith("progress: 50% (1/2) half\n")


def test_output_widget_and_text_stream_agree_on_every_kind_of_record(manager: JobManager) -> None:
    code = EVERYTHING.replace("1 / 0\n", "{'the': 'value'}\n")
    job = manager.start(code, "thread", name="all")
    job.result(timeout=30)
    records = manager.receive(job, keep=True)
    assert {r.kind for r in records} == set(RecordKind) - {RecordKind.ERROR}
    for options in ({}, {"show_values": True, "labelled": True}, {"streaming": True, "max_line": 7}):
        assert flatten(output_of(records, job, **options)) == text_of(records, job, **options), options
    shown = text_of(records, job, show_values=True, labelled=True)
    assert shown.startswith(f"--- {job.label} ---\none\n") and "{'the': 'value'}\n" in shown


def test_a_long_line_is_shown_cut_with_one_note_and_kept_whole(manager: JobManager) -> None:
    size = 100 * MAX_LINE
    job = manager.start(f"print('y' * {size}, end='')\nprint('!')\nprint('short')", "thread")
    job.result(timeout=30)
    records = manager.receive(job, keep=True)
    namespace: dict[str, Any] = {}
    out = io.StringIO()
    render_records(records, Renderer(TextTarget(out), [job], namespace=namespace))
    lines = out.getvalue().split("\n")
    assert lines[0] == "y" * MAX_LINE
    assert lines[1] == (
        f"[jupyter_rjobs: this line has {size + 1:,} characters; the first {MAX_LINE:,} are shown; all of it is in _rjob_cut[0]]"
    )
    assert lines[2:] == ["short", ""]
    assert namespace["_rjob_cut"] == ["y" * size + "!"]  # whole
    assert sum(len(r.data) for r in manager.receive(job, keep=True) if r.kind is RecordKind.STDOUT) == size + 8  # the job keeps it all


def test_a_line_cut_across_many_records_gets_one_note(manager: JobManager) -> None:
    chunks = 60  # the sink cuts a line without newline into records of about 64 KiB
    job = manager.start(f"import sys\nfor i in range({chunks}):\n    sys.stdout.write('z' * 50_000)\nprint()\nprint('end')", "thread")
    job.result(timeout=30)
    records = manager.receive(job, keep=True)
    assert len([r for r in records if r.kind is RecordKind.STDOUT]) > 3
    shown = text_of(records, job, namespace={})
    assert shown.count("[jupyter_rjobs:") == 1 and shown.endswith("_rjob_cut[0]]\nend\n")
    assert len(shown) < MAX_LINE + 200


def test_without_a_namespace_the_note_says_how_to_get_the_record(manager: JobManager) -> None:
    job = manager.start(f"print('q' * {MAX_LINE + 1})", "thread")
    job.result(timeout=30)
    shown = text_of(manager.receive(job, keep=True), job)
    assert shown.endswith(f"; the record itself is whole: JobManager.receive({job.id}, keep=True) returns it]\n")


def test_a_cut_line_is_ended_before_anything_else_is_shown(manager: JobManager) -> None:
    job = manager.start(f"import sys\nsys.stdout.write('a' * {MAX_LINE + 10})\nsys.stdout.flush()\nsys.stderr.write('b\\n')", "thread")
    job.result(timeout=30)
    shown = text_of(manager.receive(job, keep=True), job, namespace={})
    assert shown == "a" * MAX_LINE + f"\n[jupyter_rjobs: this line has {MAX_LINE + 10:,} characters; the first {MAX_LINE:,} are shown; all of it is in _rjob_cut[0]]\nb\n"


def test_large_displays_values_and_errors_are_capped(manager: JobManager) -> None:
    job = manager.start(
        "from IPython.display import HTML\n"
        "from jupyter_rjobs import display\n"
        "display(HTML('<p>' + 'h' * 3000 + '</p>'))\n"
        f"display('s' * {MAX_LINE * 3})\n"
        "raise ValueError('e' * 2_000_000)",
        "thread",
    )
    with pytest.raises(JobError):
        job.result(timeout=30)
    records = manager.receive(job, keep=True)
    namespace: dict[str, Any] = {}
    html, text, error = output_of(records, job, namespace=namespace)
    assert html["data"] == records[0].data["data"]  # under the display cap: shown as it is
    plain = text["data"]["text/plain"]
    assert plain.startswith("'" + "s" * (MAX_LINE - 1) + "\n[jupyter_rjobs: its text has a line of") and plain.endswith("_rjob_cut[0]]")
    assert error["ename"] == "ValueError" and len(error["evalue"]) < MAX_LINE + 100
    assert sum(map(len, error["traceback"])) < 2 * MAX_LINE and "_rjob_cut[1]]" in error["traceback"][-1]
    assert namespace["_rjob_cut"][1]["evalue"] == "e" * 2_000_000  # the record's data, whole
    html_size = sum(map(len, records[0].data["data"].values()))
    small = output_of(records[:1], job, max_display=2000, namespace=namespace)
    assert small[0]["data"] == {
        "text/plain": "<IPython.core.display.HTML object>\n"
        f"[jupyter_rjobs: a display of {html_size:,} characters (text/plain, text/html) is over the 2,000 shown; all of it is in _rjob_cut[0]]"
    }
    assert records[0].data["data"]["text/html"] == "<p>" + "h" * 3000 + "</p>"  # records are never cut


def test_a_2mb_line_received_in_a_kernel_is_shown_capped_without_a_traceback(kernel: KernelSession) -> None:
    kernel.run("%%rjob start --thread --name big\nprint('y' * 2_000_000)")
    kernel.run("%rjob wait big --timeout 30")
    cell = kernel.run("%rjob receive big --keep")  # run() fails on any error output or traceback
    shown = stream_text(cell)
    assert shown == "y" * MAX_LINE + f"\n[jupyter_rjobs: this line has 2,000,000 characters; the first {MAX_LINE:,} are shown; all of it is in _rjob_cut[0]]\n", describe(cell)[:500]
    assert kernel.value("_rjob_cut[0] == 'y' * 2_000_000") is True
    kept = "sum(len(r.data) for r in get_ipython().magics_manager.registry['RJobMagics'].manager.receive('big', keep=True))"
    assert kernel.value(kept) == 2_000_001  # the job still holds every character


def test_stdout_and_stderr_keep_their_order_in_a_kernel(kernel: KernelSession) -> None:
    # a kernel sends each stream from its own buffer: without a flush at each switch all of
    # stdout came first, then all of stderr
    kernel.run(
        "%%rjob start --thread --name alternating\nimport sys\n"
        "for i in range(20):\n    print('out', i, flush=True)\n    sys.stderr.write(f'err {i}\\n')\n    sys.stderr.flush()"
    )
    kernel.run("%rjob wait alternating --timeout 30")
    cell = kernel.run("%rjob receive alternating", allow_stderr=True)
    assert "".join(o.content["text"] for o in cell) == "".join(f"out {i}\nerr {i}\n" for i in range(20)), describe(cell)


def test_the_panel_shows_a_long_line_cut_and_puts_it_whole_in_the_shell(manager: JobManager, ip: Any) -> None:
    from jupyter_rjobs.ipython.panel import JobPanel

    job = manager.start("print('p' * 1_000_000)\n'v' * 1_000_000", "thread", name="wide")
    job.result(timeout=30)
    panel = JobPanel(manager, interval=0.05, shell=ip)
    try:
        panel.show_records(job, manager.receive(job))
        text, value = panel.output.outputs
        assert text == {"output_type": "stream", "name": "stdout", "text": f"--- {job.label} ---\n" + "p" * MAX_LINE + "\n"
                        f"[jupyter_rjobs: this line has 1,000,000 characters; the first {MAX_LINE:,} are shown; all of it is in _rjob_cut[0]]\n"}
        assert value["output_type"] == "display_data" and value["data"]["text/plain"].endswith("all of it is in _rjob_cut[1]]")
        assert ip.user_ns["_rjob_cut"] == ["p" * 1_000_000, "v" * 1_000_000]
    finally:
        panel.close()
        ip.user_ns.pop("_rjob_cut", None)
