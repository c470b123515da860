"""Remote jobs: the code runs on SSH hosts, under the agent's server (see agent/server.py, host.py and runner.py).

Each job is a detached process on the host writing an append-only spool; with
``cache="kernel"`` its records stream into the kernel (the spool goes once they are all here),
with ``cache="remote"`` they stay on the host and ``receive`` fetches them. Either way the host
keeps, in the spool's ``cursor``, how far the job was received, and every frame carries a
sequence number. So a lost connection loses nothing: the backend reconnects with back-off and
the new server goes on from the last number the kernel has; a new kernel adopts the job and
receives everything after the cursor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from jupyter_rjobs.agent import protocol
from jupyter_rjobs.agent.execute import compile_job
from jupyter_rjobs.backends.base import Backend
from jupyter_rjobs.backends.namespace import capture_variables, serialize_variables
from jupyter_rjobs.backends.remote import registry as _registry
from jupyter_rjobs.backends.remote.host import HostConnection
from jupyter_rjobs.backends.remote.options import RemoteOptions
from jupyter_rjobs.backends.remote.replies import refuse_version_bound
from jupyter_rjobs.backends.remote.runner import RemoteRunner
from jupyter_rjobs.backends.remote.ssh.config import HostSettings, resolve_host
from jupyter_rjobs.backends.remote.ssh.prompt import prompts_disabled
from jupyter_rjobs.backends.remote.transport import is_local_host
from jupyter_rjobs.core.errors import HostError
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.sessions import Session, SessionState

if TYPE_CHECKING:
    from jupyter_rjobs.backends.remote.ssh.known_hosts import AcceptNewHost
    from jupyter_rjobs.core.remote_ops import RemoteOps

__all__ = ["RemoteBackend"]

log = logging.getLogger(__name__)

MAX_CONNECTING = 32
RECONNECT_FOR = 300.0
ORPHAN_MARGIN = 30.0  # a host waits for its kernel this long after the kernel's own reconnecting would end
LOCAL_ORPHAN_GRACE = 0.0  # the local agent: its pipe ends only when its kernel does (nothing to wait for)


class _RemotePrepared:
    def __init__(self, header: dict[str, Any], buffers: list[Any], connections: dict[str, HostConnection | HostError], cache: str) -> None:
        self.header = header
        self.buffers = buffers
        self.connections = connections
        self.cache = cache


ConnectionKey = tuple[str, str, str]


class RemoteBackend(Backend[RemoteOptions, _RemotePrepared]):
    """Jobs on SSH hosts, one connection per host (PowerShell's Invoke-Command -AsJob)."""

    kind = JobKind.REMOTE
    options_type = RemoteOptions

    def __init__(
        self,
        max_concurrent: int = 1000,
        stop_grace: float = 3.0,
        remote: RemoteOps | None = None,
        max_connecting: int = MAX_CONNECTING,
        reconnect_for: float | None = RECONNECT_FOR,
    ) -> None:
        super().__init__(max_concurrent)
        self.stop_grace = stop_grace
        self.remote = remote  # the manager's sessions and ssh_config
        self.max_connecting = max_connecting
        self.reconnect_for = reconnect_for  # None: forever
        self._connections: dict[ConnectionKey, HostConnection] = {}
        self._lock = threading.Lock()
        self._connecting = threading.Semaphore(max_connecting)
        self._host_locks: dict[ConnectionKey, threading.Lock] = {}
        self._reconnecting: set[ConnectionKey] = set()
        self._closed = threading.Event()
        self.on_reconnected: Callable[[str], None] | None = None

    @property
    def ssh_config(self) -> str | None:
        """The ssh_config file read for hosts (None: OpenSSH's defaults)."""
        return self.remote.ssh_config if self.remote is not None else None

    # -- connections ----------------------------------------------------------------------
    def _key(self, host: str, python: str | None) -> ConnectionKey:
        return (host, python or "", self.ssh_config or "")

    def connection(self, host: str, python: str | None = None, accept_new: AcceptNewHost = False) -> HostConnection:
        """The open connection to ``host`` (connecting on first use; ssh_config is read only then).
        ``accept_new`` says which of its hops may accept an unknown host key (see AcceptNew)."""
        key = self._key(host, python)
        existing = self._connections.get(key)
        if existing is not None and existing.alive:
            return existing
        with self._lock:
            host_lock = self._host_locks.setdefault(key, threading.Lock())
        with host_lock:
            existing = self._connections.get(key)
            if existing is not None and existing.alive:
                return existing
            if is_local_host(host):  # this machine through a local pipe: no ssh_config, the kernel's own Python
                settings = HostSettings(alias=host, hostname=host, python=python or sys.executable)
                grace: float | None = LOCAL_ORPHAN_GRACE  # a local pipe ends only with its kernel (or its server)
            else:
                settings = resolve_host(host, ssh_config=self.ssh_config, python=python)
                grace = None if self.reconnect_for is None else self.reconnect_for + ORPHAN_MARGIN

            def lost(old: HostConnection, key: ConnectionKey = key) -> None:
                self._lost(key, old)

            with self._connecting:
                connection = HostConnection(settings, on_lost=lost, accept_new_host=accept_new, orphan_grace=grace).open()
            connection.python = python
            self._connections[key] = connection
            return connection

    def _lost(self, key: ConnectionKey, old: HostConnection) -> None:
        """A connection died under us: reconnect with back-off and re-attach its jobs."""
        if self._closed.is_set():
            return
        with self._lock:
            if key in self._reconnecting:
                return
            self._reconnecting.add(key)
        threading.Thread(target=self._reconnect, args=(key, old), name=f"rjob-reconnect-{key[0]}", daemon=True).start()

    def _reconnect(self, key: ConnectionKey, old: HostConnection) -> None:
        deadline = None if self.reconnect_for is None else time.monotonic() + self.reconnect_for
        delay = 0.5
        try:
            while not self._closed.is_set():
                waiting = [r for r in old.runners() if isinstance(r, RemoteRunner) and not r.user_disconnected]
                if not waiting:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    for runner in waiting:
                        if runner.job.state is JobState.Disconnected:
                            runner.job.reason = f"gave up reconnecting to {key[0]} after {self.reconnect_for:g} s; reconnect with %rjob connect {key[0]}"
                    return
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, 15.0)
                try:
                    # nobody is there to answer a password or one-time code: such a host waits for %rjob connect
                    with prompts_disabled("reconnecting in the background; reconnect with %rjob connect in a cell"):
                        connection = self.connection(key[0], key[1] or None)
                    for runner in waiting:
                        runner.reattach(connection, replace=old.server_pid)
                    self._claim_sessions(key[0], connection)
                except HostError as exc:
                    log.debug("reconnecting to %s: %s", key[0], exc)
                    continue
                if self.on_reconnected is not None:
                    self.on_reconnected(key[0])
                return
        finally:
            with self._lock:
                self._reconnecting.discard(key)

    def _claim_sessions(self, host: str, connection: HostConnection) -> None:
        """After a reconnect: this kernel's open sessions there are its own again (else the host
        would end them once its wait for the lost connection's kernel is over)."""
        for session in self.remote.sessions() if self.remote is not None else []:
            if session.host == host and session.state is SessionState.Opened:
                try:
                    connection.send({"op": protocol.SESSION_ATTACH, "session": str(session.instance)})
                except HostError:
                    pass

    def release_session(self, session: Session) -> None:
        """Let go of a session (a disconnect): it outlives this kernel."""
        for connection in [c for k, c in list(self._connections.items()) if k[0] == session.host and c.alive]:
            try:
                connection.send({"op": protocol.RELEASE, "job": "", "session": str(session.instance)})
            except HostError:
                pass

    def disconnect(self, host: str) -> list[RemoteRunner]:
        """Close the connections to ``host``, leaving its jobs running there; returns their runners."""
        with self._lock:
            keys = [k for k in self._connections if k[0] == host]
        runners: list[RemoteRunner] = []
        for key in keys:
            connection = self._connections.pop(key)
            for runner in connection.runners():
                if isinstance(runner, RemoteRunner):
                    runner.release()
                    runners.append(runner)
            connection.close()
        return runners

    # -- jobs -----------------------------------------------------------------------------
    def make_options(self, **given: Any) -> RemoteOptions:
        """The options, a session given by id or name found (it must be Opened and idle)."""
        options = super().make_options(**given)
        if options.session is not None and not isinstance(options.session, Session) and self.remote is not None:
            options = dataclasses.replace(options, session=self.remote.session_for_start(options.session))
        return options

    def locations(self, options: RemoteOptions) -> list[str]:
        return options.hosts

    def configure(self, job: Job, options: RemoteOptions) -> None:
        for each in [job, *job.children]:
            each.detached = options.detached
        if isinstance(options.session, Session):
            job.session = options.session
            options.session.jobs.append(job)

    def prepare(
        self,
        code: str,
        filename: str,
        namespace: Mapping[str, Any] | None,
        push: Sequence[str] | None,
        options: RemoteOptions,
    ) -> _RemotePrepared:
        hosts, python, accept_new_host = options.hosts, options.python_there, options.accept_new_host
        compile_job(code, filename)
        specs, buffers = serialize_variables(capture_variables(code, namespace, push), where="a remote job")
        header = {"op": protocol.RUN, "code": code, "filename": filename, "variables": specs, "python": sys.version.split()[0], "kernel": os.getpid()}
        if isinstance(options.session, Session):
            header["session"] = str(options.session.instance)
        connections: dict[str, HostConnection | HostError] = {}

        def connect(host: str) -> None:
            try:
                connections[host] = self.connection(host, python, accept_new_host)
            except HostError as exc:
                connections[host] = exc

        for host in hosts:  # connected already: no thread needed
            existing = self._connections.get(self._key(host, python))
            if existing is not None and existing.alive:
                connections[host] = existing
        missing = [host for host in hosts if host not in connections]
        if len(missing) == 1:
            connect(missing[0])
        elif missing:
            with ThreadPoolExecutor(min(len(missing), self.max_connecting)) as pool:
                list(pool.map(connect, missing))
        connections = {host: connections[host] for host in hosts}
        refuse_version_bound(specs, connections)
        failures = [c for c in connections.values() if isinstance(c, HostError)]
        if len(failures) == len(hosts):
            raise failures[0] if len(failures) == 1 else HostError(
                ",".join(hosts), "no host could be used: " + "; ".join(str(f) for f in failures)
            )
        return _RemotePrepared(header, buffers, connections, options.cache)

    def launch(self, job: Job, prepared: _RemotePrepared) -> None:
        connection = prepared.connections[job.location]
        if isinstance(connection, HostError):
            job.fail("HostError", str(connection))
            return
        runner = RemoteRunner(job, connection, prepared.cache, self.stop_grace)
        _registry.remember_new(runner.instance, **runner.info(), state="Running")
        try:
            runner.start(prepared.header, prepared.buffers)
        except HostError as exc:
            job.fail("HostError", str(exc))

    def adopt(self, job: Job, host: str, python: str | None, cache: str, cursor: int, force: bool = False) -> RemoteRunner:
        """Follow a job this kernel did not start (left on ``host``), from what nobody received."""
        connection = self.connection(host, python)
        runner = RemoteRunner(job, connection, cache, self.stop_grace, received=cursor)
        _registry.remember(runner.instance, **runner.info(), kernel_pid=os.getpid(), state=str(job.state))
        runner.reattach(connection, force=force)
        return runner

    def listing(self, host: str, python: str | None = None, accept_new: AcceptNewHost = False) -> dict[str, Any]:
        """What this user left on ``host``: its job spools and its sessions."""
        return self.connection(host, python, accept_new).request({"op": protocol.LIST}, protocol.LISTING)

    # -- sessions -------------------------------------------------------------------------
    def open_session(self, session: Session, accept_new: AcceptNewHost = False) -> None:
        connection = self.connection(session.host, session.python, accept_new)
        reply = connection.request(
            {"op": protocol.SESSION_NEW, "session": str(session.instance), "name": session.name, "kernel": os.getpid(), "host": session.host}, protocol.SESSION_STATE
        )
        if reply.get("state") != "Opened":
            raise HostError(session.host, f"the session did not start there: {reply.get('reason') or reply.get('state')}")

    def session_status(self, session: Session) -> dict[str, Any]:
        connection = self.connection(session.host, session.python)
        return connection.request({"op": protocol.SESSION_ATTACH, "session": str(session.instance)}, protocol.SESSION_STATE)

    def close_session(self, session: Session) -> None:
        connection = self.connection(session.host, session.python)
        connection.request({"op": protocol.SESSION_CLOSE, "session": str(session.instance)}, protocol.SESSION_STATE)

    def shutdown(self) -> None:
        self._closed.set()
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()
