"""The JobManager's remote side: sessions, invoke, disconnect and connect, jobs left on hosts.

An object the :class:`JobManager` holds (``manager.remote``), which uses only the manager's public
methods; the manager's own ``sessions``, ``invoke``, ``connect``... hand over to it. Plain Python,
no IPython.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from jupyter_rjobs.backends.remote import registry as _registry
from jupyter_rjobs.core.errors import HostRequestFailed, JobNotFoundError, JobStateError, SessionNotFoundError, UsageProblem
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.records import Record
from jupyter_rjobs.core.sessions import Session, SessionState

if TYPE_CHECKING:
    from jupyter_rjobs.backends.remote.backend import RemoteBackend
    from jupyter_rjobs.backends.remote.runner import RemoteRunner
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["RemoteOps"]


class RemoteOps:
    """Sessions (New-PSSession, Invoke-Command, Disconnect/Connect-PSSession) and re-attaching."""

    def __init__(self, manager: JobManager, ssh_config: str | None = None) -> None:
        self._manager = manager
        self.ssh_config = ssh_config  # the ssh_config file hosts are read from (None: OpenSSH's defaults)
        self._sessions: dict[int, Session] = {}
        self._lock = threading.RLock()

    @property
    def _remote(self) -> RemoteBackend:
        from jupyter_rjobs.backends.remote.backend import RemoteBackend  # paramiko is imported only when needed

        backend = self._manager.backend(JobKind.REMOTE)
        assert isinstance(backend, RemoteBackend)
        return backend

    def _all_jobs(self) -> list[Job]:
        return self._manager.list(include_children=True)

    # -- sessions -------------------------------------------------------------------------
    def sessions(self) -> list[Session]:
        with self._lock:
            return sorted(self._sessions.values(), key=lambda s: s.id)

    def get_session(self, spec: Session | int | str) -> Session:
        if isinstance(spec, Session):
            return spec
        text = str(spec)
        found = [s for s in self.sessions() if (text.isdigit() and s.id == int(text)) or s.name == text]
        if not found:
            raise SessionNotFoundError(spec, [s.name for s in self.sessions()])
        return found[0]

    def new_session(
        self, host: str, *, name: str | None = None, python: str | None = None, accept_new_host: bool | str | Sequence[str] = False
    ) -> Session:
        """Open a lasting interpreter on ``host`` (PowerShell's New-PSSession)."""
        if name is not None and any(s.name == name for s in self.sessions()):
            raise UsageProblem(f"a session named {name!r} exists already; pick another --name or close it first")
        with self._lock:
            session_id = max(self._sessions, default=0) + 1
            session = Session(session_id, name, host, python)
            self._sessions[session_id] = session  # reserved: a concurrent new_session gets the next id
        try:
            self._remote.open_session(session, accept_new=accept_new_host)
        except BaseException:
            with self._lock:
                self._sessions.pop(session_id, None)
            raise
        _registry.remember_session(str(session.instance), host, session.name, python)
        return session

    def close_session(self, spec: Session | int | str) -> Session:
        """Close a session: its interpreter ends (a job it runs is stopped), its variables go."""
        session = self.get_session(spec)
        if session.state is not SessionState.Closed:
            running = [j for j in session.jobs if not j.state.finished]
            if running:
                self._manager.stop(running)
            try:
                self._remote.close_session(session)
            except HostRequestFailed:
                raise  # the host said why it could not: the session is as it was, there and here
            except BaseException:
                session.state = SessionState.Closed
                raise
            session.state = SessionState.Closed
        _registry.forget_session(str(session.instance))
        with self._lock:
            self._sessions.pop(session.id, None)
        return session

    def refresh_session(self, session: Session) -> Session:
        """Ask the host how the session is (its interpreter may have died meanwhile)."""
        from jupyter_rjobs.backends.remote.replies import session_state_of

        if session.state is not SessionState.Closed:
            state, reason = session_state_of(self._remote.session_status(session))
            if state is SessionState.Broken:
                session.set_broken(reason)
            else:
                session.state = state
        return session

    def session_for_start(self, spec: Session | int | str) -> Session:
        session = self.get_session(spec)
        if session.state is SessionState.Broken:
            raise JobStateError(f"{session.label} is broken: {session.reason}")
        if session.state is not SessionState.Opened:
            raise JobStateError(f"{session.label} is {session.state}; reconnect it with %rjob connect {session.name} first")
        busy = session.busy_with
        if busy is not None:
            raise JobStateError(f"{session.label} is busy with {busy.label}; wait for it (%rjob wait {busy.id}) or open another session")
        return session

    def job_in_session_ended(self, job: Job) -> None:
        session = job.session
        if session is not None and job.state is JobState.Failed and job.error is not None and job.error.ename == "WorkerDied":
            session.set_broken(f"{job.error.evalue}; its variables are gone. Close it (%rjob session close {session.name}) and open a new one")

    # -- invoke ---------------------------------------------------------------------------
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
        """Run ``code`` now (PowerShell's Invoke-Command): in a session, or on hosts; returns its value
        (``{host: value}`` for several hosts). Records go to ``on_record`` as they come. Ctrl-C stops it."""
        if (session is None) == (host is None):
            raise UsageProblem("invoke needs one of --session S or --host H[,H2]")
        job = self._manager.start(code, session=session, host=host, namespace=namespace, push=push, accept_new_host=accept_new_host)
        try:
            for record in self._manager.follow(job):
                if on_record is not None:
                    on_record(self._leaf_of(job, record), record)
            job.exception()  # wait for the end (the last records came before it)
        except KeyboardInterrupt:
            self._manager.stop(job)
            raise
        finally:
            if job.state.finished:
                self._manager.remove(job)
        if job.children:
            return {child.location: child.result(timeout=0) for child in job.children if child.state is JobState.Completed}
        return job.result()

    @staticmethod
    def _leaf_of(job: Job, record: Record) -> Job:
        for leaf in job.leaves():
            if leaf.id == record.job_id:
                return leaf
        return job

    # -- disconnect and connect -----------------------------------------------------------
    def disconnect(self, target: Any) -> list[Job]:
        """Let go of a session, a host or a job, which go on running there (and outlive the kernel)."""
        session = self._find_session(target)
        if session is not None:
            present = {id(j) for j in self._all_jobs()}  # not those removed already (an invoke's)
            jobs = [j for j in session.jobs if j.runner is not None and id(j) in present]
            for job in jobs:
                job.detached = True
                _runner(job).release()
            self._remote.release_session(session)  # it outlives the kernel
            session.state = SessionState.Disconnected
            return jobs
        if isinstance(target, str) and not target.isdigit() and not self._match_jobs(target):
            for s in self.sessions():
                if s.host == target and s.state is SessionState.Opened:
                    self._remote.release_session(s)  # it outlives the kernel
                    s.state = SessionState.Disconnected
            runners = self._remote.disconnect(target)
            for runner in runners:
                runner.job.detached = True
            return [r.job for r in runners]
        jobs = [leaf for job in self._resolve_remote(target) for leaf in job.leaves()]
        for job in jobs:
            job.detached = True
            _runner(job).release()
        return jobs

    def connect(self, target: Any = None, *, force: bool = False, python: str | None = None) -> list[Job]:
        """Re-attach: a session or host this kernel let go of, and on a host also every job this user
        left there from any kernel (adopted here; receive then gives all nobody received).
        Without ``target``: every host the local registry knows jobs on. Returns the jobs followed."""
        session = self._find_session(target)
        if session is None and target is not None:
            session = self._adopt_left_session(str(target), force=force)
        if session is not None:
            connection = self._remote.connection(session.host, session.python)
            self.refresh_session(session)
            jobs = [j for j in self._disconnected() if j.session is session]
            for job in jobs:
                _runner(job).reattach(connection)
            return jobs
        if target is None:
            # left by a kernel that is gone (or by another manager of this process: left_jobs has not ours)
            hosts = sorted({j.host for j in self.left_jobs() if not j.kernel_alive or j.kernel_pid == os.getpid()})
            hosts += sorted({j.location for j in self._disconnected() if j.location not in hosts})
            if not hosts:
                raise UsageProblem("no jobs were left on any host; name one: %rjob connect HOST")
        else:
            hosts = [h.strip() for h in str(target).split(",") if h.strip()]
        followed: list[Job] = []
        for host in hosts:
            followed.extend(self._connect_host(host, force=force, python=python))
        return followed

    def _connect_host(self, host: str, *, force: bool, python: str | None) -> list[Job]:
        remote = self._remote
        listing = remote.listing(host, python)
        connection = remote.connection(host, python)
        followed = []
        for job in self._disconnected():
            if job.location == host:
                _runner(job).reattach(connection, force=force)
                followed.append(job)
        sessions = self._adopt_sessions(host, python, listing.get("sessions", []))
        _registry.forget_missing(host, {str(meta.get("instance")) for meta in listing.get("jobs", [])})
        return followed + self._adopt_jobs(host, python, listing.get("jobs", []), sessions, force=force)

    def _adopt_jobs(self, host: str, python: str | None, listed: list[dict[str, Any]], sessions: Mapping[str, Session],
                    *, force: bool) -> list[Job]:
        """Follow the jobs of a host's listing that this kernel does not (left by any kernel)."""
        known = {str(j.instance_id) for j in self._all_jobs() if j.kind is JobKind.REMOTE}
        followed = []
        for meta in listed:
            if meta.get("refused"):
                followed.extend(self._refused(host, meta, known))
                continue
            if meta["instance"] in known or meta.get("host") not in (None, host):
                continue  # followed already, or started on another host that shares this home directory
            if meta.get("attached_elsewhere") and not force:
                continue
            job = self._manager.add_running_job(meta.get("code") or "", JobKind.REMOTE, name=meta.get("name"), location=host,
                                instance_id=uuid.UUID(meta["instance"]))
            job.detached = bool(meta.get("detached"))
            job.begin_time = datetime.fromtimestamp(meta.get("started") or 0)
            if meta.get("state") in ("Running", *(str(s) for s in JobState if s.finished)):  # it began; its
                # Running record may be behind the cursor (never sent again), its end comes with its records
                job.set_state(JobState.Running)
            if meta.get("session") in sessions:
                job.session = sessions[meta["session"]]
                job.session.jobs.append(job)
            self._remote.adopt(job, host, python, meta.get("cache") or "kernel", int(meta.get("cursor") or 0), force=force)
            followed.append(job)
        return followed

    def _adopt_left_session(self, name: str, *, force: bool) -> Session | None:
        """The session named ``name`` that some kernel of this user opened (the registry says on which
        host), adopted here with its jobs; None if the registry knows none (then ``name`` is a host)."""
        left = [s for s in _registry.left_sessions() if s.name == name]
        if not left:
            return None
        for entry in left:
            listing = self._remote.listing(entry.host, entry.python)
            listed = [i for i in listing.get("sessions", []) if i.get("session") == entry.instance and i.get("host") in (None, entry.host)]
            if not listed:
                _registry.forget_session(entry.instance)  # closed, or its interpreter's directory is gone
                continue
            session = self._adopt_sessions(entry.host, entry.python, listed)[entry.instance]
            jobs = [meta for meta in listing.get("jobs", []) if meta.get("session") == entry.instance]
            self._adopt_jobs(entry.host, entry.python, jobs, {entry.instance: session}, force=force)
            return session
        hosts = ", ".join(sorted({entry.host for entry in left}))
        raise UsageProblem(f"session {name!r} is gone from {hosts} (closed, or its interpreter ended); its entry is forgotten,"
                           f" so `%rjob connect {name}` again means the host {name}")

    def _refused(self, host: str, meta: Mapping[str, Any], known: set[str]) -> list[Job]:
        """A spool the host refused to read (not ours alone): listed as a Failed job that says so;
        the spool stays there as it is (evidence), the job here has no runner to delete it."""
        try:
            instance = uuid.UUID(str(meta["instance"]))
        except ValueError:
            return []
        if str(instance) in known:
            return []
        job = self._manager.add_running_job("", JobKind.REMOTE, location=host, instance_id=instance)
        job.fail("SpoolRefused", f"{host}: {meta['refused']}")
        return [job]

    def _adopt_sessions(self, host: str, python: str | None, listed: list[dict[str, Any]]) -> dict[str, Session]:
        from jupyter_rjobs.backends.remote.replies import session_state_of

        by_instance = {str(s.instance): s for s in self.sessions()}
        for info in listed:
            instance = info.get("session")
            if not instance or info.get("host") not in (None, host):
                continue  # started on another host that shares this home directory
            session = by_instance.get(instance)
            if session is None:  # left by another kernel: adopted here
                with self._lock:
                    session_id = max(self._sessions, default=0) + 1
                    name = info.get("name") or f"Session{session_id}"
                    if any(s.name == name for s in self._sessions.values()):
                        name = f"{name}-{session_id}"
                    session = self._sessions[session_id] = Session(session_id, name, host, python, uuid.UUID(instance))
                by_instance[instance] = session
            session.state, session.reason = session_state_of(info)
            _registry.remember_session(instance, host, session.name, python)
        return by_instance

    def left_jobs(self) -> list[_registry.LeftJob]:
        """Remote jobs this user started from other kernels that this one does not follow
        (from the local registry; ``%rjob connect HOST`` adopts them)."""
        known = {str(j.instance_id) for j in self._all_jobs() if j.kind is JobKind.REMOTE}
        return [j for j in _registry.left_jobs() if j.instance not in known]

    # -- helpers --------------------------------------------------------------------------
    def _find_session(self, target: Any) -> Session | None:
        if isinstance(target, Session):
            return target
        if target is None:
            return None
        text = str(target)
        for s in self.sessions():
            if s.name == text:
                return s
        return None

    def _match_jobs(self, spec: str) -> list[Job]:
        try:
            return self._manager.resolve(spec)
        except JobNotFoundError:
            return []

    def _resolve_remote(self, target: Any) -> list[Job]:
        jobs = self._manager.resolve(target)
        local = [j.label for j in jobs if j.kind is not JobKind.REMOTE]
        if local:
            raise UsageProblem(f"{', '.join(local)} runs here, not on a host: only remote jobs can be disconnected")
        return jobs

    def _disconnected(self) -> list[Job]:
        return [
            j for j in self._all_jobs()
            if j.kind is JobKind.REMOTE and not j.children and j.runner is not None
            and (j.state is JobState.Disconnected or getattr(j.runner, "user_disconnected", False))
        ]


def _runner(job: Job) -> RemoteRunner:
    """The remote runner of a remote job (every remote job that started has one)."""
    from jupyter_rjobs.backends.remote.runner import RemoteRunner

    runner = job.runner
    if not isinstance(runner, RemoteRunner):
        raise JobStateError(f"{job.label} has not started on its host; nothing to disconnect or connect")
    return runner
