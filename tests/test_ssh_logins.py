"""Logins beyond keys, against real sshds with PAM (tests/pamlab.py): passwords, a real TOTP second
factor (pam_google_authenticator), publickey + one-time code, encrypted keys and ssh-agent.

The oracle is OpenSSH's own client: it runs with an SSH_ASKPASS script that records every question
it asks; we must ask the same questions, in the same order, and get the same verdict. Questions are
answered by a prompter installed for the test (``_prompt.install_prompter``), as the notebook's is.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pamlab import Answers, PamHosts  # noqa: E402

from jupyter_rjobs import AuthenticationError, HostError  # noqa: E402
from jupyter_rjobs.backends.remote.ssh.config import HostSettings  # noqa: E402
from jupyter_rjobs.backends.remote.ssh.connection import SshConnection, resolve_host  # noqa: E402
from jupyter_rjobs.backends.remote.ssh.prompt import PromptUnavailable, install_prompter  # noqa: E402

pytestmark = [pytest.mark.ssh]

@dataclass
class Login:
    """One login's verdict: the error (None: logged in) and the questions asked (last lines)."""

    error: Optional[BaseException] = None
    questions: list[str] = field(default_factory=list)


def question(prompt: str) -> str:
    return prompt.rstrip("\n").splitlines()[-1].strip()


def openssh(pam: PamHosts, alias: str, answers: Answers, config: Optional[str] = None,
            options: tuple[str, ...] = (), env: Optional[dict[str, str]] = None) -> Login:
    """The oracle: OpenSSH's client logging in, and the questions it asked."""
    login = pam.openssh(alias, answers, config=config, options=options, env=env)
    return Login(None if login.returncode == 0 else RuntimeError(login.stderr.strip()), login.questions)


class Prompter:
    """The test's prompter: records each prompt and answers it from ``answers``."""

    def __init__(self, pam: PamHosts, answers: Answers, unavailable: Optional[str] = None) -> None:
        self.pam, self.answers, self.unavailable = pam, answers, unavailable
        self.prompts: list[str] = []

    def __call__(self, text: str, echo: bool) -> str:
        self.prompts.append(text)
        if self.unavailable is not None:
            raise PromptUnavailable(self.unavailable)
        if "passphrase" in text:
            return self.answers.passphrase
        if "assword" in text:
            return self.answers.password
        if "erification" in text:
            return self.pam.totp() if self.answers.totp else "000000"
        raise AssertionError(f"unexpected question {text!r}")


@pytest.fixture
def prompter_slot() -> Iterator[Callable[[Prompter], None]]:
    """Install a test prompter (as the notebook installs its own); put the previous one back after."""
    previous = install_prompter(None)
    yield lambda prompter: install_prompter(prompter) and None
    install_prompter(previous)


def ours(pam: PamHosts, alias: str, prompter: Prompter, install: Callable[[Prompter], None],
         config: Optional[str] = None, change: Optional[Callable[[HostSettings], HostSettings]] = None) -> Login:
    """Log in with our SSH layer (``SshConnection``), the questions going to ``prompter``."""
    install(prompter)
    settings = resolve_host(alias, ssh_config=config or pam.ssh_config)
    if change is not None:
        settings = change(settings)
    start = len(prompter.prompts)
    error: Optional[BaseException] = None
    try:
        connection = SshConnection(settings).open()
        try:
            assert connection.run("true")[0] == 0
        finally:
            connection.close()
    except HostError as exc:
        error = exc
    return Login(error, [question(p) for p in prompter.prompts[start:]])


def config_with(pam: PamHosts, tmp_path: Path, alias: str, lines: list[str]) -> str:
    """The tier's ssh_config with ``lines`` in the block of ``alias``, replacing its lines of the same keywords."""
    keywords = {line.split()[0].lower() for line in lines}
    blocks = Path(pam.ssh_config).read_text().split("\n\n")
    for index, block in enumerate(blocks):
        head, *body = block.splitlines() or [""]
        if head == f"Host {alias}":
            kept = [line for line in body if line.split()[0].lower() not in keywords]
            blocks[index] = "\n".join([head, *(f"    {line}" for line in lines), *kept])
    path = tmp_path / "ssh_config"
    path.write_text("\n\n".join(blocks))
    return str(path)


