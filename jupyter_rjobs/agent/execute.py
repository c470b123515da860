"""Running a job's code: compile it (the last expression is its value), run it, turn an error
into ename/evalue/traceback, and run one job request end to end as numbered record frames."""

from __future__ import annotations

import ast
import builtins
import linecache
import os
import sys
import threading
import time
import traceback
import types
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

from .capture import FdCapture, Pipe, Sink, set_process_sink
from .leftovers import finish_job
from .protocol import KIND_ERROR, KIND_STATE, KIND_VALUE, RECORD, write_frame
from .values import dumps_value, loads_value


class JobStopRequested(BaseException):
    """Raised inside a job's thread to stop it (BaseException, so `except Exception` lets it pass)."""


_compiled: Dict[str, Tuple[types.CodeType, Optional[types.CodeType]]] = {}


def compile_job(code: str, filename: str) -> Tuple[types.CodeType, Optional[types.CodeType]]:
    """Compile a cell: the statements, and its last expression (whose value is the job's).

    The same code compiles once; later jobs reuse it under their own file name.
    """
    lines = code.splitlines(True)
    linecache.cache[filename] = (len(code), None, lines, filename)  # tracebacks show the source
    cached = _compiled.get(code)
    if cached is not None:
        body, last = cached
        return body.replace(co_filename=filename), last.replace(co_filename=filename) if last else None
    tree = ast.parse(code, filename, "exec")
    last = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr):
        tree.body.pop()
        last = compile(ast.Expression(final.value), filename, "eval")
    body = compile(tree, filename, "exec")
    if len(_compiled) >= 256:
        _compiled.clear()
    _compiled[code] = (body, last)
    return body, last


def execute(
    compiled: Tuple[types.CodeType, Optional[types.CodeType]],
    namespace: Dict[str, Any],
    sink: Sink,
    filename: str,
) -> Tuple[str, Any]:
    """Run compiled job code; returns ("Completed", value), ("Failed", error) or ("Stopped", None).

    The error (a dict: ename, evalue, traceback) is also emitted as a record; the value is left
    to the caller, which knows whether it must be serialized.
    """
    body, last = compiled
    try:
        exec(body, namespace)
        value = eval(last, namespace) if last is not None else None
        sink.flush()
        return "Completed", value
    except JobStopRequested:
        sink.flush()
        return "Stopped", None
    except BaseException as exc:  # noqa: BLE001 - the job's error, whatever it is, is its result
        sink.flush()
        error = format_error(exc, filename)
        sink.record(KIND_ERROR, error)
        return "Failed", dict(error, original=exc)


