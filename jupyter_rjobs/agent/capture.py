"""Where a job's output goes: stdout/stderr (also fds 1 and 2), display() and progress (also
tqdm's bars) become records in the job's :class:`Sink`; the notebook's own output is left alone."""

from __future__ import annotations

import builtins
import codecs
import fcntl  # imported here, not per job: a forked job would pay for the import every time
import io
import os
import struct
import sys
import termios
import threading
import time
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


_orphans: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # threads of jobs that ended (sessions)
_DROPPED = Sink(lambda _kind, _data: None)


def current_sink() -> Optional[Sink]:
    sink = getattr(_local, "sink", None)
    if sink is not None:
        return sink  # type: ignore[no-any-return]
    if _orphans and threading.current_thread() in _orphans:
        return _DROPPED  # a thread a finished job left running: never the next job's output
    return _process_sink


def orphan_threads(threads: Sequence[threading.Thread]) -> None:
    """Threads whose job has ended: what they print or display is dropped from now on."""
    _orphans.update(threads)


def set_thread_sink(sink: Optional[Sink]) -> None:
    _local.sink = sink


def set_process_sink(sink: Optional[Sink]) -> None:
    """The sink of the job this process runs (a worker, a host job), seen from every thread."""
    global _process_sink
    _process_sink = sink


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
    """Make sys.stdout and sys.stderr route job output (idempotent, and cheap when done already)."""
    if isinstance(sys.stdout, RoutingStream) and isinstance(sys.stderr, RoutingStream):
        return
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

            formatted, formatted_metadata = DisplayFormatter().format(obj)  # type: ignore[no-untyped-call]
            return _jsonable_bundle(formatted), formatted_metadata or {}
        except Exception:  # noqa: BLE001 - a formatter that fails: the plain reprs below
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
        except Exception:  # noqa: BLE001 - the object's own _repr_mimebundle_ may raise anything
            data = {}
    for mime, name in _REPR_METHODS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method) or isinstance(obj, type):
            continue
        try:
            value = method()
        except Exception:  # noqa: BLE001 - a _repr_*_ method may raise anything: skip that type
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



# -- output written to fds 1 and 2 ------------------------------------------------------
class Pipe:
    """One pipe behind fd 1 or 2: its read end, its stream, the job it belongs to (None: nobody's)."""

    def __init__(self, name: str, sink: Optional[Sink]) -> None:
        self.read_end, write_end = os.pipe()
        self.name = name
        self.sink = sink
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.open = True  # until its end of file, or until it is given up on
        self.write_end = write_end


