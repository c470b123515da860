"""Cluster jobs in real kernels (jupyter_client): a detached job outlives its kernel and a second
kernel adopts it with `%rjob connect --cluster`, every record once; a kernel that shuts down
closes the LocalCluster it started."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernel_helpers, whatever the import mode

from daskfixtures import need_distributed  # noqa: E402
from helpers import pid_alive, wait_until  # noqa: E402
from kernel_helpers import KernelSession, stream_text  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.dask]

COUNT = 120  # more than the test scheduler keeps per topic (daskfixtures.EVENT_BUFFER)


def test_a_second_kernel_adopts_a_detached_job_with_every_record_once(dask_cluster, tmp_path):
    address = dask_cluster.scheduler_address
    go, wrote = tmp_path / "go", tmp_path / "wrote"
    code = (f"import os, time\nfor i in range({COUNT}):\n    print(i, flush=True)\nopen({str(wrote)!r}, 'w').close()\n"
            f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
            f"for i in range({COUNT}, {2 * COUNT}):\n    print(i, flush=True)\n'end'")
    first = KernelSession()
    try:
        first.run("%load_ext jupyter_rjobs")
        first.run(f"%%rjob start --cluster {address} --detached --name lasting-in-a-kernel\n{code}")
        assert wait_until(wrote.exists, timeout=60)
        first.shutdown()
    finally:
        first.close()
    second = KernelSession()
    try:
        second.run("%load_ext jupyter_rjobs")
        second.run(f"%rjob list --all --cluster {address}")
        left = "".join(o.text for o in second.last.outputs)
        assert "lasting-in-a-kernel" in left and "Running" in left and "connect --cluster" in left, left
        listed = stream_text(second.run(f"%rjob connect --cluster {address}"))
        table = "".join(o.text for o in second.last.outputs)
        assert "lasting-in-a-kernel" in table and "DaskJob" in table, (listed, table)
        go.touch()
        outputs = second.run("%rjob receive lasting-in-a-kernel --wait", timeout=120)
        assert stream_text(outputs) == "".join(f"{i}\n" for i in range(2 * COUNT))
        assert "'end'" in "".join(o.text for o in outputs if o.msg_type == "execute_result")
        second.run("%rjob remove lasting-in-a-kernel")
    finally:
        second.close()


def test_a_kernel_that_shuts_down_closes_the_local_cluster_it_started():
    need_distributed()
    session = KernelSession()
    try:
        session.run("%load_ext jupyter_rjobs")
        session.run("%%rjob start --cluster local --name where\nimport os\nos.getppid()", timeout=120)
        session.run("from jupyter_rjobs.ipython.extension import get_manager")
        worker_pid = session.value("get_manager().get('where').result(timeout=120)", timeout=150)
        assert pid_alive(worker_pid)
        session.shutdown()
    finally:
        session.close()
    assert wait_until(lambda: not pid_alive(worker_pid), timeout=60), f"the LocalCluster's worker {worker_pid} outlived its kernel"
