"""The options of remote jobs, and the remote backend's registration.

Light on purpose: the manager and the magics read these options (their flags become
``%%rjob start`` arguments) without importing paramiko; the backend itself (``_remote_backend``)
is imported the first time a manager runs a remote job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence, Union

from jupyter_rjobs.backends.base import Backend, BackendOptions, option, register_backend
from jupyter_rjobs.backends.remote.transport import LOCAL_HOST
from jupyter_rjobs.core.errors import UsageProblem
from jupyter_rjobs.core.sessions import Session

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["RemoteOptions", "host_list", "ACCEPT_NEW_HELP"]

AcceptNewHost = Union[bool, str, Sequence[str]]
ACCEPT_NEW_HELP = (
    "accept and remember an unknown host key: bare, for the target host(s) only; --accept-new-host=jump1,server01"
    " for exactly the hosts named (jump hosts too). A changed or revoked key is always refused"
)


@dataclass(frozen=True)
class RemoteOptions(BackendOptions):
    """Where and how a remote job runs: its hosts (or a session), where its output is kept, the
    Python there, host keys the user accepts, and whether it outlives the kernel."""

    host: Union[str, Sequence[str], None] = option(
        None, flag="--host", metavar="HOSTS",
        help="run on SSH hosts: [user@]host[:port] or ~/.ssh/config aliases, a,b,c for several (Invoke-Command -AsJob);"
             " localhost is this machine's local agent, without SSH")
    cache: str = option("kernel", flag="--cache", choices=("kernel", "remote"),
                        help="where a remote job's output is kept until received (default kernel); of a cluster job (--cluster), its value")
    python: Union[str, None] = option(None, flag="--python", metavar="PATH", help="the Python to run on the hosts (default python3; on localhost the kernel's own)")
    accept_new_host: AcceptNewHost = option(False, flag="--accept-new-host", metavar="HOSTS", bare=True, help=ACCEPT_NEW_HELP)
    detached: bool = option(False, flag="--detached",
                            help="a job that outlives this kernel (without --host: on this machine, under the local agent);"
                                 " `%%rjob connect HOST` (or localhost) adopts it in another")
    session: Union[Session, int, str, None] = option(
        None, flag="--session", metavar="S", help="run in this session's interpreter, on its host (its variables live on)")

    def __post_init__(self) -> None:
        if self.cache not in ("kernel", "remote"):
            raise UsageProblem(f"--cache is kernel or remote, not {self.cache!r}")
        if self.session is not None:
            if self.host is not None or self.python:
                raise UsageProblem("a session job runs on the session's host: give --session S or --host H, not both")
            return
        if not host_list(self.host):
            if self.detached:  # a job on this machine that outlives the kernel: under the local agent
                if self.accept_new_host:
                    raise UsageProblem("--accept-new-host is for SSH hosts; a detached job on this machine needs no host key (drop it, or add --host HOST)")
                object.__setattr__(self, "host", LOCAL_HOST)
                return
            if self.cache != "kernel" or self.python or self.accept_new_host:
                raise UsageProblem("--cache, --python and --accept-new-host are for jobs under the agent: add --host HOST"
                                   " (--host localhost, or --detached, for this machine)")
            raise UsageProblem("a remote job needs a host: give --host HOST (or several: --host a,b,c; --host localhost for this machine)")

    @property
    def hosts(self) -> list[str]:
        """The hosts, each once: the session's, or those of ``host``."""
        if isinstance(self.session, Session):
            return [self.session.host]
        return host_list(self.host)

    @property
    def python_there(self) -> str | None:
        """The Python to run on the hosts: the session's, or ``python``."""
        return self.session.python if isinstance(self.session, Session) else self.python


def host_list(host: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` to a list of hosts; a host named twice is refused."""
    if host is None:
        return []
    items = host.split(",") if isinstance(host, str) else list(host)
    hosts = [h.strip() for h in items if h.strip()]
    duplicates = {h for h in hosts if hosts.count(h) > 1}
    if duplicates:
        raise UsageProblem(f"host {sorted(duplicates)[0]!r} is named twice; name each host once")
    return hosts


def _make_remote_backend(manager: JobManager) -> Backend[Any, Any]:
    from jupyter_rjobs.backends.remote.backend import RemoteBackend  # paramiko is imported only when a remote job starts

    settings = manager.settings
    return RemoteBackend(settings.max_remote_jobs, settings.stop_grace, manager.remote, settings.max_connecting_hosts,
                         settings.reconnect_for)


register_backend("remote", "RemoteJob", _make_remote_backend, RemoteOptions)
