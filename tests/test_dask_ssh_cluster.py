"""`cluster new`'s engine: a real Dask cluster started on the SSH lab's namespace hosts through our
SSH layer (start_ssh_cluster), used by a real distributed.Client, then closed with nothing left.

The hosts' Python is a venv of the lab's /usr/bin/python3 with the kernel's version of distributed
(built once per module in the lab's scratch directory, which the test user can read); the lab's
plain /usr/bin/python3 is a host Python WITHOUT distributed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from helpers import unavailable, wait_until
from sshlab import SshLab

from jupyter_rjobs.backends.dask.ssh_cluster import SshCluster, start_ssh_cluster
from jupyter_rjobs.core.errors import HostError, HostKeyError

pytestmark = pytest.mark.ssh

HOSTS = ["nshost1", "nshost2", "nshost3"]


@pytest.fixture(scope="module")
def dask_python(ssh_lab: SshLab) -> str:
    """A host Python with distributed (the kernel's version), readable by the test user."""
    try:
        import distributed
    except ImportError:
        unavailable("the SSH Dask cluster tests", "distributed in the test venv (pip install distributed)")
    lab_version = subprocess.run([ssh_lab.python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    if lab_version.stdout.strip() != str(sys.version_info[:2]):  # Dask needs one Python on the kernel and the cluster
        return _copy_of_this_python(Path(ssh_lab.scratch) / "hostpy", distributed.__version__)
    venv = Path(ssh_lab.scratch) / "daskpy"
    made = subprocess.run([ssh_lab.python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable("the SSH Dask cluster tests", f"python3 -m venv for the hosts (apt-get install python3-venv): {made.stderr.strip()[-200:]}")
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", f"distributed=={distributed.__version__}"],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        unavailable("the SSH Dask cluster tests", f"pip install distributed for the hosts' Python: {pip.stderr.strip()[-300:]}")
    return str(venv / "bin/python")


def _copy_of_this_python(place: Path, version: str) -> str:
    """The hosts' Python when the lab's system Python is another version than the kernel's (the
    oldest leg: 3.9 from pyenv under /root, which the test user cannot reach): a copy of this
    Python's installation the test user can run, with distributed, started by a small script that
    points the loader at the copy's libpython (pyenv's binary names /root's in its RUNPATH)."""
    if not place.exists():
        shutil.copytree(sys.base_prefix, place, symlinks=True,
                        ignore=shutil.ignore_patterns("test", "tests", "__pycache__", "idlelib", "tkinter", "turtledemo"))
    real = place / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    wrapper = place / "bin" / "python-for-hosts"
    wrapper.write_text(f"#!/bin/sh\nLD_LIBRARY_PATH={shlex.quote(str(place / 'lib'))} exec {shlex.quote(str(real))} \"$@\"\n")
    wrapper.chmod(0o755)
    pip = subprocess.run([str(wrapper), "-m", "pip", "install", "-q", "--no-warn-script-location", f"distributed=={version}"],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        unavailable("the SSH Dask cluster tests", f"pip install distributed for the hosts' copy of this Python: {pip.stderr.strip()[-300:]}")
    for folder, _, files in os.walk(place):  # readable and runnable by the test user
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)
    return str(wrapper)


@pytest.fixture
def lab(ssh_lab_clean: SshLab, dask_python: str) -> Iterator[SshLab]:
    yield ssh_lab_clean


def dask_processes(lab: SshLab) -> list[tuple[int, str]]:
    """The test user's processes on the hosts (sshd's own excluded): only a cluster's run there
    in these tests (supervisors, schedulers, nannies, workers and their children)."""
    return lab.user_processes()


def supervisors(lab: SshLab) -> list[str]:
    return [cmd for _, cmd in lab.user_processes() if " -u -c " in cmd]


def namespace_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_a_cluster_on_three_hosts_runs_a_fan_out_and_close_leaves_nothing(lab: SshLab, dask_python: str) -> None:
    from distributed import Client, get_worker

    cluster = start_ssh_cluster(",".join(HOSTS), name="lab", workers_per_host=2, python=dask_python,
                                ssh_config=lab.ssh_config, timeout=180)
    try:
        assert cluster.name == "lab" and cluster.started_here and not cluster.detached and cluster.alive
        assert cluster.hosts == HOSTS and cluster.python == {h: dask_python for h in HOSTS}
        assert cluster.address.startswith("tcp://10.231.1.2:")  # on the first host, by the address we reached it at
        assert sorted(w.host for w in cluster.workers) == sorted(HOSTS * 2)
        for worker in cluster.workers:  # each worker listens on its own host's address
            assert worker.address.startswith(f"tcp://{lab.address(worker.host)[0]}:")
        running = dask_processes(lab)
        namespaces = {namespace_of(pid) for pid, cmd in running if "dask_worker" in cmd}
        assert len(namespaces) == 3  # workers run in the three hosts' network namespaces
        with Client(cluster.address, timeout=30) as client:
            def where(i: int) -> str:
                return str(get_worker().address)

            places = client.gather(client.map(where, range(60), pure=False))
        landed = {worker.host for worker in cluster.workers if worker.address in set(places)}
        assert landed == set(HOSTS), places
    finally:
        cluster.close(timeout=60)
    assert cluster.closed and not cluster.alive
    assert dask_processes(lab) == []  # schedulers, workers, their children and the supervisors: all gone
    cluster.close()  # closing again is a no-op


def test_a_host_behind_a_jump_host_serves_and_a_detached_cluster_closes_from_its_kernel(lab: SshLab, dask_python: str) -> None:
    from distributed import Client, get_worker

    cluster = start_ssh_cluster(["nshost1", "behind1"], name="jumped", python=dask_python, ssh_config=lab.ssh_config,
                                detached=True, timeout=180)
    try:
        assert {w.host for w in cluster.workers} == {"nshost1", "behind1"}
        behind = next(w for w in cluster.workers if w.host == "behind1")
        assert behind.address.startswith("tcp://10.231.100.2:")  # reached only through ProxyJump nshost1
        logs = list(Path(lab.home, ".cache/jupyter_rjobs/dask").glob("jumped-*.log"))
        assert len(logs) == 3 and all(oct(p.stat().st_mode & 0o777) == "0o600" for p in logs)
        with Client(cluster.address, timeout=30) as client:
            assert client.submit(lambda: str(get_worker().address), workers=[behind.address]).result(timeout=60) == behind.address
    finally:
        cluster.close(timeout=60)
    assert dask_processes(lab) == []
    assert not any(Path(lab.home, ".cache/jupyter_rjobs/dask").glob("jumped-*.log"))


def test_a_host_whose_python_lacks_distributed_is_named_and_nothing_starts(lab: SshLab, dask_python: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    hosts_ini = tmp_path / "hosts.ini"  # each host's configured Python: nshost2's lacks distributed
    hosts_ini.write_text(f"[*]\npython = {dask_python}\n[nshost2]\npython = {lab.python}\n")
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(hosts_ini))
    with pytest.raises(HostError) as caught:
        start_ssh_cluster(HOSTS, name="lab", ssh_config=lab.ssh_config, timeout=120)
    message = str(caught.value)
    assert message.startswith(f"nshost2: {lab.python} there has no distributed (ModuleNotFoundError")
    assert f"{lab.python} -m pip install distributed" in message and "--python PATH" in message
    assert "\n" not in message
    assert dask_processes(lab) == []


def test_a_start_given_up_leaves_nothing_behind(lab: SshLab, dask_python: str) -> None:
    # the deadline passes while connecting: the scheduler, launched all the same, is stopped again
    with pytest.raises(HostError, match=r"^nshost1: the Dask scheduler there did not start in time.*longer timeout$"):
        start_ssh_cluster(HOSTS, name="lab", python=dask_python, ssh_config=lab.ssh_config, timeout=0.001)
    assert dask_processes(lab) == []


def test_a_host_that_cannot_reach_the_scheduler_is_named_and_nothing_is_left(lab: SshLab, dask_python: str) -> None:
    # behind1 reaches only nshost1's addresses: a scheduler on nshost2 is out of its reach
    with pytest.raises(HostError) as caught:
        start_ssh_cluster(["nshost2", "behind1"], name="far", python=dask_python, ssh_config=lab.ssh_config, timeout=20)
    message = str(caught.value)
    assert message.startswith("behind1: ") and "reach the scheduler at tcp://10.231.2.2:" in message, message
    assert "\n" not in message
    assert dask_processes(lab) == []  # the scheduler on nshost2, the workers and the waiter: all ended


def test_a_missing_python_is_named(lab: SshLab) -> None:
    with pytest.raises(HostError, match=r"^nshost1: no /nonexistent/python3 there; .*--python PATH$"):
        start_ssh_cluster(["nshost1"], name="x", python="/nonexistent/python3", ssh_config=lab.ssh_config)


def test_an_unknown_host_key_is_refused_and_nothing_starts(lab: SshLab, dask_python: str, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    lab.write_known_hosts(str(known), hosts=["nshost1", "nshost2"])
    config = tmp_path / "ssh_config"
    config.write_text(Path(lab.ssh_config).read_text().replace(lab.known_hosts, str(known)))
    with pytest.raises(HostKeyError, match=r"^nshost3: .*unknown host key.*--accept-new-host") as caught:
        start_ssh_cluster(HOSTS, name="lab", python=dask_python, ssh_config=str(config), timeout=120)
    assert caught.value.changed is False
    assert dask_processes(lab) == []
    assert "10.231.3.2" not in known.read_text()  # nothing accepted without the opt-in


def test_starting_clusters_over_ssh_imports_no_dask_in_the_kernel() -> None:
    code = ("import sys, jupyter_rjobs, jupyter_rjobs.backends.dask.ssh_cluster\n"
            "print([m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_bad_arguments_are_one_line_usage_errors(lab: SshLab) -> None:
    from jupyter_rjobs.core.errors import UsageProblem

    with pytest.raises(UsageProblem, match="--workers-per-host"):
        start_ssh_cluster(["nshost1"], name="x", workers_per_host=0, ssh_config=lab.ssh_config)
    with pytest.raises(UsageProblem, match="named twice"):
        start_ssh_cluster("nshost1,nshost1", name="x", ssh_config=lab.ssh_config)
    with pytest.raises(UsageProblem, match="needs hosts"):
        start_ssh_cluster([], name="x", ssh_config=lab.ssh_config)


STARTER = """
import json, sys, time
from jupyter_rjobs.backends.dask.ssh_cluster import start_ssh_cluster
cluster = start_ssh_cluster({hosts!r}, name="k", python={python!r}, ssh_config={config!r}, detached={detached!r})
print(json.dumps(cluster.describe()), flush=True)
time.sleep(3600)
"""


def start_in_a_kernel(lab: SshLab, dask_python: str, detached: bool) -> tuple[subprocess.Popen[str], dict]:
    """A cluster started by another process (a stand-in for a kernel), with its description."""
    code = STARTER.format(hosts=HOSTS[:2], python=dask_python, config=lab.ssh_config, detached=detached)
    kernel = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert kernel.stdout is not None
    line = kernel.stdout.readline()
    assert line, "the kernel did not start its cluster"
    return kernel, json.loads(line)


def test_a_kernel_killed_takes_its_cluster_with_it(lab: SshLab, dask_python: str) -> None:
    kernel, _ = start_in_a_kernel(lab, dask_python, detached=False)
    try:  # a scheduler, and a worker on each of the two hosts
        assert len([cmd for _, cmd in dask_processes(lab) if " -m distributed.cli.dask_" in cmd]) == 3
    finally:
        kernel.send_signal(signal.SIGKILL)
        kernel.wait()
    # its SSH connections dropped: each supervisor saw its channel end and ended its process tree
    assert wait_until(lambda: dask_processes(lab) == [], timeout=30), dask_processes(lab)


def test_a_detached_cluster_outlives_its_kernel_and_another_closes_it(lab: SshLab, dask_python: str) -> None:
    from distributed import Client

    kernel, description = start_in_a_kernel(lab, dask_python, detached=True)
    kernel.send_signal(signal.SIGKILL)
    kernel.wait()
    # the supervisors leave once their channels are gone; the scheduler and workers stay
    assert wait_until(lambda: supervisors(lab) == [], timeout=30)
    assert len([cmd for _, cmd in dask_processes(lab) if " -m distributed.cli.dask_" in cmd]) == 3
    with Client(description["address"], timeout=30) as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        assert len(client.scheduler_info()["workers"]) == 2
    adopted = SshCluster.adopt(description)
    assert adopted.address == description["address"] and not adopted.started_here and adopted.detached
    adopted.close(timeout=60)
    assert dask_processes(lab) == []
    assert not list(Path(lab.home, ".cache/jupyter_rjobs/dask").glob("*.log"))  # their logs went with them