def one_line(error: Optional[BaseException], alias: str, *secrets: str) -> str:
    """The error's text, checked: one line, naming the host first, no secret in it."""
    assert error is not None, "the login succeeded"
    text = str(error)
    assert "\n" not in text and text.startswith(f"{alias}: "), text
    for secret in secrets:
        assert secret not in text, "a secret is in the error message"
    return text


@pytest.fixture
def authorized(pam_hosts: PamHosts) -> Iterator[Callable[[str], None]]:
    """Authorize public keys on the PAM hosts for one test."""
    path = Path(pam_hosts.authorized_keys)
    before = path.read_text()
    yield lambda public_key_file: path.write_text(path.read_text() + Path(public_key_file).read_text())
    path.write_text(before)


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name, "-f", str(path)], check=True)
    return path


def fingerprint(public_key_file: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(public_key_file)], capture_output=True, text=True, check=True).stdout.split()[1]


# -- the questions, as OpenSSH asks them ------------------------------------------------------
@pytest.mark.parametrize("alias", ["pam-password", "pam-totp", "pam-key-otp"])
def test_we_ask_what_openssh_asks_and_log_in(pam_hosts, prompter_slot, alias):
    answers = Answers(password=pam_hosts.password)
    theirs = openssh(pam_hosts, alias, answers)
    mine = ours(pam_hosts, alias, Prompter(pam_hosts, answers), prompter_slot)
    assert theirs.error is None, theirs.error
    assert mine.error is None, mine.error
    assert mine.questions == theirs.questions and mine.questions, (mine.questions, theirs.questions)


def test_a_remote_job_runs_after_password_and_code_asked_once_per_connection(pam_hosts, prompter_slot, make_manager, ssh_lab):
    answers = Answers(password=pam_hosts.password)
    theirs = openssh(pam_hosts, "pam-totp", answers)
    prompter = Prompter(pam_hosts, answers)
    prompter_slot(prompter)
    manager = make_manager(ssh_config=pam_hosts.ssh_config)
    assert manager.start("import os\nos.getuid()", host="pam-totp").result(timeout=60) == ssh_lab.uid
    assert manager.start("1 + 1", host="pam-totp").result(timeout=60) == 2  # the same connection: nothing asked
    assert [question(p) for p in prompter.prompts] == theirs.questions and len(theirs.questions) == 2


# -- wrong answers: as many tries as OpenSSH, then one line ---------------------------------------
@pytest.mark.parametrize("alias", ["pam-password", "pam-totp"])
def test_a_wrong_password_is_one_line_after_as_many_tries_as_openssh(pam_hosts, prompter_slot, alias):
    answers = Answers(password="wrong-" + pam_hosts.password[::-1])
    theirs = openssh(pam_hosts, alias, answers)
    mine = ours(pam_hosts, alias, Prompter(pam_hosts, answers), prompter_slot)
    assert theirs.error is not None and isinstance(mine.error, AuthenticationError), mine.error
    assert mine.questions == theirs.questions and len(mine.questions) >= 3, (mine.questions, theirs.questions)
    text = one_line(mine.error, alias, answers.password, pam_hosts.password)
    assert "refused" in text and "password" in text, text


def test_a_wrong_code_is_refused_like_openssh_does(pam_hosts, prompter_slot):
    answers = Answers(password=pam_hosts.password, totp=False)
    theirs = openssh(pam_hosts, "pam-key-otp", answers)
    mine = ours(pam_hosts, "pam-key-otp", Prompter(pam_hosts, answers), prompter_slot)
    assert theirs.error is not None and isinstance(mine.error, AuthenticationError)
    assert mine.questions == theirs.questions, (mine.questions, theirs.questions)
    one_line(mine.error, "pam-key-otp", "000000")


def test_number_of_password_prompts_bounds_the_questions(pam_hosts, prompter_slot):
    answers = Answers(password="wrong")
    mine = ours(pam_hosts, "pam-password", Prompter(pam_hosts, answers), prompter_slot,
                change=lambda s: replace(s, number_of_password_prompts=1))
    assert isinstance(mine.error, AuthenticationError) and len(mine.questions) == 1, mine.questions


# -- no one to ask: one line, never a hang ------------------------------------------------------------
@pytest.mark.parametrize("alias", ["pam-password", "pam-totp"])
def test_no_one_to_ask_is_one_line_saying_what_to_set_up(pam_hosts, prompter_slot, alias):
    mine = ours(pam_hosts, alias, Prompter(pam_hosts, Answers(), unavailable="no stdin in this test"), prompter_slot)
    assert isinstance(mine.error, AuthenticationError), mine.error
    text = one_line(mine.error, alias)
    assert "no stdin in this test" in text and "ssh-agent" in text and "IdentityFile" in text, text


