"""Loopback sshds that log in through PAM, beside a running :class:`sshlab.SshLab` (which holds
the machine's lab lock and owns the test user). Plain Python, like sshlab.

Hosts (aliases in ``pam.hosts``, all on 127.0.0.1 with free ports, user ``lab.user``):

- ``pam-password``: ``PasswordAuthentication`` only (PAM service ``rjpam-password``: pam_unix).
- ``pam-totp``: ``keyboard-interactive`` only, asking the password and then a TOTP code
  (``rjpam-totp``: pam_unix, then pam_google_authenticator).
- ``pam-key-otp``: ``AuthenticationMethods publickey,keyboard-interactive``: a key, then the TOTP
  code alone (``rjpam-otp``: pam_google_authenticator).
- ``no-sessions``: a key logs in, but ``MaxSessions 0`` refuses every channel (a failure after login).

Keys: ``pam.authorized_keys`` (the tier's own file, starting with the lab's client key) serves
every host; a test may append keys to it.

OpenSSH 9.2 takes its PAM service name from its program name, so each sshd runs through a
symlink named after its own ``/etc/pam.d/rjpam-*`` file: the system's sshd PAM stack is never
touched (measured: the TOTP question comes from our file; the system stack has no TOTP module).
For the tier's life the test user has a random password (``pam.password``, back to ``*`` after)
and a TOTP secret (``pam.totp()`` gives the current code, from ``oathtool``).
Needs libpam-google-authenticator and oathtool (apt), besides what the lab needs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from base64 import b32encode
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sshlab import SSHD, LabUnavailable, SshLab, _cmdline, _free_port, _kill, _pids, _read, _run, _wait_gone

__all__ = ["PamHosts", "PAM_PACKAGES", "Answers", "OpenSshLogin"]

PAM_PACKAGES = ("libpam-google-authenticator", "oathtool")
PAM_DIR = "/etc/pam.d"
SERVICE_PREFIX = "rjpam-"
TMP_PREFIX = "rjlab-pam-"  # under sshlab's "rjlab-": a crashed run's directory is removed by the next lab
GA_MODULE = "pam_google_authenticator.so"

# alias -> (PAM service, sshd_config lines)
HOSTS = {
    "pam-password": ("rjpam-password", ["PasswordAuthentication yes", "KbdInteractiveAuthentication no", "PubkeyAuthentication no"]),
    "pam-totp": ("rjpam-totp", ["PasswordAuthentication no", "KbdInteractiveAuthentication yes", "PubkeyAuthentication no"]),
    "pam-key-otp": ("rjpam-otp", ["PasswordAuthentication no", "KbdInteractiveAuthentication yes", "PubkeyAuthentication yes",
                                  "AuthenticationMethods publickey,keyboard-interactive"]),
    "no-sessions": ("rjpam-password", ["PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                                       "MaxSessions 0"]),
}


ASKPASS = """#!/bin/sh
# OpenSSH's questions, recorded one a line; the answers come from the environment
printf '%s\\n' "$1" | tr '\\n' ' ' >> "$RJ_ASKED"; echo >> "$RJ_ASKED"
case "$1" in
  *passphrase*) printf '%s\\n' "$RJ_PASSPHRASE" ;;
  *assword*) printf '%s\\n' "$RJ_PASSWORD" ;;
  *erification*) if [ -n "$RJ_TOTP_SECRET" ]; then oathtool --totp -b "$RJ_TOTP_SECRET"; else echo 000000; fi ;;
esac
"""


@dataclass
class Answers:
    """What the user answers: the password, a key's passphrase, and the current TOTP code or not."""

    password: str = ""
    passphrase: str = ""
    totp: bool = True


@dataclass
class OpenSshLogin:
    """What OpenSSH's client did: its exit status, its stderr, and the questions it asked (in order)."""

    returncode: int
    stderr: str
    questions: list[str]


def _ga_module() -> Optional[str]:
    for root in ("/lib", "/usr/lib", "/lib64", "/usr/lib64"):
        for dirpath, _dirs, files in os.walk(root):
            if GA_MODULE in files and dirpath.endswith("security"):
                return os.path.join(dirpath, GA_MODULE)
    return None


