"""Shared fixtures: job managers, the job kinds the contract suite runs against, a real IPython shell."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from jupyter_rjobs import Job, JobManager

pytest_plugins = ["sshfixtures"]  # the real-sshd lab: tests/sshfixtures.py, tests/sshlab.py

# The contract suite runs against every kind here; the remote backend adds itself.
ALL_KINDS = ["thread", "process"]
# Kinds whose jobs get copies of the notebook's variables (serialized), not the objects.
SENDING_KINDS = ["process"]


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
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    return make_manager()


class Starter:
    """Starts jobs of one kind on a manager: what the contract suite needs to know of a backend."""

    def __init__(self, manager: JobManager, kind: str) -> None:
        self.manager = manager
        self.kind = kind

    def __call__(self, code: str, **options: Any) -> Job:
        return self.manager.start(code, self.kind, **options)

    def __repr__(self) -> str:
        return f"Starter({self.kind})"


@pytest.fixture(params=ALL_KINDS)
def start(request: pytest.FixtureRequest, manager: JobManager) -> Starter:
    return Starter(manager, request.param)


@pytest.fixture(params=SENDING_KINDS)
def start_sending(request: pytest.FixtureRequest, manager: JobManager) -> Starter:
    return Starter(manager, request.param)


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
    from jupyter_rjobs._ipython import get_manager

    yield shell
    manager = get_manager(shell)
    manager.remove(manager.list(), force=True)
