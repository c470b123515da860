"""Jobs on a real Dask LocalCluster (process workers): streaming while they run, stop (running:
the job's process tree ends; queued: cancelled), ``--cache remote``, and one-line errors for
clusters that cannot be used. The contract suite (test_contract.py) runs against the same cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from daskfixtures import need_distributed, worker_addresses
from helpers import pid_alive, unavailable, wait_until

from jupyter_rjobs import JobManager, JobState, RecordKind, UsageProblem

pytestmark = pytest.mark.dask

SPAWN_TREE = (
    "import os, subprocess, time\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "print(os.getpid(), child.pid, flush=True)\n"
    "while True:\n"
    "    time.sleep(0.05)\n"
)


@pytest.fixture
def cluster_manager(make_manager, dask_cluster):
    manager = make_manager()
    manager.cluster_address = dask_cluster.scheduler_address
    manager.test_cluster = dask_cluster
    return manager


def _start(manager, code, **options):
    return manager.start(code, cluster=manager.cluster_address, **options)


def test_output_streams_while_the_job_runs(cluster_manager, tmp_path):
    go = tmp_path / "go"
    job = _start(cluster_manager, f"import os, time\nprint('first', flush=True)\nwhile not os.path.exists({str(go)!r}):\n"
                                  "    time.sleep(0.02)\nprint('second')\n'done'")
    seen = []
    for record in cluster_manager.follow(job):
        seen.append(record)
        if record.kind is RecordKind.STDOUT and record.data == "first\n":
            assert job.state is JobState.Running  # it waits for the file: the record came while it ran
            go.touch()
    assert [r.data for r in seen] == ["first\n", "second\n", "done"]
    assert job.state is JobState.Completed
    assert job.kind.type_name == "DaskJob"
    assert job.location == worker_addresses(cluster_manager.test_cluster)  # the worker's address


def test_stop_ends_the_running_jobs_process_tree(cluster_manager):
    job = _start(cluster_manager, SPAWN_TREE)
    pids = []
    for record in cluster_manager.follow(job, keep=True):
        if record.kind is RecordKind.STDOUT:
            pids = [int(p) for p in record.data.split()]
            break
    assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    cluster_manager.stop(job)
    assert wait_until(lambda: job.state is JobState.Stopped, timeout=30)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=15), [p for p in pids if pid_alive(p)]
    after = _start(cluster_manager, "'the worker is free again'")  # the task ended: its worker takes the next job
    assert after.result(timeout=60) == "the worker is free again"


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(cluster_manager):
    job = _start(cluster_manager, "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                  "print(os.getpid(), flush=True)\nwhile True:\n    time.sleep(0.05)")
    pid = next(int(r.data) for r in cluster_manager.follow(job, keep=True) if r.kind is RecordKind.STDOUT)
    cluster_manager.stop(job, grace=1.0)
    assert wait_until(lambda: job.state is JobState.Stopped, timeout=30)
    assert wait_until(lambda: not pid_alive(pid), timeout=15)


def test_stop_of_a_queued_job_cancels_it(cluster_manager, tmp_path):
    marker = tmp_path / "ran"
    blockers = [_start(cluster_manager, "import time\nwhile True:\n    time.sleep(0.05)") for _ in range(2)]
    assert wait_until(lambda: all(b.state is JobState.Running for b in blockers), timeout=60)
    queued = _start(cluster_manager, f"open({str(marker)!r}, 'w').close()")
    assert queued.state is JobState.NotStarted  # both single-thread workers are busy
    cluster_manager.stop(queued)
    assert queued.state is JobState.Stopped
    cluster_manager.stop(blockers)
    assert wait_until(lambda: all(b.state is JobState.Stopped for b in blockers), timeout=30)
    check = _start(cluster_manager, "'after'")
    assert check.result(timeout=60) == "after"
    assert not marker.exists() and cluster_manager.receive(queued) == []


def test_an_unknown_cluster_name_is_one_line_and_creates_no_job(manager):
    need_distributed()
    with pytest.raises(UsageProblem, match=r"no cluster is named 'nosuch'.*--cluster local") as info:
        manager.start("1", cluster="nosuch")
    assert "\n" not in str(info.value) and manager.list() == []


def test_an_unreachable_scheduler_is_one_line_and_creates_no_job(manager):
    need_distributed()
    manager.clusters.connect_timeout = 2
    with pytest.raises(UsageProblem, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9") as info:
        manager.start("1", cluster="tcp://127.0.0.1:9")
    assert "\n" not in str(info.value) and manager.list() == [] and manager.clusters.names() == []


def test_importing_jupyter_rjobs_never_imports_dask():
    code = ("import sys, jupyter_rjobs, jupyter_rjobs.ipython.magics\n"
            "jupyter_rjobs.JobManager().shutdown()\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_distributed_cluster_says_how_to_install_it():
    code = textwrap.dedent("""
        import sys
        sys.modules['distributed'] = None  # as if it were not installed
        from jupyter_rjobs import JobManager, UsageProblem
        manager = JobManager()
        try:
            manager.start('1', cluster='local')
        except UsageProblem as exc:
            print(exc)
        finally:
            manager.shutdown()
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True).stdout
    assert out.strip() == "jobs on a Dask cluster need dask distributed: pip install 'jupyter_rjobs[dask]'"


