"""``jupyter rjobs install-kernel``: the spec it writes, the kernel it starts (with %rjob and no
%load_ext), and one-line errors with exit status 2 for bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_helpers import KernelSession, stream_text  # noqa: E402

from jupyter_rjobs.kernelspec import main  # noqa: E402

def jupyter_rjobs_command(tmp_path: Path) -> dict[str, str]:
    """An environment where `jupyter rjobs` finds the installed package's own `jupyter-rjobs`
    console script (the one pip wrote beside this Python), as a user's shell would."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "jupyter-rjobs").is_file(), f"no jupyter-rjobs console script in {bin_dir}: is the package installed?"
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def run_jupyter(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = jupyter_rjobs_command(tmp_path)
    return subprocess.run([sys.executable, "-m", "jupyter", "rjobs", *args], capture_output=True, text=True, env=env, timeout=60)


def read_spec(prefix: Path, name: str) -> dict[str, Any]:
    return json.loads((prefix / "share" / "jupyter" / "kernels" / name / "kernel.json").read_text())


def test_install_kernel_writes_the_spec(tmp_path: Path) -> None:
    done = run_jupyter(tmp_path, "install-kernel", "--prefix", str(tmp_path / "env"))
    assert done.returncode == 0, done.stderr
    assert "Python 3 (rjobs)" in done.stdout
    spec = read_spec(tmp_path / "env", "rjobs")
    python, *rest = spec["argv"]
    assert Path(python).parent == Path(sys.executable).parent  # this environment's Python (python or python3)
    assert rest == ["-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.extensions=jupyter_rjobs"]
    assert spec["display_name"] == "Python 3 (rjobs)" and spec["language"] == "python" and "env" not in spec


def test_install_kernel_for_a_host(tmp_path: Path) -> None:
    assert main(["install-kernel", "--prefix", str(tmp_path), "--host", "gpu1"]) == 0
    spec = read_spec(tmp_path, "rjobs-gpu1")
    assert spec["display_name"] == "Python 3 (rjobs on gpu1)" and spec["env"] == {"JUPYTER_RJOBS_ENTER": "gpu1"}
    assert main(["install-kernel", "--prefix", str(tmp_path), "--host", "ml@gpu1:2222", "--name", "gpu"]) == 0
    assert read_spec(tmp_path, "gpu")["env"] == {"JUPYTER_RJOBS_ENTER": "ml@gpu1:2222"}


@pytest.mark.parametrize(
    "args, says",
    [
        (["install-kernel", "--user", "--prefix", "/tmp/x"], "not allowed with argument"),
        (["install-kernel", "--name", "bad name"], "--name 'bad name' may use only"),
        (["install-kernel", "--host", ""], "is not a host name"),
        (["install-kernel", "--colour", "red"], "unrecognized arguments: --colour red"),
        (["uninstall-kernel"], "invalid choice: 'uninstall-kernel'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    done = run_jupyter(tmp_path, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "share").exists()


@pytest.mark.kernel
def test_the_installed_kernel_has_rjob_without_load_ext(tmp_path: Path) -> None:
    assert main(["install-kernel", "--prefix", str(tmp_path)]) == 0
    session = KernelSession(kernel=(str(tmp_path / "share" / "jupyter" / "kernels"), "rjobs"))
    try:
        session.run("%rjob start --thread --name answer -- 6 * 7")
        outputs = session.run("%rjob receive answer --wait\njobs = %rjob list\nprint('jobs:', len(jobs))")
        assert "jobs: 1" in stream_text(outputs)
        assert session.value("'jupyter_rjobs' in get_ipython().extension_manager.loaded") is True
    finally:
        session.close()


@pytest.mark.kernel
@pytest.mark.ssh
def test_a_kernel_for_a_host_runs_its_cells_there(tmp_path: Path, ssh_lab_empty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_CONFIG", ssh_lab_empty.ssh_config)
    assert main(["install-kernel", "--prefix", str(tmp_path), "--host", "server01"]) == 0
    session = KernelSession(kernel=(str(tmp_path / "share" / "jupyter" / "kernels"), "rjobs-server01"))
    try:
        remote_pid = int(stream_text(session.run("import os\nprint(os.getpid())")).split()[-1])
        assert remote_pid != session.kernel_pid  # the cell ran on the host
        assert stream_text(session.run("here = 'session'\nprint(here)")).strip() == "session"
        session.run("%rjob exit")
        assert session.value("__import__('os').getpid()") == session.kernel_pid
        assert session.value("'here' in globals()") is False
        assert "server01" in stream_text(session.run("print(get_ipython().run_line_magic('rjob', 'session list'))"))
    finally:
        session.close()
