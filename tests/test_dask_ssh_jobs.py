"""Cluster jobs on a Dask cluster started on the SSH lab's namespace hosts: the cluster is added to
the manager by name (``manager.clusters.add``), the hosts' Python has only distributed (the kernel's
jupyter_rjobs and dill are shipped to the workers), a fan-out lands on several workers, a running
job stops, and closing the cluster by name leaves nothing on the hosts."""

from __future__ import annotations

import pytest
from helpers import wait_until
from sshlab import SshLab
from test_dask_ssh_cluster import HOSTS, dask_python, lab  # noqa: F401 - the hosts' Python with distributed, the clean lab

from jupyter_rjobs import JobState, RecordKind

pytestmark = [pytest.mark.ssh, pytest.mark.dask]


def test_jobs_fan_out_over_an_ssh_cluster_added_by_name(lab: SshLab, dask_python: str, make_manager) -> None:  # noqa: F811
    from jupyter_rjobs.backends.dask.ssh_cluster import start_ssh_cluster

    cluster = start_ssh_cluster(",".join(HOSTS), name="lab", python=dask_python, ssh_config=lab.ssh_config, timeout=180)
    try:
        manager = make_manager(ssh_config=lab.ssh_config)
        manager.clusters.add(cluster)
        jobs = [manager.start("import time\ntime.sleep(0.3)\nprint('step')\n6 * 7", cluster="lab") for _ in range(12)]
        assert [j.result(timeout=180) for j in jobs] == [42] * 12
        assert all(manager.receive(j)[0].data == "step\n" for j in jobs)
        shipped = manager.clusters.client(cluster).run(eval, "__import__('jupyter_rjobs').__file__")
        assert all("jupyter_rjobs_for_workers.zip" in path for path in shipped.values()), shipped  # the hosts had none
        workers = {w.address for w in cluster.workers}
        assert {j.location for j in jobs} <= workers and len({j.location for j in jobs}) >= 2  # several workers served
        [row] = manager.clusters.rows()
        assert (row.name, row.address, row.workers) == ("lab", cluster.address, len(HOSTS))
        running = manager.start("import os, time\nprint(os.getpid(), flush=True)\nwhile True:\n    time.sleep(0.05)", cluster="lab")
        next(r for r in manager.follow(running, keep=True) if r.kind is RecordKind.STDOUT)
        manager.stop(running)
        assert wait_until(lambda: running.state is JobState.Stopped, timeout=60)
        manager.clusters.close("lab", timeout=60)  # started here: its scheduler and workers end
        assert manager.clusters.names() == []
    finally:
        cluster.close(timeout=60)
    assert wait_until(lambda: lab.user_processes() == [], timeout=60), lab.user_processes()


def test_the_cluster_magics_start_use_list_and_close_a_cluster_on_ssh_hosts(lab: SshLab, dask_python: str, ip) -> None:  # noqa: F811
    from IPython.core.error import UsageError

    from jupyter_rjobs.ipython.extension import get_manager

    manager = get_manager(ip)
    manager.ssh_config = lab.ssh_config
    try:
        with pytest.raises(UsageError, match="name the hosts"):
            ip.run_line_magic("rjob", "cluster new --name lab")
        with pytest.raises(UsageError, match="cannot be named 'local'"):
            ip.run_line_magic("rjob", f"cluster new --hosts {HOSTS[0]} --name local")
        with pytest.raises(UsageError, match="are for `cluster new`"):
            ip.run_line_magic("rjob", "cluster list --hosts nshost1")
        assert manager.clusters.names() == [] and lab.user_processes() == []  # nothing half-created
        table = ip.run_line_magic("rjob", f"cluster new --hosts {','.join(HOSTS[:2])} --name lab --workers-per-host 2 --python {dask_python}")
        [row] = table.items
        assert (row.name, row.workers) == ("lab", 4) and row.address.startswith("tcp://")
        with pytest.raises(UsageError, match="already named 'lab'"):
            ip.run_line_magic("rjob", f"cluster new --hosts {HOSTS[2]} --name lab --python {dask_python}")
        jobs = [ip.run_cell_magic("rjob", f"start --cluster lab --no-card --name fan{i}", "import socket\nsocket.gethostname()")
                for i in range(8)]
        assert all(isinstance(j.result(timeout=180), str) for j in jobs)
        assert len({j.location for j in jobs}) >= 2  # several workers served the fan-out
        listed = ip.run_line_magic("rjob", "cluster list")
        assert [r.name for r in listed.items] == ["lab"] and "lab" in str(listed) and "dashboard" in listed._repr_html_()
        ip.run_line_magic("rjob", "remove " + " ".join(f"fan{i}" for i in range(8)))
        ip.run_line_magic("rjob", "cluster close lab")
        assert manager.clusters.names() == []
        assert wait_until(lambda: lab.user_processes() == [], timeout=60), lab.user_processes()
    finally:
        for name in manager.clusters.names():
            manager.clusters.close(name, timeout=60)
