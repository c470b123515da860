"""The Dask clusters one manager knows: ``manager.clusters``.

It holds :class:`ClusterHandle` objects by name, and one connected ``distributed.Client`` per
cluster. ``--cluster local`` is a ``LocalCluster`` with process workers, started the first time it
is named and kept for the manager's life; an address (``tcp://host:8786``) connects to a running
scheduler (registered under its address, never closed from here); any other name must be one a
caller added (``clusters.add(handle)``, a cluster started on SSH hosts say). Importing this module
imports no dask: distributed is imported when a cluster is first used.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from jupyter_rjobs.backends.dask.handle import ClusterHandle
from jupyter_rjobs.core.errors import RJobError, UsageProblem

__all__ = ["ClusterRegistry", "ClusterRow", "LocalClusterHandle", "AddressHandle", "ClusterError", "is_address"]

_CHECKED = ("dask", "distributed", "cloudpickle", "msgpack")


class ClusterError(UsageProblem):
    """A cluster cannot be used: unreachable, of other versions, unknown name."""


def is_address(spec: str) -> bool:
    """``tcp://host:port`` (any scheme), or ``host:port``."""
    if "://" in spec:
        return True
    host, _, port = spec.rpartition(":")
    return bool(host) and port.isdigit()


class LocalClusterHandle:
    """A ``LocalCluster`` with process workers that this kernel started."""

    started_here = True

    def __init__(self, name: str = "local", n_workers: int = 2, threads_per_worker: int = 1, **kwargs: Any) -> None:
        from distributed import LocalCluster

        self.name = name
        self.detached = False
        self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                                    dashboard_address=":0", **kwargs)
        self.address: str = self.cluster.scheduler_address
        self.dashboard_link: Optional[str] = self.cluster.dashboard_link

    def close(self, timeout: Optional[float] = None) -> None:
        self.cluster.close(timeout=timeout)


class AddressHandle:
    """A running scheduler named by its address: connected to, never closed from here."""

    started_here = False
    detached = False

    def __init__(self, address: str, dashboard_link: Optional[str] = None) -> None:
        self.name = address
        self.address = address
        self.dashboard_link = dashboard_link

    def close(self, timeout: Optional[float] = None) -> None:
        """Only forgotten: the cluster belongs to whoever started it."""


@dataclass(frozen=True)
class ClusterRow:
    """One line of ``%rjob cluster list``."""

    name: str
    address: str
    workers: Optional[int]
    dashboard_link: Optional[str]
    state: str


