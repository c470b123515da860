"""The jupyter_rjobs agent: runs a job's code and turns all it produces into numbered records.

Thread jobs call :func:`execute` in a kernel thread; process jobs run :func:`worker_main`
in a pre-started worker; remote hosts get a copy of this very file. So it depends on the
standard library only (dill is imported when pickle refuses something) and keeps to
Python 3.9 syntax.

Frames, the one wire and spool format: ``!II`` (header length, buffer count), the JSON
header, then each buffer as ``!Q`` length + bytes. Reading a frame never unpickles.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import fcntl  # imported here, not per job: a forked job would pay for the import every time
import io
import json
import linecache
import os
import pickle
import struct
import sys
import termios
import threading
import time
import traceback
import types
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

AGENT_VERSION = 1

# --------------------------------------------------------------------------- frames
_HEAD = struct.Struct("!II")
_BUFLEN = struct.Struct("!Q")
_MAX_HEADER = 256 * 1024 * 1024


def write_frame(out: BinaryIO, header: Dict[str, Any], buffers: Sequence[Any] = ()) -> None:
    """Write one frame; ``out`` is an unbuffered binary file (a pipe, a socket file, a spool)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: List[Any] = [_HEAD.pack(len(head), len(buffers)), head]
    for buf in buffers:
        view = memoryview(buf).cast("B")
        parts.append(_BUFLEN.pack(view.nbytes))
        parts.append(view)
    small = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts) < 65536
    if small:
        out.write(b"".join(bytes(p) if isinstance(p, memoryview) else p for p in parts))
    else:
        for part in parts:
            _write_all(out, part)


