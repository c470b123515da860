"""``%rjob cluster list`` and ``%rjob cluster close NAME``: the Dask clusters this kernel runs
``--cluster`` jobs on. Mixed into RJobMagics; a thin layer over ``manager.clusters``."""

from __future__ import annotations

import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from jupyter_rjobs.core.table import RowTable

__all__ = ["ClusterMagics", "CLUSTER_SUBCOMMANDS", "ClusterTable"]


@magic_arguments(name="rjob cluster")
@argument("action", choices=["list", "close"], help="list: the clusters; close NAME: close one")
@argument("name", nargs="?", help="the cluster to close (a name or scheduler address of `%%rjob cluster list`)")
def _cluster_args() -> None:
    """The Dask clusters of `--cluster` jobs: `%rjob cluster list` shows each one's name, scheduler
    address, workers, dashboard link and state; `%rjob cluster close NAME` closes what this kernel
    started of it (a LocalCluster: its scheduler and workers) and forgets it. A kernel that shuts
    down closes the clusters it started, unless they were detached."""


CLUSTER_SUBCOMMANDS = {"cluster": _cluster_args}


class ClusterTable(RowTable):
    """The clusters of ``manager.clusters.rows()``."""

    columns = ("Name", "Scheduler", "Workers", "Dashboard", "State")
    empty = "(no clusters yet: `%%rjob start --cluster local` starts one)"

    def row(self, item: Any) -> tuple[str, ...]:
        workers = "" if item.workers is None else str(item.workers)
        return (item.name, item.address, workers, item.dashboard_link or "", item.state)

    def _repr_html_(self) -> str:
        """The table, and each cluster's dashboard as a link."""
        links = [f'<a href="{html.escape(r.dashboard_link)}" target="_blank">{html.escape(r.name)} dashboard</a>'
                 for r in self.items if r.dashboard_link]
        return super()._repr_html_() + (f"<p>{' · '.join(links)}</p>" if links else "")


class ClusterMagics:
    """Mixed into RJobMagics (which provides manager and the argument parsing)."""

    manager: Any

    def _do_cluster(self, rest: str, cell: str | None) -> Any:
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_cluster_args, rest)
        if args.action == "list":
            return ClusterTable(self.manager.clusters.rows())
        if not args.name:
            raise UsageError("name the cluster to close: %rjob cluster close NAME (see %rjob cluster list)")
        handle = self.manager.clusters.close(args.name)
        what = "closed its scheduler and workers" if handle.started_here else "disconnected (it was not started here, so it runs on)"
        print(f"Cluster {handle.name} ({handle.address}): {what}.")
        return None