class ClusterRegistry:
    """The clusters a manager runs jobs on, by name, and a client connected to each."""

    def __init__(self, connect_timeout: float = 10.0, ssh_config: Callable[[], Optional[str]] = lambda: None) -> None:
        self.connect_timeout = connect_timeout
        self._ssh_config = ssh_config  # the manager's, read when a cluster starts on SSH hosts
        self._handles: dict[str, ClusterHandle] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- handles --------------------------------------------------------------------------
    def add(self, handle: ClusterHandle) -> ClusterHandle:
        """Know ``handle`` by its name (a name already used is refused)."""
        with self._lock:
            if handle.name in self._handles:
                raise ClusterError(f"a cluster is already named {handle.name!r}; choose another name or close it first")
            self._handles[handle.name] = handle
        return handle

    def start_on_hosts(self, hosts: str | Sequence[str], *, name: str | None = None, **settings: Any) -> ClusterHandle:
        """Start a Dask scheduler and workers on SSH hosts (``ssh_cluster.start_ssh_cluster``, which
        ``settings`` go to), connect to it, and know it by ``name`` (default: its first host). The
        name is checked before anything starts; a cluster this kernel cannot use is closed again."""
        from jupyter_rjobs.backends.dask.ssh_cluster import start_ssh_cluster
        from jupyter_rjobs.backends.remote.options import host_list

        listed = host_list(hosts)
        name = name or (listed[0] if listed else "")
        self._check_new_name(name)
        settings.setdefault("ssh_config", self._ssh_config())
        cluster = start_ssh_cluster(listed, name=name, **settings)
        try:
            self.add(cluster)
            self.client(cluster)  # connected now: its versions checked, this kernel's jupyter_rjobs sent to its workers
        except BaseException:
            with self._lock:
                if self._handles.get(name) is cluster:
                    del self._handles[name]
            cluster.close(30.0)
            raise
        return cluster

    def _check_new_name(self, name: str) -> None:
        """A name a new cluster may take: not ``local``, not an address, not one already used."""
        if name == "local" or is_address(name) or not name.strip():
            raise ClusterError(f"a cluster cannot be named {name!r}: --name takes a plain name, such as lab")
        with self._lock:
            if self._closed:
                raise RJobError("this job manager is shut down; create a new one")
            if name in self._handles:
                raise ClusterError(f"a cluster is already named {name!r}; choose another name or close it first")

    def names(self) -> list[str]:
        with self._lock:
            return list(self._handles)

    def handles(self) -> list[ClusterHandle]:
        with self._lock:
            return list(self._handles.values())

    def find(self, spec: str) -> ClusterHandle:
        """The handle ``spec`` names: ``local`` (started now if need be), a known name, or an address."""
        spec = spec.strip()
        with self._lock:
            if self._closed:
                raise RJobError("this job manager is shut down; create a new one")
            handle = self._handles.get(spec) or next((h for h in self._handles.values() if h.address == spec), None)
            if handle is not None:
                return handle
            if spec == "local":
                return self.add(LocalClusterHandle())
            if is_address(spec):
                return self._connect_new(spec)
        known = ", ".join(self._handles) or "none yet"
        raise ClusterError(f"no cluster is named {spec!r} (clusters: {known}); use --cluster local, --cluster tcp://HOST:PORT or a listed name")

    def _connect_new(self, address: str) -> ClusterHandle:
        handle = AddressHandle(address)
        client = self._connect(address, ship=True)  # nothing is registered unless it connects and its versions match
        handle.dashboard_link = _dashboard_of(client)
        self._handles[handle.name] = handle
        self._clients[handle.name] = client
        return handle

    # -- clients --------------------------------------------------------------------------
    def client(self, handle: ClusterHandle) -> Any:
        """The ``distributed.Client`` connected to ``handle``'s scheduler (connected on first use;
        workers that lack this kernel's jupyter_rjobs get it, except a LocalCluster's, which share
        this Python)."""
        with self._lock:
            client = self._clients.get(handle.name)
            if client is None or client.status in ("closed", "closing"):
                client = self._connect(handle.address, ship=not isinstance(handle, LocalClusterHandle))
                self._clients[handle.name] = client
            return client

    def connected(self, handle: ClusterHandle) -> Any:
        """The client of ``handle`` if one is connected, else None (never connects)."""
        with self._lock:
            client = self._clients.get(handle.name)
        return client if client is not None and client.status == "running" else None

    def _connect(self, address: str, ship: bool = False) -> Any:
        from distributed import Client

        check_scheduler(address, self.connect_timeout)  # before a Client: one of another protocol half-connects
        from distributed.versions import VersionMismatchWarning

        try:
            with warnings.catch_warnings():  # a mismatch that matters is ours to say, in one line (check_versions)
                warnings.simplefilter("ignore", VersionMismatchWarning)
                client = Client(address, timeout=f"{self.connect_timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({_first_line(exc)}); check the address and that it runs") from None
        try:
            check_versions(client, address)
            if ship:
                from jupyter_rjobs.backends.dask.ship import ensure_package

                ensure_package(client)
        except BaseException:
            client.close()
            raise
        return client

    # -- listing and closing ----------------------------------------------------------------
    def rows(self) -> list[ClusterRow]:
        """Name, scheduler address, workers, dashboard link and state of every cluster."""
        rows = []
        for handle in self.handles():
            client = self._clients.get(handle.name)
            workers: Optional[int] = None
            state = "known"
            if client is not None:
                state = "connected" if client.status == "running" else str(client.status)
                try:
                    workers = len(client.scheduler_info(n_workers=-1)["workers"]) if client.status == "running" else None
                except (OSError, TypeError, KeyError):
                    workers = len(client.scheduler_info()["workers"]) if client.status == "running" else None
            if handle.started_here:
                state += ", started here" + (" (detached)" if handle.detached else "")
            rows.append(ClusterRow(handle.name, handle.address, workers, handle.dashboard_link, state))
        return rows

    def close(self, name: str, timeout: Optional[float] = 30.0) -> ClusterHandle:
        """Close the client and what the cluster ``name`` started here, and forget it."""
        with self._lock:
            handle = self._handles.pop(name, None)
            client = self._clients.pop(name, None)
        if handle is None:
            known = ", ".join(self.names()) or "none"
            raise ClusterError(f"no cluster is named {name!r} (clusters: {known}); see `%rjob cluster list`")
        if client is not None:
            client.close()
        handle.close(timeout)
        return handle

    def shutdown(self) -> None:
        """Close every client, and the clusters started here that are not detached."""
        with self._lock:
            self._closed = True
            handles, clients = list(self._handles.values()), list(self._clients.values())
            self._handles.clear()
            self._clients.clear()
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a client of a scheduler that is gone already
                pass
        for handle in handles:
            if handle.started_here and not handle.detached:
                handle.close(30.0)


