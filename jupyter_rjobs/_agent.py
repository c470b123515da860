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
            from IPython.core.ultratb import FormattedTB

            formatter = FormattedTB(mode="Context", color_scheme="Linux")
            lines = formatter.structured_traceback(type(exc), exc, tb)
        except Exception:
            lines = []
    if not lines:
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n").split("\n")
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}


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


class _PatchDisplayOnImport:
    """An import hook: when job code imports IPython's display, that display() gives records.

    Done lazily because importing IPython costs a quarter of a second that most jobs never need.
    """

    TARGETS = ("IPython.core.display_functions", "IPython.display")

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.TARGETS:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            loader = spec.loader
            original_exec = loader.exec_module  # type: ignore[attr-defined]

            def exec_module(module: types.ModuleType) -> None:
                original_exec(module)
                module.display = display  # type: ignore[attr-defined]

            loader.exec_module = exec_module  # type: ignore[attr-defined]
        return spec


def _install_rich_display() -> None:
    """display() in job code, with or without `from IPython.display import display`, gives records."""
    builtins.display = display  # type: ignore[attr-defined]
    for name in _PatchDisplayOnImport.TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            module.display = display  # type: ignore[attr-defined]
    sys.meta_path.insert(0, _PatchDisplayOnImport())


class _PatchTqdmOnImport:
    """An import hook: when job code imports tqdm, its bars report as the job's progress."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "tqdm.std":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            loader = spec.loader
            original_exec = loader.exec_module  # type: ignore[attr-defined]

            def exec_module(module: types.ModuleType) -> None:
                original_exec(module)
                _patch_tqdm(module)

            loader.exec_module = exec_module  # type: ignore[attr-defined]
        return spec


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
    elif not any(isinstance(finder, _PatchTqdmOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchTqdmOnImport())


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


def _run_one(header: Dict[str, Any], buffers: List[bytearray], out: BinaryIO, fds: _FdCapture) -> None:
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
    module = types.ModuleType("__main__")
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
# `serve` runs on a remote host, one per SSH connection. Each job is a forked, detached
# process (its own session) that writes its records to an append-only spool,
# ROOT/jobs/<instance>/records; the server forwards them to the kernel as they come, and
# the spool outlives the connection. Everything under ROOT is private (0700/0600) and is
# checked before anything is read from it: the kernel unpickles what comes from there.

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


class _SpoolWriter:
    """The job side of a spool: append-only writes, and a byte on the notify pipe after each."""

    def __init__(self, path: str, notify_fd: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._notify = notify_fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view.nbytes:
            view = view[os.write(self._fd, view):]
        try:
            os.write(self._notify, b"\0")
        except OSError:
            pass  # no server is listening (disconnected): the spool is enough
        return len(data)


class _Scanner:
    """Reads complete frames of a spool from an offset without loading their buffers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.last_seq = 0
        self.final: Optional[str] = None
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
        return header, start, position

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


class _HostJob:
    def __init__(self, instance: str, spool: str, pid: int, notify_fd: int, cache: str) -> None:
        self.instance = instance
        self.spool = spool
        self.pid = pid
        self.notify_fd = notify_fd
        self.cache = cache
        self.scanner = _Scanner(os.path.join(spool, "records"))
        self.stopping = False
        self.kill_at: Optional[float] = None
        self.exit_status: Optional[int] = None