def test_batch_mode_asks_nothing_like_openssh(pam_hosts, prompter_slot):
    theirs = openssh(pam_hosts, "pam-totp", Answers(password=pam_hosts.password), options=("-o", "BatchMode=yes"))
    prompter = Prompter(pam_hosts, Answers(password=pam_hosts.password))
    mine = ours(pam_hosts, "pam-totp", prompter, prompter_slot, change=lambda s: replace(s, batch_mode=True))
    assert theirs.error is not None and theirs.questions == []
    assert isinstance(mine.error, AuthenticationError) and prompter.prompts == []
    assert "BatchMode yes" in one_line(mine.error, "pam-totp")


@pytest.mark.parametrize(("alias", "preferred"), [("pam-totp", "password"), ("pam-password", "publickey,keyboard-interactive")])
def test_preferred_authentications_leaves_out_what_openssh_leaves_out(pam_hosts, prompter_slot, alias, preferred):
    answers = Answers(password=pam_hosts.password)
    theirs = openssh(pam_hosts, alias, answers, options=("-o", f"PreferredAuthentications={preferred}"))
    prompter = Prompter(pam_hosts, answers)
    mine = ours(pam_hosts, alias, prompter, prompter_slot,
                change=lambda s: replace(s, preferred_authentications=tuple(preferred.split(","))))
    assert theirs.error is not None and isinstance(mine.error, AuthenticationError), mine.error
    assert mine.questions == theirs.questions == []
    assert "PreferredAuthentications" in one_line(mine.error, alias)


# -- keys: an encrypted one asked once, ssh-agent's used ------------------------------------------
def test_an_encrypted_key_is_asked_for_once_for_two_connections(pam_hosts, prompter_slot, authorized, tmp_path):
    answers = Answers(passphrase="correct horse " + pam_hosts.password[:6])
    key = keygen(tmp_path / "id_encrypted", answers.passphrase)
    authorized(f"{key}.pub")
    config = config_with(pam_hosts, tmp_path, "pam-key-otp", [f"IdentityFile {key}"])
    theirs = openssh(pam_hosts, "pam-key-otp", answers, config=config)
    prompter = Prompter(pam_hosts, answers)
    first = ours(pam_hosts, "pam-key-otp", prompter, prompter_slot, config=config)
    second = ours(pam_hosts, "pam-key-otp", prompter, prompter_slot, config=config)
    assert theirs.error is None and first.error is None and second.error is None, (theirs.error, first.error, second.error)
    assert first.questions == theirs.questions and theirs.questions[0] == f"Enter passphrase for key '{key}':"
    assert second.questions == theirs.questions[1:]  # the one-time code only: the key is decrypted already
    assert f"ED25519 {fingerprint(Path(f'{key}.pub'))}" in pam_hosts.sshd_log("pam-key-otp")


def test_an_encrypted_key_with_no_one_to_ask_says_so(pam_hosts, prompter_slot, authorized, tmp_path):
    key = keygen(tmp_path / "id_locked", "never asked")
    authorized(f"{key}.pub")
    config = config_with(pam_hosts, tmp_path, "no-sessions", [f"IdentityFile {key}"])
    mine = ours(pam_hosts, "no-sessions", Prompter(pam_hosts, Answers(), unavailable="no stdin in this test"),
                prompter_slot, config=config)
    text = one_line(mine.error, "no-sessions")
    assert f"{key} (encrypted; its passphrase cannot be asked here: no stdin in this test)" in text, text


@pytest.fixture
def ssh_agent(tmp_path) -> Iterator[str]:
    """A real ssh-agent on its own socket; yields the socket path."""
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            subprocess.run(["sleep", "0.01"])
        yield sock
    finally:
        agent.terminate()
        agent.wait(5)


