"""Remote jobs over SSH (loopback, a real sshd lab), side by side with OpenSSH and ipyparallel.

Run as root (the lab starts private sshds and network namespaces, see ``tests/sshlab.py``)::

    python benchmarks/bench_remote.py [--quick]

Measures, in one run and against the lab's dedicated test user:

1. the warm round trip of a trivial remote job (``start("1+1", host=...)`` -> value received),
   against a cold OpenSSH ``ssh host python3 -c pass``, a warm ipyparallel ``apply_sync``
   to a local engine, and Dask's ``client.submit(f).result()`` on a ``LocalCluster``;
2. the throughput of many trivial jobs to one host, against ipyparallel ``apply_async`` and
   Dask ``client.submit`` (then ``gather``);
3. receiving a 256 MiB numpy float64 array result (numpy in a virtualenv of the test user),
   against OpenSSH ``ssh host cat FILE`` of a 256 MiB file;
4. the warm round trip of a fan-out to 8 namespace hosts against one host, and the machine's
   CPU per run of each (every process: on 2 cores it bounds the fan-out);
5. the kernel's peak memory receiving a 1 GiB numpy result: the RSS high-water mark
   (``VmHWM``) of a fresh kernel-side process, against the value's size.

Prints a Markdown table and writes every number to ``benchmarks/results/remote.json``. The
contenders are in ``remote_contenders.py``, the table in ``remote_report.py``.
Measures only; asserts nothing about timing. ``--quick`` (few runs, a 16 MiB array) is a smoke
test that finishes in about a minute.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

sys.path.insert(0, str(REPO / "benchmarks"))
from remote_contenders import JOB_TIMEOUT, Dask, Ipyparallel, Rjobs, clock, say  # noqa: E402
from remote_report import build_rows, markdown  # noqa: E402
from sshlab import LabUnavailable, SshLab  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "remote.json"
MiB = 2**20
FANOUT_HOSTS = 8


@dataclass(frozen=True)
class Plan:
    quick: bool
    rt_runs: int  # warm round trips per contender
    rt_warmup: int
    rounds: int  # interleaved blocks, so machine drift hits every contender alike
    ssh_runs: int  # cold OpenSSH commands
    throughput_jobs: int
    throughput_repeats: int
    array_mib: int
    array_runs: int
    fan_runs: int
    fan_warmup: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 30, 5, 3, 3, 200, 1, 16, 3, 10, 2)
        return cls(False, 200, 30, 10, 10, 1000, 3, 256, 7, 500, 10)


# --------------------------------------------------------------------------- statistics
def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(seconds: list[float]) -> dict[str, Any]:
    """Milliseconds: median, p90, min, max, and the count."""
    return {
        "runs": len(seconds),
        "median_ms": statistics.median(seconds) * 1e3,
        "p90_ms": percentile(seconds, 0.9) * 1e3,
        "min_ms": min(seconds) * 1e3,
        "max_ms": max(seconds) * 1e3,
    }


def interleave(contenders: dict[str, Callable[[], float]], runs: int, rounds: int,
               cpu: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Run each contender ``runs`` times, in ``rounds`` alternating blocks; each call returns seconds.
    ``cpu``: add the machine's busy CPU seconds during each contender's blocks there (measured
    per block: /proc/stat counts in 10 ms ticks, too coarse for one run)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    for count in per_round:
        for name, trip in contenders.items():
            before = machine_busy_seconds() if cpu is not None else 0.0
            for _ in range(count):
                samples[name].append(trip())
            if cpu is not None:
                cpu[name] = cpu.get(name, 0.0) + machine_busy_seconds() - before
    return samples


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (every process, the kernel's work too)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def busy_cores(seconds: float = 1.0) -> float:
    """How many CPUs the machine keeps busy meanwhile (from /proc/stat): other load skews every number here."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return sum(values) - values[3] - values[4], sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except OSError:
        return float("nan")
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


def ssh_command(lab: SshLab, host: str, command: str) -> list[str]:
    return ["ssh", "-F", lab.ssh_config, host, command]


