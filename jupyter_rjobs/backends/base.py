"""The one interface every kind of job runs behind, and the registry of backends.

A backend is one module plus a registration::

    register_backend("thread", "ThreadJob", ThreadBackend, ThreadOptions)

``JobManager.start(code, kind, **options)`` asks the backend of ``kind`` (or, with no kind, the one
whose options type takes every option given), in this order:

1. ``make_options(**options)``: its own frozen options dataclass; bad input raises a one-line
   :class:`UsageProblem` here, before anything exists;
2. ``locations(options)``: where it runs; several make a parent job with one child per location;
3. ``prepare(code, filename, namespace, push, options)``: checks and packs the job (a syntax
   error or an unsendable variable raises here); nothing runs yet;
4. ``configure(job, options)``: sets backend properties of the new job (detached, its session)
   before observers hear of it;
5. ``launch(job, prepared)``: once per leaf job, when the manager's throttle lets it run.

``launch`` makes a :class:`JobRunner`, shaped like ``subprocess.Popen`` and jupyter_client's kernel
provisioners: ``terminate()`` politely, ``kill()`` after a grace period, ``cleanup()`` when the job
is removed, and ``info()``, what a later kernel needs to re-attach to it. Runners report through
the job's public methods only: ``job.set_state``, ``job.emit``, ``job.fail``.

Options are dataclass fields made with :func:`option`: the magics turn their flags into
``%%rjob start`` arguments, so a new backend needs no change in the IPython layer.
"""

from __future__ import annotations

import abc
import dataclasses
import sys
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar, cast

from jupyter_rjobs.agent.values import loads_value
from jupyter_rjobs.core.errors import UsageProblem
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.records import Record, RecordKind

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = [
    "Backend", "JobRunner", "BackendOptions", "option", "register_backend", "unregister_backend",
    "registered_backends", "BackendEntry", "FrameApplier",
]

ENTRY_POINT_GROUP = "jupyter_rjobs.backends"


def option(default: Any, *, flag: str, help: str, metavar: str | None = None,
           choices: Sequence[str] | None = None, bare: Any = None) -> Any:
    """A backend option: a dataclass field whose ``flag`` (``--host``) the magics offer.

    A ``bool`` field is a switch. ``bare`` makes the value optional after the flag: given alone
    it means ``bare``, and a value is taken only as ``--flag=VALUE``."""
    metadata = {"flag": flag, "help": help, "metavar": metavar, "choices": tuple(choices) if choices else None, "bare": bare}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class BackendOptions:
    """What a job of one backend may be told at start; subclasses add :func:`option` fields and
    check them in ``__post_init__`` (raising :class:`UsageProblem`)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def flag_of(cls, name: str) -> str:
        for each in dataclasses.fields(cls):
            if each.name == name:
                return str(each.metadata.get("flag") or f"{name}=")
        return f"{name}="


class JobRunner(abc.ABC):
    """Runs one job."""

    def __init__(self, job: Job) -> None:
        self.job = job
        job.runner = self

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the job to stop (a thread: an exception raised in it; a process tree: SIGTERM)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Force the job to stop, after ``terminate`` had its grace period."""

    def cleanup(self) -> None:
        """Free what the job held once it is removed (a remote spool, say)."""

    def info(self) -> dict[str, Any]:
        """What another kernel needs to find this job again (empty: it cannot be re-attached)."""
        return {}


OptionsT = TypeVar("OptionsT", bound=BackendOptions)
PreparedT = TypeVar("PreparedT")


class Backend(abc.ABC, Generic[OptionsT, PreparedT]):
    """Where jobs of one kind run."""

    kind: ClassVar[JobKind]
    options_type: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self.max_concurrent = max_concurrent

    _default_options: OptionsT | None = None  # made once: options are frozen, and every start without any asks for them

    def make_options(self, **given: Any) -> OptionsT:
        """This backend's options from keyword values; an option of another kind of job is refused."""
        if not given:
            defaults = self._default_options
            if defaults is None:  # a kind that needs an option raises here, each time, and caches nothing
                defaults = self._default_options = cast(OptionsT, self.options_type())  # options_type is OptionsT's class
            return defaults
        known = set(self.options_type.names())
        for name in given:
            if name not in known:
                owner = next((e for e in registered_backends() if name in e.options_type.names()), None)
                flag = owner.options_type.flag_of(name) if owner else f"{name}="
                elsewhere = f"an option of {owner.kind.name} jobs" if owner else "not an option of any kind of job"
                raise UsageProblem(f"{flag} is {elsewhere}, not of {self.kind.name} jobs: leave out --{self.kind.name}"
                                   if owner else f"{flag} is {elsewhere}")
        return self.options_type(**given)  # type: ignore[return-value]  # options_type is OptionsT's class

    def locations(self, options: OptionsT) -> list[str]:
        """Where a job with these options runs: one location, or several (a parent and its children)."""
        return ["localhost"]

    @abc.abstractmethod
    def prepare(self, code: str, filename: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None,
                options: OptionsT) -> PreparedT:
        """Check and pack a job; raise a UsageProblem for bad input. Nothing may run yet."""

    def configure(self, job: Job, options: OptionsT) -> None:
        """Set this backend's properties of a new job (and its children) before it is announced."""

    @abc.abstractmethod
    def launch(self, job: Job, prepared: PreparedT) -> None:
        """Start running ``job`` (which is NotStarted); it moves to Running when it really starts.

        The runner it creates sets ``job.runner``; it may do so later (a worker still starting).
        """

    def prewarm(self) -> None:
        """Get ready so that the first job starts at once (warm worker processes, say)."""

    def shutdown(self) -> None:
        """Release everything (worker processes, connections). Jobs were stopped before."""


