"""Cluster jobs against raw Dask on the same LocalCluster, in the same run: the round trip of a
trivial job (start -> value received) and the throughput of 1000 trivial jobs, as ratios to
``client.submit(...).result()``. The floor the issue sets: at most 1.5x raw Dask on both.

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


def _median_ms(trip: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        trip()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _rate(batch: Callable[[int], Any], jobs: int) -> float:
    began = time.perf_counter()
    batch(jobs)
    return jobs / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="round trips timed (the median is reported)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the throughput run")
    parser.add_argument("--workers", type=int, default=2, help="process workers of the LocalCluster (one thread each)")
    args = parser.parse_args()

    from distributed import Client, LocalCluster, wait

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
        figures = {
            "raw dask round trip (ms)": _median_ms(raw_trip, args.runs),
            "cluster job round trip (ms)": _median_ms(job_trip, args.runs),
            f"raw dask throughput ({args.jobs} tasks/s)": _rate(raw_batch, args.jobs),
            f"cluster job throughput ({args.jobs} jobs/s)": _rate(job_batch, args.jobs),
        }
        manager.shutdown()
    values = list(figures.values())
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
