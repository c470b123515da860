"""The real-sshd lab works: OpenSSH and paramiko reach every host, host keys are checked, faults can be made."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sshlab import SshLab

pytestmark = pytest.mark.ssh

UID_CODE = "import os; print(os.getuid())"


def ssh(lab: SshLab, alias: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """OpenSSH client with the lab's config; ``argv`` is quoted for the remote shell."""
    return subprocess.run(
        ["ssh", "-F", lab.ssh_config, alias, shlex.join(argv)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def tcp_connects(address: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:  # refused, unreachable (guard route) or timed out
        return False


def test_hosts_and_files(ssh_lab: SshLab) -> None:
    assert ssh_lab.hosts == ["server01", "nshost1", "nshost2", "nshost3", "behind1"]
    assert ssh_lab.address("server01")[0] == "127.0.0.1"
    assert ssh_lab.address("nshost2") == ("10.231.2.2", 22)
    assert ssh_lab.python == "/usr/bin/python3"
    for path in (ssh_lab.client_key, ssh_lab.ssh_config, ssh_lab.known_hosts):
        assert Path(path).is_file()
    known = Path(ssh_lab.known_hosts).read_text()
    assert f"[127.0.0.1]:{ssh_lab.address('server01')[1]}" in known
    assert "\n10.231.1.2," in "\n" + known


@pytest.mark.parametrize("alias", ["server01", "nshost1", "nshost2", "nshost3", "behind1"])
def test_openssh_runs_python_as_test_user(ssh_lab: SshLab, alias: str) -> None:
    result = ssh(ssh_lab, alias, ssh_lab.python, "-c", UID_CODE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ssh_lab.uid)
    assert ssh_lab.uid != 0


def test_behind1_only_through_the_jump_host(ssh_lab: SshLab) -> None:
    started = time.monotonic()
    assert not tcp_connects(ssh_lab.address("behind1"), timeout=2)
    assert time.monotonic() - started < 3
    # ...while from inside nshost1's namespace it is there
    ip, port = ssh_lab.address("behind1")
    probe = subprocess.run(
        ["ip", "netns", "exec", ssh_lab.netns("nshost1"), ssh_lab.python, "-c",
         f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"],
        capture_output=True, text=True, timeout=10,
    )
    assert probe.returncode == 0, probe.stderr


def test_paramiko_checks_host_keys(ssh_lab: SshLab, tmp_path: Path) -> None:
    import paramiko
    host, port = ssh_lab.address("server01")

    client = paramiko.SSHClient()
    client.load_host_keys(ssh_lab.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(host, port=port, username=ssh_lab.user, key_filename=ssh_lab.client_key,
                   look_for_keys=False, allow_agent=False, timeout=10)
    try:
        _stdin, stdout, _stderr = client.exec_command("echo ok", timeout=10)
        assert stdout.read().decode().strip() == "ok"
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()

    wrong = ssh_lab.write_known_hosts(str(tmp_path / "known_hosts"), wrong_key_for=["server01"])
    client = paramiko.SSHClient()
    client.load_host_keys(wrong)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(host, port=port, username=ssh_lab.user, key_filename=ssh_lab.client_key,
                       look_for_keys=False, allow_agent=False, timeout=10)
    client.close()


def test_unknown_host_is_refused(ssh_lab: SshLab, tmp_path: Path) -> None:
    """A known_hosts without the host: OpenSSH with StrictHostKeyChecking refuses to connect."""
    only_one = ssh_lab.write_known_hosts(str(tmp_path / "known_hosts"), hosts=["nshost1"])
    result = subprocess.run(
        ["ssh", "-F", ssh_lab.ssh_config, "-o", f"UserKnownHostsFile={only_one}", "nshost2", "true"],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 255
    assert "host key" in result.stderr.lower()


def test_partition_drops_silently_and_heals(ssh_lab_clean: SshLab) -> None:
    lab = ssh_lab_clean
    assert tcp_connects(lab.address("nshost2"), timeout=2)
    lab.partition("nshost2")
    try:
        started = time.monotonic()
        with pytest.raises(socket.timeout):  # dropped, not refused or unreachable
            socket.create_connection(lab.address("nshost2"), timeout=1).close()
        assert time.monotonic() - started >= 0.9
        assert tcp_connects(lab.address("nshost1"), timeout=2)
        assert ssh(lab, "nshost1", "true").returncode == 0
    finally:
        lab.heal("nshost2")
    assert tcp_connects(lab.address("nshost2"), timeout=2)
    assert ssh(lab, "nshost2", "true").returncode == 0


def test_partition_of_loopback_host(ssh_lab_clean: SshLab) -> None:
    lab = ssh_lab_clean
    lab.partition("server01")
    try:
        with pytest.raises(socket.timeout):
            socket.create_connection(lab.address("server01"), timeout=1).close()
    finally:
        lab.heal("server01")
    assert tcp_connects(lab.address("server01"), timeout=2)


def test_restart_sshd_keeps_address_and_key(ssh_lab_clean: SshLab) -> None:
    lab = ssh_lab_clean
    lab.stop_sshd("nshost3")
    assert not lab.sshd_running("nshost3")
    assert not tcp_connects(lab.address("nshost3"), timeout=2)  # refused
    lab.start_sshd("nshost3")
    assert ssh(lab, "nshost3", "true").returncode == 0  # strict host key check passes: same key
    lab.restart_sshd("server01")
    assert ssh(lab, "server01", "true").returncode == 0


def test_user_processes_and_cleanup(ssh_lab_clean: SshLab) -> None:
    lab = ssh_lab_clean
    marker = "import time; time.sleep(123)"
    # a detached remote process survives its ssh session, as a stray remote job would
    result = ssh(lab, "nshost3", "sh", "-c", f"setsid {lab.python} -c '{marker}' </dev/null >/dev/null 2>&1 &")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while not any(marker in cmd for _pid, cmd in lab.user_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(marker in cmd for _pid, cmd in lab.user_processes())
    assert not any("sshd" in cmd.split()[0] for _pid, cmd in lab.user_processes())
    lab.kill_user_processes()
    assert lab.user_processes() == []


def test_run_as_user_and_scratch(ssh_lab: SshLab) -> None:
    result = ssh_lab.run_as_user([ssh_lab.python, "-c", UID_CODE])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(ssh_lab.uid)
    script = Path(ssh_lab.scratch) / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    assert ssh(ssh_lab, "nshost1", str(script)).stdout.strip() == "hello"