class _Server:
    def __init__(self, root: str) -> None:
        self.root = root
        self.jobs_dir = os.path.join(root, "jobs")
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

    def send(self, header: Dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        write_frame(self.out, header, buffers)

    def loop(self) -> None:
        import selectors

        check_private(self.root)
        check_private(self.jobs_dir)
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
                else:
                    try:
                        os.read(job.notify_fd, 65536)
                    except OSError:
                        pass
                    self.forward(job)
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
                self.settle(job)

    def handle(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        op = header.get("op")
        instance = str(header.get("job", ""))
        if op == "ping":
            self.send({"op": "pong", "n": header.get("n")})
        elif op == "run":
            self.start(header, buffers)
        elif op == "stop":
            job = self.jobs.get(instance)
            if job is not None and job.exit_status is None:
                job.stopping = True
                signal_tree(job.pid, 15)
                job.kill_at = time.monotonic() + float(header.get("grace", 3.0))
        elif op == "fetch":
            self.fetch(instance, int(header.get("after", 0)))
        elif op == "ack":
            self.write_private(os.path.join(self.spool_of(instance), "cursor"), str(int(header["seq"])).encode())
        elif op == "clean":
            self.clean(instance)

    def spool_of(self, instance: str) -> str:
        import uuid

        return os.path.join(self.jobs_dir, str(uuid.UUID(instance)))  # a UUID, never a path

    def write_private(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def start(self, header: Dict[str, Any], buffers: List[bytearray]) -> None:
        instance = str(header["job"])
        spool = self.spool_of(instance)
        os.mkdir(spool, 0o700)
        meta = {k: header.get(k) for k in ("code", "name", "cache", "detached")}
        meta.update(instance=instance, started=time.time())
        self.write_private(os.path.join(spool, "meta.json"), json.dumps(meta).encode())
        spare, self.spare = self.spare or _Spare(), None
        try:
            write_frame(spare.control, dict(header, spool=spool), buffers)
        except OSError:  # the spare died: make one now
            spare.discard()
            spare = _Spare()
            write_frame(spare.control, dict(header, spool=spool), buffers)
        spare.control.close()
        self.write_private(os.path.join(spool, "pid"), str(spare.pid).encode())
        job = _HostJob(instance, spool, spare.pid, spare.notify_fd, header.get("cache", "kernel"))
        self.jobs[instance] = job
        self.by_pid[spare.pid] = job
        self.selector.register(spare.notify_fd, 1, job)  # 1 = selectors.EVENT_READ

    def replenish(self) -> None:
        """Fork the next job process ahead of time, so a run request only hands it the job."""
        if self.spare is None:
            self.spare = _Spare()

    def forward(self, job: _HostJob) -> None:
        """Send the kernel what the job's spool has gained: the frames themselves (consecutive ones
        in one sendfile), or for a remote-cache job only notices, states and errors."""
        pending: Optional[List[int]] = None  # a run of frames to copy: [start, end]
        while True:
            found = job.scanner.next()
            if found is None:
                break
            header, start, end = found
            if job.cache == "kernel" or header.get("kind") in ("state", "error"):
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
                self.send({"op": "notice", "job": job.instance, "seq": header.get("seq"), "kind": header.get("kind")})
        if pending is not None:
            job.scanner.copy(self.out_fd, *pending)
        if job.scanner.final is not None:
            self.quiet = True  # its end is on the way to the kernel: a good moment to fork the next spare

    def settle(self, job: _HostJob) -> None:
        """Kill a stopped job whose grace has passed; once it has ended, make sure its spool says how."""
        if job.exit_status is None:
            if job.kill_at is not None and time.monotonic() >= job.kill_at:
                signal_tree(job.pid, 9)
                job.kill_at = None
            return
        if job.instance not in self.jobs:
            return
        if job.notify_fd >= 0:
            self.forward(job)  # whatever it wrote before it ended
            self.selector.unregister(job.notify_fd)
            os.close(job.notify_fd)
            job.notify_fd = -1
        if job.scanner.final is None:
            self.finish_for(job)
            self.forward(job)
        del self.jobs[job.instance]
        job.scanner.close()

    def finish_for(self, job: _HostJob) -> None:
        """The job died without saying how it ended (a signal): say it for it, in its spool."""
        status = job.exit_status or 0
        records: List[Tuple[str, Any]] = []
        if job.stopping:
            records.append(("state", "Stopped"))
        else:
            if os.WIFSIGNALED(status):
                import signal

                number = os.WTERMSIG(status)
                try:
                    how = f"signal {number} ({signal.Signals(number).name})"
                except ValueError:
                    how = f"signal {number}"
            else:
                how = f"exit code {os.WEXITSTATUS(status)}"
            evalue = f"worker exited with {how}"
            records.append(("error", {"ename": "WorkerDied", "evalue": evalue, "traceback": [f"WorkerDied: {evalue}"]}))
            records.append(("state", "Failed"))
        seq = job.scanner.last_seq
        try:
            writer = _SpoolWriter(job.scanner.path, -1)
            for kind, data in records:
                seq += 1
                write_frame(writer, {"op": "record", "job": job.instance, "seq": seq, "kind": kind, "time": time.time(), "data": data})
        except OSError:  # no room to write it: tell the kernel directly
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

        job = self.jobs.pop(instance, None)
        if job is not None:  # still reaped by reap_children (by_pid keeps it)
            if job.notify_fd >= 0:
                self.selector.unregister(job.notify_fd)
                os.close(job.notify_fd)
                job.notify_fd = -1
            job.scanner.close()
        shutil.rmtree(self.spool_of(instance), ignore_errors=True)


def _os_error_text(exc: OSError, root: str) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return f"no space left on the host's disk (writing under {root}); free some space there"
    return f"{type(exc).__name__}: {exc}"


class _Spare:
    """A job process forked ahead of time: detached (its own session), output captured, waiting
    on a pipe for the one job it will run. The server hands it the job and forks the next."""

    def __init__(self) -> None:
        control_r, control_w = os.pipe()
        notify_r, notify_w = os.pipe()
        os.set_blocking(notify_w, False)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                _close_all_but(control_r, notify_w)
                fds = _capture_process_output()
                frame = read_frame(os.fdopen(control_r, "rb"))
                if frame is not None:  # None: the server ended before it had a job for us
                    header, buffers = frame
                    out = _SpoolWriter(os.path.join(header["spool"], "records"), notify_w)
                    _run_one(header, buffers, out, fds)  # type: ignore[arg-type]
            finally:
                os._exit(0)
        os.close(control_r)
        os.close(notify_w)
        self.pid = pid
        self.notify_fd = notify_r
        self.control = os.fdopen(control_w, "wb", buffering=0)

    def discard(self) -> None:
        self.control.close()
        os.close(self.notify_fd)


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
    _provide_package_stub()
    _Server(root).loop()


if __name__ == "__main__":
    worker_main()
