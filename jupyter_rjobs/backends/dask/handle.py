"""What the manager knows of a Dask cluster it can run jobs on: a name, the scheduler's address, and
how to close it. A ``LocalCluster``, an existing scheduler the user named by address, and a cluster
started on the user's SSH hosts (``ssh_cluster.py``) are all handles."""

from __future__ import annotations

from typing import Optional, Protocol

__all__ = ["ClusterHandle"]


class ClusterHandle(Protocol):
    """One cluster: ``address`` is the scheduler's (``tcp://host:port``); ``started_here`` says
    whether this kernel started it (then a kernel shutting down closes it, unless ``detached``)."""

    name: str
    address: str
    dashboard_link: Optional[str]
    started_here: bool
    detached: bool

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop what this handle started (the scheduler and workers), leaving no process behind;
        a cluster not started here is only forgotten. ``timeout`` None waits for ever."""
        ...
