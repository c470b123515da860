"""Cluster jobs against raw Dask on the same LocalCluster, in the same run: the round trip of a
trivial job (start -> value received) and the throughput of 1000 trivial jobs, as ratios to
``client.submit(...).result()``. The floor the issue sets: at most 1.5x raw Dask on both. Both take
turns in rounds (10 for round trips, 4 of ``--jobs / 4`` for throughput); the kernel process's CPU
per job is reported too.

Run: ``python benchmarks/bench_dask.py [--runs N] [--jobs N] [--workers N]``. Prints a Markdown
table and writes the numbers to ``benchmarks/results/dask.json``. Measures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results" / "dask.json"


def one_plus_one() -> int:
    return 1 + 1


def _alternate(contenders: dict[str, Callable[[], Any]], runs: int, rounds: int = 10) -> dict[str, list[float]]:
    """Time each contender ``runs`` times (ms), in rounds that take turns, so a slow patch of the
    shared machine costs all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for name, trip in contenders.items():
            for _ in range(per_round):
                began = time.perf_counter()
                trip()
                times[name].append((time.perf_counter() - began) * 1000)
    return times


def _rates(contenders: dict[str, Callable[[int], Any]], jobs: int, rounds: int = 4) -> dict[str, tuple[float, float]]:
    """Jobs per second of each batch contender (``jobs`` in all, in rounds that take turns), and
    this process's CPU (ms) per job: the kernel's share of the work."""
    wall = {name: 0.0 for name in contenders}
    cpu = {name: 0.0 for name in contenders}
    for _ in range(rounds):
        for name, batch in contenders.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            batch(jobs // rounds)
            wall[name] += time.perf_counter() - began
            cpu[name] += time.process_time() - began_cpu
    done = (jobs // rounds) * rounds
    return {name: (done / wall[name], cpu[name] * 1000 / done) for name in contenders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="round trips timed (the median is reported)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the throughput run")
    parser.add_argument("--workers", type=int, default=2, help="process workers of the LocalCluster (one thread each)")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from jupyter_rjobs import JobManager

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        manager = JobManager()
        address = cluster.scheduler_address

        def raw_trip() -> None:
            assert client.submit(one_plus_one, pure=False).result() == 2

        def job_trip() -> None:
            job = manager.start("1+1", cluster=address)
            assert job.result() == 2
            manager.remove(job)

        def raw_batch(n: int) -> None:
            futures = [client.submit(one_plus_one, pure=False) for _ in range(n)]
            assert all(v == 2 for v in client.gather(futures))

        def job_batch(n: int) -> None:
            jobs = [manager.start("1+1", cluster=address) for _ in range(n)]
            assert all(j.result() == 2 for j in jobs)
            manager.remove(jobs)

        for trip in (raw_trip, job_trip):  # warm both: the cluster's connections, the job processes
            for _ in range(20):
                trip()
        trips = _alternate({"raw": raw_trip, "job": job_trip}, args.runs)
        rates = _rates({"raw": raw_batch, "job": job_batch}, args.jobs)
        figures = {
            "raw dask round trip (ms)": statistics.median(trips["raw"]),
            "cluster job round trip (ms)": statistics.median(trips["job"]),
            f"raw dask throughput ({args.jobs} tasks/s)": rates["raw"][0],
            f"cluster job throughput ({args.jobs} jobs/s)": rates["job"][0],
            "kernel CPU per raw task (ms)": rates["raw"][1],
            "kernel CPU per cluster job (ms)": rates["job"][1],
        }
        manager.shutdown()
    values = list(figures.values())[:4]
    ratios = {"round trip: jobs / raw": values[1] / values[0], "throughput: raw / jobs": values[2] / values[3]}
    print(f"LocalCluster: {args.workers} process workers x 1 thread, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| measure | value |\n|---|---|")
    for name, value in {**figures, **ratios}.items():
        print(f"| {name} | {value:.2f} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"figures": figures, "ratios": ratios, "workers": args.workers, "cores": os.cpu_count(),
                                   "python": platform.python_version()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