def format_error(exc: BaseException, filename: str) -> Dict[str, Any]:
    """ename, evalue and the traceback lines, from the job's own code down (agent frames cut)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    tb = tb or exc.__traceback__
    lines: List[str] = []
    if "IPython" in sys.modules or _ipython_available():
        try:
            lines = _ipython_traceback(exc, tb)
        except Exception as why:  # noqa: BLE001 - say so, then the plain traceback below
            lines = [f"(IPython could not format this traceback: {type(why).__name__}: {why})"]
            lines += "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").split("\n")
    if not lines:
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").split("\n")
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}


def _ipython_traceback(exc: BaseException, tb: Any) -> List[str]:
    """IPython's coloured, contextual traceback lines, on IPython 8 (``color_scheme``) and 9
    (``theme_name``)."""
    import inspect

    from IPython.core.ultratb import FormattedTB

    if "theme_name" in inspect.signature(FormattedTB).parameters:
        formatter = FormattedTB(mode="Context", theme_name="linux")  # type: ignore[no-untyped-call]
    else:
        formatter = FormattedTB(mode="Context", color_scheme="Linux")  # type: ignore[call-arg,no-untyped-call]  # IPython 8
    return list(formatter.structured_traceback(type(exc), exc, tb))


def _ipython_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("IPython") is not None
    except (ImportError, ValueError):
        return False



# -- one job request, as record frames ---------------------------------------------------
def _load_variables(header: Dict[str, Any], buffers: List[bytearray]) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    position = 0
    for spec in header.get("variables", []):
        count = spec["nbuf"]
        try:
            values[spec["name"]] = loads_value(spec["format"], buffers[position : position + count])
        except Exception as exc:
            versions = ""
            sender = header.get("python")
            here = sys.version.split()[0]
            if sender and sender.rsplit(".", 1)[0] != here.rsplit(".", 1)[0]:
                versions = f" (sent from Python {sender}, loaded on Python {here})"
            raise RuntimeError(
                f"could not load variable {spec['name']!r} in the job{versions}: {type(exc).__name__}: {exc}"
            ) from exc
        position += count
    return values


def run_one(
    header: Dict[str, Any], buffers: List[bytearray], out: BinaryIO, fds: FdCapture, module: Optional[types.ModuleType] = None
) -> bool:
    """Run one job, writing its records to ``out``; ``module`` is a session's lasting ``__main__``.

    What the job leaves running ends with it (see :mod:`leftovers`); returns False when it left
    threads, which only the end of this process ends."""
    job_id = header["job"]
    seq = [0]
    lock = threading.Lock()

    def emit(kind: str, data: Any, frame_buffers: Sequence[Any] = ()) -> None:
        with lock:
            seq[0] += 1
            write_frame(out, {"op": RECORD, "job": job_id, "seq": seq[0], "kind": kind, "time": time.time(), "data": data}, frame_buffers)

    sink = Sink(emit)
    filename = header["filename"]
    lasting = module is not None
    module = module or types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    hush: Callable[[bool], None] = getattr(out, "hush", lambda hushed: None)  # a spool writer's (see SpoolWriter)
    hush(True)  # the server need not wake for this alone: the job's next record, or its end, says it
    emit(KIND_STATE, "Running")
    hush(False)
    threads_before = set(threading.enumerate())
    set_process_sink(sink)
    job_pipes: List[Pipe] = []
    state, clean = "Failed", True
    try:
        job_pipes = fds.begin(sink)
        _enter(header)
        try:
            namespace.update(_load_variables(header, buffers))
            compiled = compile_job(header["code"], filename)
        except BaseException as exc:  # noqa: BLE001
            sink.record(KIND_ERROR, format_error(exc, filename))
            value = None
        else:
            state, value = execute(compiled, namespace, sink, filename)
        sys.stdout.flush()
        sys.stderr.flush()
        fds.drain()
        clean = finish_job(fds, job_pipes, sink, threads_before, lasting)
        job_pipes = []
        sink.flush()
        hush(True)  # the value and the end: said at once, with what the caller says after them
        if state == "Completed" and value is not None:
            state = _emit_value(value, emit, sink)
    finally:
        set_process_sink(None)
        if job_pipes:
            fds.end(job_pipes, 0)  # ended early (a stop): the next job never gets these pipes
        emit(KIND_STATE, state)
    return clean


def _enter(header: Dict[str, Any]) -> None:
    """The kernel's sys.path and current directory, as far as they exist here."""
    for path in header.get("sys_path", ()):
        if path not in sys.path:
            sys.path.append(path)
    if header.get("cwd"):
        try:
            os.chdir(header["cwd"])
        except OSError:
            pass


def _emit_value(value: Any, emit: Callable[..., None], sink: Sink) -> str:
    """Send the job's value back; a value that cannot be serialized fails the job, saying why."""
    try:
        fmt, value_buffers = dumps_value(value)
    except Exception as exc:  # noqa: BLE001 - pickle and dill raise many kinds: the job fails saying which
        reason = f"{type(exc).__name__}: {exc}"
        sink.record(KIND_ERROR, {
            "ename": "UnsendableValue",
            "evalue": f"the job's value (a {type(value).__name__}) cannot be sent back ({reason}); return something picklable",
            "traceback": [f"UnsendableValue: a {type(value).__name__} cannot be serialized ({reason})", "its repr: " + repr(value)[:2000]],
        })
        return "Failed"
    emit(KIND_VALUE, {"format": fmt}, value_buffers)
    return "Completed"

