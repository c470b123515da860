"""Where and how to reach a host: ``~/.ssh/config`` (as OpenSSH reads it), our hosts.ini, and
the options given in the call, merged into one :class:`HostSettings`."""

from __future__ import annotations

import configparser
import getpass
import os
from dataclasses import dataclass, replace
from typing import Any

import paramiko

from ._errors import HostError

__all__ = ["HostSettings", "resolve_host", "parse_host_spec", "hosts_config_path"]

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
HOSTS_CONFIG_ENV = "JUPYTER_RJOBS_HOSTS"


@dataclass(frozen=True)
class HostSettings:
    """Everything needed to reach one host (one hop), after ~/.ssh/config and our hosts file are
    applied. Field names follow ``ssh -G``'s keys; paths are expanded, tokens substituted."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    # IdentityFile in OpenSSH's order; OpenSSH's default list when none is configured
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    identity_agent: str | None = None  # IdentityAgent: a socket path, or None for $SSH_AUTH_SOCK; "none" disables
    proxy_jump: tuple[str, ...] = ()  # each hop a spec resolved with its own settings
    proxy_command: str | None = None  # tokens expanded; run as ``$SHELL -c "exec CMD"``
    known_hosts_files: tuple[str, ...] = ()  # UserKnownHostsFile, expanded (the first is written to)
    global_known_hosts_files: tuple[str, ...] = ()  # GlobalKnownHostsFile
    host_key_alias: str | None = None  # HostKeyAlias: the name looked up in known_hosts instead
    strict_host_key_checking: str = "ask"  # as ssh -G prints it: true, false, accept-new, ask
    accept_new: bool = False  # an unknown key of THIS hop may be accepted and remembered
    batch_mode: bool = False
    pubkey_authentication: bool = True
    password_authentication: bool = True
    kbd_interactive_authentication: bool = True
    preferred_authentications: tuple[str, ...] = ("publickey", "keyboard-interactive", "password")
    number_of_password_prompts: int = 3
    python: str = "python3"
    connect_timeout: float | None = 10.0  # None: forever
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


