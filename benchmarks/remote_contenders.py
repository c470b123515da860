"""bench_remote's contenders, each timed the same way: jupyter_rjobs through one JobManager, and
the anchors it is measured against, ipyparallel and Dask distributed (local clusters)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

from sshlab import SshLab

from jupyter_rjobs import JobManager

JOB_TIMEOUT = 300.0
clock = time.perf_counter


def say(text: str) -> None:
    print(f"[bench_remote {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Rjobs:
    """jupyter_rjobs remote jobs through one JobManager."""

    def __init__(self, lab: SshLab) -> None:
        self.lab = lab
        self.manager = JobManager(ssh_config=lab.ssh_config)

    def run(self, code: str, host: str, python: str, check: Callable[[Any], bool]) -> float:
        """Seconds from start() to the value received; the job is removed afterwards (untimed)."""
        began = clock()
        job = self.manager.start(code, host=host, python=python)
        value = job.result(JOB_TIMEOUT)
        elapsed = clock() - began
        self.manager.remove(job)
        if not check(value):
            raise RuntimeError(f"remote job {code!r} on {host} gave a wrong value: {_short(value)}")
        del value
        return elapsed

    def throughput(self, count: int, host: str, python: str) -> dict[str, Any]:
        """Start ``count`` jobs "1" as fast as possible, wait for all: jobs per second."""
        def wait(jobs: list[Any]) -> None:
            waited = self.manager.wait(jobs, timeout=JOB_TIMEOUT)
            if waited.still_running:
                raise RuntimeError(f"{len(waited.still_running)} of {count} jobs had not finished after {JOB_TIMEOUT:g} s")

        out, jobs = burst(count, lambda: self.manager.start("1", host=host, python=python), wait,
                          lambda jobs: [j.exception() or j.result() for j in jobs], "jupyter_rjobs")
        self.manager.remove(jobs)
        return out

    def close(self) -> None:
        self.manager.shutdown()


class Ipyparallel:
    """The anchor: an ipyparallel cluster of local engines (``ipp.Cluster(n=2)``), one engine's DirectView.
    ``two`` and ``one`` are what its engines run: functions of the script's ``__main__``, which
    are sent by value (a function of this module would be sent by name, and engines cannot import it)."""

    def __init__(self, two: Callable[[], int], one: Callable[[], int], engines: int = 2) -> None:
        import ipyparallel as ipp

        self.two, self.one = two, one

        self.version = ipp.__version__
        self.engines = engines
        began = clock()
        self.cluster = ipp.Cluster(n=engines, log_level=logging.WARNING)
        try:
            self.client = self.cluster.start_and_connect_sync()
            self.client.wait_for_engines(engines, timeout=120)
        except BaseException:
            self.close()
            raise
        self.start_seconds = clock() - began
        self.view = self.client[0]  # one engine: the analogue of one host

    def trip(self) -> float:
        began = clock()
        value = self.view.apply_sync(self.two)
        elapsed = clock() - began
        if value != 2:
            raise RuntimeError(f"ipyparallel gave {value!r}")
        return elapsed

    def throughput(self, count: int) -> dict[str, Any]:
        out, _ = burst(count, lambda: self.view.apply_async(self.one), lambda results: self.client.wait(results, timeout=JOB_TIMEOUT),
                       lambda results: [r.get() for r in results], "ipyparallel")
        self.client.purge_local_results("all")
        return out

    def close(self) -> None:
        try:
            self.cluster.stop_cluster_sync()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash on tidying
            say(f"stopping the ipyparallel cluster failed: {exc}")


class Dask:
    """The second anchor: Dask distributed, a ``LocalCluster`` of one single-thread process worker
    (the analogue of one host), ``client.submit(f, pure=False)``; ``two`` and ``one`` as for
    :class:`Ipyparallel`."""

    def __init__(self, two: Callable[[], int], one: Callable[[], int]) -> None:
        import distributed

        self.two, self.one = two, one

        self.version = distributed.__version__
        began = clock()
        self.cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = distributed.Client(self.cluster)
        self.start_seconds = clock() - began

    def trip(self) -> float:
        began = clock()
        value = self.client.submit(self.two, pure=False).result()
        elapsed = clock() - began
        if value != 2:
            raise RuntimeError(f"Dask gave {value!r}")
        return elapsed

    def throughput(self, count: int) -> dict[str, Any]:
        values: list[Any] = []
        out, _ = burst(count, lambda: self.client.submit(self.one, pure=False), lambda futures: values.extend(self.client.gather(futures)),
                       lambda futures: values, "Dask")
        return out

    def close(self) -> None:
        try:
            self.client.close()
            self.cluster.close()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash on tidying
            say(f"closing the Dask cluster failed: {exc}")


def burst(count: int, submit: Callable[[], Any], wait: Callable[[list[Any]], Any], values: Callable[[list[Any]], list[Any]],
          who: str) -> tuple[dict[str, Any], list[Any]]:
    """Submit ``count`` trivial jobs ("1") as fast as possible and ``wait`` for all of them (both
    timed): jobs per second, and what ``submit`` returned. Every job's value is checked, untimed."""
    began = clock()
    handles = [submit() for _ in range(count)]
    submitted = clock() - began
    wait(handles)
    elapsed = clock() - began
    wrong = [v for v in values(handles) if v != 1]
    if wrong:
        raise RuntimeError(f"{who}: {len(wrong)} of {count} jobs gave a wrong value, e.g. {_short(wrong[0])}")
    return {"jobs": count, "seconds": elapsed, "submit_seconds": submitted, "jobs_per_s": count / elapsed}, handles


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."
