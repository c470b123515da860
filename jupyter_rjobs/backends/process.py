"""Process jobs: the code runs in a pre-started worker process (the agent in worker mode).

Workers are kept warm, so a job starts in milliseconds; each runs one job at a time and
is reused, like ``ProcessPoolExecutor``'s. A worker is its own process group (session):
stopping a job signals that group and every descendant found in /proc (SIGTERM, then
SIGKILL), and the worker is replaced. A worker whose kernel dies kills itself.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Mapping, Sequence

from jupyter_rjobs.agent import protocol
from jupyter_rjobs.agent.execute import compile_job
from jupyter_rjobs.agent.proctree import signal_tree
from jupyter_rjobs.agent.protocol import read_frame, write_frame
from jupyter_rjobs.backends.base import Backend, BackendOptions, FrameApplier, JobRunner, register_backend
from jupyter_rjobs.backends.namespace import capture_variables, serialize_variables
from jupyter_rjobs.core.errors import RJobError
from jupyter_rjobs.core.job import Job, JobKind, JobState

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["ProcessBackend", "WorkerPool"]

log = logging.getLogger(__name__)

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # what holds jupyter_rjobs/
_WORKER_CODE = "from jupyter_rjobs.agent.worker import worker_main; worker_main()"


def signal_name(returncode: int) -> str:
    try:
        return f"signal {-returncode} ({signal.Signals(-returncode).name})"
    except ValueError:
        return f"signal {-returncode}"


class WorkerStartError(RJobError):
    pass


class Worker:
    """One worker process and the thread that reads its frames."""

    def __init__(self, python: str, on_idle: Callable[["Worker"], None], on_exit: Callable[["Worker"], None]) -> None:
        self.python = python
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [python, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
        self.pid = self.proc.pid
        self.job: Job | None = None
        self.stopping = False
        self.ready = threading.Event()
        self.python_version = ""
        self._on_idle = on_idle
        self._on_exit = on_exit
        self._apply: FrameApplier | None = None
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"rjob-worker-{self.pid}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float | None) -> None:
        if not self.ready.wait(timeout) or not self.alive:
            self.proc.kill()
            try:
                detail = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace").strip()
            except (OSError, ValueError):  # closed by a shutdown meanwhile
                detail = ""
            raise WorkerStartError(
                f"a process job worker did not start ({detail.splitlines()[-1] if detail else 'no message'}); check that"
                f" {self.python} can import jupyter_rjobs"
            )

    def send(self, header: dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        assert self.proc.stdin is not None
        with self._send_lock:
            write_frame(self.proc.stdin, header, buffers)

    def close(self) -> None:
        signal_tree(self.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    # -- the reader thread ------------------------------------------------------------
    def _read(self) -> None:
        stdout: BinaryIO = self.proc.stdout  # type: ignore[assignment]
        try:
            while True:
                frame = read_frame(stdout)
                if frame is None:
                    break
                self._dispatch(*frame)
        except (OSError, ValueError, EOFError) as exc:
            log.debug("worker %s stream ended: %s", self.pid, exc)
            if self.alive:  # bytes that are not a frame: nothing more can be read from this worker
                self._broken(f"its worker {self.pid} sent what is not a frame ({type(exc).__name__}: {exc})")
        except Exception as exc:  # whatever it is, the job must not stay Running
            log.debug("worker %s reader failed", self.pid, exc_info=True)
            self._broken(f"reading its worker {self.pid}'s output failed ({type(exc).__name__}: {exc})")
        finally:
            returncode = self.proc.wait()
            try:  # what its last job left running dies with it (the group outlives its leader)
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass  # none left
            self.ready.set()
            job, self.job = self.job, None
            if job is not None and not job.state.finished:
                if self.stopping:
                    job.set_state(JobState.Stopped)
                else:
                    how = signal_name(returncode) if returncode < 0 else f"exit code {returncode}"
                    job.fail("WorkerDied", f"worker exited with {how}")
            self._on_exit(self)

    def _broken(self, why: str) -> None:
        """The reader cannot go on: fail the job saying why and end the worker (it is replaced)."""
        job = self.job
        if job is not None and not job.state.finished:
            job.fail("WorkerDied", why)
        signal_tree(self.pid, signal.SIGKILL)

    def _dispatch(self, header: dict[str, Any], buffers: list[bytearray]) -> None:
        op = header.get("op")
        if op == protocol.READY:
            self.python_version = header.get("python", "")
            self.ready.set()
        elif op == protocol.IDLE:
            self.job = None
            self._on_idle(self)
        elif op == protocol.RECORD and self._apply is not None:
            self._apply(header, buffers)

    def assign(self, job: Job) -> None:
        self.job = job
        self.stopping = False
        self._apply = FrameApplier(job, self.python_version)


class WorkerPool:
    """Keeps ``warm`` idle workers ready; hands one out per job."""

    def __init__(
        self, python: str | None = None, warm: int = 2, start_timeout: float | None = 60.0, max_workers: int = 4
    ) -> None:
        self.python = python or sys.executable
        self.warm = warm
        self.max_workers = max(max_workers, warm)
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._idle: collections.deque[Worker] = collections.deque()
        self._all: set[Worker] = set()
        self._starting = 0
        self._closed = False

    def _spawn(self) -> Worker:
        with self._lock:
            if self._closed:
                raise RJobError("the job manager is shut down; create a new one")
        worker = Worker(self.python, on_idle=self.release, on_exit=self._exited)
        with self._lock:
            if not self._closed:
                self._all.add(worker)
                return worker
        worker.close()  # shut down while it started: it must not outlive the pool
        raise RJobError("the job manager is shut down; create a new one")

    def fill(self) -> None:
        """Start workers in the background until ``warm`` are idle or starting (never more than
        ``max_workers`` in all: the busy ones come back idle when their job ends)."""
        with self._lock:
            needed = min(self.warm - len(self._idle) - self._starting, self.max_workers - len(self._all) - self._starting)
            if self._closed or needed <= 0:
                return
            self._starting += needed
        for _ in range(needed):
            threading.Thread(target=self._warm_one, daemon=True, name="rjob-pool-fill").start()

    def _warm_one(self) -> None:
        try:
            worker = self._spawn()
            worker.wait_ready(self.start_timeout)
        except WorkerStartError:
            if not self._closed:  # a worker closed by shutdown() while it started is no failure
                log.exception("could not start a process job worker")
            return
        except RJobError:
            return  # shut down meanwhile
        except Exception:
            log.exception("could not start a process job worker")
            return
        finally:
            with self._lock:
                self._starting -= 1
        self.release(worker)

    def acquire(self) -> Worker:
        """An idle worker, or a new one (waiting for it to start)."""
        with self._lock:
            if self._closed:
                raise RJobError("the job manager is shut down; create a new one")
            worker = self._idle.popleft() if self._idle else None
        if worker is None or not worker.alive:
            worker = self._spawn()
            worker.wait_ready(self.start_timeout)
        self.fill()
        return worker

    def try_acquire(self) -> Worker | None:
        with self._lock:
            while self._idle:
                worker = self._idle.popleft()
                if worker.alive:
                    return worker
        return None

    def release(self, worker: Worker) -> None:
        with self._lock:
            if self._closed or not worker.alive:
                return
            self._idle.append(worker)

    def _exited(self, worker: Worker) -> None:
        with self._lock:
            self._all.discard(worker)
            if worker in self._idle:
                self._idle.remove(worker)
        self.fill()

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._idle.clear()
        for worker in workers:
            worker.close()


class _ProcessPrepared:
    def __init__(self, header: dict[str, Any], buffers: list[Any]) -> None:
        self.header = header
        self.buffers = buffers


class ProcessRunner(JobRunner):
    def __init__(self, job: Job, worker: Worker) -> None:
        super().__init__(job)
        self.worker = worker

    def terminate(self) -> None:
        self.worker.stopping = True
        signal_tree(self.worker.pid, signal.SIGTERM)

    def kill(self) -> None:
        self.worker.stopping = True
        signal_tree(self.worker.pid, signal.SIGKILL)


@dataclass(frozen=True)
class ProcessOptions(BackendOptions):
    """Process jobs take no options of their own (the workers' Python is the manager's ``python``)."""


class ProcessBackend(Backend[ProcessOptions, "_ProcessPrepared"]):
    """Jobs in warm worker processes on this machine (PowerShell's Start-Job)."""

    kind = JobKind.PROCESS
    options_type = ProcessOptions

    def __init__(self, max_concurrent: int | None = None, warm: int = 2, python: str | None = None) -> None:
        super().__init__(max_concurrent or max(2, os.cpu_count() or 2))
        self.pool = WorkerPool(python, warm=min(warm, self.max_concurrent), max_workers=self.max_concurrent + warm)

    def prepare(
        self, code: str, filename: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None,
        options: ProcessOptions,
    ) -> _ProcessPrepared:
        compile_job(code, filename)  # a syntax error is found here, before any job exists
        specs, buffers = serialize_variables(capture_variables(code, namespace, push))
        header = {
            "op": protocol.RUN,
            "code": code,
            "filename": filename,
            "variables": specs,
            "cwd": os.getcwd(),
            "sys_path": [p for p in sys.path if p],
        }
        return _ProcessPrepared(header, buffers)

    def launch(self, job: Job, prepared: _ProcessPrepared) -> None:
        worker = self.pool.try_acquire()
        if worker is not None:
            self._send(job, prepared, worker)
            return
        # No warm worker: start one without blocking the caller; the job stays NotStarted meanwhile.
        threading.Thread(target=self._launch_cold, args=(job, prepared), daemon=True, name="rjob-cold-start").start()

    def _launch_cold(self, job: Job, prepared: _ProcessPrepared) -> None:
        try:
            worker = self.pool.acquire()
        except Exception as exc:  # noqa: BLE001 - reported on the job
            job.fail("WorkerStartError", str(exc))
            return
        self._send(job, prepared, worker)

    def _send(self, job: Job, prepared: _ProcessPrepared, worker: Worker) -> None:
        if job.state is not JobState.NotStarted:  # stopped while it waited
            self.pool.release(worker)
            return
        ProcessRunner(job, worker)
        worker.assign(job)
        try:
            worker.send(dict(prepared.header, job=job.id), prepared.buffers)
        except OSError as exc:
            job.fail("WorkerDied", f"could not send the job to its worker ({exc})")
        self.pool.fill()

    def prewarm(self) -> None:
        self.pool.fill()

    def shutdown(self) -> None:
        self.pool.shutdown()


def _make_process_backend(manager: JobManager) -> ProcessBackend:
    settings = manager.settings
    return ProcessBackend(settings.max_process_jobs, warm=settings.warm_workers, python=settings.python)


register_backend("process", "BackgroundJob", _make_process_backend, ProcessOptions)
