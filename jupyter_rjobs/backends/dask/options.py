"""The options of jobs on a Dask cluster, and the Dask backend's registration.

Light on purpose: the manager and the magics read these options (``--cluster``; ``--cache`` and
``--detached`` are the same fields remote jobs have, so each is one ``%%rjob start`` flag that the
option given with it, ``--cluster`` or ``--host``, assigns to its kind) without importing dask or
distributed; the backend itself is imported the first time a manager runs a cluster job.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from jupyter_rjobs.backends.base import Backend, BackendOptions, option, register_backend
from jupyter_rjobs.core.errors import UsageProblem

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["DaskOptions", "INSTALL_HINT", "require_distributed"]

INSTALL_HINT = "jobs on a Dask cluster need dask distributed: pip install 'jupyter_rjobs[dask]'"


def require_distributed() -> None:
    """Raise a one-line UsageProblem saying how to install distributed when it is missing (nothing is imported)."""
    try:
        found = importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageProblem(INSTALL_HINT)


@dataclass(frozen=True)
class DaskOptions(BackendOptions):
    """Which cluster a job runs on, where its value is kept, and whether it outlives the kernel."""

    cluster: Union[str, None] = option(
        None, flag="--cluster", metavar="C",
        help="run on a Dask cluster: local (a LocalCluster started once per kernel), a scheduler address tcp://H:P, or a cluster's name")
    cache: str = option("kernel", flag="--cache", choices=("kernel", "remote"),
                        help="where a remote job's output is kept until received (default kernel); of a cluster job, its value")
    detached: bool = option(False, flag="--detached",
                            help="a job that outlives this kernel; `%%rjob connect HOST` (a cluster job: `--cluster C`) adopts it in another")

    def __post_init__(self) -> None:
        if self.cache not in ("kernel", "remote"):
            raise UsageProblem(f"--cache is kernel or remote, not {self.cache!r}")
        if not self.cluster or not str(self.cluster).strip():
            if self.cache != "kernel" or self.detached:
                raise UsageProblem("--cache and --detached are for remote jobs (add --host HOST) and cluster jobs (add --cluster C)")
            raise UsageProblem("a cluster job needs a cluster: give --cluster local, --cluster tcp://HOST:PORT or --cluster NAME")
        require_distributed()


def _make_dask_backend(manager: JobManager) -> Backend[Any, Any]:
    require_distributed()
    from jupyter_rjobs.backends.dask.backend import DaskBackend  # distributed is imported only when a cluster job starts

    return DaskBackend(manager.clusters, manager.settings.stop_grace)


register_backend("dask", "DaskJob", _make_dask_backend, DaskOptions)
