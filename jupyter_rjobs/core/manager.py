"""The job manager: PowerShell's job commands as plain Python. Imports nothing from IPython."""

from __future__ import annotations

import atexit
import builtins
import concurrent.futures
import fnmatch
import functools
import logging
import os
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

from jupyter_rjobs.backends import process as _process_backend  # noqa: F401 - they register their backends
from jupyter_rjobs.backends import thread as _thread_backend  # noqa: F401 - they register their backends
from jupyter_rjobs.backends.base import Backend, BackendOptions
from jupyter_rjobs.backends.dask.clusters import ClusterRegistry
from jupyter_rjobs.backends.remote import options as _remote_options  # noqa: F401 - they register their backends
from jupyter_rjobs.backends.remote.registry import LeftJob
from jupyter_rjobs.core.backends import Backends, ManagerSettings
from jupyter_rjobs.core.checks import checked_name, checked_timeout
from jupyter_rjobs.core.errors import AmbiguousJobError, JobCodeError, JobNotFoundError, JobStateError, RJobError, UsageProblem
from jupyter_rjobs.core.events import EventKind, JobEvent, WaitResult
from jupyter_rjobs.core.follow import follow_streams
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.records import Record, RecordKind
from jupyter_rjobs.core.remote_ops import RemoteOps
from jupyter_rjobs.core.sessions import Session, SessionState

__all__ = ["JobManager", "JobEvent", "EventKind", "WaitResult", "JobSpec"]

# Registered after the remote backend on purpose: --cache and --detached are options of both, and
# given without --cluster or --host they go to remote jobs (the first kind whose options take them).
from jupyter_rjobs.backends.dask import options as _dask_options  # noqa: F401

log = logging.getLogger(__name__)

JobSpec = Union[Job, int, str]
"""A job, its id, or its name (wildcards allowed where several jobs may match)."""


