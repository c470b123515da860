"""Real Dask clusters for the tests: one LocalCluster with process workers per test session, its
event buffer made small (``distributed.admin.low-level-log-length``) so that a job easily writes
more records than the scheduler keeps. Without distributed the tests fail under CI, else skip."""

from __future__ import annotations

import importlib.util
from typing import Any, Iterator

import pytest
from helpers import unavailable

EVENT_BUFFER = 50  # events the test scheduler keeps per topic (distributed's default: 1000)


def need_distributed() -> None:
    if importlib.util.find_spec("distributed") is None:
        unavailable("the Dask tests", "dask distributed: pip install -e '.[dask]' (tests/run.sh installs it)")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[Any]:
    """A LocalCluster with two single-threaded process workers, shared by the session."""
    need_distributed()
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.admin.low-level-log-length": EVENT_BUFFER}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    try:
        yield cluster
    finally:
        cluster.close(timeout=30)


class OneOf(frozenset):  # type: ignore[type-arg]
    """Where a cluster job runs: equal to any of the cluster's worker addresses."""

    def __eq__(self, other: object) -> bool:
        return other in self

    __hash__ = frozenset.__hash__


def worker_addresses(cluster: Any) -> OneOf:
    return OneOf(cluster.scheduler_info["workers"])
