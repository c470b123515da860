"""``%rjob cluster list`` and ``%rjob cluster close NAME``: the Dask clusters this kernel runs
``--cluster`` jobs on. Mixed into RJobMagics; a thin layer over ``manager.clusters``."""

from __future__ import annotations

import html
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from jupyter_rjobs.backends.remote.options import ACCEPT_NEW_HELP
from jupyter_rjobs.core.table import RowTable
from jupyter_rjobs.ipython.session_magics import accept_new_option

__all__ = ["ClusterMagics", "CLUSTER_SUBCOMMANDS", "ClusterTable"]


@magic_arguments(name="rjob cluster")
@argument("action", choices=["new", "list", "close"], help="new --hosts a,b: start one; list: the clusters; close NAME: close one")
@argument("name", nargs="?", help="the cluster to close (a name or scheduler address of `%%rjob cluster list`)")
@argument("--hosts", metavar="HOSTS", help="new: the SSH hosts, a,b,c (the scheduler runs on the first; workers on each)")
@argument("--name", dest="new_name", metavar="NAME", help="new: the cluster's name for --cluster NAME (default its first host)")
@argument("--workers-per-host", type=int, default=1, metavar="N", help="new: Dask worker processes per host (default 1)")
@argument("--python", metavar="PATH", help="new: the Python on the hosts, with distributed (default each host's python3)")
@argument("--detached", action="store_true", help="new: the cluster outlives this kernel (close it with `cluster close`)")
@argument("--accept-new-host", nargs="?", const="", metavar="HOSTS", help=ACCEPT_NEW_HELP)
def _cluster_args() -> None:
    """The Dask clusters of `--cluster` jobs: `%rjob cluster new --hosts a,b,c --name lab` starts a
    scheduler and workers on SSH hosts (ssh_config, known_hosts and ProxyJump apply, as for --host);
    `%rjob cluster list` shows each one's name, scheduler address, workers, dashboard link and state;
    `%rjob cluster close NAME` closes what this kernel started of it (its scheduler and workers) and
    forgets it. A kernel that shuts down closes the clusters it started, unless they were detached."""


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
        new_only = args.hosts or args.new_name or args.python or args.detached or args.accept_new_host is not None
        if args.action == "new":
            return self._new_cluster(args)
        if new_only or args.workers_per_host != 1:
            raise UsageError(f"--hosts, --name, --workers-per-host, --python, --detached and --accept-new-host are for "
                             f"`cluster new`, not `cluster {args.action}`")
        if args.action == "list":
            return ClusterTable(self.manager.clusters.rows())
        if not args.name:
            raise UsageError("name the cluster to close: %rjob cluster close NAME (see %rjob cluster list)")
        handle = self.manager.clusters.close(args.name)
        what = "closed its scheduler and workers" if handle.started_here else "disconnected (it was not started here, so it runs on)"
        print(f"Cluster {handle.name} ({handle.address}): {what}.")
        return None

    def _new_cluster(self, args: Any) -> ClusterTable:
        """``cluster new``: start it on the hosts, then show it as ``cluster list`` would."""
        if args.name:
            raise UsageError(f"cluster new takes its name as --name {args.name}, and its hosts as --hosts a,b,c")
        if not args.hosts:
            raise UsageError("name the hosts: %rjob cluster new --hosts a,b,c --name lab")
        if args.workers_per_host < 1:
            raise UsageError(f"--workers-per-host is at least 1, not {args.workers_per_host}")
        handle = self.manager.clusters.start_on_hosts(
            args.hosts, name=args.new_name, workers_per_host=args.workers_per_host, python=args.python,
            detached=args.detached, accept_new_host=accept_new_option(args.accept_new_host))
        return ClusterTable([row for row in self.manager.clusters.rows() if row.name == handle.name])