def _write_all(out: BinaryIO, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = out.write(view)
        if written is None:  # a buffered file wrote it all
            return
        view = view[written:]


_BIG = 1 << 20


def _read_exact(inp: BinaryIO, size: int) -> Optional[Any]:
    """``size`` bytes; a large buffer is an anonymous mmap, whose pages the OS zeroes lazily
    (a bytearray would be zero-filled up front, holding the GIL, while the sender stalls)."""
    if size >= _BIG:
        import mmap

        buf: Any = mmap.mmap(-1, size)
    else:
        buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            return None
        got += n
    return buf


def read_frame(inp: BinaryIO) -> Optional[Tuple[Dict[str, Any], List[bytearray]]]:
    """Read one frame; None at a clean end of file. A torn frame raises EOFError."""
    first = _read_exact(inp, _HEAD.size)
    if first is None:
        return None
    head_len, nbuf = _HEAD.unpack(first)
    if head_len > _MAX_HEADER:
        raise ValueError(f"frame header of {head_len} bytes: not a jupyter_rjobs stream")
    head = _read_exact(inp, head_len)
    if head is None:
        raise EOFError("stream ended inside a frame")
    buffers = []
    for _ in range(nbuf):
        size_bytes = _read_exact(inp, _BUFLEN.size)
        if size_bytes is None:
            raise EOFError("stream ended inside a frame")
        data = _read_exact(inp, _BUFLEN.unpack(size_bytes)[0])
        if data is None:
            raise EOFError("stream ended inside a frame")
        buffers.append(data)
    return json.loads(head), buffers


# --------------------------------------------------------------------------- values
class _NeedsDill(Exception):
    pass


class _Pickler(pickle.Pickler):
    """Standard pickle, except that notebook-defined functions and classes go to dill.

    Plain pickle would store them by reference to ``__main__``, which the other side
    does not have; dill stores them by value.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise _NeedsDill
        return NotImplemented


def dumps_value(obj: Any) -> Tuple[str, List[Any]]:
    """Serialize ``obj``: (format, buffers). Pickle protocol 5 with out-of-band buffers, else dill."""
    if isinstance(obj, types.ModuleType):
        return "module", [obj.__name__.encode()]
    out_of_band: List[Any] = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=out_of_band.append).dump(obj)
        return "pickle", [stream.getbuffer()] + [b.raw() for b in out_of_band]
    except Exception:
        pass
    import dill  # pickle refused it (a lambda, a notebook class): dill keeps it by value

    return "dill", [dill.dumps(obj, protocol=5, recurse=True)]


def loads_value(fmt: str, buffers: Sequence[Any]) -> Any:
    if fmt == "module":
        import importlib

        return importlib.import_module(bytes(buffers[0]).decode())
    if fmt == "pickle":
        return pickle.loads(buffers[0], buffers=buffers[1:])
    if fmt == "dill":
        import dill

        return dill.loads(bytes(buffers[0]))
    raise ValueError(f"unknown value format {fmt!r}")


# --------------------------------------------------------------------------- capture
RecordEmitter = Callable[[str, Any], None]


class Sink:
    """Where one job's output goes. Text is coalesced into whole lines; a switch between
    stdout, stderr and anything else flushes first, so the order is kept."""

    def __init__(self, emit: RecordEmitter) -> None:
        self._emit = emit
        self._lock = threading.RLock()
        self._pending_stream: Optional[str] = None
        self._pending: List[str] = []

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._pending_stream != stream:
                self._flush_locked()
                self._pending_stream = stream
            self._pending.append(text)
            if "\n" in text or sum(map(len, self._pending)) > 65536:
                joined = "".join(self._pending)
                cut = joined.rfind("\n") + 1 or len(joined)
                self._pending = [joined[cut:]] if cut < len(joined) else []
                self._emit(stream, joined[:cut])

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending_stream is not None and self._pending:
            text = "".join(self._pending)
            self._pending = []
            if text:
                self._emit(self._pending_stream, text)

    def record(self, kind: str, data: Any) -> None:
        with self._lock:
            self._flush_locked()
            self._emit(kind, data)


_local = threading.local()
_process_sink: Optional[Sink] = None  # a worker process's job sink, seen from every thread


def current_sink() -> Optional[Sink]:
    return getattr(_local, "sink", None) or _process_sink


def set_thread_sink(sink: Optional[Sink]) -> None:
    _local.sink = sink


class RoutingStream:
    """A stand-in for sys.stdout / sys.stderr: writes from a job go to its sink, the rest
    to the stream it replaced (so the notebook's own prints stay in the notebook)."""

    def __init__(self, fallback: Any, name: str) -> None:
        self._fallback = fallback
        self._name = name

    def write(self, text: str) -> int:
        sink = current_sink()
        if sink is None:
            return self._fallback.write(text)  # type: ignore[no-any-return]
        if _fd_capture is not None:
            _fd_capture.drain()  # what a subprocess already wrote to fd 1 or 2 comes first
        sink.write(self._name, text)
        return len(text)

    def writelines(self, lines: Sequence[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        sink = current_sink()
        if sink is None:
            self._fallback.flush()
        else:
            sink.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


def install_routing() -> None:
    """Make sys.stdout and sys.stderr route job output (idempotent)."""
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, RoutingStream):
            setattr(sys, name, RoutingStream(current, name))


_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)


def mime_bundle(obj: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(data, metadata) of ``obj``'s rich reprs, the way IPython's formatters find them."""
    if "IPython" in sys.modules:
        try:
            from IPython.core.formatters import DisplayFormatter

            data, metadata = DisplayFormatter().format(obj)
            return _jsonable_bundle(data), metadata or {}
        except Exception:
            pass
    data: Dict[str, Any] = {}
    metadata: Dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        try:
            result = method()
            if isinstance(result, tuple):
                data, metadata = dict(result[0] or {}), dict(result[1] or {})
            elif result:
                data = dict(result)
        except Exception:
            data = {}
    for mime, name in _REPR_METHODS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method) or isinstance(obj, type):
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, tuple):
            value, metadata[mime] = value
        if value is not None:
            data[mime] = value
    data.setdefault("text/plain", repr(obj))
    return _jsonable_bundle(data), metadata


def _jsonable_bundle(data: Dict[str, Any]) -> Dict[str, Any]:
    import base64

    return {
        mime: base64.b64encode(value).decode() if isinstance(value, bytes) else value
        for mime, value in data.items()
    }


def display(*objs: Any, raw: bool = False, metadata: Optional[Dict[str, Any]] = None, **_: Any) -> None:
    """IPython's ``display()`` for job code: each object's mime bundle becomes a record."""
    sink = current_sink()
    if sink is None:
        print(*objs)
        return
    for obj in objs:
        if raw and isinstance(obj, dict):
            data, meta = obj, dict(metadata or {})
        else:
            data, meta = mime_bundle(obj)
            meta.update(metadata or {})
        sink.record("display", {"data": data, "metadata": meta})


def progress(current: float, total: Optional[float] = None, message: str = "") -> None:
    """Report progress from inside a job (PowerShell's Write-Progress); a no-op outside jobs."""
    sink = current_sink()
    if sink is not None:
        sink.record("progress", {"current": current, "total": total, "message": str(message)})


# --------------------------------------------------------------------------- running code
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
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
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
        sink.record("error", error)
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
        formatter = FormattedTB(mode="Context", theme_name="linux")
    else:
        formatter = FormattedTB(mode="Context", color_scheme="Linux")
    return list(formatter.structured_traceback(type(exc), exc, tb))


def _ipython_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("IPython") is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- worker process
class _FdCapture:
    """Output written straight to file descriptors 1 and 2 (C code, subprocesses) becomes
    records too: each fd is a pipe, and one thread reads both (a thread is costly in a fresh fork)."""

    def __init__(self) -> None:
        self._readers: Dict[int, str] = {}
        self._busy = 0
        self._lock = threading.Lock()
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._readers[read_end] = name
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        import select

        decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in self._readers}
        open_fds = list(self._readers)
        while open_fds:
            for fd in select.select(open_fds, [], [])[0]:
                with self._lock:
                    self._busy += 1
                try:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        open_fds.remove(fd)
                        continue
                    sink = current_sink()
                    if sink is not None:
                        sink.write(self._readers[fd], decoders[fd].decode(chunk))
                finally:
                    with self._lock:
                        self._busy -= 1

    def drain(self, timeout: float = 1.0) -> None:
        """Wait until what the job wrote to the fds has been read (so it comes before what follows)."""
        if threading.current_thread() is self._pump_thread:
            return
        deadline = time.monotonic() + timeout
        pending = bytearray(4)
        while time.monotonic() < deadline:
            waiting = 0
            for fd in list(self._readers):
                fcntl.ioctl(fd, termios.FIONREAD, pending)
                waiting += struct.unpack("i", bytes(pending))[0]
            if not waiting and not self._busy:
                return
            time.sleep(0.001)


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (Linux /proc; elsewhere none are found)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found: List[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def signal_tree(pid: int, signum: int) -> None:
    """Signal every descendant of ``pid`` (also those that left its group), then the process
    group ``pid`` leads: last, as the caller may be in that group itself."""
    for target in descendants(pid):
        try:
            os.kill(target, signum)
        except OSError:
            pass
    try:
        os.killpg(pid, signum)
    except OSError:
        pass


def _watch_parent(parent_pid: int) -> None:
    """A worker whose kernel is gone (even by SIGKILL) takes its process group and every
    descendant (also those that left the group) down with it."""
    import signal

    while os.getppid() == parent_pid:
        time.sleep(0.5)
    try:
        signal_tree(os.getpid(), signal.SIGKILL)  # the worker leads its own session and group
    finally:  # whatever happened above, the worker and its group go
        os.killpg(os.getpgid(0), signal.SIGKILL)


class _PatchOnImport:
    """An import hook: when job code imports one of ``targets``, ``patch(module)`` runs on it.

    Done lazily because importing IPython (or tqdm) costs time that most jobs never need.
    """

    def __init__(self, targets: Tuple[str, ...], patch: Callable[[types.ModuleType], None]) -> None:
        self.targets = targets
        self.patch = patch

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.targets:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            loader = spec.loader
            original_exec = loader.exec_module  # type: ignore[attr-defined]
            patch = self.patch

            def exec_module(module: types.ModuleType) -> None:
                original_exec(module)
                patch(module)

            loader.exec_module = exec_module  # type: ignore[attr-defined]
        return spec


_DISPLAY_MODULES = ("IPython.core.display_functions", "IPython.display")


def _give_display(module: types.ModuleType) -> None:
    module.display = display  # type: ignore[attr-defined]


def _install_rich_display() -> None:
    """display() in job code, with or without `from IPython.display import display`, gives records."""
    builtins.display = display  # type: ignore[attr-defined]
    for name in _DISPLAY_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            _give_display(module)
    sys.meta_path.insert(0, _PatchOnImport(_DISPLAY_MODULES, _give_display))


def _patch_tqdm(module: types.ModuleType) -> None:
    """After tqdm draws or closes a bar, a job's bar also becomes a progress record (bars outside jobs: unchanged)."""
    cls = getattr(module, "tqdm", None)
    if cls is None or getattr(cls, "_rjob_patched", False):
        return

    def report(bar: Any) -> None:
        if current_sink() is None or getattr(bar, "disable", False):
            return
        position = (getattr(bar, "n", 0), getattr(bar, "total", None), str(getattr(bar, "desc", "") or ""))
        if getattr(bar, "_rjob_reported", None) != position:  # a redraw of the same position says nothing new
            bar._rjob_reported = position
            progress(*position)

    for method in ("refresh", "close"):
        original = getattr(cls, method)

        def patched(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            result = _original(self, *args, **kwargs)
            report(self)
            return result

        setattr(cls, method, patched)
    cls._rjob_patched = True


def install_tqdm_progress() -> None:
    """tqdm bars in job code report the job's progress: now if tqdm is imported, else when it is."""
    module = sys.modules.get("tqdm.std")
    if module is not None:
        _patch_tqdm(module)
    elif not any(getattr(finder, "patch", None) is _patch_tqdm for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(("tqdm.std",), _patch_tqdm))


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


def _run_one(
    header: Dict[str, Any], buffers: List[bytearray], out: BinaryIO, fds: _FdCapture, module: Optional[types.ModuleType] = None
) -> None:
    """Run one job, writing its records to ``out``; ``module`` is a session's lasting ``__main__``."""
    global _process_sink
    job_id = header["job"]
    seq = [0]
    lock = threading.Lock()

    def emit(kind: str, data: Any, frame_buffers: Sequence[Any] = ()) -> None:
        with lock:
            seq[0] += 1
            write_frame(out, {"op": "record", "job": job_id, "seq": seq[0], "kind": kind, "time": time.time(), "data": data}, frame_buffers)

    sink = Sink(emit)
    filename = header["filename"]
    module = module or types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    emit("state", "Running")
    _process_sink = sink
    state = "Failed"
    try:
        for path in header.get("sys_path", ()):
            if path not in sys.path:
                sys.path.append(path)
        if header.get("cwd"):
            try:
                os.chdir(header["cwd"])
            except OSError:
                pass
        try:
            namespace.update(_load_variables(header, buffers))
            compiled = compile_job(header["code"], filename)
        except BaseException as exc:  # noqa: BLE001
            sink.record("error", format_error(exc, filename))
            value = None
        else:
            state, value = execute(compiled, namespace, sink, filename)
        sys.stdout.flush()
        sys.stderr.flush()
        fds.drain()
        sink.flush()
        if state == "Completed" and value is not None:
            state = _emit_value(value, emit, sink)
    finally:
        _process_sink = None
        emit("state", state)


def _emit_value(value: Any, emit: Callable[..., None], sink: Sink) -> str:
    """Send the job's value back; a value that cannot be serialized fails the job, saying why."""
    try:
        fmt, value_buffers = dumps_value(value)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        sink.record("error", {
            "ename": "UnsendableValue",
            "evalue": f"the job's value (a {type(value).__name__}) cannot be sent back ({reason}); return something picklable",
            "traceback": [f"UnsendableValue: a {type(value).__name__} cannot be serialized ({reason})", "its repr: " + repr(value)[:2000]],
        })
        return "Failed"
    emit("value", {"format": fmt}, value_buffers)
    return "Completed"


_fd_capture: Optional[_FdCapture] = None  # this process's, once its fds 1 and 2 are captured


def _capture_process_output() -> _FdCapture:
    """This process's output becomes records: sys.stdout/err route to the job's sink, fds 1 and 2 too."""
    global _fd_capture
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fds = _fd_capture = _FdCapture()
    sys.stdout = RoutingStream(io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True), "stdout")
    sys.stderr = RoutingStream(io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True), "stderr")
    _install_rich_display()
    install_tqdm_progress()
    return fds


def worker_main() -> None:
    """A pre-started process job worker: reads run requests on stdin, writes records on stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    inp = os.fdopen(os.dup(0), "rb")
    fds = _capture_process_output()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    write_frame(out, {"op": "ready", "pid": os.getpid(), "version": AGENT_VERSION, "python": sys.version.split()[0]})
    while True:
        frame = read_frame(inp)
        if frame is None:
            return
        header, buffers = frame
        if header.get("op") == "run":
            _run_one(header, buffers, out, fds)
            write_frame(out, {"op": "idle"})


# --------------------------------------------------------------------------- remote host
# `serve` runs on a remote host, one per SSH connection. Each job runs in a pre-forked,
# detached pair of processes (their own session): a small supervisor and, below it, the job
# process, which writes the job's records to an append-only spool ROOT/jobs/<instance>/records.
# The supervisor outlives the job to write its end into the spool when the job could not
# (a signal, a stop), so a spool always ends saying how, with or without a server or a
# connection. The server forwards spools to the kernel as they grow; a later server (after a
# reconnect, or in a new kernel) adopts a job by its spool and goes on from a sequence number.
# A session (a lasting interpreter) is such a pair too, running one request after another.
# Everything under ROOT is private (0700/0600) and is checked before anything is read from
# it: the kernel unpickles what comes from there.

FINAL_STATES = ("Completed", "Failed", "Stopped")


def check_private(path: str) -> None:
    """Refuse a spool path that is not ours alone (unpickling what it holds is code execution)."""
    info = os.lstat(path)
    import stat as stat_module

    if stat_module.S_ISLNK(info.st_mode):
        raise PermissionError(f"{path} is a symbolic link; refusing to use it")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} is not private (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}); refusing to load"
            f" anything from it. Fix it with: chown $USER {path} && chmod go-rwx {path}"
        )


def write_private(path: str, data: bytes) -> None:
    """Replace a small file atomically, readable by its owner only."""
    part = f"{path}.{os.getpid()}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(part, path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        check_private(path)
        with open(path, "rb") as f:
            found = json.loads(f.read() or b"null")
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def process_start(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _alive(pid: int, start: Optional[int]) -> bool:
    return pid > 0 and start is not None and process_start(pid) == start


class _SpoolWriter:
    """The job side of a spool: append-only writes, and a byte on the notify pipe after each."""

    def __init__(self, path: str, notify_fd: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._notify = notify_fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view.nbytes:
            view = view[os.write(self._fd, view):]
        if self._notify >= 0:
            try:
                os.write(self._notify, b"\0")
            except OSError:
                pass  # no server is listening (disconnected): the spool is enough
        return len(data)

    def close(self) -> None:
        os.close(self._fd)


class _Scanner:
    """Reads complete frames of a spool from an offset without loading their buffers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.last_seq = 0
        self.final: Optional[str] = None
        self.final_time: Optional[float] = None
        self._fd: Optional[int] = None

    def next(self) -> Optional[Tuple[Dict[str, Any], int, int]]:
        """(header, start, end) of the next complete frame, or None if it is not all there yet."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        size = os.fstat(self._fd).st_size
        start = self.offset
        if size - start < _HEAD.size:
            return None
        head_len, nbuf = _HEAD.unpack(os.pread(self._fd, _HEAD.size, start))
        position = start + _HEAD.size
        if size - position < head_len:
            return None
        header = json.loads(os.pread(self._fd, head_len, position))
        position += head_len
        for _ in range(nbuf):
            if size - position < _BUFLEN.size:
                return None
            length = _BUFLEN.unpack(os.pread(self._fd, _BUFLEN.size, position))[0]
            position += _BUFLEN.size + length
            if position > size:
                return None
        self.offset = position
        self.last_seq = max(self.last_seq, header.get("seq", 0))
        if header.get("kind") == "state" and header.get("data") in FINAL_STATES:
            self.final = header["data"]
            self.final_time = header.get("time")
        return header, start, position

    def to_end(self) -> "_Scanner":
        while self.next() is not None:
            pass
        return self

    def copy(self, out_fd: int, start: int, end: int) -> None:
        """Send bytes [start, end) of the spool to ``out_fd`` (zero-copy where the kernel can)."""
        assert self._fd is not None
        while start < end:
            try:
                sent = os.sendfile(out_fd, self._fd, start, end - start)
            except OSError:
                sent = os.write(out_fd, os.pread(self._fd, min(end - start, 1 << 20), start))
            if sent == 0:
                raise EOFError("spool shrank while it was being sent")
            start += sent

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def end_records(path: str, records: Sequence[Tuple[str, Any]], instance: str) -> str:
    """Write a job's last records for it (it could not: killed, stopped, its session died)."""
    scanner = _Scanner(path).to_end()
    scanner.close()
    if scanner.final is not None:
        return scanner.final
    seq = scanner.last_seq
    writer = _SpoolWriter(path, -1)
    try:
        for kind, data in records:
            seq += 1
            write_frame(writer, {"op": "record", "job": instance, "seq": seq, "kind": kind, "time": time.time(), "data": data})  # type: ignore[arg-type]
    finally:
        writer.close()
    return records[-1][1]


def died_records(how: str, stopping: bool, what: str = "worker") -> List[Tuple[str, Any]]:
    if stopping:
        return [("state", "Stopped")]
    evalue = f"{what} exited with {how}"
    return [("error", {"ename": "WorkerDied", "evalue": evalue, "traceback": [f"WorkerDied: {evalue}"]}), ("state", "Failed")]


def exit_text(status: Optional[int]) -> str:
    if status is None:
        return "an unknown status (its supervisor was killed too)"
    if os.WIFSIGNALED(status):
        import signal

        number = os.WTERMSIG(status)
        try:
            return f"signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"signal {number}"
    return f"exit code {os.WEXITSTATUS(status)}"


class _HostJob:
    """A job the server forwards: its own (forked here) or adopted (by its spool)."""

    def __init__(self, instance: str, spool: str, pid: int, start: Optional[int], notify_fd: int, cache: str) -> None:
        self.instance = instance
        self.spool = spool
        self.pid = pid  # its supervisor (a session's, for a session job)
        self.start = start
        self.notify_fd = notify_fd
        self.cache = cache
        self.scanner = _Scanner(os.path.join(spool, "records"))
        self.skip_upto = 0  # the kernel has these already
        self.adopted = notify_fd < 0
        self.session: Optional[str] = None
        self.stopping = False
        self.kill_at: Optional[float] = None
        self.exit_status: Optional[int] = None
        self.ended = False


class _Server:
    def __init__(self, root: str) -> None:
        self.root = root
        self.jobs_dir = os.path.join(root, "jobs")
        self.sessions_dir = os.path.join(root, "sessions")
        self.inp = os.fdopen(os.dup(0), "rb", buffering=0)
        self.out_fd = os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.close(null)
        self.out = os.fdopen(self.out_fd, "wb", buffering=0, closefd=False)
        self.jobs: Dict[str, _HostJob] = {}
        self.by_pid: Dict[int, _HostJob] = {}
        self.spare: Optional[_Spare] = None
        self.quiet = True
        self.owner = f"{os.getpid()} {process_start(os.getpid())}".encode()
        self.request_counter = 0

    def send(self, header: Dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        write_frame(self.out, header, buffers)

    def loop(self) -> None:
        import selectors

        for path in (self.root, self.jobs_dir, self.sessions_dir):
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            check_private(path)
        self.selector = selectors.DefaultSelector()  # epoll: no limit of 1024 jobs
        self.selector.register(self.inp.fileno(), selectors.EVENT_READ, None)
        self.send({"op": "hello", "version": AGENT_VERSION, "python": sys.version.split()[0], "pid": os.getpid()})
        next_sweep = time.monotonic()
        while True:
            events = self.selector.select(0.05)
            self.quiet = not events
            for key, _ in events:
                job = key.data
                if job is None:
                    frame = read_frame(self.inp)
                    if frame is None:
                        return  # the kernel is gone; the jobs go on, their spools keep everything
                    try:
                        self.handle(*frame)
                    except OSError as exc:
                        self.send({"op": "failed", "job": frame[0].get("job"), "error": _os_error_text(exc, self.root)})
                    except Exception as exc:  # noqa: BLE001 - a bad request must not end the server
                        self.send({"op": "failed", "job": frame[0].get("job"), "error": f"{type(exc).__name__}: {exc}"})
                else:
                    try:
                        os.read(job.notify_fd, 65536)
                    except OSError:
                        pass
                    self.forward(job)
            for job in [j for j in self.jobs.values() if j.adopted]:
                self.forward(job)  # no pipe wakes us for these: their spools are watched
            self.reap_children()
            if self.quiet:  # forking now would delay a running job's records: wait for a quiet moment
                self.replenish()
            if time.monotonic() >= next_sweep:  # a missed wake-up, a kill deadline: look at every job
                next_sweep = time.monotonic() + 0.2
                for job in list(self.jobs.values()):
                    self.forward(job)
                    self.settle(job)

    def reap_children(self) -> None:
        """Collect every child that ended (also those already cleaned), so none stays a zombie."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.by_pid.pop(pid, None)
            if job is not None:
                job.exit_status = status
                job.ended = True
                self.settle(job)

    def handle(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        op = header.get("op")
        instance = str(header.get("job", ""))
        if op == "ping":
            self.send({"op": "pong", "n": header.get("n")})
        elif op == "run":
            if header.get("session"):
                self.session_run(header, buffers)
            else:
                self.start(header, buffers)
        elif op == "stop":
            self.stop(instance, float(header.get("grace", 3.0)))
        elif op == "fetch":
            self.fetch(instance, int(header.get("after", 0)))
        elif op == "ack":
            write_private(os.path.join(self.spool_of(instance), "cursor"), str(int(header["seq"])).encode())
        elif op == "clean":
            self.clean(instance)
        elif op == "attach":
            self.attach(header)
        elif op == "release":
            self.release(instance)
        elif op == "list":
            self.send({"op": "listing", "jobs": self.list_jobs(), "sessions": self.list_sessions()})
        elif op == "session_new":
            self.session_new(header)
        elif op == "session_attach":
            self.send(dict(self.session_status(str(header["session"])), op="session_state"))
        elif op == "session_close":
            self.session_close(str(header["session"]))

    def spool_of(self, instance: str) -> str:
        import uuid

        return os.path.join(self.jobs_dir, str(uuid.UUID(instance)))  # a UUID, never a path

    def session_dir(self, session: str) -> str:
        import uuid

        return os.path.join(self.sessions_dir, str(uuid.UUID(session)))

    def make_spool(self, header: Dict[str, Any]) -> str:
        instance = str(header["job"])
        spool = self.spool_of(instance)
        os.mkdir(spool, 0o700)
        meta = {k: header.get(k) for k in ("code", "name", "cache", "detached", "session", "kernel", "host")}
        meta.update(instance=instance, started=time.time())
        write_private(os.path.join(spool, "meta.json"), json.dumps(meta).encode())
        write_private(os.path.join(spool, "owner"), self.owner)
        return spool

    def track(self, job: _HostJob) -> None:
        self.jobs[job.instance] = job
        if job.notify_fd >= 0:
            self.by_pid[job.pid] = job
            self.selector.register(job.notify_fd, 1, job)  # 1 = selectors.EVENT_READ

    def start(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        spool = self.make_spool(header)
        spare, self.spare = self.spare or _Spare(), None
        try:
            spare.hand(spool, header, buffers)
        except OSError:  # the spare died: make one now
            spare.discard()
            spare = _Spare()
            spare.hand(spool, header, buffers)
        start = process_start(spare.pid)
        write_private(os.path.join(spool, "pid"), json.dumps({"pid": spare.pid, "start": start}).encode())
        self.track(_HostJob(str(header["job"]), spool, spare.pid, start, spare.notify_fd, header.get("cache", "kernel")))

    def replenish(self) -> None:
        """Fork the next job process ahead of time, so a run request only hands it the job."""
        if self.spare is None:
            self.spare = _Spare()

    def stop(self, instance: str, grace: float) -> None:
        import signal

        job = self.jobs.get(instance)
        if job is None or job.ended:
            return
        job.stopping = True
        if job.session is not None and self.unqueue(job):
            return
        if _alive(job.pid, job.start):  # a session job is interrupted; a job's supervisor stops its tree
            os.kill(job.pid, signal.SIGINT if job.session else signal.SIGTERM)
        job.kill_at = time.monotonic() + grace

    def forward(self, job: _HostJob) -> None:
        """Send the kernel what the job's spool has gained: the frames themselves (consecutive ones
        in one sendfile), or for a remote-cache job only notices, states and errors."""
        pending: Optional[List[int]] = None  # a run of frames to copy: [start, end]
        while True:
            found = job.scanner.next()
            if found is None:
                break
            header, start, end = found
            seq = header.get("seq", 0)
            if seq > job.skip_upto and (job.cache == "kernel" or header.get("kind") in ("state", "error")):
                if pending is not None and pending[1] == start:
                    pending[1] = end
                else:
                    if pending is not None:
                        job.scanner.copy(self.out_fd, *pending)
                    pending = [start, end]
            else:
                if pending is not None:
                    job.scanner.copy(self.out_fd, *pending)
                    pending = None
                if seq > job.skip_upto:
                    self.send({"op": "notice", "job": job.instance, "seq": seq, "kind": header.get("kind")})
        if pending is not None:
            job.scanner.copy(self.out_fd, *pending)
        if job.scanner.final is not None:
            self.quiet = True  # its end is on the way to the kernel: a good moment to fork the next spare

    def settle(self, job: _HostJob) -> None:
        """Kill a stopped job whose grace has passed; once it has ended, make sure its spool says how."""
        import signal

        if not job.ended:
            if job.scanner.final is not None:
                job.ended = True  # its spool says how it ended (a supervisor exits soon after)
            elif job.adopted and not _alive(job.pid, job.start):
                job.ended = True  # not our child: its supervisor is gone, and with it the job
        if not job.ended:
            if job.kill_at is not None and time.monotonic() >= job.kill_at:
                os.kill(job.pid, signal.SIGUSR1)  # the supervisor kills the job's whole tree
                job.kill_at = None
            if job.scanner.final is None and not os.path.isdir(job.spool):
                self.send({"op": "gone", "job": job.instance})
                self.drop(job)
            return
        if job.instance not in self.jobs:
            return
        self.forward(job)  # whatever it wrote before it ended
        if job.scanner.final is None:
            self.finish_for(job)
            self.forward(job)
        self.drop(job)

    def drop(self, job: _HostJob) -> None:
        """Forget a job here (its spool stays)."""
        self.jobs.pop(job.instance, None)
        if job.notify_fd >= 0:
            self.selector.unregister(job.notify_fd)
            os.close(job.notify_fd)
            job.notify_fd = -1
        job.scanner.close()

    def finish_for(self, job: _HostJob) -> None:
        """The job and its supervisor died without saying how it ended: say it for them."""
        what = "the session's interpreter" if job.session else "worker"
        records = died_records(exit_text(job.exit_status), job.stopping, what)
        try:
            end_records(job.scanner.path, records, job.instance)
        except OSError:  # no room to write it (or no spool): tell the kernel directly
            seq = job.scanner.last_seq
            for kind, data in records:
                seq += 1
                self.send({"op": "record", "job": job.instance, "seq": seq, "kind": kind, "time": time.time(), "data": data})
            job.scanner.final = records[-1][1]

    def fetch(self, instance: str, after: int) -> None:
        spool = self.spool_of(instance)
        check_private(spool)
        check_private(os.path.join(spool, "records"))
        scanner = _Scanner(os.path.join(spool, "records"))
        try:
            while True:
                found = scanner.next()
                if found is None:
                    break
                header, start, end = found
                if header.get("seq", 0) > after:
                    self.out.flush()
                    scanner.copy(self.out_fd, start, end)
        finally:
            scanner.close()
        self.send({"op": "fetched", "job": instance, "last": scanner.last_seq})

    def clean(self, instance: str) -> None:
        import shutil

        job = self.jobs.get(instance)
        if job is not None:  # still reaped by reap_children (by_pid keeps it)
            self.drop(job)
        shutil.rmtree(self.spool_of(instance), ignore_errors=True)

    # -- adopting jobs this server did not start -----------------------------------------
    def owner_elsewhere(self, spool: str) -> Optional[int]:
        """The pid of another live server that forwards this spool, if one does."""
        try:
            with open(os.path.join(spool, "owner"), "rb") as f:
                pid_text, start_text = f.read().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if pid == os.getpid() or not start_text.isdigit() or not _alive(pid, int(start_text)):
            return None
        return pid

    def attach(self, header: Dict[str, Any]) -> None:
        """Adopt a job by its spool and forward it from sequence number ``after``."""
        import signal

        instance = str(header["job"])
        spool = self.spool_of(instance)
        if not os.path.isdir(spool) or not os.path.exists(os.path.join(spool, "records")):
            self.send({"op": "gone", "job": instance})
            return
        check_private(spool)
        check_private(os.path.join(spool, "records"))
        other = self.owner_elsewhere(spool)
        if other is not None and header.get("force"):
            pass  # the user takes it over; the other server goes on sending into its own connection
        elif other is not None and other == header.get("replace"):
            try:
                os.kill(other, signal.SIGTERM)  # our own earlier server, stranded by a lost connection
            except OSError:
                pass
        elif other is not None:
            self.send({"op": "refused", "job": instance, "reason": f"another kernel is attached to it (its agent is pid {other}); connect with --force to take it over"})
            return
        old = self.jobs.get(instance)
        if old is not None:
            self.drop(old)
        write_private(os.path.join(spool, "owner"), self.owner)
        process = _read_json(os.path.join(spool, "pid")) or {}
        meta = _read_json(os.path.join(spool, "meta.json")) or {}
        job = _HostJob(instance, spool, int(process.get("pid", 0)), process.get("start"), -1, header.get("cache") or meta.get("cache") or "kernel")
        job.session = meta.get("session")
        job.skip_upto = int(header.get("after", 0))
        if job.session:
            sup = _read_json(os.path.join(self.session_dir(job.session), "pid")) or {}
            job.pid, job.start = int(sup.get("pid", 0)), sup.get("start")
        self.track(job)
        self.send({"op": "attached", "job": instance, "cursor": _read_cursor(spool), "meta": meta})
        self.forward(job)

    def release(self, instance: str) -> None:
        """Stop forwarding a job (a disconnect): it runs on, its spool keeps what it writes."""
        job = self.jobs.get(instance)
        if job is not None:
            self.drop(job)
        try:
            os.unlink(os.path.join(self.spool_of(instance), "owner"))
        except OSError:
            pass

    def list_jobs(self) -> List[Dict[str, Any]]:
        """Every job spool of this user here: what it is, how far it got, who forwards it."""
        found = []
        for entry in sorted(os.listdir(self.jobs_dir)):
            try:
                found.append(self.describe(os.path.join(self.jobs_dir, entry)))
            except Exception:  # noqa: BLE001 - an unreadable spool (another version's, half-made) is left out
                continue
        return [job for job in found if job is not None]

    def describe(self, spool: str) -> Optional[Dict[str, Any]]:
        """One job spool: its meta, how far it got, whether it runs, who forwards it."""
        meta = _read_json(os.path.join(spool, "meta.json"))
        if meta is None:
            return None
        check_private(spool)
        scanner = _Scanner(os.path.join(spool, "records"))
        try:
            scanner.to_end()
        finally:
            scanner.close()
        process = _read_json(os.path.join(spool, "pid")) or {}
        if meta.get("session"):
            process = _read_json(os.path.join(self.session_dir(meta["session"]), "pid")) or {}
        running = scanner.final is None and _alive(int(process.get("pid", 0)), process.get("start"))
        return dict(
            meta,
            state=scanner.final or ("Running" if running else "Failed"),
            ended=scanner.final_time,
            last_seq=scanner.last_seq,
            cursor=_read_cursor(spool),
            attached_elsewhere=self.owner_elsewhere(spool),
        )

    # -- sessions: lasting interpreters -------------------------------------------------
    def session_new(self, header: Dict[str, Any]) -> None:
        session = str(header["session"])
        path = self.session_dir(session)
        os.mkdir(path, 0o700)
        os.mkdir(os.path.join(path, "requests"), 0o700)
        os.mkfifo(os.path.join(path, "wake"), 0o600)
        meta = {"session": session, "name": header.get("name"), "created": time.time(), "kernel": header.get("kernel"), "host": header.get("host")}
        write_private(os.path.join(path, "meta.json"), json.dumps(meta).encode())
        spare = _Spare(session_dir=path)
        spare.discard()  # the session reads its requests from its queue, not from the server
        write_private(os.path.join(path, "pid"), json.dumps({"pid": spare.pid, "start": process_start(spare.pid)}).encode())
        self.send(dict(self.session_status(session), op="session_state"))

    def session_status(self, session: str) -> Dict[str, Any]:
        path = self.session_dir(session)
        meta = _read_json(os.path.join(path, "meta.json"))
        if meta is None:
            return {"session": session, "state": "Gone", "reason": "the session is gone on this host"}
        check_private(path)
        sup = _read_json(os.path.join(path, "pid")) or {}
        broken = _read_text(os.path.join(path, "broken"))
        alive = _alive(int(sup.get("pid", 0)), sup.get("start"))
        state = "Opened" if alive and not broken else "Broken"
        reason = broken or ("" if alive else "its interpreter is gone")
        return dict(meta, state=state, reason=reason, busy=_read_text(os.path.join(path, "current")))

    def list_sessions(self) -> List[Dict[str, Any]]:
        return [self.session_status(entry) for entry in sorted(os.listdir(self.sessions_dir))]

    def session_run(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        session = str(header["session"])
        path = self.session_dir(session)
        status = self.session_status(session)
        if status["state"] != "Opened":
            self.send({"op": "failed", "job": header.get("job"), "error": f"the session is {status['state'].lower()}: {status['reason']}"})
            return
        spool = self.make_spool(header)
        self.request_counter += 1
        request = os.path.join(path, "requests", f"{time.time():017.6f}-{self.request_counter:06d}-{header['job']}")
        writer = _SpoolWriter(request + ".part", -1)
        try:
            write_frame(writer, dict(header, spool=spool), buffers)  # type: ignore[arg-type]
        finally:
            writer.close()
        os.replace(request + ".part", request)
        _poke(os.path.join(path, "wake"))
        sup = _read_json(os.path.join(path, "pid")) or {}
        job = _HostJob(str(header["job"]), spool, int(sup.get("pid", 0)), sup.get("start"), -1, header.get("cache", "kernel"))
        job.session = session
        self.track(job)

    def unqueue(self, job: _HostJob) -> bool:
        """Take a session job that has not begun out of the session's queue (it ends Stopped)."""
        assert job.session is not None
        requests = os.path.join(self.session_dir(job.session), "requests")
        for name in os.listdir(requests):
            if name.endswith(job.instance):
                try:
                    os.unlink(os.path.join(requests, name))
                except FileNotFoundError:
                    return False  # the session took it just now
                end_records(job.scanner.path, [("state", "Stopped")], job.instance)
                return True
        return False

    def session_close(self, session: str) -> None:
        import shutil
        import signal

        path = self.session_dir(session)
        sup = _read_json(os.path.join(path, "pid")) or {}
        if _alive(int(sup.get("pid", 0)), sup.get("start")):
            write_private(os.path.join(path, "closing"), b"1")
            os.kill(int(sup["pid"]), signal.SIGTERM)
        shutil.rmtree(path, ignore_errors=True)
        self.send({"op": "session_state", "session": session, "state": "Closed", "reason": ""})


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _read_cursor(spool: str) -> int:
    text = _read_text(os.path.join(spool, "cursor"))
    return int(text) if text.isdigit() else 0


def _poke(fifo: str) -> None:
    """Wake a session's interpreter (it may be busy: then it looks when it is done)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # nobody reads it: the session is gone
    try:
        os.write(fd, b"\0")
    except OSError:
        pass  # full: a wake-up is already waiting
    finally:
        os.close(fd)


def _os_error_text(exc: OSError, root: str) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return f"no space left on the host's disk (writing under {root}); free some space there"
    return f"{type(exc).__name__}: {exc}"


class _Spare:
    """A detached pair forked ahead of time: a supervisor (its own session) and below it the
    process that will run the one job (or, for a session, every request) handed to it. The
    supervisor stays out of the job's process group, so stopping the job leaves it to write
    how the job ended."""

    def __init__(self, session_dir: Optional[str] = None) -> None:
        control_r, control_w = os.pipe()  # the job, to the job process
        spool_r, spool_w = os.pipe()  # where its spool is, to the supervisor
        notify_r, notify_w = os.pipe()  # a byte per record written, to the server
        os.set_blocking(notify_w, False)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                _close_all_but(control_r, spool_r, notify_w)
                _supervise(control_r, spool_r, notify_w, session_dir)
            finally:
                os._exit(0)
        for fd in (control_r, spool_r, notify_w):
            os.close(fd)
        self.pid = pid
        self.notify_fd = notify_r
        self.control = os.fdopen(control_w, "wb", buffering=0)
        self.spool_pipe = spool_w

    def hand(self, spool: str, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        write_frame(self.control, dict(header, spool=spool), buffers)
        self.control.close()
        os.write(self.spool_pipe, spool.encode())
        os.close(self.spool_pipe)

    def discard(self) -> None:
        self.control.close()
        os.close(self.spool_pipe)
        os.close(self.notify_fd)


def _supervise(control_r: int, spool_r: int, notify_w: int, session_dir: Optional[str]) -> None:
    """The supervisor: starts the job process, passes stop requests on to its process tree, and
    when it ends, writes its end into the spool if it could not."""
    import signal

    stopping = [False]
    child = [0]

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT:  # a session: interrupt the request it runs
            os.kill(child[0], signal.SIGINT)
            return
        stopping[0] = True
        signal_tree(child[0], signal.SIGKILL if signum == signal.SIGUSR1 else signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _become_subreaper()  # what the job leaves behind is still ours to stop
    child[0] = os.fork()
    if child[0] == 0:
        try:
            for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            os.setpgid(0, 0)  # its own group: stopping its tree leaves the supervisor
            os.close(spool_r)
            fds = _capture_process_output()
            if session_dir is not None:
                _serve_session(session_dir, fds)
            else:
                frame = read_frame(os.fdopen(control_r, "rb"))
                if frame is not None:  # None: the server ended before it had a job for us
                    header, buffers = frame
                    out = _SpoolWriter(os.path.join(header["spool"], "records"), notify_w)
                    _run_one(header, buffers, out, fds)  # type: ignore[arg-type]
        finally:
            os._exit(0)
    os.close(control_r)
    spool = b""
    while True:
        chunk = os.read(spool_r, 4096)
        if not chunk:
            break
        spool += chunk
    while True:
        try:
            _, status = os.waitpid(child[0], 0)
            break
        except ChildProcessError:
            return
    if stopping[0]:
        _end_leftovers()
    if session_dir is not None:
        closing = os.path.exists(os.path.join(session_dir, "closing"))
        if not closing:
            reason = f"its interpreter exited with {exit_text(status)}; its variables are gone"
            try:
                write_private(os.path.join(session_dir, "broken"), reason.encode())
            except OSError:
                pass
        current = _read_text(os.path.join(session_dir, "current"))
        if current:
            spool = current.encode()
            stopping[0] = stopping[0] or closing
    if spool:
        path = os.path.join(spool.decode(), "records")
        what = "the session's interpreter" if session_dir else "worker"
        try:
            end_records(path, died_records(exit_text(status), stopping[0], what), os.path.basename(spool.decode()))
            os.write(notify_w, b"\0")
        except OSError:
            pass


def _become_subreaper() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - not Linux: leftovers of a stopped job may outlive it
        pass


def _end_leftovers(grace: float = 2.0) -> None:
    """A stopped job's processes that outlived it (they came to us, the subreaper): TERM, then KILL."""
    import signal

    deadline = time.monotonic() + grace
    sent = 0
    while True:
        while True:  # collect the ones that ended
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        left = descendants(os.getpid())
        if not left:
            return
        if time.monotonic() > deadline + 5:
            return  # unkillable (stuck in the kernel): nothing more to do
        signum = signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL
        if signum != sent or signum == signal.SIGKILL:
            for pid in left:
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            sent = signum
        time.sleep(0.05)


def _serve_session(session_dir: str, fds: _FdCapture) -> None:
    """A session's interpreter: runs the requests put in its queue, one after another, all in
    the same ``__main__``, so variables live from one to the next."""
    import signal

    running = [False]

    def interrupt(_signum: int, _frame: Any) -> None:
        if running[0]:
            raise JobStopRequested()

    signal.signal(signal.SIGINT, interrupt)
    module = types.ModuleType("__main__")
    wake = os.open(os.path.join(session_dir, "wake"), os.O_RDWR)  # RDWR: never an end of file
    requests = os.path.join(session_dir, "requests")
    current = os.path.join(session_dir, "current")
    while True:
        names = sorted(n for n in os.listdir(requests) if not n.endswith(".part"))
        if not names:
            os.read(wake, 4096)
            continue
        path = os.path.join(requests, names[0])
        try:
            with open(path, "rb") as f:
                frame = read_frame(f)  # type: ignore[arg-type]
            os.unlink(path)
        except OSError:
            continue  # stopped before it began
        if frame is None:
            continue
        header, buffers = frame
        write_private(current, header["spool"].encode())
        out = _SpoolWriter(os.path.join(header["spool"], "records"), -1)
        try:
            running[0] = True
            _run_one(header, buffers, out, fds, module)  # type: ignore[arg-type]
        except JobStopRequested:
            pass  # it came between the job's end and here
        finally:
            running[0] = False
            out.close()
            os.unlink(current)


def _close_all_but(*keep: int) -> None:
    """Close every inherited descriptor above 2 (the server's channel above all) but ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _provide_package_stub() -> None:
    """On a host without jupyter_rjobs, `from jupyter_rjobs import progress, display` works in jobs."""
    import importlib.util

    if importlib.util.find_spec("jupyter_rjobs") is None:
        stub = types.ModuleType("jupyter_rjobs")
        stub.progress = progress  # type: ignore[attr-defined]
        stub.display = display  # type: ignore[attr-defined]
        sys.modules["jupyter_rjobs"] = stub


def serve_main(root: str) -> None:
    """One per SSH connection: runs jobs as detached processes and forwards their spools."""
    os.umask(0o077)
    import ctypes  # noqa: F401 - imported once here, not in every forked supervisor
    import signal  # noqa: F401

    _provide_package_stub()
    _Server(root).loop()


if __name__ == "__main__":
    worker_main()