def test_a_worker_that_dies_mid_job_fails_it_naming_the_worker(make_manager):
    need_distributed()
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        manager = make_manager()
        job = manager.start("import os, time\nprint(os.getppid(), flush=True)\nwhile True:\n    time.sleep(0.05)",
                            cluster=cluster.scheduler_address)
        worker_pid = None
        for record in manager.follow(job, keep=True):
            if record.kind is RecordKind.STDOUT:
                worker_pid = int(record.data)
                break
        where = job.location
        os.kill(worker_pid, signal.SIGKILL)
        assert wait_until(lambda: job.state.finished, timeout=60)
        assert job.state is JobState.Failed
        assert job.error.ename == "WorkerDied" and where in job.error.evalue
        manager.shutdown()


def test_a_kernel_that_shuts_down_while_cluster_jobs_run_exits_at_once(tmp_path):
    """Shutting the manager down while its cluster jobs run closes the Dask client; the task's
    done-callback must not then ask the closing client for a result (its wait on the client's
    event loop never ended, and the process hung at exit joining that callback thread: CI's
    oldest leg, distributed 2024.8, once, and 2 runs in 3 of this script)."""
    need_distributed()
    script = tmp_path / "shutdown_while_running.py"
    script.write_text(textwrap.dedent("""
        import time
        def main():
            from distributed import LocalCluster
            from jupyter_rjobs import JobManager
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                for detached in (False, True):
                    manager = JobManager()
                    jobs = [manager.start("import time\\ntime.sleep(30)", cluster=cluster.scheduler_address, detached=detached)
                            for _ in range(3)]
                    began = time.time()
                    while str(jobs[0].state) != "Running" and time.time() - began < 30:
                        time.sleep(0.05)
                    manager.shutdown()
            print("done", flush=True)
        if __name__ == "__main__":
            main()
    """))
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: a Dask callback thread still waits on a closed client")
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]


# -- --cache remote ----------------------------------------------------------------------
def test_cache_remote_keeps_the_value_on_the_cluster_until_received(cluster_manager):
    from distributed import Client

    job = _start(cluster_manager, "print('hi')\nlist(range(5))", cache="remote", name="kept")
    assert cluster_manager.wait(job, timeout=60).still_running == []
    assert job.state is JobState.Completed
    with Client(cluster_manager.cluster_address, set_as_default=False) as other:
        names = [str(n) for n in other.list_datasets()]
        published = [n for n in names if n.startswith("rjobs-value/kept/")]
        assert published == [f"rjobs-value/kept/{job.instance_id}"]
        assert other.get_dataset(published[0]).result()[0]  # the value's serialized form is on the cluster
        records = cluster_manager.receive(job)
        assert [(r.kind, r.data) for r in records] == [(RecordKind.STDOUT, "hi\n"), (RecordKind.VALUE, [0, 1, 2, 3, 4])]
        cluster_manager.remove(job)
        assert wait_until(lambda: published[0] not in [str(n) for n in other.list_datasets()], timeout=30)


# -- the magics ----------------------------------------------------------------------------
def test_magics_start_list_and_close_clusters(ip, dask_cluster, capsys):
    address = dask_cluster.scheduler_address
    job = ip.run_cell_magic("rjob", f"start --cluster {address} --name onit", "print('from the cluster')\n6 * 7")
    assert job.result(timeout=60) == 42
    kept = ip.run_cell_magic("rjob", f"start --cluster {address} --cache remote --name kept-by-magic", "[1, 2]")
    assert str(kept.kind) == "DaskJob" and kept.stream.__class__.__name__ == "DaskStream"  # --cache went to the cluster job
    assert ip.run_line_magic("rjob", "wait kept-by-magic --timeout 60") is not None
    assert ip.run_line_magic("rjob", "receive kept-by-magic") == [1, 2]
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match=r"add --host"):  # --cache alone is a remote job's option first
        ip.run_cell_magic("rjob", "start --cache remote", "1")
    table = ip.run_line_magic("rjob", "list")
    assert "DaskJob" in str(table) and "onit" in str(table) and job.location in str(table)
    clusters = ip.run_line_magic("rjob", "cluster list")
    text = str(clusters)
    assert address in text and "connected" in text
    assert [r.workers for r in clusters.items] == [2] and clusters.items[0].dashboard_link.startswith("http")
    assert "dashboard</a>" in clusters._repr_html_()

    with pytest.raises(UsageError, match="no cluster is named 'nosuch'"):
        ip.run_line_magic("rjob", "cluster close nosuch")
    ip.run_line_magic("rjob", f"cluster close {address}")
    assert "disconnected" in capsys.readouterr().out
    assert ip.run_line_magic("rjob", "cluster list").items == []
    assert dask_cluster.status.name == "running"  # not started here: it runs on


