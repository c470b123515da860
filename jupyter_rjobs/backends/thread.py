"""Thread jobs: the code runs in a thread of this process, with its own globals.

Stopping raises :class:`JobStopRequested` in the job's thread (CPython's asynchronous
exception, ``PyThreadState_SetAsyncExc``). It takes effect at the next Python bytecode:
code blocked inside C (a long ``time.sleep``, a C extension) stops only when it returns
to Python.
"""

from __future__ import annotations

import builtins
import ctypes
import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from jupyter_rjobs.agent.capture import Sink, display, install_routing, install_tqdm_progress, set_thread_sink
from jupyter_rjobs.agent.execute import JobStopRequested, compile_job, execute
from jupyter_rjobs.backends.base import Backend, BackendOptions, JobRunner, register_backend
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.records import RecordKind

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["ThreadBackend"]

log = logging.getLogger(__name__)


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode.

    Never "clear" a pending one with NULL: on CPython 3.11 that leaves the eval breaker set
    and any later profiler or debugger spins forever. A late stop is absorbed instead.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))


def _absorb_late_stop() -> None:
    """Give a stop sent as the job ended a few bytecodes to land, here and not in the pool."""
    try:
        for _ in range(100):
            pass
    except JobStopRequested:
        pass


_OUTCOMES = {state.value: state for state in (JobState.Completed, JobState.Failed, JobState.Stopped)}  # JobState(...) is slower


class _ThreadPrepared:
    def __init__(self, compiled: Any, namespace: dict[str, Any], filename: str) -> None:
        self.compiled = compiled
        self.namespace = namespace
        self.filename = filename


class ThreadRunner(JobRunner):
    def __init__(self, job: Job, prepared: _ThreadPrepared) -> None:
        super().__init__(job)
        self._prepared = prepared
        self._lock = threading.Lock()
        self._ident: int | None = None
        self._stop_sent = False

    def run(self) -> None:
        job = self.job
        outcome, value = "Failed", None
        try:
            with self._lock:
                if job.state is not JobState.NotStarted:
                    return  # stopped while it waited for a thread
                self._ident = threading.get_ident()
            job.set_state(JobState.Running)
            sink = Sink(lambda kind, data: job.emit(RecordKind(kind), data))
            set_thread_sink(sink)
            try:
                outcome, value = execute(self._prepared.compiled, self._prepared.namespace, sink, self._prepared.filename)
            finally:
                set_thread_sink(None)
                with self._lock:
                    self._ident = None
                if self._stop_sent:
                    _absorb_late_stop()
        except JobStopRequested:
            outcome, value = "Stopped", None
            _absorb_late_stop()
        if outcome == "Completed" and value is not None:
            job.emit(RecordKind.VALUE, value)
        elif outcome == "Failed" and job.error is not None and isinstance(value, dict):
            job.error.original = value.get("original")
        job.set_state(_OUTCOMES[outcome])

    def terminate(self) -> None:
        with self._lock:
            if self._ident is not None:
                self._stop_sent = True
                _raise_in_thread(self._ident, JobStopRequested)

    kill = terminate  # a thread cannot be forced: ask again


class _DaemonThreadPool:
    """Reused daemon threads (a stuck job never blocks interpreter exit)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle: queue.SimpleQueue[None] = queue.SimpleQueue()  # a token per idle thread (cheaper than a Semaphore)
        self._threads: list[threading.Thread] = []

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)
        try:
            self._idle.get_nowait()
        except queue.Empty:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except JobStopRequested:
                pass  # a stop that arrived as the job ended
            except BaseException:
                log.exception("jupyter_rjobs thread job runner failed")
            self._idle.put(None)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)


@dataclass(frozen=True)
class ThreadOptions(BackendOptions):
    """Thread jobs take no options of their own."""


class ThreadBackend(Backend[ThreadOptions, "_ThreadPrepared"]):
    """Jobs in threads of this process (PowerShell's Start-ThreadJob)."""

    kind = JobKind.THREAD
    options_type = ThreadOptions

    def __init__(self, max_concurrent: int = 8) -> None:
        super().__init__(max_concurrent)
        self._pool = _DaemonThreadPool("rjob-thread")

    def prepare(
        self, code: str, filename: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None,
        options: ThreadOptions,
    ) -> _ThreadPrepared:
        compiled = compile_job(code, filename)
        globals_ = dict(namespace) if namespace is not None else {}
        globals_.setdefault("__name__", "__main__")
        globals_.setdefault("__builtins__", builtins)
        globals_.setdefault("display", display)  # routes by thread, with or without the IPython extension
        return _ThreadPrepared(compiled, globals_, filename)

    def launch(self, job: Job, prepared: _ThreadPrepared) -> None:
        install_routing()
        install_tqdm_progress()
        self._pool.submit(ThreadRunner(job, prepared).run)

    def shutdown(self) -> None:
        self._pool.shutdown()


def _make_thread_backend(manager: JobManager) -> ThreadBackend:
    return ThreadBackend(manager.settings.max_thread_jobs)


register_backend("thread", "ThreadJob", _make_thread_backend, ThreadOptions)
