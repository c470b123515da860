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

import configparser
import getpass
import os
import socket
import threading
from dataclasses import dataclass, replace
from typing import Any

import paramiko

from ._errors import AuthenticationError, HostError, HostKeyError

__all__ = ["HostSettings", "resolve_host", "SshConnection"]

# Only the server starts re-keys (paramiko #822); sshd's RekeyLimit still applies.
paramiko.packet.Packetizer.REKEY_BYTES = 2**62
paramiko.packet.Packetizer.REKEY_PACKETS = 2**62

WINDOW_SIZE = 16 * 2**20
MAX_PACKET_SIZE = 256 * 2**10
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
HOSTS_CONFIG_ENV = "JUPYTER_RJOBS_HOSTS"


@dataclass(frozen=True)
class HostSettings:
    """Everything needed to reach one host, after ~/.ssh/config and our hosts file are applied."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None
    known_hosts_files: tuple[str, ...] = ()
    accept_new: bool = False
    python: str = "python3"
    connect_timeout: float = 10.0
    ssh_config: str | None = None

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``name``, or ``[name]:port`` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def hosts_config_path() -> str:
    return os.environ.get(HOSTS_CONFIG_ENV) or os.path.expanduser("~/.config/jupyter_rjobs/hosts.ini")


def _our_settings(alias: str) -> dict[str, str]:
    """Per-host settings the user keeps in hosts.ini: one section per host (python, user, port...)."""
    parser = configparser.ConfigParser()
    path = hosts_config_path()
    if os.path.exists(path):
        parser.read(path)
    merged: dict[str, str] = dict(parser["*"]) if parser.has_section("*") else {}
    if parser.has_section(alias):
        merged.update(parser[alias])
    return merged


def parse_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` → (user, host, port)."""
    text = spec.strip()
    if not text or any(ch.isspace() for ch in text):
        raise HostError(spec, "not a host: give [user@]host[:port] or a Host alias from ~/.ssh/config")
    user, _, rest = text.rpartition("@")
    port: int | None = None
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = _port(spec, tail[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = _port(spec, port_text)
    else:
        host = rest
    return (user or None), host, port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise HostError(spec, f"{text!r} is not a port number")
    return int(text)


def resolve_host(
    spec: str,
    *,
    ssh_config: str | None = None,
    python: str | None = None,
    accept_new: bool | None = None,
) -> HostSettings:
    """Settings for ``spec``: its ~/.ssh/config entry, then hosts.ini, then the explicit arguments."""
    user, name, port = parse_host_spec(spec)
    config_path = ssh_config or os.path.expanduser("~/.ssh/config")
    found: dict[str, Any] = {"hostname": name}
    if os.path.exists(config_path):
        try:
            found = paramiko.SSHConfig.from_path(config_path).lookup(name)
        except Exception as exc:  # noqa: BLE001 - paramiko raises several kinds for a bad file
            raise HostError(spec, f"cannot read {config_path} ({exc}); fix that file") from None
    ours = _our_settings(spec) or _our_settings(name)
    known = found.get("userknownhostsfile")
    known_files = tuple(os.path.expanduser(p) for p in (known.split() if known else ["~/.ssh/known_hosts"]))
    strict = str(found.get("stricthostkeychecking", "yes")).lower()
    jumps = found.get("proxyjump")
    settings = HostSettings(
        alias=spec,
        hostname=found.get("hostname", name),
        port=port or int(ours.get("port") or found.get("port") or 22),
        user=user or ours.get("user") or found.get("user") or getpass.getuser(),
        identity_files=tuple(os.path.expanduser(p) for p in found.get("identityfile", [])),
        identities_only=str(found.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=tuple(j.strip() for j in jumps.split(",")) if jumps and jumps.lower() != "none" else (),
        proxy_command=found.get("proxycommand") if str(found.get("proxycommand", "none")).lower() != "none" else None,
        known_hosts_files=known_files + (SYSTEM_KNOWN_HOSTS,),
        accept_new=strict in ("accept-new", "no", "off") or ours.get("accept_new_host", "").lower() in ("yes", "true"),
        python=python or ours.get("python") or "python3",
        connect_timeout=float(found.get("connecttimeout") or ours.get("connect_timeout") or 10),
        ssh_config=ssh_config,
    )
    if accept_new is not None and accept_new:
        settings = replace(settings, accept_new=True)
    return settings


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
            self._check_host_key(transport)
            self._authenticate(transport)
        except BaseException:
            transport.close()
            if self._jump is not None:
                self._jump.close()
            raise
        transport.set_keepalive(2)
        self.transport = transport
        return self

    def _check_host_key(self, transport: paramiko.Transport) -> None:
        settings = self.settings
        key = transport.get_remote_server_key()
        name = settings.known_hosts_name
        known = paramiko.HostKeys()
        for path in settings.known_hosts_files:
            if os.path.exists(path):
                try:
                    known.load(path)
                except OSError:
                    continue
        entry = known.lookup(name)
        fingerprint = key.fingerprint
        if entry is not None:
            if entry.get(key.get_name()) == key:
                return
            raise HostKeyError(
                settings.alias,
                f"THE HOST KEY OF {name} HAS CHANGED (now {key.get_name()} {fingerprint}); refused. If the host was"
                f" really rebuilt, remove its old line with `ssh-keygen -R '{name}'` and connect again",
                changed=True,
            )
        if not settings.accept_new:
            raise HostKeyError(
                settings.alias,
                f"unknown host key for {name} ({key.get_name()} {fingerprint}); refused. Check the fingerprint, then"
                " accept it with --accept-new-host (or StrictHostKeyChecking accept-new in ~/.ssh/config)",
                changed=False,
            )
        self._remember(name, key)

    def _remember(self, name: str, key: paramiko.PKey) -> None:
        path = self.settings.known_hosts_files[0]
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a") as known_hosts:
            known_hosts.write(f"{name} {key.get_name()} {key.get_base64()}\n")

    def _candidate_keys(self) -> list[tuple[str, paramiko.PKey | None, str]]:
        """(label, key or None, why not loaded) in the order OpenSSH tries them."""
        candidates: list[tuple[str, paramiko.PKey | None, str]] = []
        if not self.settings.identities_only:
            try:
                for agent_key in paramiko.Agent().get_keys():
                    candidates.append((f"agent key {agent_key.get_name()}", agent_key, ""))
            except paramiko.SSHException:
                pass
        paths = list(self.settings.identity_files)
        if not paths or not self.settings.identities_only:
            paths += [os.path.expanduser(f"~/.ssh/{name}") for name in DEFAULT_KEYS if os.path.expanduser(f"~/.ssh/{name}") not in paths]
        for path in paths:
            if not os.path.exists(path):
                continue
            try:
                candidates.append((path, paramiko.PKey.from_path(path), ""))
            except paramiko.PasswordRequiredException:
                candidates.append((path, None, "encrypted: load it into ssh-agent"))
            except (paramiko.SSHException, OSError, ValueError) as exc:
                candidates.append((path, None, f"unreadable: {exc}"))
        return candidates

    def _authenticate(self, transport: paramiko.Transport) -> None:
        settings = self.settings
        tried: list[str] = []
        for label, key, why_not in self._candidate_keys():
            if key is None:
                tried.append(f"{label} ({why_not})")
                continue
            try:
                transport.auth_publickey(settings.user, key)
            except paramiko.AuthenticationException:
                tried.append(label)
                continue
            except paramiko.SSHException as exc:
                raise HostError(settings.alias, f"authentication failed ({exc})") from None
            if transport.is_authenticated():
                return
        raise AuthenticationError(
            settings.alias,
            f"{settings.user}@{settings.hostname} refused every key tried ({', '.join(tried) or 'no key found'}); put your"
            " public key in ~/.ssh/authorized_keys there, or name the right one with IdentityFile in ~/.ssh/config",
        )

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