def check_scheduler(address: str, timeout: float) -> None:
    """Ask the scheduler its versions (one message, no Client yet): unreachable, or of other
    versions than this kernel, is a one-line ClusterError."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.core import rpc
    from distributed.versions import get_versions

    async def ask() -> Any:
        async with rpc(address, timeout=timeout) as scheduler:
            return await asyncio.wait_for(scheduler.versions(), timeout)

    with ThreadPoolExecutor(1) as pool:  # a fresh event loop, whatever loop this thread runs
        try:
            theirs = pool.submit(asyncio.run, ask()).result()
        except (OSError, asyncio.TimeoutError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else f"no answer within {timeout:g} s"
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({why}); check the address and that it runs") from None
    _compare(_key_versions(get_versions()), [("the scheduler", theirs)], address)


def check_versions(client: Any, address: str) -> None:
    """distributed's own version check (``get_versions(check=True)``), as one line naming the
    first package whose version differs between here, the scheduler and the workers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            versions = client.get_versions(check=True)
        except ValueError as exc:
            raise ClusterError(f"the Dask cluster at {address} has other versions than this kernel ({_first_line(exc)});"
                               " install the same versions of dask and distributed on both") from None
    places = [("the scheduler", versions["scheduler"]), *((w, v) for w, v in sorted(versions["workers"].items()))]
    _compare(_key_versions(versions["client"]), places, address)


def _compare(mine: dict[str, str], places: list[tuple[str, Any]], address: str) -> None:
    for where, theirs in places:
        if not isinstance(theirs, dict):
            continue
        for package, version in _key_versions(theirs).items():
            if mine.get(package) != version:
                raise ClusterError(
                    f"version mismatch with the Dask cluster at {address}: {package} {mine.get(package)} here,"
                    f" {version} on {where}; install the same versions on the kernel and the cluster")


def _key_versions(versions: dict[str, Any]) -> dict[str, str]:
    host = versions.get("host", {})
    packages = versions.get("packages", {})
    python = str(host.get("python", "")).split(".")
    out = {"python": ".".join(python[:2])}
    out.update({p: str(packages.get(p)) for p in _CHECKED})
    return out


def _dashboard_of(client: Any) -> Optional[str]:
    try:
        return str(client.dashboard_link)
    except (KeyError, AttributeError, OSError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
