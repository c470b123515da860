"""SSH connections (paramiko): resolved like OpenSSH does, tuned for speed, strict about host keys.

- A host is ``[user@]host[:port]`` or a ``Host`` alias of ``~/.ssh/config`` (HostName, User,
  Port, IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile, StrictHostKeyChecking).
- Host keys are checked against the user's and the system's known_hosts. An unknown key is
  refused unless the user opts in (``accept_new`` or ``StrictHostKeyChecking accept-new``); a
  changed key is always refused.
- Sockets get TCP_NODELAY and TCP_USER_TIMEOUT plus keepalives (a dead network is noticed in
  seconds, not minutes); AES-GCM, a 256 KiB packet and a 16 MiB window for bulk transfer; the
  client never starts a re-key (paramiko issue #822: a client re-key can stall a busy connection).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import replace
from typing import Any

import paramiko

from ._errors import HostError
from ._known_hosts import check_host_key
from ._ssh_auth import authenticate
from ._ssh_config import HostSettings, parse_host_spec, resolve_host

__all__ = ["HostSettings", "resolve_host", "parse_host_spec", "SshConnection"]

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


class SshConnection:
    """One authenticated SSH transport to a host (through its jump hosts, if any)."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.transport: paramiko.Transport | None = None
        self._jump: SshConnection | None = None
        self._lock = threading.Lock()

    # -- connecting -------------------------------------------------------------------
    def open(self) -> SshConnection:
        settings = self.settings
        sock: Any
        if settings.proxy_jump:
            *earlier, last = settings.proxy_jump
            jump_spec = last
            jump_settings = resolve_host(jump_spec, ssh_config=settings.ssh_config, accept_new=settings.accept_new)
            if earlier:
                jump_settings = replace(jump_settings, proxy_jump=tuple(earlier))
            self._jump = SshConnection(jump_settings).open()
            try:
                sock = self._jump.transport.open_channel(  # type: ignore[union-attr]
                    "direct-tcpip", (settings.hostname, settings.port), ("127.0.0.1", 0), timeout=settings.connect_timeout
                )
            except paramiko.ChannelException as exc:
                self._jump.close()
                raise HostError(settings.alias, f"jump host {jump_spec} cannot reach {settings.hostname}:{settings.port} ({exc.text})") from None
        elif settings.proxy_command:
            sock = paramiko.ProxyCommand(settings.proxy_command)
        else:
            sock = _tcp_socket(settings)
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
        options = transport.get_security_options()
        supported = tuple(options.ciphers)
        options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in supported) + tuple(c for c in supported if c not in PREFERRED_CIPHERS)
        try:
            transport.start_client(timeout=settings.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            raise HostError(settings.alias, f"SSH handshake with {settings.hostname}:{settings.port} failed ({exc}); is it an SSH server?") from None
        try:
            check_host_key(settings, transport.get_remote_server_key())
            authenticate(settings, transport)
        except BaseException:
            transport.close()
            if self._jump is not None:
                self._jump.close()
            raise
        transport.set_keepalive(2)
        self.transport = transport
        return self

    # -- using it ---------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def exec(self, command: str) -> paramiko.Channel:
        """Start ``command`` (already shell-quoted) on a new channel of this connection."""
        if self.transport is None:
            raise HostError(self.settings.alias, "not connected")
        channel = self.transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE)
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
        if self._jump is not None:
            self._jump.close()