BackendFactory = Callable[["JobManager"], Backend[Any, Any]]


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: its kind, its options type, and how a manager makes one."""

    kind: JobKind
    options_type: type[BackendOptions]
    factory: BackendFactory


_registry: dict[str, BackendEntry] = {}
_entry_points_loaded = False


def register_backend(name: str, type_name: str, factory: BackendFactory,
                     options_type: type[BackendOptions] = BackendOptions) -> JobKind:
    """Make a kind of job available to every JobManager: ``factory(manager)`` builds its backend
    the first time a manager needs it. Returns the kind. Packages can register through the entry
    point group ``jupyter_rjobs.backends`` (a callable that calls this)."""
    kind = JobKind.register(name, type_name)
    _registry[name] = BackendEntry(kind, options_type, factory)
    return kind


def unregister_backend(name: str) -> None:
    """Remove a registered backend and its kind (managers that made one keep it)."""
    _registry.pop(name, None)
    JobKind.forget(name)


def registered_backends() -> list[BackendEntry]:
    """Every registered backend, built-in ones first, then those of entry points."""
    _load_entry_points()
    return list(_registry.values())


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        found = entry_points(group=ENTRY_POINT_GROUP)  # type: ignore[call-arg,unused-ignore]  # Python 3.9: a dict
    except TypeError:
        found = entry_points().get(ENTRY_POINT_GROUP, [])  # type: ignore[attr-defined,arg-type,unused-ignore]
    for point in found:
        try:
            point.load()()
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not break the others
            print(f"jupyter_rjobs: the backend {point.name!r} could not be loaded ({type(exc).__name__}: {exc})", file=sys.stderr)


class FrameApplier:
    """Turns the agent's record frames (from a worker pipe or a remote spool) into a job's
    records and states. A value that cannot be loaded here fails the job, saying why."""

    def __init__(self, job: Job, python_version: str = "") -> None:
        self.job = job
        self.python_version = python_version
        self._value_failed = False

    def __call__(self, header: dict[str, Any], buffers: list[bytearray]) -> None:
        """Apply a frame to the job: a state change, or a record appended to its stream."""
        if header["kind"] == "state":
            state = JobState(header["data"])
            if state is JobState.Completed and self._value_failed:
                state = JobState.Failed
            self.job.set_state(state)
            return
        record = self.record(header, buffers)
        self.job.emit(record.kind, record.data, seq=record.seq, when=record.time)

    def record(self, header: dict[str, Any], buffers: list[bytearray]) -> Record:
        """The record a (non-state) frame holds, its value loaded; an unloadable value becomes an error."""
        kind: str = header["kind"]
        data: Any = header.get("data")
        if kind == "value":
            try:
                data = loads_value(data["format"], buffers)
            except Exception as exc:  # noqa: BLE001 - a class the kernel lacks, a Python version mismatch
                self._value_failed = True
                kind, data = "error", self._unloadable(exc)
        return Record(header["seq"], RecordKind(kind), data, header.get("time") or time.time(), self.job.id)

    def _unloadable(self, exc: Exception) -> dict[str, Any]:
        local = sys.version.split()[0]
        versions = ""
        if self.python_version and self.python_version.rsplit(".", 1)[0] != local.rsplit(".", 1)[0]:
            versions = f"; the job ran on Python {self.python_version}, this kernel is Python {local}"
        evalue = f"the job's value arrived but cannot be loaded here ({type(exc).__name__}: {exc}){versions}"
        return {"ename": "ValueNotLoadable", "evalue": evalue, "traceback": [f"ValueNotLoadable: {evalue}"]}
