"""The suite tests what it says it tests: the built wheel in the newest leg, the checkout in the
oldest (tests/run.sh sets RJOBS_EXPECT_INSTALL), and the wheel carries what runs on hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_rjobs

CHECKOUT = Path(__file__).resolve().parent.parent
EXPECT = os.environ.get("RJOBS_EXPECT_INSTALL", "")


def test_the_package_under_test_is_the_one_the_leg_installed():
    if not EXPECT:
        pytest.skip("RJOBS_EXPECT_INSTALL is not set (tests/run.sh sets it to wheel or editable)")
    where = Path(jupyter_rjobs.__file__).resolve()
    if EXPECT == "wheel":
        assert where.parent != CHECKOUT / "jupyter_rjobs", f"the wheel leg imported the checkout: {where}"
        assert "site-packages" in where.parts, where
    else:
        assert where.parent == CHECKOUT / "jupyter_rjobs", where
    # a fresh interpreter started elsewhere (as the demo and kernels are) imports the same copy
    done = subprocess.run([sys.executable, "-c", "import jupyter_rjobs; print(jupyter_rjobs.__file__)"],
                          capture_output=True, text=True, cwd="/", check=True)
    assert Path(done.stdout.strip()).resolve() == where


def test_what_runs_on_hosts_ships_with_the_package(tmp_path):
    package = Path(jupyter_rjobs.__file__).parent
    assert (package / "agent" / "server.py").is_file()
    from jupyter_rjobs.backends.remote import backend  # noqa: F401 - builds the upload from the installed files
    from jupyter_rjobs.backends.remote.agent_files import AGENT_ZIP

    # the zip a host gets imports whole, as rjobs_agent, without the kernel-side jupyter_rjobs
    (tmp_path / "rjobs_agent.zip").write_bytes(AGENT_ZIP)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'rjobs_agent.zip')!r})\n"
        "import rjobs_agent.server, rjobs_agent.worker\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rjobs_agent', 'jupyter_rjobs')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    loaded = eval(done.stdout.strip())
    shipped = sorted(f"rjobs_agent.{p.stem}" for p in (package / "agent").glob("*.py") if p.stem != "__init__")
    assert loaded == ["rjobs_agent"] + shipped  # every module, each used, none of jupyter_rjobs
