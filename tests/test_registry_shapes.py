"""The local registry of remote jobs (issue 14, defect 8): files of any JSON shape are read
without a crash, and an entry of a kernel that is gone does not claim its job still runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jupyter_rjobs.backends.remote import registry
from jupyter_rjobs.core.errors import UsageProblem
from jupyter_rjobs.core.table import LeftJobTable


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RJOBS_STATE", str(tmp_path))
    (tmp_path / "jobs").mkdir(mode=0o700)
    return tmp_path / "jobs"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


GOOD = {"instance": "i-good", "host": "h", "name": "n", "state": "Completed", "command": "1", "started": 1.0, "kernel_pid": 1}


@pytest.mark.parametrize(
    "wrong",
    [[1, 2, 3], "text", None, dict(GOOD, kernel_pid=None), dict(GOOD, kernel_pid=2**70), dict(GOOD, kernel_pid="12"),
     dict(GOOD, host=["a", "b"]), dict(GOOD, started="yesterday"), dict(GOOD, started=1e300), dict(GOOD, name=7),
     dict(GOOD, session={"x": 1}), {"instance": "i"}],
    ids=repr,
)
def test_an_entry_of_the_wrong_shape_is_left_out_without_a_crash(state_dir, make_manager, wrong):
    (state_dir / "wrong.json").write_text(json.dumps(wrong))
    (state_dir / "good.json").write_text(json.dumps(GOOD))
    left = registry.left_jobs()
    assert [j.instance for j in left] == ["i-good"]
    str(LeftJobTable(left))  # list --all renders it
    manager = make_manager()
    with pytest.raises(UsageProblem, match="no jobs were left on any host"):  # the good one's kernel (pid 1) lives
        manager.connect()
    registry.remember("wrong", state="Failed")  # an update of a damaged entry rewrites it, never raises
    registry.flush()  # the registry is written behind the jobs
    assert json.loads((state_dir / "wrong.json").read_text())["state"] == "Failed"


def test_an_entry_of_a_kernel_that_is_gone_is_not_listed_as_running(state_dir):
    (state_dir / "stale.json").write_text(json.dumps(dict(GOOD, instance="stale", state="Running", kernel_pid=dead_pid())))
    (state_dir / "done.json").write_text(json.dumps(dict(GOOD, instance="done", state="Completed", kernel_pid=dead_pid())))
    rows = {j.instance: LeftJobTable([j]).row(j) for j in registry.left_jobs()}
    assert rows["stale"][2] == "Unknown (was Running)" and rows["stale"][4] == "gone"
    assert rows["done"][2] == "Completed"


ENTRY = {"host": "h", "name": "n", "command": "1", "code": "1", "cache": "kernel", "detached": False, "session": None}


def test_a_quick_new_job_never_touches_the_registry_and_an_adopted_ones_old_entry_goes_with_it(state_dir):
    """What the write-behind skips (a new job removed before its entry is due) must not hide a
    delete it owes: an entry already on disk (left by another kernel, adopted here) still goes."""
    registry.remember_new("quick", **ENTRY, state="Running")
    registry.forget("quick")
    (state_dir / "adopted.json").write_text(json.dumps(dict(GOOD, instance="adopted", state="Running")))
    registry.remember("adopted", **ENTRY, state="Running")  # adopt: not due for a second yet
    registry.forget("adopted")
    registry.remember_new("slow", **ENTRY, state="Running")
    registry.flush()  # everything asked so far is written now (the slow one's entry too)
    assert sorted(p.name for p in state_dir.iterdir()) == ["slow.json"]
    registry.forget("slow")
    registry.remember_new("again", **ENTRY, state="Running")
    registry.remember("again", state="Completed")  # an update merges into the entry still to write
    registry.flush()
    assert sorted(p.name for p in state_dir.iterdir()) == ["again.json"]
    assert json.loads((state_dir / "again.json").read_text())["state"] == "Completed"