class FdCapture:
    """Output written straight to file descriptors 1 and 2 (C code, subprocesses) becomes
    records too. What is written to a job's pipes goes to that job's sink, also from a process
    it left behind, never to the job after it: a job that left processes hands fresh pipes to
    the next (:meth:`end`). One thread reads every pipe (a thread is costly in a fresh fork)."""

    def __init__(self) -> None:
        self._sources: Dict[int, Pipe] = {}  # by read end, while open
        self._current: List[Pipe] = []  # the pipes behind fds 1 and 2 now
        self._closing: List[int] = []  # read ends given up on: the pump closes them
        self._busy = 0
        self._lock = threading.Condition()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._install(None)  # between jobs: output nobody asked for is dropped
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _install(self, sink: Optional[Sink]) -> List[Pipe]:
        """Fresh pipes onto fds 1 and 2, their output going to ``sink``; returns the pipes they
        replace (the pump reads those on until every writer has closed them)."""
        new: List[Pipe] = []
        for fd, name in ((1, "stdout"), (2, "stderr")):
            pipe = Pipe(name, sink)
            os.dup2(pipe.write_end, fd)
            os.close(pipe.write_end)
            with self._lock:
                self._sources[pipe.read_end] = pipe
            new.append(pipe)
        old, self._current = self._current, new
        self._poke()
        return old

    def begin(self, sink: Sink) -> List[Pipe]:
        """Fds 1 and 2 become the job's: returns their pipes, for :meth:`end`."""
        self.drain()  # what is in them yet was nobody's
        self._attribute(self._current, sink)
        return list(self._current)

    def end(self, job_pipes: List[Pipe], timeout: float, held: bool = True, abandon: bool = False) -> None:
        """The job is over. ``held``: a process the job left may hold its pipes, so fds 1 and 2
        get fresh pipes, and what is left in the job's is read into its sink until every writer
        has closed them or ``timeout`` passes; otherwise the same pipes serve the next job.
        ``abandon``: the writers live on; their pipes are read until they close them, dropped."""
        if self._current == job_pipes:
            if not held:
                self.drain()
                self._attribute(job_pipes, None)
                return
            self._install(None)
        if abandon:
            self.drain(pipes=job_pipes)  # what they wrote until now is the job's
            self._attribute(job_pipes, None)
        else:
            self.close_pipes(job_pipes, timeout)

    def _attribute(self, pipes: List[Pipe], sink: Optional[Sink]) -> None:
        with self._lock:
            for pipe in pipes:
                pipe.sink = sink

    def close_pipes(self, pipes: List[Pipe], timeout: float) -> None:
        """Wait up to ``timeout`` for an end of file on ``pipes``, then stop reading them: a
        writer still holding one gets EPIPE, so its output cannot land anywhere else."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(p.open for p in pipes) and self._lock.wait(max(0.0, deadline - time.monotonic())):
                pass
            for pipe in pipes:
                if pipe.open:
                    pipe.open = False
                    del self._sources[pipe.read_end]
                    self._closing.append(pipe.read_end)
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already waiting

    def _pump(self) -> None:
        import select

        while True:
            with self._lock:
                for fd in self._closing:
                    os.close(fd)
                self._closing.clear()
                watched = list(self._sources)
            for fd in select.select(watched + [self._wake_r], [], [])[0]:
                if fd == self._wake_r:
                    os.read(fd, 4096)
                    continue
                self._read(fd)

    def _read(self, fd: int) -> None:
        with self._lock:
            pipe = self._sources.get(fd)
            if pipe is None:
                return  # given up meanwhile
            self._busy += 1
        chunk = b""
        try:
            chunk = os.read(fd, 65536)
            if chunk and pipe.sink is not None:
                pipe.sink.write(pipe.name, pipe.decoder.decode(chunk))
        finally:
            with self._lock:
                self._busy -= 1
                if not chunk and pipe.open:
                    pipe.open = False
                    del self._sources[fd]
                    os.close(fd)
                    self._lock.notify_all()

    def drain(self, timeout: float = 1.0, pipes: Optional[List[Pipe]] = None) -> None:
        """Wait until what the job wrote to the fds (or to ``pipes``) has been read (so it comes
        before what follows)."""
        if threading.current_thread() is self._pump_thread:
            return
        deadline = time.monotonic() + timeout
        pending = bytearray(4)
        while time.monotonic() < deadline:
            waiting = 0
            for pipe in list(self._current if pipes is None else pipes):
                if not pipe.open:
                    continue
                try:
                    fcntl.ioctl(pipe.read_end, termios.FIONREAD, pending)
                except OSError:
                    continue  # closed meanwhile
                waiting += struct.unpack("i", bytes(pending))[0]
            if not waiting and not self._busy:
                return
            time.sleep(0.001)



# -- display() and tqdm in job code -----------------------------------------------------
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
            original_exec = loader.exec_module
            patch = self.patch

            def exec_module(module: types.ModuleType) -> None:
                original_exec(module)
                patch(module)

            setattr(loader, "exec_module", exec_module)  # noqa: B010 - a method replaced on this one loader
        return spec


_DISPLAY_MODULES = ("IPython.core.display_functions", "IPython.display")


def _give_display(module: types.ModuleType) -> None:
    module.display = display  # type: ignore[attr-defined]


def install_rich_display() -> None:
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


_tqdm_hook: Optional[_PatchOnImport] = None  # the import hook below, once made


def install_tqdm_progress() -> None:
    """tqdm bars in job code report the job's progress: now if tqdm is imported, else when it is
    (cheap when done already: thread jobs call it at each start)."""
    global _tqdm_hook
    module = sys.modules.get("tqdm.std")
    if module is not None:
        _patch_tqdm(module)
    elif _tqdm_hook is None or _tqdm_hook not in sys.meta_path:
        _tqdm_hook = _tqdm_hook or _PatchOnImport(("tqdm.std",), _patch_tqdm)
        sys.meta_path.insert(0, _tqdm_hook)



_fd_capture: Optional[FdCapture] = None  # this process's, once its fds 1 and 2 are captured
_subreaper = False  # whether every process its jobs start stays below it (Linux)


def is_subreaper() -> bool:
    return _subreaper


def capture_process_output() -> FdCapture:
    """This process's output becomes records: sys.stdout/err route to the job's sink, fds 1 and 2 too
    (each job's own pipes: see :meth:`FdCapture.begin`)."""
    global _fd_capture, _subreaper
    from .proctree import become_subreaper

    _subreaper = become_subreaper()  # what its jobs leave behind (orphans too) is still ours to end
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fds = _fd_capture = FdCapture()
    sys.stdout = RoutingStream(io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True), "stdout")
    sys.stderr = RoutingStream(io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True), "stderr")
    install_rich_display()
    install_tqdm_progress()
    return fds
