"""A new kind of job is one module plus a registration: a toy backend written here, in this test
file alone (no package module is touched), registered, and run through the whole contract suite
(every contract test that takes the ``start`` fixture), through ``JobManager`` and the magics.

The toy runs each job in a thread of its own (no pool), with one option of its own, ``--toy-tag``,
which becomes the job's Location. It is built only from the public interface (``Backend``,
``JobRunner``, ``BackendOptions``, ``option``, ``register_backend``) and the agent's pieces that run
code (compile, execute, the output sink).
"""

from __future__ import annotations

import builtins
import ctypes
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import pytest
import test_contract
from conftest import Starter
from IPython.core.error import UsageError

from jupyter_rjobs import (
    Backend,
    BackendOptions,
    Job,
    JobKind,
    JobManager,
    JobRunner,
    JobState,
    RecordKind,
    option,
    register_backend,
    unregister_backend,
)
from jupyter_rjobs.agent.capture import Sink, display, install_routing, set_thread_sink
from jupyter_rjobs.agent.execute import JobStopRequested, compile_job, execute


@dataclass(frozen=True)
class ToyOptions(BackendOptions):
    tag: str = option("toy-place", flag="--toy-tag", metavar="TAG", help="where the toy says its job runs")


@dataclass
class ToyPrepared:
    compiled: Any
    namespace: dict[str, Any]
    filename: str


class ToyRunner(JobRunner):
    """One job in its own thread; stopped with an exception raised in that thread."""

    def __init__(self, job: Job, prepared: ToyPrepared) -> None:
        super().__init__(job)
        self.prepared = prepared
        self.lock = threading.Lock()
        self.ident: int | None = None

    def run(self) -> None:
        try:
            self._run()
        except JobStopRequested:  # a stop that landed after the code ended
            pass

    def _run(self) -> None:
        job = self.job
        with self.lock:
            if job.state is not JobState.NotStarted:
                return
            self.ident = threading.get_ident()
        job.set_state(JobState.Running)
        sink = Sink(lambda kind, data: job.emit(RecordKind(kind), data))
        set_thread_sink(sink)
        try:
            outcome, value = execute(self.prepared.compiled, self.prepared.namespace, sink, self.prepared.filename)
        except JobStopRequested:
            outcome, value = "Stopped", None
        finally:
            set_thread_sink(None)
            with self.lock:
                self.ident = None
        if outcome == "Completed" and value is not None:
            job.emit(RecordKind.VALUE, value)
        job.set_state(JobState(outcome))

    def terminate(self) -> None:
        with self.lock:
            if self.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), ctypes.py_object(JobStopRequested))

    kill = terminate


class ToyBackend(Backend[ToyOptions, ToyPrepared]):
    options_type = ToyOptions

    def locations(self, options: ToyOptions) -> list[str]:
        return [options.tag]

    def prepare(self, code: str, filename: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None,
                options: ToyOptions) -> ToyPrepared:
        scope = dict(namespace or {})
        scope.setdefault("__name__", "__main__")
        scope.setdefault("__builtins__", builtins)
        scope.setdefault("display", display)
        return ToyPrepared(compile_job(code, filename), scope, filename)

    def launch(self, job: Job, prepared: ToyPrepared) -> None:
        install_routing()
        threading.Thread(target=ToyRunner(job, prepared).run, daemon=True, name=f"toy-{job.id}").start()


@pytest.fixture(scope="module")
def toy_kind() -> Iterator[JobKind]:
    kind = register_backend("toy", "ToyJob", lambda manager: ToyBackend(4), ToyOptions)
    ToyBackend.kind = kind
    yield kind
    unregister_backend("toy")


@pytest.fixture
def start(toy_kind: JobKind, make_manager: Any) -> Starter:
    """The contract suite's ``start``, for the toy kind (overrides conftest's)."""
    starter = Starter(make_manager(), "toy")
    starter.location = ToyOptions().tag  # where the toy says its jobs run
    return starter


# every contract test that takes `start`, run here against the toy
for _name, _test in list(vars(test_contract).items()):
    if _name.startswith("test_") and "start" in inspect.signature(_test).parameters:
        globals()[_name] = _test


def test_the_toy_is_a_kind_like_the_others(toy_kind: JobKind, make_manager: Any) -> None:
    manager: JobManager = make_manager()
    job = manager.start("6 * 7", tag="bench-3")  # its own option chooses it
    assert job.kind is toy_kind and str(job.kind) == "ToyJob" and job.location == "bench-3"
    assert job.result(timeout=10) == 42
    assert toy_kind in list(JobKind) and manager.list(kind="toy") == [job]


def test_the_magics_offer_the_toys_option_without_being_told(toy_kind: JobKind, ip: Any) -> None:
    job = ip.run_line_magic("rjob", "start --toy-tag lab-7 -- 1 + 1")
    assert job.kind is toy_kind and job.location == "lab-7" and job.result(timeout=10) == 2
    with pytest.raises(UsageError, match="--toy-tag is an option of toy jobs, not of thread jobs: leave out --thread"):
        ip.run_line_magic("rjob", "start --thread --toy-tag x -- 1")
    from jupyter_rjobs.ipython.magics import _start_args

    assert "--toy-tag TAG" in (_start_args.__doc__ or "")  # the start help lists it too