def timed_ssh(lab: SshLab, host: str, command: str) -> float:
    """Seconds for a cold OpenSSH ``ssh host command`` (its output discarded)."""
    began = clock()
    subprocess.run(ssh_command(lab, host, command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, check=True)
    return clock() - began


def two() -> int:
    """What the anchors' workers run for a round trip (defined here, in ``__main__``: sent by value)."""
    return 1 + 1


def one() -> int:
    """... and for throughput."""
    return 1


# --------------------------------------------------------------------------- the host's numpy
def make_numpy_venv(lab: SshLab) -> tuple[str | None, str]:
    """A virtualenv of the test user under lab.scratch with numpy and dill: (its python or None, note)."""
    venv = os.path.join(lab.scratch, "venv")
    made = lab.run_as_user([lab.python, "-m", "venv", venv])
    if made.returncode != 0:
        return None, f"`{lab.python} -m venv` failed: {made.stderr.strip()[-300:]}"
    python = os.path.join(venv, "bin", "python")
    try:
        import numpy

        wanted = [f"numpy=={numpy.__version__}", "numpy"]  # the kernel's version first: same pickles
    except ImportError:
        wanted = ["numpy"]
    errors = []
    for spec in wanted:
        pip = lab.run_as_user([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec, "dill"])
        if pip.returncode == 0:
            version = lab.run_as_user([python, "-c", "import numpy; print(numpy.__version__)"])
            return python, f"host numpy {version.stdout.strip()} in a venv of {lab.user} ({spec}, dill)"
        errors.append(pip.stderr.strip()[-300:])
    return None, "pip install numpy in the test user's venv failed: " + " / ".join(errors)


# --------------------------------------------------------------------------- the parts
def part_round_trip(lab: SshLab, rj: Rjobs, ipp: Ipyparallel | None, dask: Dask | None, plan: Plan) -> dict[str, Any]:
    say(f"1. warm round trip: {plan.rt_warmup} warm-up + {plan.rt_runs} runs each, {plan.rounds} interleaved rounds")
    contenders: dict[str, Callable[[], float]] = {
        "rjobs": lambda: rj.run("1+1", "server01", lab.python, lambda v: v == 2),
    }
    if ipp is not None:
        contenders["ipyparallel"] = ipp.trip
    if dask is not None:
        contenders["dask"] = dask.trip
    for trip in contenders.values():
        for _ in range(plan.rt_warmup):
            trip()
    samples = interleave(contenders, plan.rt_runs, plan.rounds)
    say(f"1. cold OpenSSH: {plan.ssh_runs} runs each of `python3 -c pass` and `true`")
    ssh = interleave(
        {
            "ssh_python": lambda: timed_ssh(lab, "server01", f"{lab.python} -c pass"),
            "ssh_true": lambda: timed_ssh(lab, "server01", "true"),
        },
        plan.ssh_runs,
        min(plan.ssh_runs, 3),
    )
    samples.update(ssh)
    return {name: summary(values) for name, values in samples.items()}


def part_throughput(lab: SshLab, rj: Rjobs, ipp: Ipyparallel | None, dask: Dask | None, plan: Plan) -> dict[str, Any]:
    say(f"2. throughput: {plan.throughput_jobs} jobs, {plan.throughput_repeats} repeat(s) each")
    out: dict[str, Any] = {"rjobs": [], "ipyparallel": [], "dask": []}
    for _ in range(plan.throughput_repeats):
        out["rjobs"].append(rj.throughput(plan.throughput_jobs, "server01", lab.python))
        if ipp is not None:
            out["ipyparallel"].append(ipp.throughput(plan.throughput_jobs))
        if dask is not None:
            out["dask"].append(dask.throughput(plan.throughput_jobs))
        gc.collect()
    for name in ("rjobs", "ipyparallel", "dask"):
        if out[name]:
            out[name + "_median_jobs_per_s"] = statistics.median(r["jobs_per_s"] for r in out[name])
    out["max_remote_jobs"] = rj.manager.settings.max_remote_jobs
    return out


def part_array(lab: SshLab, rj: Rjobs, plan: Plan, connect_ms: float) -> dict[str, Any]:
    mib = plan.array_mib
    say(f"3. {mib} MiB result: making the test user's numpy venv")
    began = clock()
    python, note = make_numpy_venv(lab)
    venv_seconds = clock() - began
    count = mib * MiB // 8
    if python is not None:
        import numpy as np

        code = f"import numpy as np; np.ones({count})"
        fixed_code = f"import numpy as np\nx = np.ones({count})"  # the same work, no value sent back

        def check(value: Any) -> bool:
            return isinstance(value, np.ndarray) and value.shape == (count,) and value.dtype == np.float64 \
                and value[0] == 1.0 and value[-1] == 1.0

        what = f"numpy float64 array of {mib} MiB (`np.ones({count})`)"
        kind = "numpy float64 array"
    else:
        python = lab.python
        code = f"bytes({mib * MiB})"
        fixed_code = f"x = bytes({mib * MiB})"

        def check(value: Any) -> bool:
            return isinstance(value, bytes) and len(value) == mib * MiB

        what = f"a {mib} MiB bytes value (numpy impossible in a venv: {note})"
        kind = "bytes, numpy impossible"
    say(f"3. {note} ({venv_seconds:.1f} s); making a {mib} MiB file on the host")
    path = os.path.join(lab.scratch, f"payload-{mib}MiB")
    made = lab.run_as_user(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={mib}", "status=none"])
    if made.returncode != 0 or os.path.getsize(path) != mib * MiB:
        raise RuntimeError(f"could not make {path}: {made.stderr.strip()}")
    rj.run(code, "server01", python, check)  # warm-up: connects, installs the agent, warms the page cache
    timed_ssh(lab, "server01", f"cat {shlex.quote(path)}")
    say(f"3. {plan.array_runs} runs each: rjobs value, rjobs without value, `ssh server01 cat FILE`")
    samples = interleave(
        {
            "rjobs": lambda: rj.run(code, "server01", python, check),
            "rjobs_no_value": lambda: rj.run(fixed_code, "server01", python, lambda v: v is None),
            "ssh_cat": lambda: timed_ssh(lab, "server01", f"cat {shlex.quote(path)}"),
        },
        plan.array_runs,
        plan.array_runs,
    )
    out: dict[str, Any] = {"what": what, "kind": kind, "mib": mib, "host_python": python, "note": note,
                           "venv_seconds": venv_seconds}
    for name, values in samples.items():
        out[name] = summary(values)
        out[name]["mib_per_s"] = mib / statistics.median(values)
    # OpenSSH's rate without its connection set-up: cat minus a cold `ssh true` (measured in part 1)
    out["ssh_connect_ms"] = connect_ms
    transfer_ms = out["ssh_cat"]["median_ms"] - connect_ms
    out["ssh_cat_transfer_only_mib_per_s"] = mib / (transfer_ms / 1e3) if transfer_ms > 0 else None
    return out


def part_fanout(lab: SshLab, rj: Rjobs, plan: Plan) -> dict[str, Any]:
    hosts = [f"nshost{i}" for i in range(1, FANOUT_HOSTS + 1)]
    spec = ",".join(hosts)
    say(f"4. fan-out to {FANOUT_HOSTS} hosts vs 1: {plan.fan_warmup} warm-up + {plan.fan_runs} runs each")

    def all_two(value: Any) -> bool:
        return isinstance(value, dict) and sorted(value) == sorted(hosts) and all(v == 2 for v in value.values())

    contenders = {
        "one_host": lambda: rj.run("1+1", hosts[0], lab.python, lambda v: v == 2),
        "fanout": lambda: rj.run("1+1", spec, lab.python, all_two),
    }
    for trip in contenders.values():
        for _ in range(plan.fan_warmup):
            trip()
    cpu: dict[str, float] = {}  # the machine's busy CPU seconds during each kind of run
    samples = interleave(contenders, plan.fan_runs, plan.rounds, cpu)
    out: dict[str, Any] = {"hosts": hosts}
    out.update({name: summary(values) for name, values in samples.items()})
    for name, values in samples.items():  # with the untimed removal of each job: it is work the runs cause too
        out[name]["machine_cpu_ms"] = cpu[name] / len(values) * 1e3
    return out


# A fresh kernel-side process: connects, warms up, then receives one big value; prints its RSS
# high-water marks (KiB) before and after, as JSON: VmHWM, this process's own (ru_maxrss would
# also count the parent's, inherited through fork and exec: this benchmark's, which holds arrays).
_MEMORY_CHILD = """
import json, resource, sys, time
import numpy as np
from jupyter_rjobs import JobManager
def high_water():
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ssh_config, python, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
manager = JobManager(ssh_config=ssh_config)
assert manager.start("1+1", host="server01", python=python).result(300) == 2
before = high_water()
began = time.perf_counter()
value = manager.start(f"import numpy as np; np.ones({count})", host="server01", python=python).result(300)
seconds = time.perf_counter() - began
after = high_water()
assert isinstance(value, np.ndarray) and value.shape == (count,) and value[0] == 1.0 and value[-1] == 1.0
manager.shutdown()
print(json.dumps({"before_kib": before, "peak_kib": after, "seconds": seconds}))
"""


def part_memory(lab: SshLab, plan: Plan, python: str) -> dict[str, Any]:
    """The kernel's peak RSS (its high-water mark) receiving a 1 GiB (quick: 64 MiB) numpy result, in a fresh process."""
    mib = 64 if plan.quick else 1024
    say(f"5. peak memory: a fresh kernel-side process receives a {mib} MiB numpy result")
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, lab.ssh_config, python, str(mib * MiB // 8)],
                          capture_output=True, text=True, timeout=JOB_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"the memory measurement failed: {done.stderr.strip()[-1000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    peak, before = found["peak_kib"] / 1024, found["before_kib"] / 1024
    return {"mib": mib, "peak_mib": peak, "before_mib": before, "seconds": found["seconds"],
            "peak_ratio": peak / mib, "growth_ratio": (peak - before) / mib}


# --------------------------------------------------------------------------- report
def environment(lab: SshLab) -> dict[str, Any]:
    import paramiko

    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    host_python = lab.run_as_user([lab.python, "--version"]).stdout.strip()
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import jupyter_rjobs

    package = Path(jupyter_rjobs.__file__).resolve().parent
    in_repo = package == REPO / "jupyter_rjobs"
    return {
        "package": str(package),
        "git_commit": git("rev-parse", "--short", "HEAD") if in_repo else f"not this repo's working tree ({package})",
        "package_changes_not_committed": bool(git("status", "--porcelain", "--", "jupyter_rjobs")) if in_repo else False,
        "kernel_python": sys.version.split()[0],
        "host_python": f"{lab.python} ({host_python})",
        "host_user": lab.user,
        "openssh": ssh_version,
        "paramiko": paramiko.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "lab_setup_s": lab.timings.get("setup"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few runs and a 16 MiB array: a smoke test of about a minute")
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick)
    started = clock()
    background = busy_cores()
    try:
        import ipyparallel  # noqa: F401

        ipp_note = ""
    except ImportError:
        ipp_note = "not installed (pip install ipyparallel)"

    try:
        lab = SshLab(namespace_hosts=FANOUT_HOSTS, behind_jump=False).start()
    except LabUnavailable as exc:
        print(f"bench_remote: the SSH lab cannot run here: {exc.reason}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"plan": asdict(plan), "background_busy_cores_before": background}
    ipp: Ipyparallel | None = None
    dask: Dask | None = None
    rj: Rjobs | None = None
    try:
        say(f"lab up in {lab.timings['setup']:.2f} s: {', '.join(lab.hosts)}")
        report["environment"] = environment(lab)
        rj = Rjobs(lab)
        rj.run("1+1", "server01", lab.python, lambda v: v == 2)  # first contact: connect, install the agent
        if not ipp_note:
            say("starting an ipyparallel cluster (2 local engines)")
            try:
                ipp = Ipyparallel(two, one, engines=2)
                ipp_note = f"ipyparallel {ipp.version}, 2 local engines, DirectView of engine 0 (cluster up in {ipp.start_seconds:.1f} s)"
            except Exception as exc:  # noqa: BLE001 - the anchor is optional; say why it is missing
                ipp_note = f"cluster did not start: {type(exc).__name__}: {exc}"
        report["ipyparallel"] = {"note": ipp_note}
        say("starting a Dask LocalCluster (1 process worker, 1 thread)")
        try:
            dask = Dask(two, one)
            dask_note = f"distributed {dask.version}, LocalCluster of 1 single-thread process worker (up in {dask.start_seconds:.1f} s)"
        except Exception as exc:  # noqa: BLE001 - the anchor is optional; say why it is missing
            dask_note = f"no Dask anchor: {type(exc).__name__}: {exc} (pip install distributed)"
        report["dask"] = {"note": dask_note}
        report["round_trip"] = part_round_trip(lab, rj, ipp, dask, plan)
        report["throughput"] = part_throughput(lab, rj, ipp, dask, plan)
        for anchor in (ipp, dask):  # the rest has no such anchor: its processes go before
            if anchor is not None:
                anchor.close()
        ipp = dask = None
        report["array"] = part_array(lab, rj, plan, report["round_trip"]["ssh_true"]["median_ms"])
        if report["array"]["kind"] == "numpy float64 array":
            report["memory"] = part_memory(lab, plan, report["array"]["host_python"])
        report["fanout"] = part_fanout(lab, rj, plan)
    finally:
        for anchor in (ipp, dask):
            if anchor is not None:
                anchor.close()
        if rj is not None:
            rj.close()
        lab.close()

    report["background_busy_cores_after"] = busy_cores()
    rows = build_rows(report)
    report["table"] = rows
    report["seconds"] = clock() - started
    table = markdown(rows)
    print(table)
    print()
    print(f"{'quick run' if plan.quick else 'full run'} in {report['seconds']:.0f} s; {ipp_note}; {report['dask']['note']}; "
          f"{report['array']['note']}; {report['environment']['openssh']}; paramiko {report['environment']['paramiko']};"
          f" {report['environment']['cpus']} CPUs; jupyter_rjobs at {report['environment']['git_commit']}"
          + (" with uncommitted changes" if report["environment"]["package_changes_not_committed"] else ""))
    load = max(report["background_busy_cores_before"], report["background_busy_cores_after"])
    print(f"background load outside this benchmark: {report['background_busy_cores_before']:.2f} CPUs busy before,"
          f" {report['background_busy_cores_after']:.2f} after"
          + (" -- OTHER LOAD ON THE MACHINE SKEWED THESE NUMBERS; rerun on a quiet machine" if load > 0.25 else ""))
    report["markdown"] = table
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    say(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
