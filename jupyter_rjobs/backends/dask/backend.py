"""Cluster jobs: the code runs on a Dask cluster's worker, in a child process of the worker.

``%%rjob start --cluster local|tcp://HOST:PORT|NAME``. The job is one task (``task.run_job``)
keyed ``rjob-<instance id>``; its frames stream back on the job's event topic (see
``runner.py``). ``--cache remote`` keeps the value on the cluster as a future published under the
job's name (``rjobs-value/<name>/<instance id>``); ``--detached`` publishes the task's future and
what the job is (``rjobs-job/<instance id>``), so the job outlives the kernel and
``manager.dask_connect(cluster)`` (``%rjob connect --cluster C``) adopts it elsewhere.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from jupyter_rjobs.agent.execute import compile_job
from jupyter_rjobs.backends.base import Backend
from jupyter_rjobs.backends.dask import task
from jupyter_rjobs.backends.dask.clusters import ClusterRegistry
from jupyter_rjobs.backends.dask.options import DaskOptions
from jupyter_rjobs.backends.dask.runner import DaskRunner
from jupyter_rjobs.backends.namespace import capture_variables, serialize_variables
from jupyter_rjobs.core.job import Job, JobKind

__all__ = ["DaskBackend", "JOB_DATASET", "VALUE_DATASET"]

JOB_DATASET = "rjobs-job/"
VALUE_DATASET = "rjobs-value/"


@dataclass
class _DaskPrepared:
    client: Any
    header: dict[str, Any]
    buffers: list[bytes]
    options: DaskOptions


class DaskBackend(Backend[DaskOptions, _DaskPrepared]):
    """Jobs on Dask clusters: Dask schedules them (no throttle of ours beyond a high cap)."""

    kind = JobKind.parse("dask")
    options_type = DaskOptions

    def __init__(self, clusters: ClusterRegistry, stop_grace: float = 3.0, max_concurrent: int = 100_000) -> None:
        super().__init__(max_concurrent)
        self.clusters = clusters
        self.stop_grace = stop_grace

    def locations(self, options: DaskOptions) -> list[str]:
        handle = self.clusters.find(str(options.cluster))  # an unknown name or an unreachable scheduler: raised here
        return [handle.address]

    def prepare(self, code: str, filename: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None,
                options: DaskOptions) -> _DaskPrepared:
        compile_job(code, filename)  # a syntax error is found here, before any job exists
        specs, buffers = serialize_variables(capture_variables(code, namespace, push), "a cluster job")
        client = self.clusters.client(self.clusters.find(str(options.cluster)))
        header = {"op": "run", "code": code, "filename": filename, "variables": specs, "cwd": os.getcwd(),
                  "sys_path": [p for p in sys.path if p]}
        return _DaskPrepared(client, header, [bytes(b) for b in buffers], options)

    def configure(self, job: Job, options: DaskOptions) -> None:
        job.detached = options.detached

    def launch(self, job: Job, prepared: _DaskPrepared) -> None:
        client, options = prepared.client, prepared.options
        key = f"rjob-{job.instance_id}"
        runner = DaskRunner(job, client, key, cache_remote=options.cache == "remote")
        runner.subscribe()  # before the task exists: its first frame is heard
        header = dict(prepared.header, filename=f"<rjob {job.id}>")
        if runner.cache_remote:
            header["inline"] = 0  # the value stays on the cluster: never in an event
        future = client.submit(task.run_job, key, header, prepared.buffers, key=key, pure=False)
        final = future
        if runner.cache_remote:
            runner.value_future = client.submit(task.value_of, future, key=f"rjob-value-{job.instance_id}", pure=False)
            final = client.submit(task.outline_of, future, key=f"rjob-outline-{job.instance_id}", pure=False)
            name = f"{VALUE_DATASET}{job.name}/{job.instance_id}"
            client.publish_dataset(runner.value_future, name=name, override=True)
            runner.published.append(name)
        if options.detached:
            name = f"{JOB_DATASET}{job.instance_id}"
            meta = {"name": job.name, "code": job.code, "id": job.id, "started": time.time(), "kernel_pid": os.getpid(),
                    "cache": options.cache, "value_dataset": runner.published[0] if runner.published else None}
            client.publish_dataset({"future": future, "meta": meta}, name=name, override=True)
            runner.published.append(name)
        runner.follow(future, final)