@pytest.mark.parametrize(
    ("case", "identity_lines", "logs_in"),
    [
        ("any agent key", ["IdentitiesOnly no", "IdentityFile /nonexistent/key"], True),
        ("IdentitiesOnly, the agent key named by its .pub", ["IdentitiesOnly yes", "IdentityFile {key}"], True),
        ("IdentitiesOnly, another key named", ["IdentitiesOnly yes", "IdentityFile /nonexistent/key"], False),
    ],
)
def test_ssh_agent_keys_are_used_as_openssh_uses_them(pam_hosts, prompter_slot, authorized, ssh_agent, tmp_path,
                                                      monkeypatch, case, identity_lines, logs_in):
    key = keygen(tmp_path / "id_agent")
    env = dict(os.environ, SSH_AUTH_SOCK=ssh_agent)
    subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
    key.unlink()  # only the agent has the private key now; the .pub stays
    authorized(f"{key}.pub")
    config = config_with(pam_hosts, tmp_path, "pam-key-otp", [line.format(key=key) for line in identity_lines])
    monkeypatch.setenv("SSH_AUTH_SOCK", ssh_agent)
    answers = Answers()
    theirs = openssh(pam_hosts, "pam-key-otp", answers, config=config, env=env)
    mine = ours(pam_hosts, "pam-key-otp", Prompter(pam_hosts, answers), prompter_slot, config=config)
    assert (theirs.error is None, mine.error is None) == (logs_in, logs_in), (case, theirs.error, mine.error)
    if logs_in:
        assert mine.questions == theirs.questions and len(mine.questions) == 1  # the code only: the key came from the agent
        accepted = re.findall(r"(?:Accepted|Partial) publickey for rjtest .* ED25519 (\S+)", pam_hosts.sshd_log("pam-key-otp"))
        assert accepted[-2:] == [fingerprint(Path(f"{key}.pub"))] * 2  # OpenSSH's login, then ours
    else:
        assert "refused every key tried" in one_line(mine.error, "pam-key-otp")


# -- item 7: every SSH failure is one line, and nothing on stderr --------------------------------
CHILD = r"""
import os, signal, sys
from jupyter_rjobs import JobManager, RJobError
from jupyter_rjobs.agent.proctree import descendants
from jupyter_rjobs.backends.remote.ssh.prompt import install_prompter

config, host, password, drop_listener = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def prompter(text, echo):
    if drop_listener:  # the host drops the connection while the question is open
        for pid in descendants(drop_listener):
            os.kill(pid, signal.SIGKILL)
    return password

install_prompter(prompter)
manager = JobManager(ssh_config=config)
try:
    manager.start("1", host=host).result(timeout=60)
    print("CONNECTED")
except RJobError as exc:
    print(f"ERROR {type(exc).__name__} {exc}")
finally:
    manager.shutdown()
"""


