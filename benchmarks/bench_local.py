"""Round trip of a trivial job (start -> value received) for jupyter_rjobs and its standard-library peers.

Run: ``python benchmarks/bench_local.py [--runs N] [--quick]``. Prints a Markdown table and writes
the same numbers to ``benchmarks/results/local.json``. Measures only; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from IPython.lib.backgroundjobs import BackgroundJobManager

from jupyter_rjobs import JobManager, RecordKind

RESULTS = Path(__file__).resolve().parent / "results" / "local.json"


def one_plus_one() -> int:
    return 1 + 1


class Bench:
    """One contender: ``trip()`` is timed (start -> value received); ``tidy()`` runs after it, untimed."""

    name = ""

    def trip(self) -> Any:
        raise NotImplementedError

    def tidy(self, handle: Any) -> None:
        pass

    def close(self) -> None:
        pass


class RjobsBench(Bench):
    def __init__(self, manager: JobManager, kind: str) -> None:
        self.manager, self.kind = manager, kind
        self.name = f"jupyter_rjobs {kind} job"

    def trip(self) -> Any:
        job = self.manager.start("1+1", kind=self.kind)
        records = self.manager.receive(job, wait=True)
        if not any(r.kind is RecordKind.VALUE and r.data == 2 for r in records):
            raise RuntimeError(f"{self.name}: no value 2 in {records!r}")
        return job

    def tidy(self, handle: Any) -> None:
        self.manager.remove(handle)  # the manager keeps every job until removed


class ExecutorBench(Bench):
    def __init__(self, executor: concurrent.futures.Executor, name: str) -> None:
        self.executor, self.name = executor, name

    def trip(self) -> Any:
        if self.executor.submit(one_plus_one).result() != 2:
            raise RuntimeError(f"{self.name}: wrong value")

    def close(self) -> None:
        self.executor.shutdown(wait=True)


class IPythonBgBench(Bench):
    """IPython's BackgroundJobManager: one new thread per job, and no completion event.

    The job object *is* the thread, and ``result`` is set just before its ``run()`` returns, so
    ``join()`` wakes the moment the result exists (polling ``status`` would add sleep latency).
    """

    name = "IPython BackgroundJobManager"

    def __init__(self) -> None:
        # Each BackgroundJob takes the running shell's traceback formatter; outside a shell it
        # builds one with IPython 8's `color_scheme` argument, which IPython 9 refuses (TypeError,
        # an upstream fault). A stand-in formatter (it is only used when a job raises, and none
        # does here) keeps the anchor running on IPython 9 at its real cost, with no shell in the
        # way (a real InteractiveShell replaces __main__, which the process pools pickle from).
        import types

        import IPython.lib.backgroundjobs as backgroundjobs

        if "theme_name" in str(getattr(backgroundjobs, "AutoFormattedTB", object).__init__.__code__.co_varnames):
            formatter = types.SimpleNamespace(text=lambda *args: "")
            backgroundjobs.get_ipython = lambda: types.SimpleNamespace(InteractiveTB=formatter)  # type: ignore[attr-defined]
        self.jobs = BackgroundJobManager()

    def trip(self) -> Any:
        job = self.jobs.new(one_plus_one, daemon=True)
        job.join()
        if job.result != 2:
            raise RuntimeError(f"{self.name}: wrong value {job.result!r}")

    def tidy(self, handle: Any) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # flush() prints what it flushes
            self.jobs.flush()


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure(benches: list[Bench], runs: int, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per round trip. The runs are split into ``rounds`` interleaved blocks so machine drift hits all alike."""
    for bench in benches:
        for _ in range(warmup):
            bench.tidy(bench.trip())
    samples: dict[str, list[float]] = {bench.name: [] for bench in benches}
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    clock: Callable[[], float] = time.perf_counter
    for count in per_round:
        for bench in benches:
            for _ in range(count):
                began = clock()
                handle = bench.trip()
                samples[bench.name].append(clock() - began)
                bench.tidy(handle)
    return samples


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        out[name] = {
            "runs": len(ordered),
            "median_us": statistics.median(ordered) * 1e6,
            "p90_us": percentile(ordered, 0.9) * 1e6,
            "min_us": ordered[0] * 1e6,
            "mean_us": statistics.fmean(ordered) * 1e6,
        }
    return out


def markdown(stats: dict[str, dict[str, float]], ratios: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | runs | median | p90 | min |", "|---|---:|---:|---:|---:|"]
    for name, s in stats.items():
        cells = [fmt_time(s[k] / 1e6) for k in ("median_us", "p90_us", "min_us")]
        lines.append(f"| {name} | {s['runs']} | " + " | ".join(cells) + " |")
    lines += ["", "| comparison | value | target |", "|---|---:|---|"]
    for r in ratios:
        value = f"{r['value']:.2f}x" if r["unit"] == "x" else fmt_time(r["value"] / 1e6)
        lines.append(f"| {r['name']} | {value} | {r['target']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="timed round trips per benchmark (default 1000)")
    parser.add_argument("--quick", action="store_true", help="few runs, for smoke tests (a few seconds)")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = args.runs or (30 if args.quick else 1000)
    warmup = 5 if args.quick else 100
    rounds = max(1, min(10, runs // 20))

    manager = JobManager(warm_workers=2)
    manager.prewarm()
    thread_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    process_pool = concurrent.futures.ProcessPoolExecutor(max_workers=2)  # as many as rjobs keeps warm
    benches: list[Bench] = [
        RjobsBench(manager, "thread"),
        ExecutorBench(thread_pool, "ThreadPoolExecutor"),
        IPythonBgBench(),
        RjobsBench(manager, "process"),
        ExecutorBench(process_pool, "ProcessPoolExecutor"),
    ]
    try:
        samples = measure(benches, runs, warmup, rounds)
    finally:
        for bench in benches:
            bench.close()
        manager.shutdown()

    stats = summarize(samples)
    med = {name: s["median_us"] for name, s in stats.items()}
    ratios = [
        {"name": "rjobs thread / ThreadPoolExecutor (median)", "unit": "x", "target": "<= 3x",
         "value": med["jupyter_rjobs thread job"] / med["ThreadPoolExecutor"]},
        {"name": "rjobs thread / IPython BackgroundJobManager (median)", "unit": "x", "target": "-",
         "value": med["jupyter_rjobs thread job"] / med["IPython BackgroundJobManager"]},
        {"name": "rjobs process / ProcessPoolExecutor (median)", "unit": "x", "target": "-",
         "value": med["jupyter_rjobs process job"] / med["ProcessPoolExecutor"]},
        {"name": "rjobs process job, absolute (median)", "unit": "us", "target": "<= 5 ms",
         "value": med["jupyter_rjobs process job"]},
    ]
    print(markdown(stats, ratios))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "measure": "round trip of a trivial job: start -> value received (seconds in microseconds)",
        "runs": runs,
        "warmup": warmup,
        "rounds": rounds,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "results": stats,
        "ratios": ratios,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
