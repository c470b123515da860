"""Is a notebook with 100 running job cards still responsive? (issue 13: "A notebook with 100 running
cards stays responsive").

In a real kernel (jupyter_client, as a notebook drives it) this starts 100 thread jobs, each from
its own ``%%rjob start`` cell, each printing a line every 50 ms (2000 lines a second in all), and
times a trivial cell (``1 + 1``: from execute_request until the reply and idle) while they run,
against the same 100 jobs without cards (``--no-card``) and an idle kernel. It also counts the
widget (comm) messages the kernel sends per second and the kernel's CPU use while the jobs run (before
the trivial cells). No assertions on time.

    python benchmarks/bench_cards.py [--jobs 100] [--cells 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from kernel_helpers import KernelSession

JOB = "%%rjob start --thread {flag} --name j{i}\nimport time\nfor k in range(1_000_000):\n    print('line', k, flush=True)\n    time.sleep(0.05)"


def trivial_cells(kernel: KernelSession, count: int) -> list[float]:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        kernel.run("1 + 1")
        times.append(time.perf_counter() - began)
    return times


def cpu_seconds(pid: int) -> float:
    """The kernel process's user + system CPU time so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def comm_rate(kernel: KernelSession, seconds: float) -> tuple[float, float]:
    """Widget messages the kernel sent per second, and its CPU use (1.0 = one core), over ``seconds``."""
    before, cpu_before = len(kernel.comm_messages), cpu_seconds(kernel.kernel_pid)
    kernel.drain(seconds)
    return (len(kernel.comm_messages) - before) / seconds, (cpu_seconds(kernel.kernel_pid) - cpu_before) / seconds


def scenario(jobs: int, cells: int, flag: str | None) -> tuple[list[float], tuple[float, float]]:
    kernel = KernelSession()
    try:
        kernel.run(  # more thread jobs at once than the default 8 (before the first thread job makes the backend)
            "%load_ext jupyter_rjobs\nimport dataclasses\nfrom jupyter_rjobs.ipython.extension import get_manager\n"
            "get_manager().settings = dataclasses.replace(get_manager().settings, max_thread_jobs=1000)"
        )
        if flag is not None:
            for i in range(jobs):
                kernel.run(JOB.format(flag=flag, i=i))
            kernel.run(f"import time\nwhile sum(j.state.value == 'Running' for j in get_manager().list()) < {jobs}:\n    time.sleep(0.05)")
        kernel.drain(2.0)  # settle
        rate = comm_rate(kernel, 5.0)
        times = trivial_cells(kernel, cells)
        kernel.run("get_manager().stop(get_manager().list())", timeout=120)
        return times, rate
    finally:
        kernel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--cells", type=int, default=30)
    args = parser.parse_args()
    rows = [("idle kernel, no jobs", None), (f"{args.jobs} running jobs, --no-card", "--no-card"), (f"{args.jobs} running jobs with cards", "")]
    print(f"{'scenario':<36} {'trivial cell median':>20} {'p90':>8} {'max':>8} {'comm msgs/s':>12} {'kernel CPU':>11}")
    for label, flag in rows:
        times, (rate, cpu) = scenario(args.jobs, args.cells, flag)
        times.sort()
        p90 = times[int(0.9 * (len(times) - 1))]
        print(f"{label:<36} {1000 * statistics.median(times):>17.1f} ms {1000 * p90:>5.1f} ms {1000 * times[-1]:>5.1f} ms "
              f"{rate:>12.1f} {100 * cpu:>10.0f}%")


if __name__ == "__main__":
    main()
