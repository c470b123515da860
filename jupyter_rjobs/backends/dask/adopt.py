"""Detached cluster jobs seen from another manager or kernel: list the jobs left on a cluster, and
adopt them (``%rjob connect --cluster C``). A detached job is published on its cluster as the
dataset ``rjobs-job/<instance id>`` (its task's future and what the job is), so any client of that
scheduler finds it; the adopting runner replays every frame from the worker's journal (or, once
the job has ended, from the task's result), then follows the job's event topic."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Iterator

from jupyter_rjobs.backends.dask import task
from jupyter_rjobs.backends.dask.backend import JOB_DATASET
from jupyter_rjobs.backends.dask.runner import DaskRunner
from jupyter_rjobs.backends.remote.registry import LeftJob
from jupyter_rjobs.core.job import Job, JobKind

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["adopt", "left_jobs"]


def _followed(manager: JobManager) -> set[str]:
    return {job.runner.key for job in manager.list(kind="dask", include_children=True) if isinstance(job.runner, DaskRunner)}


def _published(client: Any) -> list[str]:
    return sorted(str(n) for n in client.list_datasets() if str(n).startswith(JOB_DATASET))


def adopt(manager: JobManager, spec: str) -> list[Job]:
    """Follow every detached job on cluster ``spec`` that this manager does not follow yet."""
    manager.backend("dask")  # distributed is there (else a one-line UsageProblem)
    handle = manager.clusters.find(spec)
    client = manager.clusters.client(handle)
    return [_adopt_one(manager, client, key, name, data) for key, name, data in _unfollowed(client, _followed(manager))]


def _unfollowed(client: Any, followed: set[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The detached jobs published on ``client``'s cluster that are not in ``followed``: each one's
    task key, dataset name and dataset (a job removed meanwhile is left out)."""
    for name in _published(client):
        key = "rjob-" + name[len(JOB_DATASET):]
        if key in followed:
            continue
        try:
            yield key, name, client.get_dataset(name)
        except KeyError:
            continue  # removed meanwhile


def _adopt_one(manager: JobManager, client: Any, key: str, name: str, data: dict[str, Any]) -> Job:
    meta, future = data["meta"], data["future"]
    instance = uuid.UUID(key[len("rjob-"):])
    job = manager.add_running_job(meta["code"], JobKind.parse("dask"), name=meta["name"],
                                  location=client.scheduler.address, instance_id=instance)
    job.detached = True
    runner = DaskRunner(job, client, key, cache_remote=meta.get("cache") == "remote")
    ack = f"rjobs-ack/{instance}"
    runner.received_before = int(client.get_dataset(ack, default=0))
    runner.published = [n for n in (meta.get("value_dataset"), name, ack if runner.received_before else None) if n]
    final = future
    if runner.cache_remote:
        runner.value_future = client.get_dataset(meta["value_dataset"])
        final = client.submit(task.outline_of, future, key=f"rjob-outline-{instance}-{uuid.uuid4().hex[:8]}", pure=False)
    runner.subscribe()
    runner.follow(future, final)
    runner.replay_all()
    return job


def left_jobs(manager: JobManager) -> list[LeftJob]:
    """The detached jobs on the clusters this manager is connected to that it does not follow."""
    followed = _followed(manager)
    found = []
    for handle in manager.clusters.handles():
        client = manager.clusters.connected(handle)
        if client is None:
            continue
        for key, _, data in _unfollowed(client, followed):
            meta, future = data["meta"], data["future"]
            state = "Running" if future.status == "pending" else "Ended"
            found.append(LeftJob(key[len("rjob-"):], f"cluster {handle.name}", meta["name"], state, meta["code"].strip().splitlines()[0][:60]
                                 if meta["code"].strip() else "", meta.get("started", 0.0), int(meta.get("kernel_pid", 0)), True, None))
    return found
