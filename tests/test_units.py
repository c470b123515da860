"""Fast unit tests of the pieces: records, frames, free names, states, tables, the public API."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_rjobs
from jupyter_rjobs import JobKind, JobState, RecordKind
from jupyter_rjobs.agent.capture import Sink
from jupyter_rjobs.agent.protocol import read_frame, write_frame
from jupyter_rjobs.agent.values import dumps_value, loads_value
from jupyter_rjobs.backends.namespace import free_names
from jupyter_rjobs.core.job import Job, aggregate_state
from jupyter_rjobs.core.records import RecordStream
from jupyter_rjobs.core.table import text_table


# -- the record stream --------------------------------------------------------------------
def test_a_record_seen_twice_is_kept_once():
    stream = RecordStream()
    assert stream.append(RecordKind.STDOUT, "a", seq=1) is not None
    assert stream.append(RecordKind.STDOUT, "a again", seq=1) is None
    assert stream.append(RecordKind.STDOUT, "b", seq=5) is not None  # gaps are allowed
    assert stream.append(RecordKind.STDOUT, "late", seq=3) is None
    assert [r.data for r in stream.take()] == ["a", "b"]


def test_take_after_a_cursor_and_keep():
    stream = RecordStream()
    for text in "abc":
        stream.append(RecordKind.STDOUT, text)
    assert [r.data for r in stream.take(after=1, keep=True)] == ["b", "c"]
    assert stream.has_after(2) and not stream.has_after(3)
    assert [r.data for r in stream.take(after=1)] == ["b", "c"]
    assert [r.data for r in stream.take()] == ["a"]
    assert not stream.has_unreceived


def test_the_sink_coalesces_lines_and_keeps_order():
    emitted = []
    sink = Sink(lambda kind, data: emitted.append((kind, data)))
    sink.write("stdout", "par")
    sink.write("stdout", "tial\nnext")
    sink.write("stderr", "e\n")
    sink.record("display", {"data": {}})
    sink.write("stdout", "tail")
    sink.flush()
    assert emitted == [
        ("stdout", "partial\n"),
        ("stdout", "next"),
        ("stderr", "e\n"),
        ("display", {"data": {}}),
        ("stdout", "tail"),
    ]


# -- frames and values --------------------------------------------------------------------
def test_frames_round_trip_with_buffers():
    out = io.BytesIO()
    write_frame(out, {"op": "x", "n": 1}, [b"abc", bytearray(b"\x00" * 70000)])
    write_frame(out, {"op": "y"})
    inp = io.BytesIO(out.getvalue())
    header, buffers = read_frame(inp)
    assert header == {"op": "x", "n": 1} and bytes(buffers[0]) == b"abc" and len(buffers[1]) == 70000
    assert read_frame(inp) == ({"op": "y"}, [])
    assert read_frame(inp) is None


def test_a_torn_frame_is_an_error_not_a_silent_end():
    out = io.BytesIO()
    write_frame(out, {"op": "x"}, [b"abcdef"])
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(out.getvalue()[:-2]))


def test_values_use_pickle_and_dill_where_needed():
    assert dumps_value([1, 2])[0] == "pickle"
    square = eval("lambda v: v * v")
    fmt, buffers = dumps_value(square)
    assert fmt == "dill" and loads_value(fmt, buffers)(4) == 16
    fmt, buffers = dumps_value(io)
    assert fmt == "module" and loads_value(fmt, buffers) is io


def test_numpy_buffers_go_out_of_band():
    import numpy as np  # in the test extra
    array = np.arange(1000.0)
    fmt, buffers = dumps_value(array)
    assert fmt == "pickle" and len(buffers) == 2 and memoryview(buffers[1]).nbytes == array.nbytes
    assert np.array_equal(loads_value(fmt, [bytes(b) for b in buffers]), array)


# -- free names ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("x + y", ["x", "y"]),
        ("x = 1\nx + y", ["y"]),
        ("x = x + 1", ["x"]),
        ("import numpy as np\nnp.sum(data)", ["data"]),
        ("def f(a):\n    return a + scale\nf(value)", ["value", "scale"]),
        ("[v * k for v in values]", ["values", "k"]),
        ("g = lambda q: q + offset\ng(1)", ["offset"]),
        ("for i in range(n):\n    total = i\ntotal", ["range", "n"]),
        ("print(In, Out, _, _3, _i2, __name__)", ["print"]),
    ],
)
def test_free_names(code, expected):
    assert sorted(free_names(code)) == sorted(expected)


# -- states -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("children", "parent"),
    [
        (["Completed", "Running"], "Running"),
        (["Completed", "NotStarted"], "Running"),
        (["NotStarted", "NotStarted"], "NotStarted"),
        (["Completed", "Failed", "Disconnected"], "Disconnected"),
        (["Completed", "Failed", "Stopped"], "Failed"),
        (["Completed", "Stopped"], "Stopped"),
        (["Completed", "Completed"], "Completed"),
    ],
)
def test_a_parent_takes_its_childrens_state_by_powershells_rules(children, parent):
    assert aggregate_state([JobState(c) for c in children]) is JobState(parent)


def test_states_and_kinds_print_as_powershell_words():
    assert [str(s) for s in JobState] == [
        "NotStarted", "Running", "Completed", "Failed", "Stopping", "Stopped", "Blocked", "Disconnected"
    ]
    assert [str(k) for k in JobKind] == ["ThreadJob", "BackgroundJob", "RemoteJob", "DaskJob"]
    assert JobState.parse("completed") is JobState.Completed
    with pytest.raises(ValueError, match="use one of"):
        JobState.parse("Sleeping")


def test_only_completed_failed_and_stopped_are_finished():
    assert {s for s in JobState if s.finished} == {JobState.Completed, JobState.Failed, JobState.Stopped}


def test_a_kind_name_is_known_until_the_kind_is_forgotten():
    """parse remembers the names it was given; a kind that is forgotten is not parsed from that memory."""
    kind = JobKind.register("scratchkind", "ScratchJob")
    try:
        assert JobKind.parse("scratchkind") is kind and JobKind.parse("SCRATCHJOB") is kind
        assert JobKind.parse("scratchkind") is kind  # the remembered answer is the same
    finally:
        JobKind.forget("scratchkind")
    with pytest.raises(ValueError, match="unknown job kind"):
        JobKind.parse("scratchkind")
    with pytest.raises(ValueError, match="unknown job kind"):
        JobKind.parse("SCRATCHJOB")


def test_a_finished_job_never_changes_state():
    job = Job(1, JobKind.THREAD, "1")
    job.set_state(JobState.Running)
    job.set_state(JobState.Completed)
    assert not job.set_state(JobState.Failed)
    assert job.state is JobState.Completed and job.result() is None


def test_text_table_has_powershells_columns():
    job = Job(7, JobKind.PROCESS, "print('hello')\n" * 20, name="wide")
    lines = text_table([job]).splitlines()
    assert lines[0].split() == ["Id", "Name", "PSJobTypeName", "State", "HasMoreData", "Location", "Command"]
    assert lines[2].split()[:6] == ["7", "wide", "BackgroundJob", "NotStarted", "True", "localhost"]
    assert lines[2].endswith("...")


# -- the package --------------------------------------------------------------------------
def test_public_api():
    assert sorted(jupyter_rjobs.__all__) == sorted(set(jupyter_rjobs.__all__))
    for name in jupyter_rjobs.__all__:
        assert hasattr(jupyter_rjobs, name), name
    assert issubclass(jupyter_rjobs.JobNotFoundError, LookupError)
    assert issubclass(jupyter_rjobs.JobError, jupyter_rjobs.RJobError)


def test_importing_the_package_stays_light():
    code = (
        "import sys, jupyter_rjobs\n"
        "heavy = [m for m in ('IPython', 'ipykernel', 'ipywidgets', 'paramiko', 'dill', 'numpy') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module", sorted(p.name for p in (Path(jupyter_rjobs.__file__).parent / "agent").glob("*.py")))
def test_the_agent_is_stdlib_only_and_python39_syntax(module):
    import ast

    source = (Path(jupyter_rjobs.__file__).parent / "agent" / module).read_text()
    ast.parse(source, feature_version=(3, 9))
    tree = ast.parse(source)
    top_level = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module.split(".")[0])
    allowed_third_party = {"dill", "IPython"}  # both imported lazily, only where present
    stdlib = getattr(sys, "stdlib_module_names", None) or _stdlib_names()  # the attribute is Python 3.10+
    third_party = {m for m in top_level if m not in stdlib} - allowed_third_party
    assert third_party == set()
    assert "jupyter_rjobs" not in top_level  # on hosts it is rjobs_agent: its modules import each other relatively


def _stdlib_names() -> set[str]:
    """The standard library's top-level names on Python 3.9 (no sys.stdlib_module_names): what
    lives in the stdlib directory and its lib-dynload (extension modules), plus the built-in modules."""
    import sysconfig
    from pathlib import Path

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [*stdlib.iterdir(), *(stdlib / "lib-dynload").iterdir()]
    names = {p.name.split(".")[0] for p in files if p.name != "site-packages"}
    return names | set(sys.builtin_module_names)
