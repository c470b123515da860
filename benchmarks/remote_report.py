"""bench_remote's report: its measurements as rows of a table (each figure with its anchor, the
ratio, and the issue's target), and that table in Markdown for README."""

from __future__ import annotations

import os
from typing import Any


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def build_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    rt = r["round_trip"]
    rj = rt["rjobs"]
    ipp_note = r["ipyparallel"]["note"]
    rows.append({
        "what": "1. warm round trip `start(\"1+1\", host=server01)` -> value, median (p90)",
        "rjobs": f"{_ms(rj['median_ms'])} ({_ms(rj['p90_ms'])})",
        "anchor": f"ipyparallel `apply_sync`: {_ms(rt['ipyparallel']['median_ms'])} ({_ms(rt['ipyparallel']['p90_ms'])})"
        if "ipyparallel" in rt else f"ipyparallel: {ipp_note}",
        "ratio": f"{rj['median_ms'] / rt['ipyparallel']['median_ms']:.2f}x" if "ipyparallel" in rt else "-",
        "target": f"<= 1.0x (goal 0.5x): {_verdict(rj['median_ms'] <= rt['ipyparallel']['median_ms'])}" if "ipyparallel" in rt else "<= 1.0x ipyparallel: not measured",
    })
    rows.append({
        "what": "1b. same, against Dask `client.submit(f).result()` (LocalCluster, 1 process worker)",
        "rjobs": _ms(rj["median_ms"]),
        "anchor": f"Dask: {_ms(rt['dask']['median_ms'])} ({_ms(rt['dask']['p90_ms'])})" if "dask" in rt else f"Dask: {r['dask']['note']}",
        "ratio": f"{rj['median_ms'] / rt['dask']['median_ms']:.2f}x" if "dask" in rt else "-",
        "target": "-",
    })
    rows.append({
        "what": "1a. same, against a cold OpenSSH `ssh server01 python3 -c pass` (and `true`)",
        "rjobs": _ms(rj["median_ms"]),
        "anchor": f"{_ms(rt['ssh_python']['median_ms'])} (`true`: {_ms(rt['ssh_true']['median_ms'])})",
        "ratio": f"{rj['median_ms'] / rt['ssh_python']['median_ms']:.3f}x",
        "target": "-",
    })
    tp = r["throughput"]
    rjobs_tp = tp["rjobs_median_jobs_per_s"]
    rows.append({
        "what": f"2. throughput, {tp['rjobs'][0]['jobs']} jobs `\"1\"` to server01 (start all, wait all)",
        "rjobs": f"{rjobs_tp:.0f} jobs/s",
        "anchor": f"ipyparallel `apply_async`: {tp['ipyparallel_median_jobs_per_s']:.0f} jobs/s"
        if tp.get("ipyparallel") else f"ipyparallel: {ipp_note}",
        "ratio": f"{rjobs_tp / tp['ipyparallel_median_jobs_per_s']:.2f}x" if tp.get("ipyparallel") else "-",
        "target": f">= 1.5x and >= 1000 jobs/s: {_verdict(rjobs_tp >= 1000 and rjobs_tp >= 1.5 * tp['ipyparallel_median_jobs_per_s'])}"
        if tp.get("ipyparallel") else f">= 1000 jobs/s: {_verdict(rjobs_tp >= 1000)}",
    })
    rows.append({
        "what": "2b. same, against Dask `client.submit` then `gather` (LocalCluster, 1 process worker)",
        "rjobs": f"{rjobs_tp:.0f} jobs/s",
        "anchor": f"Dask: {tp['dask_median_jobs_per_s']:.0f} jobs/s" if tp.get("dask") else f"Dask: {r['dask']['note']}",
        "ratio": f"{rjobs_tp / tp['dask_median_jobs_per_s']:.2f}x" if tp.get("dask") else "-",
        "target": "-",
    })
    ar = r["array"]
    ratio = ar["rjobs"]["mib_per_s"] / ar["ssh_cat"]["mib_per_s"]
    rows.append({
        "what": f"3. {ar['mib']} MiB result ({ar['kind']}),"
        " start -> value, median",
        "rjobs": f"{ar['rjobs']['mib_per_s']:.0f} MiB/s ({_ms(ar['rjobs']['median_ms'])})",
        "anchor": f"`ssh server01 cat FILE`: {ar['ssh_cat']['mib_per_s']:.0f} MiB/s ({_ms(ar['ssh_cat']['median_ms'])};"
        f" without its ~{ar['ssh_connect_ms']:.0f} ms connection: {ar['ssh_cat_transfer_only_mib_per_s'] or float('nan'):.0f} MiB/s)",
        "ratio": f"{ratio:.2f}x",
        "target": f">= 1.0x: {_verdict(ratio >= 1.0)}",
    })
    rows.append({
        "what": "3a. same job, no value sent back (its own work on the host: numpy import, filling the array)",
        "rjobs": _ms(ar["rjobs_no_value"]["median_ms"]),
        "anchor": "-",
        "ratio": "-",
        "target": "-",
    })
    fo = r["fanout"]
    fan_ratio = fo["fanout"]["median_ms"] / fo["one_host"]["median_ms"]
    rows.append({
        "what": f"4. fan-out `1+1` to {len(fo['hosts'])} namespace hosts vs 1 (nshost1), warm, median (p90)",
        "rjobs": f"{_ms(fo['fanout']['median_ms'])} ({_ms(fo['fanout']['p90_ms'])})",
        "anchor": f"1 host: {_ms(fo['one_host']['median_ms'])} ({_ms(fo['one_host']['p90_ms'])})",
        "ratio": f"{fan_ratio:.2f}x",
        "target": f"<= 3x (goal 1.5x): {_verdict(fan_ratio <= 3.0)}",
    })
    cores = os.cpu_count() or 1
    fan_cpu, one_cpu = fo["fanout"]["machine_cpu_ms"], fo["one_host"]["machine_cpu_ms"]
    allowed = fan_cpu / cores / fo["one_host"]["median_ms"]  # the namespace hosts share the machine's cores
    rows.append({
        "what": f"4a. the machine's CPU per run of row 4 (every process: kernel, sshd, agents; with the job's untimed"
                f" removal); on {cores} cores a fan-out takes about its CPU / {cores}, so the ratio this machine allows"
                " is about that over 1 host's time",
        "rjobs": f"fan-out: {_ms(fan_cpu)} of CPU: about {_ms(fan_cpu / cores)} on {cores} cores",
        "anchor": f"1 host: {_ms(one_cpu)} of CPU ({one_cpu / fo['one_host']['median_ms']:.2f}x its time)",
        "ratio": f"{fan_cpu / one_cpu:.2f}x the CPU: row 4 can be about {allowed:.2f}x here (it is {fan_ratio / allowed:.2f}x of that)",
        "target": "-",
    })
    if "memory" in r:
        mem = r["memory"]
        rows.append({
            "what": f"5. kernel peak RSS (VmHWM of a fresh process) receiving a {mem['mib']} MiB numpy result",
            "rjobs": f"{mem['peak_mib']:.0f} MiB ({mem['before_mib']:.0f} MiB before it: imports, a connection)",
            "anchor": f"the value: {mem['mib']} MiB",
            "ratio": f"{mem['peak_ratio']:.2f}x (growth {mem['growth_ratio']:.2f}x)",
            "target": f"<= 1.2x: {_verdict(mem['peak_ratio'] <= 1.2)}",
        })
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| measurement | jupyter_rjobs | anchor | ratio (rjobs / anchor) | target |", "|---|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['what']} | {row['rjobs']} | {row['anchor']} | {row['ratio']} | {row['target']} |")
    return "\n".join(lines)
