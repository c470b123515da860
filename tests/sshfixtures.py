"""Fixtures for the real-sshd tier: a lab of private OpenSSH servers (see tests/sshlab.py).

``ssh_lab`` (session scope) yields a started ``SshLab(namespace_hosts=3)``: server01 on loopback,
nshost1..3 in network namespaces, behind1 reachable only through ``ProxyJump nshost1``.
``ssh_lab_clean`` is the same lab, put back after each test (partitions healed, stopped sshds
restarted, the test user's processes killed).

When the lab cannot start: under CI (environment variable CI set, e.g. CI=true) the tests ERROR;
elsewhere they are skipped with the reason printed.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from helpers import start_tier
from sshlab import SshLab


@pytest.fixture(scope="session")
def ssh_lab() -> Iterator[SshLab]:
    lab = SshLab(namespace_hosts=3)
    start_tier(lab.start, "real-sshd tests need root, OpenSSH server and network namespaces")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ssh_lab_clean(ssh_lab: SshLab) -> Iterator[SshLab]:
    yield ssh_lab
    ssh_lab.reset()


@pytest.fixture
def ssh_lab_empty(ssh_lab_clean: SshLab, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[SshLab]:
    """The lab with no job spools or sessions on its hosts and an empty local registry."""
    import shutil
    from pathlib import Path

    monkeypatch.setenv("JUPYTER_RJOBS_STATE", str(tmp_path / "state"))
    root = Path(ssh_lab_clean.home) / ".cache" / "jupyter_rjobs"
    for kind in ("jobs", "sessions"):
        shutil.rmtree(root / kind, ignore_errors=True)
    yield ssh_lab_clean