class JobManager:
    """Starts jobs and keeps them: list, get, wait, receive, stop, remove; observable by events.

    ``max_thread_jobs``, ``max_process_jobs`` and ``max_remote_jobs`` throttle how many run at
    once (the rest wait NotStarted, in order); at most ``max_connecting_hosts`` hosts are being
    connected to at once. ``ssh_config`` replaces ``~/.ssh/config`` for remote jobs. ``stop_grace``
    is how long a stopped job has before it is killed. A lost connection is re-tried with back-off
    for ``reconnect_for`` seconds (then its jobs stay Disconnected until ``connect``). Timeouts
    are seconds, ``None`` meaning forever. Each kind of job runs in a backend made the first time
    it is needed, from the registry (``register_backend``).
    """

    def __init__(
        self,
        *,
        max_thread_jobs: int = 8,
        max_process_jobs: int | None = None,
        warm_workers: int = 2,
        stop_grace: float = 3.0,
        python: str | None = None,
        max_remote_jobs: int = 1000,
        ssh_config: str | None = None,
        max_connecting_hosts: int = 32,
        reconnect_for: float | None = 300.0,
    ) -> None:
        self.settings = ManagerSettings(max_thread_jobs, max_process_jobs, warm_workers, stop_grace, python,
                                        max_remote_jobs, max_connecting_hosts, reconnect_for)
        self.stop_grace = stop_grace
        # sessions, invoke, disconnect and connect
        self.remote = RemoteOps(self, ssh_config or os.environ.get("JUPYTER_RJOBS_SSH_CONFIG"))
        self._backends = Backends(self)
        self.clusters = ClusterRegistry(ssh_config=lambda: self.ssh_config)  # the Dask clusters of `--cluster` jobs (dask is imported on first use)
        self._jobs: dict[int, Job] = {}
        self._next_id = 1
        self._lock = threading.RLock()
        self._activity = threading.Condition()
        self._listeners: builtins.list[Callable[[JobEvent], None]] = []
        self._closed = False
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # -- backends -------------------------------------------------------------------------
    def add_backend(self, backend: Backend[Any, Any]) -> None:
        """Use this backend for its kind of job (instead of one made from the registry)."""
        self._backends.add(backend)

    def backend(self, kind: JobKind | str) -> Backend[Any, Any]:
        """The backend of ``kind``, made from the registry on first use."""
        return self._backends.get(kind)

    @property
    def ssh_config(self) -> str | None:
        """The ssh_config file remote jobs read (default ~/.ssh/config, or $JUPYTER_RJOBS_SSH_CONFIG)."""
        return self.remote.ssh_config

    @ssh_config.setter
    def ssh_config(self, path: str | None) -> None:
        self.remote.ssh_config = path

    def prewarm(self) -> None:
        """Get the default kind's backend ready (warm worker processes), so the first job starts at once."""
        self.backend(self.settings.default_kind).prewarm()

    # -- events ---------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call ``listener(event)`` on every job event, from whatever thread caused it.

        Returns the function that unsubscribes it. Listeners must be quick and must not raise.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: JobEvent) -> None:
        """Tell the listeners (waking the readers is :meth:`_wake`, called after this where needed)."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("jupyter_rjobs event listener failed")

    def _wake(self) -> None:
        """Wake the readers waiting in :meth:`follow`."""
        with self._activity:
            self._activity.notify_all()

    def _job_state_changed(self, job: Job, old: JobState, new: JobState) -> None:
        finished = new.finished
        if finished:
            self._backends.throttle(job.kind).finished(job)  # frees a slot (a parent holds none: harmless)
            if job.session is not None:
                self.remote.job_in_session_ended(job)
        if self._listeners:  # an event is made only when someone listens
            self._emit(JobEvent(EventKind.STATE, job, old_state=old, new_state=new))
        if finished:  # readers wait for records and for the end: only a finished job is worth waking them for
            self._wake()
        if job.parent is not None:
            job.parent.child_state_changed()

    def _job_record(self, job: Job, record: Record) -> None:
        if self._listeners:
            self._emit(JobEvent(EventKind.RECORD, job, record=record))
        # A value is always followed at once by the job's end, which wakes readers: waking them for
        # the value too would cost a second thread hand-off per job.
        if record.kind is not RecordKind.VALUE:
            self._wake()

    # -- starting -------------------------------------------------------------------------
    def start(
        self,
        code: str,
        kind: JobKind | str | None = None,
        *,
        name: str | None = None,
        push: Sequence[str] | None = None,
        namespace: Mapping[str, Any] | None = None,
        options: BackendOptions | None = None,
        **option_values: Any,
    ) -> Job:
        """Start ``code`` as a job and return it at once (NotStarted if throttled).

        ``namespace`` is where the code's variables come from (the notebook's user namespace):
        a thread job runs in a shallow copy of it; process and remote jobs get the variables it
        reads, or those named by ``push`` (``[]``: none). ``kind`` is ``"thread"``, ``"process"``
        (the default), ``"remote"`` or any registered kind; the options of its backend come as
        keywords (``host="a,b"``, ``cache="remote"``, ``detached=True``, ``session=...`` for remote
        jobs; without ``kind`` they choose it) or as an ``options`` object. Several locations
        (hosts) make a parent job with one child each. Bad code, an unsendable variable or an
        unusable host raises before any job exists.
        """
        if self._closed:
            raise RJobError("this job manager is shut down; create a new one")
        name = checked_name(name)
        backend, made = self._backends.choose(kind, options, option_values)
        locations = backend.locations(made)
        ids_needed = 1 + (len(locations) if len(locations) > 1 else 0)  # a fan-out parent and its children
        with self._lock:
            job_id = self._next_id
            self._next_id += ids_needed
        try:
            prepared = backend.prepare(code, f"<rjob {job_id}>", namespace, push, made)
        except SyntaxError as exc:
            self._give_back_ids(job_id, ids_needed)
            raise JobCodeError(exc) from None
        except BaseException:
            self._give_back_ids(job_id, ids_needed)
            raise
        job = self._new_job(job_id, backend.kind, code, name, locations)
        backend.configure(job, made)
        with self._lock:
            self._jobs[job_id] = job
        if self._listeners:  # readers follow jobs they already have: no wake
            self._emit(JobEvent(EventKind.ADDED, job))
        throttle = self._backends.throttle(backend.kind)
        for leaf in job.leaves():
            throttle.submit(leaf, functools.partial(self._launch, backend, leaf, prepared))
        return job

    def _new_job(self, job_id: int, kind: JobKind, code: str, name: str | None, locations: builtins.list[str]) -> Job:
        """A job, or a parent with a child per location."""
        on_state, on_record = self._job_state_changed, self._job_record
        if len(locations) <= 1:
            where = locations[0] if locations else "localhost"
            return Job(job_id, kind, code, name, location=where, on_state=on_state, on_record=on_record)
        job = Job(job_id, kind, code, name, location=",".join(locations), on_state=on_state, on_record=on_record)
        for offset, where in enumerate(locations, start=1):
            child = Job(job_id + offset, kind, code, f"{job.name}:{where}", location=where, parent=job,
                        on_state=on_state, on_record=on_record)
            job.children.append(child)
        return job

    def add_running_job(self, code: str, kind: JobKind, **job_options: Any) -> Job:
        """A job that runs already (adopted from a host): registered with the next id, and observed."""
        with self._lock:
            job_id = self._next_id
            self._next_id += 1
            job = Job(job_id, kind, code, on_state=self._job_state_changed, on_record=self._job_record, **job_options)
            self._jobs[job_id] = job
        self._emit(JobEvent(EventKind.ADDED, job))
        return job

    def _give_back_ids(self, job_id: int, count: int) -> None:
        """A job that was never created returns its ids, if no later job took ids meanwhile."""
        with self._lock:
            if self._next_id == job_id + count:
                self._next_id = job_id

    @staticmethod
    def _launch(backend: Backend[Any, Any], job: Job, prepared: Any) -> None:
        try:
            backend.launch(job, prepared)
        except Exception as exc:  # noqa: BLE001 - reported on the job
            job.fail(type(exc).__name__, f"the job could not be started: {exc}")

    # -- finding --------------------------------------------------------------------------
    def _all_jobs(self) -> list[Job]:
        with self._lock:
            top = sorted(self._jobs.values(), key=lambda j: j.id)
        out: list[Job] = []
        for job in top:
            out.append(job)
            out.extend(job.children)
        return out

    def list(
        self,
        jobs: JobSpec | Sequence[JobSpec] | None = None,
        *,
        state: JobState | str | None = None,
        has_more_data: bool | None = None,
        kind: JobKind | str | None = None,
        include_children: bool = False,
    ) -> builtins.list[Job]:
        """The jobs, filtered: by id or name (wildcards: ``crunch*``), state, HasMoreData, kind."""
        candidates = self.resolve(jobs, missing_ok=True) if jobs is not None else self._all_jobs()
        if not include_children:
            candidates = [j for j in candidates if j.parent is None or jobs is not None]
        want_state = JobState.parse(state) if state is not None else None
        want_kind = JobKind.parse(kind) if kind is not None else None
        return [
            job
            for job in candidates
            if (want_state is None or job.state is want_state)
            and (has_more_data is None or job.has_more_data == has_more_data)
            and (want_kind is None or job.kind is want_kind)
        ]

    def get(self, spec: JobSpec) -> Job:
        """One job by id or exact name; a name several jobs share is an error naming their ids."""
        if isinstance(spec, Job):
            return spec
        found = self._match(spec)
        if not found:
            raise JobNotFoundError(spec)
        if len(found) > 1:
            raise AmbiguousJobError(str(spec), [j.id for j in found])
        return found[0]

    def resolve(self, specs: JobSpec | Sequence[JobSpec] | None, *, missing_ok: bool = False) -> builtins.list[Job]:
        """Jobs named by ids, names or wildcard patterns (all that match), in id order, no repeats."""
        if specs is None:
            return [j for j in self._all_jobs() if j.parent is None]
        if isinstance(specs, Job):
            return [specs]
        if isinstance(specs, (int, str)):
            specs = [specs]
        found: dict[int, Job] = {}
        for spec in specs:
            matches = [spec] if isinstance(spec, Job) else self._match(spec)
            if not matches and not missing_ok:
                raise JobNotFoundError(spec)
            for job in matches:
                found.setdefault(job.id, job)
        return [found[i] for i in sorted(found)]

    def _match(self, spec: int | str) -> builtins.list[Job]:
        everything = self._all_jobs()
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            return [j for j in everything if j.id == int(spec)]
        if any(ch in spec for ch in "*?["):
            return [j for j in everything if fnmatch.fnmatchcase(j.name, spec)]
        return [j for j in everything if j.name == spec]

    # -- waiting and receiving ------------------------------------------------------------
    def wait(self, jobs: JobSpec | Sequence[JobSpec] | None = None, *, any: bool = False, timeout: float | None = None) -> WaitResult:
        """Block until all (or ``any``) of the jobs finish, or ``timeout`` seconds pass.

        Returns the finished jobs; ``.still_running`` lists the others, ``.timed_out`` says why it returned.
        """
        targets, timeout = self.resolve(jobs), checked_timeout(timeout)
        mode = concurrent.futures.FIRST_COMPLETED if any else concurrent.futures.ALL_COMPLETED
        done, pending = concurrent.futures.wait(targets, timeout=timeout, return_when=mode)
        finished = [j for j in targets if j in done]
        still = [j for j in targets if j in pending]
        return WaitResult(finished, still, timed_out=bool(still) and not (any and finished))

    def receive(
        self,
        jobs: JobSpec | Sequence[JobSpec] | None = None,
        *,
        keep: bool = False,
        wait: bool = False,
        auto_remove: bool = False,
        timeout: float | None = None,
    ) -> builtins.list[Record]:
        """The records the jobs produced since the last receive (``keep``: and leave them unreceived).

        ``wait`` collects until the jobs end (see :meth:`follow` to get them as they come);
        ``auto_remove`` (with ``wait``) removes the jobs afterwards.
        """
        if auto_remove and not wait:
            raise UsageProblem("auto_remove needs wait: add --wait so the jobs can end before they are removed")
        targets = self.resolve(jobs)
        if wait:
            records = list(follow_streams(_leaves_of(targets), keep, checked_timeout(timeout), self._activity))
        else:
            records = list(self.iter_receive(targets, keep=keep))
        if auto_remove:
            self.remove([j for j in targets if j.state.finished])
        return records

    def iter_receive(self, jobs: JobSpec | Sequence[JobSpec] | None = None, *, keep: bool = False) -> Iterator[Record]:
        """:meth:`receive` (without waiting) as an iterator: the records of a ``cache="remote"``
        job are fetched from its host a part at a time, never all in memory at once."""
        for leaf in _leaves_of(self.resolve(jobs)):
            yield from leaf.stream.iter_take(keep=keep)

    def follow(
        self, jobs: JobSpec | Sequence[JobSpec] | None = None, *, keep: bool = False, timeout: float | None = None
    ) -> Iterator[Record]:
        """Yield the jobs' records as they arrive, until all the jobs have ended (or ``timeout``).

        Without ``keep`` a record counts as received once yielded: stopping half way loses nothing unseen.
        """
        yield from follow_streams(_leaves_of(self.resolve(jobs)), keep, checked_timeout(timeout), self._activity)

    # -- stopping and removing ------------------------------------------------------------
    def stop(self, jobs: JobSpec | Sequence[JobSpec] | None, *, grace: float | None = None) -> builtins.list[Job]:
        """Stop jobs (and their children): Stopping, then Stopped. Waits up to ``grace`` seconds,
        then kills. Returns the jobs; one still Stopping is a thread stuck in C code."""
        grace = self.stop_grace if grace is None else grace
        targets = self.resolve(jobs)
        leaves = _leaves_of(targets)
        asked = []
        for leaf in leaves:
            if leaf.state is JobState.NotStarted:
                self._backends.throttle(leaf.kind).cancel(leaf)
                leaf.set_state(JobState.Stopped)
                if leaf.runner is not None:
                    leaf.runner.kill()  # it was handed to a worker that had not started it
            elif not leaf.state.finished:
                leaf.set_state(JobState.Stopping)
                if leaf.runner is not None:
                    leaf.runner.terminate()
                asked.append(leaf)
        _, not_done = concurrent.futures.wait(asked, timeout=grace)
        pending = [leaf for leaf in asked if leaf in not_done]
        for leaf in pending:
            if leaf.runner is not None:
                leaf.runner.kill()
        if pending:
            concurrent.futures.wait(pending, timeout=max(1.0, grace))
        return targets

    def remove(
        self, jobs: JobSpec | Sequence[JobSpec] | None, *, force: bool = False, state: JobState | str | None = None
    ) -> builtins.list[Job]:
        """Forget finished jobs and their records. A running job is refused unless ``force``, which stops it first.

        ``state`` removes only the jobs in that state (with ``jobs=None``: all of them).
        """
        targets = self.list(jobs, state=state) if state is not None else self.resolve(jobs)
        targets = [j for j in targets if j.parent is None]
        running = [j for j in targets if not j.state.finished]
        if running and not force:
            names = ", ".join(f"{j.label} is {j.state}" for j in running)
            raise JobStateError(f"{names}; stop it first, or remove it with --force (which stops it). Nothing was removed.")
        if running:
            self.stop(running)
        with self._lock:
            for job in targets:
                self._jobs.pop(job.id, None)
        for job in targets:
            for leaf in job.leaves():
                if leaf.runner is not None:
                    leaf.runner.cleanup()
            self._emit(JobEvent(EventKind.REMOVED, job))
            self._wake()  # last, so a woken reader does not wait for the listeners
        return targets

    # -- sessions, invoke, disconnect and connect: the remote side (see _remote_ops.py) -----
    def sessions(self) -> builtins.list[Session]:
        """The sessions (PowerShell's Get-PSSession)."""
        return self.remote.sessions()

    def get_session(self, spec: Session | int | str) -> Session:
        return self.remote.get_session(spec)

    def new_session(self, host: str, *, name: str | None = None, python: str | None = None,
                    accept_new_host: bool | str | Sequence[str] = False) -> Session:
        """Open a lasting interpreter on ``host`` (New-PSSession)."""
        return self.remote.new_session(host, name=name, python=python, accept_new_host=accept_new_host)

    def close_session(self, spec: Session | int | str) -> Session:
        return self.remote.close_session(spec)

    def refresh_session(self, session: Session) -> Session:
        return self.remote.refresh_session(session)

    def invoke(
        self,
        code: str,
        *,
        session: Session | int | str | None = None,
        host: str | Sequence[str] | None = None,
        namespace: Mapping[str, Any] | None = None,
        push: Sequence[str] | None = None,
        on_record: Callable[[Job, Record], None] | None = None,
        accept_new_host: bool | str | Sequence[str] = False,
    ) -> Any:
        """Run ``code`` now in a session or on hosts and return its value (Invoke-Command)."""
        return self.remote.invoke(code, session=session, host=host, namespace=namespace, push=push,
                                  on_record=on_record, accept_new_host=accept_new_host)

    def disconnect(self, target: Any) -> builtins.list[Job]:
        """Let go of a session, host or job, which run on there (Disconnect-PSSession)."""
        return self.remote.disconnect(target)

    def connect(self, target: Any = None, *, force: bool = False, python: str | None = None) -> builtins.list[Job]:
        """Re-attach sessions, hosts and the jobs left on them (Connect-PSSession)."""
        return self.remote.connect(target, force=force, python=python)

    def left_jobs(self) -> builtins.list[LeftJob]:
        """Remote jobs started from other kernels that this one does not follow."""
        return self.remote.left_jobs()

    def connect_cluster(self, cluster: str) -> builtins.list[Job]:
        """Adopt the detached jobs on a Dask cluster (its name or scheduler address) that this
        manager does not follow: each record they produced is delivered once, in order."""
        from jupyter_rjobs.backends.dask.adopt import adopt  # distributed is imported only here

        return adopt(self, cluster)

    def left_cluster_jobs(self) -> builtins.list[LeftJob]:
        """Detached jobs on the Dask clusters this manager is connected to that it does not follow."""
        if not self.clusters.names():
            return []
        from jupyter_rjobs.backends.dask.adopt import left_jobs

        return left_jobs(self)

    # -- shutting down --------------------------------------------------------------------
    def shutdown(self, grace: float | None = 1.0) -> None:
        """Stop every running job and end every worker; no process is left behind. Idempotent."""
        if self._closed:
            return
        self._closed = True
        staying = [j for j in self._all_jobs() if j.detached or j.state is JobState.Disconnected]
        running = [j for j in self._all_jobs() if j.parent is None and not j.state.finished and j not in staying]
        if running:
            self.stop(running, grace=grace)
        for session in self.remote.sessions():
            if session.state is SessionState.Opened:
                try:
                    self.remote.close_session(session)
                except RJobError:
                    pass
        for job in self._all_jobs():
            if job.runner is not None and job not in staying:
                job.runner.cleanup()  # remote spools go with the kernel; detached and disconnected ones stay
        for backend in self._backends.made():
            backend.shutdown()
        self.clusters.shutdown()  # clusters started here go, unless detached

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> JobManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        jobs = self._all_jobs()
        running = sum(1 for j in jobs if not j.state.finished)
        return f"<JobManager {len(jobs)} jobs, {running} running>"


def _leaves_of(jobs: Iterable[Job]) -> list[Job]:
    return [leaf for job in jobs for leaf in job.leaves()]


def _shutdown_at_exit(ref: weakref.ReferenceType[JobManager]) -> None:
    manager = ref()
    if manager is not None:
        manager.shutdown(grace=0.5)
