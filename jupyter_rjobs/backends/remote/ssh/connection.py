"""SSH connections (paramiko): resolved like OpenSSH does, tuned for speed, strict about host keys.

- A host is ``[user@]host[:port]`` or a ``Host`` alias of ``~/.ssh/config`` (HostName, User,
  Port, IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile, StrictHostKeyChecking).
- Every hop (each ProxyJump host, then the target) is resolved with its own settings and its
  host key checked as OpenSSH does (see _known_hosts.py). An unknown key is refused unless the
  user opts in for that hop (``accept_new_host``, or ``StrictHostKeyChecking accept-new`` in
  that host's own settings); a changed or revoked key is always refused.
- A ProxyCommand runs as OpenSSH runs it: ``$SHELL -c "exec CMD"``.
- Sockets get TCP_NODELAY and TCP_USER_TIMEOUT plus keepalives (a dead network is noticed in
  seconds, not minutes); AES-GCM, a 256 KiB packet, a 16 MiB window and a buffer that keeps
  packets whole (chunkpipe.py) for bulk transfer; the client never starts a re-key (paramiko issue #822: a client re-key can stall a busy connection).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import threading
from dataclasses import replace
from typing import Any

import paramiko

from jupyter_rjobs.backends.remote.ssh import chunkpipe
from jupyter_rjobs.backends.remote.ssh.auth import authenticate
from jupyter_rjobs.backends.remote.ssh.config import HostSettings, parse_host_spec, resolve_host
from jupyter_rjobs.backends.remote.ssh.errors import CONNECTION_ERRORS, describe
from jupyter_rjobs.backends.remote.ssh.known_hosts import AcceptNew, AcceptNewHost, KnownHosts
from jupyter_rjobs.core.errors import HostError

__all__ = ["HostSettings", "resolve_host", "parse_host_spec", "SshConnection", "AcceptNew", "AcceptNewHost"]

# paramiko logs a failed handshake or a dropped connection, traceback included, from its transport
# thread; with no handler configured Python would print those on stderr. Our errors say it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# Only the server starts re-keys (paramiko #822); sshd's RekeyLimit still applies.
paramiko.packet.Packetizer.REKEY_BYTES = 2**62
paramiko.packet.Packetizer.REKEY_PACKETS = 2**62

WINDOW_SIZE = 16 * 2**20
MAX_PACKET_SIZE = 256 * 2**10
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _tcp_socket(settings: HostSettings) -> socket.socket:
    host, port = settings.hostname, settings.port
    try:
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
    except socket.gaierror as exc:
        raise HostError(settings.alias, f"cannot resolve {host!r} ({exc.strerror}); check the name or add a Host entry to ~/.ssh/config") from None
    except ConnectionRefusedError:
        raise HostError(settings.alias, f"{host}:{port} refused the connection; is sshd running there, and is the port right?") from None
    except (socket.timeout, TimeoutError):
        raise HostError(settings.alias, f"no answer from {host}:{port} within {settings.connect_timeout:g} s; check the network and the address") from None
    except OSError as exc:
        raise HostError(settings.alias, f"cannot reach {host}:{port} ({exc.strerror or exc}); check the network and the address") from None
    tune_socket(sock)
    return sock


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_USER_TIMEOUT", 5000), ("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class ProxyCommandSocket:
    """A ProxyCommand run as OpenSSH runs it, ``$SHELL -c "exec CMD"`` (so ``$HOME``, ``~`` and
    pipes work), in its own session (a Ctrl-C of the kernel does not kill it), talking SSH over
    one end of a socket pair. Its stderr is kept (the last lines) to say why it failed."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.command = settings.proxy_command or ""
        shell = os.environ.get("SHELL") or "/bin/sh"
        self.sock, theirs = socket.socketpair()
        self._stderr: collections.deque[str] = collections.deque(maxlen=8)
        try:
            self.process = subprocess.Popen(
                [shell, "-c", f"exec {self.command}"], stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            self.sock.close()
            raise HostError(settings.alias, f"cannot start its ProxyCommand with {shell} ({exc.strerror or exc}); check SHELL") from None
        finally:
            theirs.close()
        self._reader = threading.Thread(target=self._drain, name=f"rjob-proxy-{settings.alias}", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        with self.process.stderr:  # ends when the command (and all it started) has gone
            for raw in self.process.stderr:
                text = raw.decode(errors="replace").strip()
                if text:
                    self._stderr.append(text)

    def failure(self) -> HostError:
        """The one-line error for a ProxyCommand that ended, or never spoke SSH."""
        try:
            status: int | None = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            status = None
        self._reader.join(timeout=1)
        said = " / ".join(self._stderr)[-300:] or "no message"
        how = "did not speak SSH" if status is None else f"exited with status {status}" if status >= 0 else f"was killed by signal {-status}"
        return HostError(
            self.settings.alias, f"its ProxyCommand {self.command!r} {how} ({said}); check ProxyCommand for this host in ssh_config"
        )

    def close(self) -> None:
        """Close our end and hang up the command (SIGHUP, as OpenSSH does), reaping it."""
        self.sock.close()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGHUP)
                self.process.wait(timeout=2)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _as_jump_error(exc: HostError, target: str) -> HostError:
    """``exc`` of a jump host, saying whose jump host it is (once, also for several jumps)."""
    if not getattr(exc, "via_jump", False):
        exc.args = (f"{exc.host} (jump host for {target}){str(exc)[len(exc.host):]}",)
        exc.via_jump = True  # type: ignore[attr-defined]
    return exc


class SshConnection:
    """One authenticated SSH transport to a host (through its jump hosts, if any).

    ``accept_new_host`` is the user's opt-in for unknown host keys (see :class:`AcceptNew`):
    ``True`` covers this host, names cover exactly the hosts named, this one or its jumps. Each
    jump host is resolved and checked with its own settings (as OpenSSH does): the target's
    ``StrictHostKeyChecking accept-new`` never reaches its jumps.
    """

    kind = "SSH connection"  # what it is, in messages (see transport.Transport, which this implements)
    errors = CONNECTION_ERRORS  # what paramiko and the socket layer raise when it breaks

    @staticmethod
    def describe(exc: BaseException) -> str:
        """One line for an error of ``errors``."""
        return describe(exc)

    def __init__(self, settings: HostSettings, accept_new_host: AcceptNewHost | AcceptNew = False) -> None:
        self.accept = AcceptNew.of(accept_new_host)
        if not settings.accept_new and self.accept.applies(settings.alias, settings):
            settings = replace(settings, accept_new=True)
        self.settings = settings
        self.transport: paramiko.Transport | None = None
        self._jump: SshConnection | None = None
        self._proxy: ProxyCommandSocket | None = None
        self._lock = threading.Lock()

    # -- connecting -------------------------------------------------------------------
    def open(self) -> SshConnection:
        settings = self.settings
        known = KnownHosts(settings)
        sock = self._channel_to_host()
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
        options = transport.get_security_options()
        supported = tuple(options.ciphers)
        options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in supported) + tuple(c for c in supported if c not in PREFERRED_CIPHERS)
        key_types = tuple(options.key_types)
        preferred = tuple(t for t in known.known_key_types() if t in key_types)
        options.key_types = preferred + tuple(t for t in key_types if t not in preferred)
        try:
            transport.start_client(timeout=settings.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            error = self._handshake_error(exc)  # before the hang-up: a ProxyCommand's own exit status
            self._close_hops()
            raise error from None
        try:
            known.check(transport.get_remote_server_key())
            authenticate(settings, transport)
        except BaseException:
            transport.close()
            self._close_hops()
            raise
        transport.set_keepalive(2)
        self.transport = transport
        return self

    def _channel_to_host(self) -> Any:
        """What the SSH transport runs over: a channel through the last jump host, the
        ProxyCommand's socket, or a tuned TCP socket."""
        settings = self.settings
        if settings.proxy_jump:
            *earlier, jump_spec = settings.proxy_jump
            jump_settings = resolve_host(jump_spec, ssh_config=settings.ssh_config)  # its own settings
            if earlier:
                jump_settings = replace(jump_settings, proxy_jump=tuple(earlier), proxy_command=None)
            try:
                self._jump = SshConnection(jump_settings, self.accept.for_jumps()).open()
            except HostError as exc:
                raise _as_jump_error(exc, settings.alias) from None
            try:
                return self._jump.transport.open_channel(  # type: ignore[union-attr]
                    "direct-tcpip", (settings.hostname, settings.port), ("127.0.0.1", 0), timeout=settings.connect_timeout
                )
            except (paramiko.ChannelException, paramiko.SSHException, OSError) as exc:
                self._jump.close()
                reason = exc.text if isinstance(exc, paramiko.ChannelException) else str(exc) or type(exc).__name__
                raise HostError(settings.alias, f"jump host {jump_spec} cannot reach {settings.hostname}:{settings.port} ({reason})") from None
        if settings.proxy_command:
            self._proxy = ProxyCommandSocket(settings)
            return self._proxy.sock
        return _tcp_socket(settings)

    def _handshake_error(self, exc: BaseException) -> HostError:
        settings = self.settings
        if self._proxy is not None:
            return self._proxy.failure()
        return HostError(settings.alias, f"SSH handshake with {settings.hostname}:{settings.port} failed ({exc}); is it an SSH server?")

    def _close_hops(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        if self._jump is not None:
            self._jump.close()

    # -- using it ---------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def exec(self, command: str) -> paramiko.Channel:
        """Start ``command`` (already shell-quoted) on a new channel of this connection."""
        if self.transport is None:
            raise HostError(self.settings.alias, "not connected")
        channel = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
        chunkpipe.install(channel)  # nothing came in yet: its packets are kept as they come
        channel.exec_command(command)
        return channel

    def run(self, command: str, stdin: bytes = b"", timeout: float | None = 60.0) -> tuple[int, bytes, bytes]:
        """Run ``command`` to its end: (exit status, stdout, stderr)."""
        channel = self.exec(command)
        channel.settimeout(timeout)
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = bytearray(), bytearray()
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out += chunk
            while True:
                chunk = channel.recv_stderr(65536)
                if not chunk:
                    break
                err += chunk
            return channel.recv_exit_status(), bytes(out), bytes(err)
        except socket.timeout:
            raise HostError(self.settings.alias, f"a command did not finish within {timeout:g} s: {command[:80]}") from None
        finally:
            channel.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._close_hops()
