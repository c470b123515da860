"""How the kernel reaches a host's agent: the small typed seam between :class:`HostConnection` and
what carries its bytes. Two implement it: an SSH connection (ssh/connection.py, to any host) and
:class:`LocalTransport` (``localhost``: this machine, a local shell and a pipe, no SSH, no sshd).

The agent, its install into the versioned cache directory and its protocol are the same for both;
only the transport differs. The name ``localhost``, exactly, is this machine through a local pipe,
whatever ssh_config says of it; anything else (``127.0.0.1``, ``me@localhost``, ``localhost:22``, an
alias) goes over SSH.

The local agent server runs in a session of its own (``start_new_session``), so a kernel's
restart or SIGKILL (jupyter_client signals the kernel's whole process group) never reaches it: it
sees its stdin end, as a host's server sees its SSH channel end, and then lets its detached work
go on and ends the rest (agent/orphan.py).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from typing import IO, Protocol

__all__ = ["Channel", "Transport", "LocalTransport", "LOCAL_HOST", "is_local_host"]

LOCAL_HOST = "localhost"


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine's local agent (no SSH): exactly ``localhost``."""
    return host == LOCAL_HOST


class Channel(Protocol):
    """A running command's streams, as a paramiko channel offers them."""

    def recv(self, size: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def recv_stderr_ready(self) -> bool: ...
    def recv_stderr(self, size: int) -> bytes: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


class Transport(Protocol):
    """What HostConnection needs from the way to a host: start a command and talk to it through
    its streams, run one to its end, and close; ``kind`` names it in messages, ``errors`` are what
    it raises when it breaks, ``describe`` says one of them in one line."""

    kind: str
    errors: tuple[type[BaseException], ...]  # what its operations raise when it breaks

    @property
    def alive(self) -> bool: ...
    def describe(self, exc: BaseException) -> str: ...
    def exec(self, command: str) -> Channel: ...
    def run(self, command: str, stdin: bytes = b"", timeout: float | None = 60.0) -> tuple[int, bytes, bytes]: ...
    def close(self) -> None: ...


class LocalChannel:
    """A command run by ``/bin/sh`` on this machine, in a session of its own: stdin and stdout are
    pipes; stderr goes to an unnamed private file (a pipe nobody reads could block it, and a
    server that outlives its kernel must not fail writing to it)."""

    def __init__(self, command: str) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # the process writes to it for its life
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            bufsize=0, close_fds=True, start_new_session=True,
        )
        self._read_at = 0
        threading.Thread(target=self.process.wait, name=f"rjob-local-{self.process.pid}", daemon=True).start()  # no zombie

    def recv(self, size: int) -> bytes:
        stdout = self.process.stdout
        if stdout is None or stdout.closed:
            return b""
        try:
            return os.read(stdout.fileno(), size)
        except (OSError, ValueError):  # closed under us (close() from another thread)
            return b""

    def recv_into(self, view: memoryview) -> int:
        """Read straight into ``view`` (a big buffer: no copy); 0 once the pipe ended or was closed."""
        stdout = self.process.stdout
        if stdout is None or stdout.closed:
            return 0
        try:
            return os.readv(stdout.fileno(), [view])
        except (OSError, ValueError):  # closed under us (close() from another thread)
            return 0

    def sendall(self, data: bytes) -> None:
        stdin = self.process.stdin
        try:
            fd = stdin.fileno() if stdin is not None else -1
        except ValueError:  # closed (the connection was closed meanwhile)
            fd = -1
        if fd < 0:
            raise BrokenPipeError("the local agent's stdin is closed")
        view = memoryview(data).cast("B")
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def recv_stderr_ready(self) -> bool:
        return os.fstat(self._stderr.fileno()).st_size > self._read_at

    def recv_stderr(self, size: int) -> bytes:
        data = os.pread(self._stderr.fileno(), size, self._read_at)
        self._read_at += len(data)
        return data

    def shutdown_write(self) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            stdin.close()

    def close(self) -> None:
        """Close our ends (the process sees its stdin end and goes on as it decides)."""
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()


class LocalTransport:
    """This machine, as a host: commands run by ``/bin/sh`` as this user, in sessions of their own."""

    kind = "local pipe"
    errors: tuple[type[BaseException], ...] = (OSError, EOFError)

    def __init__(self) -> None:
        self._closed = False
        self._channels: list[LocalChannel] = []

    def open(self) -> LocalTransport:
        return self

    @property
    def alive(self) -> bool:
        return not self._closed

    @staticmethod
    def describe(exc: BaseException) -> str:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return " ".join(str(text).split())

    def exec(self, command: str) -> LocalChannel:
        channel = LocalChannel(command)
        self._channels.append(channel)
        return channel

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = 60.0) -> tuple[int, bytes, bytes]:
        """Run ``command`` to its end: (exit status, stdout, stderr)."""
        try:
            done = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"a command did not finish within {timeout:g} s: {command[:80]}") from None
        return done.returncode, done.stdout, done.stderr

    def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            channel.close()
        self._channels.clear()

