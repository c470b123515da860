"""One Dask process (a scheduler, or a host's workers) on an SSH host, run by the supervisor of
``ssh_supervisor.py`` on its own channel: its JSON lines, the tail of its stderr, stopping it.

The channel is the process's lifeline: ``stop`` asks the supervisor to end the process tree and
waits until it has; a channel that closes (this kernel closed the connection, died, or lost it)
ends the tree as well, unless the process was started detached.
"""

from __future__ import annotations

import collections
import json
import shlex
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from jupyter_rjobs.backends.remote.ssh.connection import SshConnection
from jupyter_rjobs.backends.remote.ssh.errors import CONNECTION_ERRORS, describe
from jupyter_rjobs.core.errors import HostError

__all__ = ["HostProcess", "supervisor_command"]

STDERR_LINES = 20


@lru_cache(maxsize=None)
def _supervisor_source() -> str:
    return (Path(__file__).with_name("ssh_supervisor.py")).read_text()


def supervisor_command(python: str, spec: dict[str, Any]) -> str:
    """The shell command that runs the supervisor with ``spec`` under ``python`` on a host."""
    code = _supervisor_source()  # run as __main__: it reads its spec from argv
    return f"exec {shlex.quote(python)} -u -c {shlex.quote(code)} {shlex.quote(json.dumps(spec))}"


class HostProcess:
    """A supervised Dask process on ``host``; ``role`` says which (for messages)."""

    def __init__(self, host: str, role: str, connection: SshConnection, python: str, spec: dict[str, Any],
                 hint: str = "") -> None:
        self.host = host
        self.role = role
        self.hint = hint  # what to check when it does not start
        self.detached = bool(spec.get("detached"))
        self.log = spec.get("log")
        self.pid = 0
        self.start = 0
        self._connection = connection
        self._messages: list[dict[str, Any]] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._changed = threading.Condition()
        self._ended = False
        try:
            self._channel = connection.exec(supervisor_command(python, spec))
        except CONNECTION_ERRORS as exc:
            raise HostError(host, f"could not start the Dask {role} there ({describe(exc)}); try again") from None
        for target, name in ((self._read_stdout, "out"), (self._read_stderr, "err")):
            threading.Thread(target=target, name=f"rjob-dask-{host}-{role}-{name}", daemon=True).start()

    # -- reading what the supervisor says -------------------------------------------
    def _read_stdout(self) -> None:
        try:
            for raw in self._channel.makefile("rb"):
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(message, dict):
                    with self._changed:
                        self._messages.append(message)
                        self._changed.notify_all()
        except CONNECTION_ERRORS:
            pass
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        try:
            for raw in self._channel.makefile_stderr("rb"):
                text = raw.decode(errors="replace").rstrip()
                if text:
                    self._stderr.append(text)
        except CONNECTION_ERRORS:
            pass

    @property
    def ended(self) -> bool:
        """Whether the supervisor has gone (its process ended, was stopped, or the channel closed)."""
        return self._ended

    def why(self) -> str:
        """The last useful line of the process's stderr (what a failure says), or how it ended."""
        for line in reversed(self._stderr):
            if "Traceback" not in line and not line.startswith("  "):
                return line.strip()[-300:]
        exited = [m["exited"] for m in self._messages if "exited" in m]
        return f"it exited with status {exited[0]}" if exited else "it ended without a message"

    def wait_for(self, key: str, deadline: float | None) -> dict[str, Any]:
        """The first message carrying ``key``; a HostError naming why if the process ended first
        or ``deadline`` (time.monotonic) passed."""
        with self._changed:
            while True:
                for message in self._messages:
                    if key in message:
                        return message
                if self._ended:
                    self._stderr_settle()
                    raise HostError(self.host, f"the Dask {self.role} there did not start: {self.why()}{self.hint}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    said = f" (it said: {self._stderr[-1].strip()[-200:]})" if self._stderr else ""
                    raise HostError(self.host, f"the Dask {self.role} there did not start in time{said}; give it a longer timeout")
                self._changed.wait(left)

    def _stderr_settle(self) -> None:
        """Give the stderr reader a moment to catch the last lines of a process that ended."""
        if self._channel.exit_status_ready():
            deadline = time.monotonic() + 2
            while not self._channel.eof_received and time.monotonic() < deadline:
                time.sleep(0.01)

    def started(self, deadline: float | None) -> None:
        """Wait for the supervisor's first line: the Dask process's pid and start time."""
        first = self.wait_for("pid", deadline)
        self.pid, self.start = int(first["pid"]), int(first.get("start") or 0)

    # -- stopping -------------------------------------------------------------------------
    def ask_stop(self) -> bool:
        """Ask the supervisor to end the process tree; False if the channel is gone."""
        if self._ended:
            return False
        try:
            self._channel.sendall(b"stop\n")
            return True
        except CONNECTION_ERRORS:
            return False

    def wait_stopped(self, deadline: float | None) -> bool:
        """Wait until the supervisor has ended the tree and exited (sshd reports its exit status
        once it has reaped it); False if ``deadline`` passed."""
        with self._changed:
            while not self._ended:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        while not self._channel.exit_status_ready() and not self._channel.closed:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close_channel(self) -> None:
        try:
            self._channel.close()
        except CONNECTION_ERRORS:
            pass

    def kill_spec(self) -> dict[str, Any]:
        """What the supervisor's ``kill`` mode needs to end this process from a new connection."""
        return {"mode": "kill", "pid": self.pid, "start": self.start, "log": self.log}
