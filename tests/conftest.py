"""Shared fixtures: job managers, the job kinds the contract suite runs against, a real IPython shell."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, Iterator

import pytest

from jupyter_rjobs import Job, JobManager

# The local registry of remote jobs is per user: tests keep theirs apart from the user's own.
os.environ["JUPYTER_RJOBS_STATE"] = tempfile.mkdtemp(prefix="rjobs-state-")

pytest_plugins = ["sshfixtures", "pamfixtures", "daskfixtures"]  # the real-sshd lab (tests/sshlab.py), its PAM hosts (tests/pamlab.py), a LocalCluster

# The contract suite runs against every kind here ("localhost": remote jobs on this machine's
# local agent, through a local pipe instead of SSH: the same agent, server and spool).
ALL_KINDS = ["thread", "process", pytest.param("remote", marks=pytest.mark.ssh), "localhost", pytest.param("dask", marks=pytest.mark.dask)]
# Kinds whose jobs get copies of the notebook's variables (serialized), not the objects.
SENDING_KINDS = ["process", pytest.param("remote", marks=pytest.mark.ssh), "localhost", pytest.param("dask", marks=pytest.mark.dask)]
REMOTE_HOST = "server01"  # the lab's sshd on loopback


@pytest.fixture
def make_manager() -> Iterator[Callable[..., JobManager]]:
    """Build managers with custom limits; every one is shut down after the test."""
    made: list[JobManager] = []

    def make(**options: Any) -> JobManager:
        options.setdefault("warm_workers", 1)
        options.setdefault("stop_grace", 2.0)
        manager = JobManager(**options)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.shutdown()


@pytest.fixture
def kernel() -> Iterator[Any]:
    """A fresh kernel (the Python of this test run, driven through jupyter_client) with the extension loaded."""
    from kernel_helpers import KernelSession

    session = KernelSession()
    try:
        session.run("%load_ext jupyter_rjobs")
        yield session
    finally:
        session.close()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    return make_manager()


class Starter:
    """Starts jobs of one kind on a manager: what the contract suite needs to know of a backend."""

    def __init__(self, manager: JobManager, kind: str, host: str | None = None, cluster: Any = None) -> None:
        self.manager = manager
        self.kind = kind
        self.host = host
        self.cluster = cluster.scheduler_address if cluster is not None else None
        self.location: Any = host or "localhost"
        if cluster is not None:  # a cluster job's location is the address of the worker it ran on
            from daskfixtures import worker_addresses

            self.location = worker_addresses(cluster)

    def __call__(self, code: str, **options: Any) -> Job:
        if self.host is not None:
            options.setdefault("host", self.host)
        if self.cluster is not None:
            options.setdefault("cluster", self.cluster)
        return self.manager.start(code, self.kind, **options)

    def __repr__(self) -> str:
        return f"Starter({self.kind})"


def _starter(request: pytest.FixtureRequest, make_manager: Callable[..., JobManager]) -> Starter:
    if request.param == "remote":
        lab = request.getfixturevalue("ssh_lab")
        return Starter(make_manager(ssh_config=lab.ssh_config), "remote", host=REMOTE_HOST)
    if request.param == "dask":
        return Starter(make_manager(), "dask", cluster=request.getfixturevalue("dask_cluster"))
    if request.param == "localhost":
        request.getfixturevalue("local_home")
        return Starter(make_manager(), "remote", host="localhost")
    return Starter(make_manager(), request.param)


@pytest.fixture
def local_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A HOME of its own for the local agent (its spool root is ~/.cache/jupyter_rjobs, as on a host),
    so tests never touch the user's own; the local agent started by the test inherits it. A test
    that failed half-way leaves no agent process behind (each names this HOME in its command line)."""
    import signal

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    yield str(home)
    marker = str(home).encode()
    for _ in range(20):  # again until none is found: one forked while the last pass ran is in the next
        found = False
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if entry.isdigit() and marker in f.read():
                        os.kill(int(entry), signal.SIGKILL)
                        found = True
            except OSError:
                continue
        if not found:
            break
        time.sleep(0.05)


@pytest.fixture(params=ALL_KINDS)
def start(request: pytest.FixtureRequest, make_manager: Callable[..., JobManager]) -> Starter:
    return _starter(request, make_manager)


@pytest.fixture(params=SENDING_KINDS)
def start_sending(request: pytest.FixtureRequest, make_manager: Callable[..., JobManager]) -> Starter:
    return _starter(request, make_manager)


@pytest.fixture(scope="session")
def shell() -> Any:
    """A real IPython InteractiveShell with the extension loaded."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_rjobs")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_rjobs")


@pytest.fixture
def ip(shell: Any) -> Iterator[Any]:
    """The shell, with its jobs cleared after each test."""
    from jupyter_rjobs.ipython.extension import get_manager

    yield shell
    manager = get_manager(shell)
    manager.remove(manager.list(), force=True)