def test_the_panel_shows_cluster_jobs_and_links_to_the_dashboard(ip, dask_cluster):
    from jupyter_rjobs.ipython.extension import get_manager
    from jupyter_rjobs.ipython.panel import panel

    manager = get_manager(ip)
    job = manager.start("1", cluster=dask_cluster.scheduler_address, name="in-the-panel")
    job.result(timeout=60)
    view = panel(manager, interval=0.05)
    try:
        view.refresh()

        def row_of_job():
            return next((r for r in view._rows[: view._rows_in_use] if r.job is job), None)

        assert wait_until(lambda: row_of_job() is not None and "data-state='Completed'" in row_of_job().cells["State"].value, timeout=10)
        assert wait_until(lambda: "dashboard</a>" in view.dashboards.value, timeout=10)
        assert dask_cluster.dashboard_link.split("/status")[0] in view.dashboards.value
    finally:
        view.close()
        manager.clusters.close(dask_cluster.scheduler_address)


# -- detached jobs ------------------------------------------------------------------------
COUNT = 4 * 50  # more records than the test scheduler keeps per topic (daskfixtures.EVENT_BUFFER)


def test_a_detached_job_is_adopted_by_another_manager_with_every_record_once(dask_cluster, tmp_path):
    from daskfixtures import EVENT_BUFFER

    assert COUNT > EVENT_BUFFER
    go = tmp_path / "go"
    first = JobManager()
    job = first.start(f"import os, time\nfor i in range({COUNT}):\n    print(i, flush=True)\n"
                      f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.02)\n"
                      f"for i in range({COUNT}, {2 * COUNT}):\n    print(i, flush=True)\n'end'",
                      cluster=dask_cluster.scheduler_address, detached=True, name="lasting")
    assert wait_until(lambda: len(first.receive(job, keep=True)) >= COUNT, timeout=60)
    received_first = first.receive(job)  # what this kernel received is not delivered again to the next
    first.shutdown()  # the kernel goes: the detached job runs on
    second = JobManager()
    try:
        second.clusters.find(dask_cluster.scheduler_address)
        left = second.left_cluster_jobs()
        assert [(j.name, j.state) for j in left] == [("lasting", "Running")]
        adopted = second.connect_cluster(dask_cluster.scheduler_address)
        assert [j.name for j in adopted] == ["lasting"] and adopted[0].detached
        # unreceived records written before, long gone from the scheduler's buffer, come from the worker's journal
        unreceived = COUNT - len(received_first)
        assert wait_until(lambda: len(second.receive(adopted[0], keep=True)) >= unreceived, timeout=60)
        assert wait_until(lambda: adopted[0].state is JobState.Running, timeout=60)
        go.touch()  # the rest is written while the second manager follows it live
        records = received_first + second.receive(adopted[0], wait=True, timeout=120)
        assert [r.data for r in records if r.kind is RecordKind.STDOUT] == [f"{i}\n" for i in range(2 * COUNT)]
        assert records[-1].data == "end" and adopted[0].state is JobState.Completed
        seqs = [r.seq for r in records]
        assert seqs == sorted(set(seqs))
        assert second.connect_cluster(dask_cluster.scheduler_address) == []  # followed already
        second.remove(adopted)
        assert second.left_cluster_jobs() == []
    finally:  # a failed run must not leave its detached job to the tests after it
        second.connect_cluster(dask_cluster.scheduler_address)
        second.remove(second.list(), force=True)
        second.shutdown()


def test_more_records_than_the_event_buffer_arrive_once_in_order(cluster_manager):
    job = _start(cluster_manager, f"for i in range({10 * COUNT}):\n    print(i)\n'end'")
    records = cluster_manager.receive(job, wait=True, timeout=120)
    assert [r.data for r in records if r.kind is RecordKind.STDOUT] == [f"{i}\n" for i in range(10 * COUNT)]
    assert job.state is JobState.Completed


def test_a_version_mismatch_is_one_line_and_creates_no_job(manager, tmp_path):
    """A real scheduler of other versions (RJOBS_DASK_OTHER_PYTHON: tests/run.sh makes one)."""
    need_distributed()
    other = os.environ.get("RJOBS_DASK_OTHER_PYTHON")
    if not other:
        unavailable("the Dask version-mismatch test", "RJOBS_DASK_OTHER_PYTHON, a Python with another distributed (tests/run.sh sets it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "scheduler.log", "wb")
    scheduler = subprocess.Popen([other, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", ":0"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_until(lambda: _accepts(port), timeout=60), (tmp_path / "scheduler.log").read_text()
        with pytest.raises(UsageProblem, match=r"version mismatch with the Dask cluster at tcp://127.0.0.1:\d+: \w+ \S+ here, \S+ on the scheduler") as info:
            manager.start("1", cluster=f"tcp://127.0.0.1:{port}")
        assert "\n" not in str(info.value) and manager.list() == [] and manager.clusters.names() == []
    finally:
        os.killpg(scheduler.pid, signal.SIGTERM)
        scheduler.wait(30)
        log.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