def run_child(config: str, host: str, password: str = "", drop_listener: int = 0) -> tuple[str, str]:
    """Start a job in a fresh Python process: (its stdout, its stderr)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, config, host, password, str(drop_listener)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc.stderr


@pytest.fixture
def fake_server() -> Iterator[Callable[[bytes], int]]:
    """TCP listeners on loopback that answer every connection with ``reply`` and close it."""
    import socket
    import threading

    listeners: list[socket.socket] = []

    def start(reply: bytes) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    if reply:
                        conn.sendall(reply)
                        conn.shutdown(socket.SHUT_WR)
                        conn.recv(65536)

        threading.Thread(target=serve, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize(
    ("what", "reply", "says"),
    [
        ("not an SSH server", b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)) * 8, "is it an SSH server"),
        ("closes at once", b"", "is it an SSH server"),
        ("closes after its banner", b"SSH-2.0-OpenSSH_9.2\r\n", "is it an SSH server"),
        ("garbage after its banner", b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x00\x10" + b"x" * 300, "is it an SSH server"),
    ],
)
def test_a_broken_handshake_is_one_line_and_stderr_stays_clean(fake_server, tmp_path, what, reply, says):
    host = f"127.0.0.1:{fake_server(reply)}"
    config = tmp_path / "empty_config"  # an empty ssh_config: nothing of the user's own applies
    config.write_text("")
    out, err = run_child(str(config), host)
    assert err == "", f"{what}: stderr is not clean:\n{err}"
    assert out.startswith(f"ERROR HostError {host}: ") and "\n" not in out and says in out, (what, out)


def test_a_host_that_drops_the_connection_during_the_login(pam_hosts):
    listener = pam_hosts._procs["pam-totp"].pid
    out, err = run_child(pam_hosts.ssh_config, "pam-totp", pam_hosts.password, drop_listener=listener)
    assert err == "", f"stderr is not clean:\n{err}"
    assert out.startswith("ERROR HostError pam-totp: ") and "closed the connection during the login" in out, out
    assert pam_hosts.password not in out


def test_a_host_that_refuses_every_channel_after_the_login(pam_hosts):
    out, err = run_child(pam_hosts.ssh_config, "no-sessions")
    assert err == "", f"stderr is not clean:\n{err}"
    assert out.startswith("ERROR HostError no-sessions: ") and "refused to open a channel" in out and "MaxSessions" in out, out


def test_a_wrong_password_in_a_fresh_process_leaves_stderr_clean(pam_hosts):
    out, err = run_child(pam_hosts.ssh_config, "pam-password", "wrong-password")
    assert err == "", f"stderr is not clean:\n{err}"
    assert out.startswith("ERROR AuthenticationError pam-password: ") and "wrong-password" not in out, out


def test_a_background_reconnect_asks_nothing_and_connect_in_the_foreground_asks_once(pam_hosts, prompter_slot, make_manager):
    from helpers import wait_until
    from sshlab import _cmdline, _descendants, _kill

    from jupyter_rjobs import JobState

    prompter = Prompter(pam_hosts, Answers(password=pam_hosts.password))
    prompter_slot(prompter)
    manager = make_manager(ssh_config=pam_hosts.ssh_config)
    job = manager.start("import time\ntime.sleep(4)\n'done'", host="pam-password")
    assert wait_until(lambda: job.state is JobState.Running, 30) and len(prompter.prompts) == 1
    log_before = pam_hosts.sshd_log("pam-password").count("Connection from")
    listener = pam_hosts._procs["pam-password"].pid  # drop the connection, leave the job running there
    _kill([pid for pid in _descendants([listener]) if (_cmdline(pid) or [""])[0].startswith("rjpam-")])
    assert wait_until(lambda: job.state is JobState.Disconnected, 30), job.state
    # the backend reconnects on its own thread: it gets to the host, but asks nobody anything
    assert wait_until(lambda: pam_hosts.sshd_log("pam-password").count("Connection from") > log_before, 30)
    assert len(prompter.prompts) == 1 and job.state is JobState.Disconnected
    assert [j.id for j in manager.connect("pam-password")] == [job.id]  # the user's command: asked once
    assert len(prompter.prompts) == 2
    assert job.result(timeout=60) == "done"


# -- terminal IPython: the questions on the terminal ------------------------------------------------
def _read_until(fd: int, needle: str, timeout: float = 60.0) -> str:
    import select
    import time

    text, deadline = b"", time.monotonic() + timeout
    while needle.encode() not in text:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no {needle!r} on the terminal; it shows:\n{text.decode(errors='replace')[-1500:]}"
        try:
            text += os.read(fd, 65536)
        except OSError:  # the terminal closed
            break
    return text.decode(errors="replace")


def test_terminal_ipython_asks_on_its_terminal_without_echo(pam_hosts, tmp_path):
    import pty

    env = dict(os.environ, JUPYTER_RJOBS_SSH_CONFIG=pam_hosts.ssh_config, TERM="dumb", IPYTHONDIR=str(tmp_path / "ipython"))
    pid, terminal = pty.fork()  # the child's controlling terminal is the pty, as in a real terminal
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "--simple-prompt"], env)
    try:
        _read_until(terminal, "In [1]:")
        os.write(terminal, b"%load_ext jupyter_rjobs\n")
        _read_until(terminal, "In [2]:")
        os.write(terminal, b"%rjob invoke --host pam-totp -- __import__('os').getuid()\n")
        shown = _read_until(terminal, "Password: ")
        os.write(terminal, pam_hosts.password.encode() + b"\n")
        shown += _read_until(terminal, "Verification code: ")
        code = pam_hosts.totp()
        os.write(terminal, code.encode() + b"\n")
        shown += _read_until(terminal, "In [3]:")
        os.write(terminal, b"exit\n")
        shown += _read_until(terminal, "\x00", timeout=30)  # to the end
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    theirs = pam_hosts.openssh("pam-totp", Answers(password=pam_hosts.password))
    assert [line.strip() for line in shown.splitlines() if line.strip().startswith("(")] == theirs.questions
    assert f"Out[2]: {pwd.getpwnam(pam_hosts.user).pw_uid}" in shown, shown[-1500:]
    assert pam_hosts.password not in shown and code not in shown  # getpass: no echo
    assert "Traceback" not in shown and os.waitstatus_to_exitcode(status) == 0
