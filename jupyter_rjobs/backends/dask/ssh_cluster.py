"""A Dask cluster made from the user's SSH hosts (``%rjob cluster new --hosts a,b,c``), started
and stopped through our own SSH layer: ssh_config, known_hosts (checked for every hop), ProxyJump,
ProxyCommand and the agent all apply, as for ``--host`` jobs.

``start_ssh_cluster`` first connects to every host and checks its Python there (the host's
configured one, or ``python``) and that it has distributed, all in parallel, before it starts
anything. Then a ``dask scheduler`` on the first host, listening on the address this kernel's SSH
connection reached that host by (a free port; the dashboard on a free port of the same address),
and one ``dask worker --nworkers N`` on every host (the first included); it returns once the
scheduler reports every worker. Any failure on the way stops what was started and says why in
one line. Nothing here imports dask or distributed (the hosts' Pythons do the Dask work).

Lifetime: every Dask process runs under a small supervisor (``ssh_supervisor.py``) on an SSH
channel of its own. A cluster that is not detached ends when its channels do: ``close()``, this
kernel exiting or being killed, or the connection being lost (once sshd notices) all end the
scheduler and the workers with their process trees. A ``detached`` cluster outlives its channels
(its logs go to ``~/.cache/jupyter_rjobs/dask/`` on each host); ``close()`` ends it, from this
kernel or, through ``SshCluster.adopt(cluster.describe())``, from another one.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from jupyter_rjobs.backends.dask.ssh_process import HostProcess, supervisor_command
from jupyter_rjobs.backends.remote.options import host_list
from jupyter_rjobs.backends.remote.ssh.connection import AcceptNewHost, HostSettings, SshConnection, resolve_host
from jupyter_rjobs.backends.remote.ssh.errors import CONNECTION_ERRORS, describe
from jupyter_rjobs.core.errors import HostError, UsageProblem

__all__ = ["SshCluster", "WorkerInfo", "start_ssh_cluster"]

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a Dask process tree
WORKER_DEATH_TIMEOUT = 60  # a worker whose scheduler is gone for this long exits by itself
MAX_CONNECTING = 32
_REACH_ERRORS: tuple[type[BaseException], ...] = (HostError, *CONNECTION_ERRORS)

_PROBE = (
    "import json, sys\n"
    "try:\n    import distributed\n    found, error = distributed.__version__, ''\n"
    "except Exception as exc:\n    found, error = None, type(exc).__name__ + ': ' + str(exc)\n"
    "print(json.dumps({'python': '.'.join(map(str, sys.version_info[:3])), 'distributed': found, 'error': error}))\n"
)

_WAITER = (  # ends with its channel (stdin's end), so a start given up leaves no waiter behind
    "import json, os, sys, threading\n"
    "threading.Thread(target=lambda: (sys.stdin.read(), os._exit(3)), daemon=True).start()\n"
    "from distributed import Client\n"
    "address, count, timeout = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])\n"
    "with Client(address, timeout=timeout or 60, set_as_default=False) as client:\n"
    "    try:\n        client.wait_for_workers(count, timeout=timeout)\n        complete = True\n"
    "    except Exception:\n        complete = False\n"  # it says who joined: the kernel names who did not
    "    try:\n        info = client.scheduler_info(n_workers=-1)\n"
    "    except TypeError:\n        info = client.scheduler_info()\n"
    "workers = [{'address': a, 'name': str(w.get('name'))} for a, w in info['workers'].items()]\n"
    "print(json.dumps({'complete': complete, 'workers': workers}))\n"
)


@dataclass(frozen=True)
class WorkerInfo:
    """One Dask worker of the cluster: its address, its Dask name, and the host (as given) it runs on."""

    address: str
    name: str
    host: str


@dataclass
class _Host:
    """A host of the cluster: how it was named, its settings, its connection and Python."""

    spec: str
    settings: HostSettings
    connection: Optional[SshConnection] = None
    python_version: str = ""
    distributed_version: str = ""


class SshCluster:
    """A Dask cluster on SSH hosts, started here (a ``ClusterHandle``): ``address`` is the
    scheduler's, ``hosts`` the hosts as given (the scheduler on the first), ``workers`` one
    ``WorkerInfo`` per worker. ``close()`` stops the workers, then the scheduler, each with its
    process tree, and leaves no process behind on any host."""

    started_here = True

    def __init__(self, name: str, address: str, dashboard_link: Optional[str], detached: bool, hosts: list[_Host],
                 processes: list[HostProcess], workers: list[WorkerInfo]) -> None:
        self.name = name
        self.address = address
        self.dashboard_link = dashboard_link
        self.detached = detached
        self.hosts = [host.spec for host in hosts]
        self.workers = workers
        self.python = {host.spec: host.settings.python for host in hosts}
        self.distributed_version = hosts[0].distributed_version if hosts else ""
        self._hosts = {host.spec: host for host in hosts}
        self._processes = processes
        self._adopted: list[dict[str, Any]] = []
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.workers)} workers"
        return f"<SshCluster {self.name!r} {self.address} on {','.join(self.hosts)}: {state}>"

    @property
    def alive(self) -> bool:
        """Whether every Dask process this kernel started still runs under its supervisor (False
        once closed, or when one ended: it crashed, or its connection was lost)."""
        return not self.closed and bool(self._processes) and not any(p.ended for p in self._processes)

    def describe(self) -> dict[str, Any]:
        """What another kernel needs to close this (detached) cluster: JSON-able."""
        return {
            "name": self.name, "address": self.address, "dashboard_link": self.dashboard_link, "detached": self.detached,
            "hosts": self.hosts, "python": self.python,
            "ssh_config": next(iter(self._hosts.values())).settings.ssh_config if self._hosts else None,
            "workers": [[w.address, w.name, w.host] for w in self.workers],
            "processes": [dict(p.kill_spec(), host=p.host, detached=p.detached) for p in self._processes] + self._adopted,
        }

    @classmethod
    def adopt(cls, description: dict[str, Any]) -> SshCluster:
        """A handle on a cluster another kernel started (``describe()``'s output), for ``close()``:
        it connects again to end each process (checked by pid and start time)."""
        ssh_config = description.get("ssh_config")
        hosts = [_Host(spec, resolve_host(spec, ssh_config=ssh_config, python=description["python"].get(spec)))
                 for spec in description["hosts"]]
        workers = [WorkerInfo(*worker) for worker in description.get("workers", [])]
        cluster = cls(description["name"], description["address"], description.get("dashboard_link"),
                      bool(description.get("detached")), hosts, [], workers)
        cluster.started_here = False
        cluster._adopted = [dict(p) for p in description["processes"]]
        return cluster

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the workers, then the scheduler, and close the connections. A process whose
        channel is gone (a detached cluster seen from another kernel) is ended over a new
        connection. ``timeout`` None waits for ever; a HostError names what did not stop."""
        if self.closed:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            workers = [p for p in self._processes if p.role == "workers"]
            scheduler = [p for p in self._processes if p.role != "workers"]
            left = self._stop(workers, deadline) + self._stop(scheduler, deadline)
            self._kill_over_new_connections(left + self._adopted, deadline)
        finally:
            for process in self._processes:
                process.close_channel()
            for host in self._hosts.values():
                if host.connection is not None:
                    host.connection.close()
            self.closed = True

    def _stop(self, processes: list[HostProcess], deadline: float | None) -> list[dict[str, Any]]:
        """Stop ``processes`` over their channels, together; those whose channel is gone are
        returned, to be ended over a new connection (checked by pid and start time)."""
        asked = [p for p in processes if p.ask_stop()]
        for process in asked:
            if not process.wait_stopped(deadline):
                raise HostError(process.host, f"the Dask {process.role} there did not stop in time; close again or wait longer")
        return [dict(p.kill_spec(), host=p.host, detached=p.detached) for p in processes if p not in asked and p.pid]

    def _kill_over_new_connections(self, kills: list[dict[str, Any]], deadline: float | None) -> None:
        for kill in kills:
            host = self._hosts.get(kill["host"])
            if host is None:
                continue
            settings = host.settings
            spec = {key: value for key, value in kill.items() if key not in ("host", "detached")}
            connection = host.connection if host.connection is not None and host.connection.alive else None
            fresh = connection is None
            try:
                connection = connection or SshConnection(settings).open()
                left = None if deadline is None else max(1.0, deadline - time.monotonic())
                status, _, err = connection.run(supervisor_command(settings.python, spec), timeout=left)
            except _REACH_ERRORS as exc:
                if not kill.get("detached", True):
                    continue  # not detached: it ends with its lost channel, once sshd there notices
                why = str(exc).removeprefix(f"{exc.host}: ") if isinstance(exc, HostError) else describe(exc)
                raise HostError(host.spec, f"cannot reach it to stop the Dask process there ({why}); close again") from None
            finally:
                if fresh and connection is not None:
                    connection.close()
            if status != 0:
                said = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise HostError(host.spec, f"stopping the Dask process there failed ({said[0][-200:]}); close again")


if TYPE_CHECKING:
    from jupyter_rjobs.backends.dask.handle import ClusterHandle

    def _is_a_cluster_handle(cluster: SshCluster) -> ClusterHandle:  # mypy checks SshCluster keeps the protocol
        return cluster


def start_ssh_cluster(
    hosts: str | Sequence[str],
    *,
    name: str,
    workers_per_host: int = 1,
    python: str | None = None,
    ssh_config: str | None = None,
    accept_new_host: AcceptNewHost = False,
    detached: bool = False,
    timeout: float | None = 120.0,
) -> SshCluster:
    """Start a Dask cluster on ``hosts`` (``"a,b,c"`` or a list; the scheduler on the first)
    and return it once every worker has joined. ``python`` is the Python on the hosts (default:
    each host's configured one, see hosts.ini, else python3); it must have distributed. For
    ``ssh_config`` and ``accept_new_host`` see ``resolve_host`` and ``SshConnection``.
    ``timeout`` (None: for ever) bounds the whole start; on any failure nothing is left running."""
    specs = host_list(hosts)
    if not specs:
        raise UsageProblem("a cluster needs hosts: give --hosts a,b,c")
    if not name or not isinstance(name, str):
        raise UsageProblem("a cluster needs a name: give --name NAME")
    if isinstance(workers_per_host, bool) or not isinstance(workers_per_host, int) or workers_per_host < 1:
        raise UsageProblem(f"--workers-per-host is a whole number, 1 or more, not {workers_per_host!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    members = [_Host(spec, resolve_host(spec, ssh_config=ssh_config, python=python)) for spec in specs]
    processes: list[HostProcess] = []
    try:
        _connect_and_check(members, accept_new_host)
        return _start(name, members, processes, workers_per_host, detached, deadline)
    except BaseException:
        _abandon(members, processes)
        raise


def _connect_and_check(members: list[_Host], accept_new_host: AcceptNewHost) -> None:
    """Connect to every host and check its Python and distributed, in parallel; the first
    problem (in the order the hosts were given) is raised, naming its host."""
    with ThreadPoolExecutor(max_workers=min(MAX_CONNECTING, len(members)), thread_name_prefix="rjob-dask-ssh") as pool:
        futures = [pool.submit(_check_host, member, accept_new_host) for member in members]
        errors = [future.exception() for future in futures]
    problems = [error for error in errors if error is not None]
    if problems:
        raise problems[0]
    versions = {member.distributed_version for member in members}
    if len(versions) > 1:
        found = ", ".join(f"{m.spec} {m.distributed_version}" for m in members)
        raise HostError(members[0].spec, f"the hosts have different versions of distributed ({found});"
                        " install the same version on every host")


def _check_host(member: _Host, accept_new_host: AcceptNewHost) -> None:
    settings = member.settings
    try:
        member.connection = SshConnection(settings, accept_new_host).open()
        status, out, err = member.connection.run(f"{shlex.quote(settings.python)} -c {shlex.quote(_PROBE)}")
    except CONNECTION_ERRORS as exc:
        raise HostError(member.spec, f"the SSH connection failed ({describe(exc)}); check that the host is up and runs sshd") from None
    python = settings.python
    if status == 127 or (status != 0 and b"not found" in err):
        raise HostError(member.spec, f"no {python} there; install Python with distributed there, or name one with --python PATH")
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        probe = json.loads(lines[-1]) if status == 0 and lines else None
    except ValueError:
        probe = None
    if not isinstance(probe, dict):
        said = err.decode(errors="replace").strip().splitlines()[-1:] or lines[-1:] or ["nothing"]
        raise HostError(member.spec, f"{python} there is not a Python that runs Dask ({said[0][-200:]}); name one with --python PATH")
    if not probe.get("distributed"):
        raise HostError(member.spec, f"{python} there has no distributed ({probe.get('error') or 'not importable'});"
                        f" install it there ({python} -m pip install distributed) or name a Python that has it with --python PATH")
    member.python_version, member.distributed_version = str(probe["python"]), str(probe["distributed"])


def _start(name: str, members: list[_Host], processes: list[HostProcess], per_host: int, detached: bool,
           deadline: float | None) -> SshCluster:
    """Start the scheduler, then the workers; wait until every worker has joined."""
    first = members[0]
    tag = f"{_safe(name)}-{uuid.uuid4().hex[:8]}"
    scheduler = _launch(first, "scheduler", processes, detached, tag, [
        "-m", "distributed.cli.dask_scheduler", "--port", "0", "--dashboard-address", ":0",
    ], scheduler=True, fallback_host=first.settings.hostname)
    scheduler.started(deadline)
    found = scheduler.wait_for("address", deadline)
    address = str(found["address"])
    for member in members:
        _launch(member, "workers", processes, detached, tag, [
            "-m", "distributed.cli.dask_worker", address, "--nworkers", str(per_host), "--name", member.spec,
            "--no-dashboard", "--death-timeout", str(WORKER_DEATH_TIMEOUT),
        ], hint=f" (does this host reach the scheduler at {address}?)").started(deadline)
    complete, joined = _wait_for_workers(first, address, len(members) * per_host, processes, deadline)
    workers = [_worker(w, members) for w in joined]
    if not complete:
        _name_the_missing(members, processes, workers, per_host, address)
    host = address.rsplit("//", 1)[-1].rsplit(":", 1)[0]
    dashboard = f"http://{host}:{found['dashboard']}/status" if found.get("dashboard") else None
    return SshCluster(name, address, dashboard, detached, members, processes, workers)


def _name_the_missing(members: list[_Host], processes: list[HostProcess], workers: list[WorkerInfo], per_host: int,
                      address: str) -> None:
    """Raise for the first host whose workers did not all join, with what they said."""
    for member in members:
        if sum(w.host == member.spec for w in workers) < per_host:
            said = next((p.why() for p in processes if p.host == member.spec and p.role == "workers"), "")
            said = "" if said.startswith("it ") else f" ({said})"
            raise HostError(member.spec, f"its Dask workers did not join the scheduler in time{said};"
                            f" does this host reach the scheduler at {address}?")
    raise HostError(members[0].spec, f"not every worker joined the scheduler at {address} in time; try again")


def _launch(member: _Host, role: str, processes: list[HostProcess], detached: bool, tag: str, argv: list[str],
            hint: str = "", **extra: Any) -> HostProcess:
    assert member.connection is not None
    spec: dict[str, Any] = {"mode": "run", "argv": [member.settings.python, *argv], "detached": detached,
                            "grace": STOP_GRACE, **extra}
    if detached:
        spec["log"] = f"~/.cache/jupyter_rjobs/dask/{tag}-{role}-{_safe(member.spec)}.log"  # homes may be shared
    process = HostProcess(member.spec, role, member.connection, member.settings.python, spec, hint)
    processes.append(process)
    return process


def _wait_for_workers(first: _Host, address: str, count: int, processes: list[HostProcess],
                      deadline: float | None) -> tuple[bool, list[dict[str, str]]]:
    """Ask the scheduler (from its own host, with the host's distributed) until ``count`` workers
    joined or the deadline passed: (whether all did, those that did). A worker process that
    ends meanwhile fails the start, saying why."""
    assert first.connection is not None
    left = None if deadline is None else max(1.0, deadline - time.monotonic())
    command = f"{shlex.quote(first.settings.python)} -c {shlex.quote(_WAITER)} {shlex.quote(address)} {count} {shlex.quote(json.dumps(left))}"
    channel = first.connection.exec(command)
    try:
        while not channel.exit_status_ready():
            for process in processes:
                if process.ended:
                    process.wait_for("never", deadline)  # raises, saying why it ended
            if deadline is not None and time.monotonic() > deadline + 5:
                raise HostError(first.spec, f"the workers did not all join the scheduler in time ({count} expected)")
            time.sleep(0.05)
        out = channel.makefile("rb").read()
        err = channel.makefile_stderr("rb").read()
        if channel.recv_exit_status() != 0:
            said = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise HostError(first.spec, f"the workers did not all join the scheduler ({said[0][-200:]})")
        said = json.loads(out.decode().strip().splitlines()[-1])
        return bool(said["complete"]), list(said["workers"])
    finally:
        channel.close()


def _worker(found: dict[str, str], members: list[_Host]) -> WorkerInfo:
    """The worker the scheduler reported, with the host it runs on (from its name: the host,
    with ``-i`` added by ``--nworkers``)."""
    name = found["name"]
    specs = [m.spec for m in members]
    host = name if name in specs else name.rsplit("-", 1)[0] if name.rsplit("-", 1)[0] in specs else ""
    return WorkerInfo(found["address"], name, host)


def _abandon(members: list[_Host], processes: list[HostProcess]) -> None:
    """After a failed start: end every process started so far and close the connections."""
    for process in processes:
        process.ask_stop()
    deadline = time.monotonic() + STOP_GRACE + 10
    for process in processes:
        process.wait_stopped(deadline)
    for process in processes:
        process.close_channel()
    for member in members:
        if member.connection is not None:
            member.connection.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "cluster"
