"""Login questions in a real notebook kernel (jupyter_client drives it as a front end does): the
password and the TOTP code of a PAM host (tests/pamlab.py) arrive as ``input_request`` messages
under the cell that connects, and are answered there; without stdin (nbclient, papermill) the
cell ends with one line instead. No secret may show up in any output, log or state file."""

from __future__ import annotations

import os
import queue
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_helpers import CellResult, KernelSession, describe, errors  # noqa: E402
from pamlab import Answers, PamHosts  # noqa: E402
from user_sees import assert_user_sees_no_noise, from_kernel  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.ssh]


def run_answering(session: KernelSession, code: str, answer: Callable[[str, bool], str],
                  timeout: float = 90.0) -> tuple[CellResult, list[tuple[str, bool]]]:
    """Run ``code`` as a cell of a front end that takes input: each input_request of the cell is
    answered with ``answer(prompt, password)``. Returns the cell and the (prompt, password) asked."""
    client = session.client
    msg_id = client.execute(code, store_history=True, allow_stdin=True, stop_on_error=False)  # its error, if any, is looked at
    cell = session.cells[msg_id] = CellResult(msg_id)
    asked: list[tuple[str, bool]] = []
    deadline, idle = time.monotonic() + timeout, False
    while not idle:
        assert time.monotonic() < deadline, f"the cell did not finish; asked {asked}; outputs:\n{describe(cell.outputs)}"
        try:
            request = client.get_stdin_msg(timeout=0.02)
        except queue.Empty:
            pass
        else:
            assert request["msg_type"] == "input_request" and request["parent_header"]["msg_id"] == msg_id, request
            prompt, password = request["content"]["prompt"], bool(request["content"]["password"])
            asked.append((prompt, password))
            client.input(answer(prompt, password))
        try:
            message = client.get_iopub_msg(timeout=0.02)
        except queue.Empty:
            continue
        session._record(message)
        idle = (message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "status"
                and message["content"].get("execution_state") == "idle")
    while not cell.reply:
        reply = client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if reply["parent_header"].get("msg_id") == msg_id:
            cell.reply = reply["content"]
    return cell, asked


def answers_for(pam: PamHosts, given: list[str]) -> Callable[[str, bool], str]:
    def answer(prompt: str, password: bool) -> str:
        value = pam.password if "assword" in prompt else pam.totp() if "erification" in prompt else ""
        assert value, f"unexpected question {prompt!r}"
        given.append(value)
        return value

    return answer


@pytest.fixture
def notebook(pam_hosts: PamHosts, ssh_lab, tmp_path: Path, monkeypatch) -> Iterator[Callable[[], tuple[KernelSession, Path]]]:
    """Starts (when called, in the test's body: so a ``capfd`` of the test captures the kernel's
    stdout and stderr) a kernel whose ssh_config is the PAM tier's and whose state dir is the test's."""
    state = tmp_path / "state"
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_CONFIG", pam_hosts.ssh_config)
    monkeypatch.setenv("JUPYTER_RJOBS_STATE", str(state))
    sessions: list[KernelSession] = []

    def start() -> tuple[KernelSession, Path]:
        sessions.append(KernelSession())
        sessions[-1].run("%load_ext jupyter_rjobs")
        return sessions[-1], state

    yield start
    for session in sessions:
        session.close()
    ssh_lab.kill_user_processes()


def secret_files(roots: list[Path], secret: str) -> list[str]:
    """Files under ``roots`` whose bytes contain ``secret``."""
    found = []
    for root in roots:
        for path in root.rglob("*") if root.exists() else []:
            if path.is_file() and secret.encode() in path.read_bytes():
                found.append(str(path))
    return found


def test_the_notebook_asks_for_password_and_code_and_the_job_runs(notebook, pam_hosts, ssh_lab, capfd):
    session, state = notebook()
    given: list[str] = []
    code = "%%rjob start --host pam-totp --name totp\nimport os\nos.getuid()"
    cell, asked = run_answering(session, code, answers_for(pam_hosts, given))
    assert cell.reply.get("status") == "ok" and not errors(cell.outputs), describe(cell.outputs)
    assert_user_sees_no_noise([from_kernel(cell.outputs, "start --host pam-totp")])
    assert [password for _prompt, password in asked] == [True, True]  # asked as getpass asks: hidden
    assert [p.strip() for p, _ in asked] == pam_hosts.openssh("pam-totp", Answers(password=pam_hosts.password)).questions
    assert session.value("get_ipython().run_line_magic('rjob', 'receive totp --wait')") == ssh_lab.uid
    # a session on the same host uses the same connection: nothing more is asked
    cell, asked_again = run_answering(session, "%rjob session new pam-totp --name s1", answers_for(pam_hosts, given))
    assert asked_again == [] and not errors(cell.outputs), describe(cell.outputs)
    # the kernel's own fd 2 (ipykernel forwards it to the notebook; what it wrote before that, capfd has)
    session.run("import os\nos.write(2, b'kernel-fd2-probe\\n')", allow_stderr=True)
    printed = ""
    for _ in range(100):  # ipykernel forwards fd 2 from a watcher thread: wait until the probe came through
        session.drain(0.1)
        captured = capfd.readouterr()
        printed += captured.out + captured.err
        shown = "\n".join(o.text + repr(o.content) for o in session.messages) + printed
        if "kernel-fd2-probe" in shown:
            break
    assert "kernel-fd2-probe" in shown
    for secret in given:
        assert secret not in shown, "an answer shows up in the notebook or on the kernel's stdout/stderr"
        assert all(secret not in pam_hosts.sshd_log(alias) for alias in pam_hosts.hosts), "an answer is in an sshd log"
    remote_spool = Path(ssh_lab.home) / ".cache" / "jupyter_rjobs"
    assert secret_files([state, remote_spool, Path(session._tmp.name)], pam_hosts.password) == []


def test_several_hosts_ask_one_question_at_a_time_from_the_fan_out_threads(notebook, pam_hosts):
    session, _state = notebook()
    given: list[str] = []
    code = "%%rjob invoke --host pam-password,pam-totp\nimport socket\n'ok'"
    cell, asked = run_answering(session, code, answers_for(pam_hosts, given))
    assert cell.reply.get("status") == "ok" and not errors(cell.outputs), describe(cell.outputs)
    assert_user_sees_no_noise([from_kernel(cell.outputs, "invoke --host pam-password,pam-totp")])
    expected = [q for alias in ("pam-password", "pam-totp") for q in pam_hosts.openssh(alias, Answers(password=pam_hosts.password)).questions]
    assert sorted(p.strip() for p, _ in asked) == sorted(expected) and len(expected) == 3


def test_without_stdin_the_cell_ends_with_one_line_not_a_hang(notebook, pam_hosts):
    session, _state = notebook()
    outputs = session.run("%%rjob start --host pam-totp\n1", allow_errors=True, allow_stderr=True, timeout=60)  # allow_stdin=False, as nbclient
    seen = from_kernel(outputs)
    assert seen.stdout == "" and seen.errors == [], describe(outputs)  # IPython shows a UsageError on stderr, alone
    text = seen.stderr.strip()
    assert text.startswith("UsageError: pam-totp: ") and "\n" not in text, text
    assert "without input" in text and "ssh-agent" in text and "IdentityFile" in text, text
    listing = session.value("[j.id for j in __import__('jupyter_rjobs.ipython.extension', fromlist=['x']).get_manager().list()]")
    assert listing == []  # nothing half-created