class PamHosts:
    """The PAM sshds; ``start()`` needs ``lab`` started, ``close()`` undoes everything."""

    def __init__(self, lab: SshLab) -> None:
        self.lab = lab
        self.user = lab.user
        self.hosts = list(HOSTS)
        self.password = ""
        self.secret = ""
        self.tmpdir = ""
        self.ssh_config = ""
        self.known_hosts = ""
        self.authorized_keys = ""
        self.ports: dict[str, int] = {}
        self.logs: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "PamHosts":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- public API
    def start(self) -> "PamHosts":
        self._check_prerequisites()
        self._cleanup_leftovers()
        try:
            self.tmpdir = tempfile.mkdtemp(prefix=TMP_PREFIX)
            os.chmod(self.tmpdir, 0o755)
            self._make_secrets()
            self.authorized_keys = os.path.join(self.tmpdir, "authorized_keys")
            shutil.copyfile(self.lab.client_pubkey, self.authorized_keys)
            os.chmod(self.authorized_keys, 0o644)
            self._write_pam_services()
            for alias in HOSTS:
                self._start_sshd(alias)
            self._write_client_files()
        except BaseException:
            self.close()
            raise
        return self

    def totp(self) -> str:
        """The current TOTP code of the test user's secret."""
        return _run(["oathtool", "--totp", "-b", self.secret]).stdout.strip()

    def openssh(self, alias: str, answers: Answers, config: Optional[str] = None, options: tuple[str, ...] = (),
                env: Optional[dict[str, str]] = None) -> OpenSshLogin:
        """Log in with OpenSSH's own client (``ssh HOST true``), its questions answered through SSH_ASKPASS."""
        script, asked = Path(self.tmpdir) / "askpass", Path(self.tmpdir) / "asked"
        script.write_text(ASKPASS)
        script.chmod(0o700)
        asked.write_text("")
        run_env = dict(env or os.environ, SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", RJ_ASKED=str(asked),
                       RJ_PASSWORD=answers.password, RJ_PASSPHRASE=answers.passphrase,
                       RJ_TOTP_SECRET=self.secret if answers.totp else "")
        proc = subprocess.run(["ssh", "-F", config or self.ssh_config, *options, alias, "true"], env=run_env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        questions = [line.strip() for line in asked.read_text().splitlines() if line.strip()]
        asked.unlink()
        return OpenSshLogin(proc.returncode, proc.stderr, questions)

    def sshd_log(self, alias: str) -> str:
        return _read(self.logs[alias]) or ""

    def close(self) -> None:
        """Stop the sshds, remove the PAM files and the directory, lock the password again. Idempotent."""
        for proc in self._procs.values():
            sessions = self._children(proc.pid)
            _kill(sessions)
            _wait_gone(sessions, 1.0)
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = {}
        for service, _lines in HOSTS.values():
            path = os.path.join(PAM_DIR, service)
            if os.path.lexists(path):
                os.unlink(path)
        if self.password:
            _run(["usermod", "-p", "*", self.user], check=False)
            self.password = ""
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = ""

    # ---------------------------------------------------------------- setup steps
    def _check_prerequisites(self) -> None:
        if not self.lab.hosts:
            raise LabUnavailable("the PAM hosts need a started SshLab (its lock and test user)")
        if _ga_module() is None:
            raise LabUnavailable(f"no {GA_MODULE} (apt-get install libpam-google-authenticator)")
        for tool, package in (("oathtool", "oathtool"), ("chpasswd", "passwd"), ("usermod", "passwd")):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"no {tool} on PATH (apt-get install {package})")
        if not os.path.isdir(PAM_DIR):
            raise LabUnavailable(f"no {PAM_DIR}: PAM is not installed")

    def _cleanup_leftovers(self) -> None:
        """What a crashed earlier run left: its sshds (titled ``rjpam-...: ``) and PAM files."""
        stale = [pid for pid in _pids() if (_cmdline(pid) or [""])[0].startswith(SERVICE_PREFIX)]
        if stale:
            _kill(stale + [p for pid in stale for p in self._children(pid)])
            _wait_gone(stale, 2.0)
        for name in os.listdir(PAM_DIR):
            if name.startswith(SERVICE_PREFIX):
                os.unlink(os.path.join(PAM_DIR, name))

    def _make_secrets(self) -> None:
        self.password = "pw-" + secrets.token_urlsafe(12)
        _run(["chpasswd"], input=f"{self.user}:{self.password}\n")
        self.secret = b32encode(secrets.token_bytes(20)).decode().rstrip("=")
        secret_dir = os.path.join(self.tmpdir, "totp")
        os.mkdir(secret_dir, 0o700)
        path = os.path.join(secret_dir, self.user)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:  # TOTP only: no DISALLOW_REUSE, no RATE_LIMIT (tests log in often)
            f.write(f'{self.secret}\n" TOTP_AUTH\n')

    def _write_pam_services(self) -> None:
        totp = f"auth required {GA_MODULE} secret={self.tmpdir}/totp/${{USER}} user=root"
        stacks = {
            "rjpam-password": ["auth required pam_unix.so nodelay"],
            "rjpam-totp": ["auth required pam_unix.so nodelay", totp],
            "rjpam-otp": [totp],
        }
        for service, auth in stacks.items():
            with open(os.path.join(PAM_DIR, service), "w") as f:
                f.write("\n".join([f"# jupyter_rjobs test tier ({self.tmpdir}); removed after the tests", *auth,
                                   "account required pam_unix.so", "session required pam_permit.so"]) + "\n")

    def _start_sshd(self, alias: str) -> None:
        service, lines = HOSTS[alias]
        workdir = os.path.join(self.tmpdir, alias)
        os.mkdir(workdir)
        host_key = os.path.join(workdir, "ssh_host_ed25519_key")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rjlab-{alias}", "-f", host_key])
        program = os.path.join(workdir, service)
        os.symlink(SSHD, program)  # sshd's PAM service is its program name
        config = os.path.join(workdir, "sshd_config")
        self.logs[alias] = os.path.join(workdir, "sshd.log")
        for _attempt in range(3):
            port = _free_port()
            with open(config, "w") as f:
                f.write("\n".join([
                    "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}",
                    f"PidFile {os.path.join(workdir, 'sshd.pid')}", f"AuthorizedKeysFile {self.authorized_keys}",
                    "UsePAM yes", "StrictModes no", *lines, f"AllowUsers {self.user}", "MaxSessions 100",
                    "PrintMotd no", "PrintLastLog no", "UseDNS no", "LogLevel VERBOSE",
                ]) + "\n")
            _run([SSHD, "-t", "-f", config])
            with open(self.logs[alias], "w") as log:  # a new log each attempt
                proc = subprocess.Popen([program, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=log, start_new_session=True)
            if self._listening(alias, proc):
                self._procs[alias], self.ports[alias] = proc, port
                return
        raise RuntimeError(f"sshd of {alias} did not start: {self.sshd_log(alias)[-1000:]}")

    def _listening(self, alias: str, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Server listening on" in self.sshd_log(alias):
                return True
            if proc.poll() is not None:  # the port was taken meanwhile, say
                return False
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False

    def _write_client_files(self) -> None:
        self.known_hosts = os.path.join(self.tmpdir, "known_hosts")
        self.ssh_config = os.path.join(self.tmpdir, "ssh_config")
        with open(self.known_hosts, "w") as f:
            for alias, port in self.ports.items():
                key = (_read(os.path.join(self.tmpdir, alias, "ssh_host_ed25519_key.pub")) or "").split()[:2]
                f.write(f"[127.0.0.1]:{port},[{alias}]:{port} {key[0]} {key[1]}\n")
        with open(self.ssh_config, "w") as f:
            for alias, port in self.ports.items():
                f.write("\n".join([
                    f"Host {alias}", "    HostName 127.0.0.1", f"    Port {port}", f"    User {self.user}",
                    f"    IdentityFile {self.lab.client_key}", "    IdentitiesOnly yes",
                    f"    UserKnownHostsFile {self.known_hosts}", "    GlobalKnownHostsFile /dev/null",
                    "    StrictHostKeyChecking yes", "    ConnectTimeout 10",
                ]) + "\n\n")

    @staticmethod
    def _children(pid: int) -> list[int]:
        from sshlab import _descendants

        return _descendants([pid])
