"""Where and how to reach a host: ssh_config as OpenSSH reads it, our hosts.ini, and the options
given in the call, merged into one :class:`HostSettings`.

Two resolvers give the same answer: OpenSSH's own (``ssh -G``, used when an ``ssh`` client is on
PATH) and a pure-Python one (``_ssh_config_python``) for machines without it. The environment
variable ``JUPYTER_RJOBS_SSH_RESOLVER=openssh|python`` chooses one explicitly.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from typing import Optional

from jupyter_rjobs.backends.remote.ssh.config_openssh import openssh_options, ssh_program
from jupyter_rjobs.backends.remote.ssh.config_python import python_options
from jupyter_rjobs.backends.remote.ssh.config_rules import ConfigError
from jupyter_rjobs.backends.remote.ssh.tokens import ExpandError, LocalUser, client_tokens, percent_expand, tilde_expand
from jupyter_rjobs.core.errors import HostError

__all__ = ["HostSettings", "resolve_host", "parse_host_spec", "hosts_config_path", "settings_lines", "RESOLVER_ENV"]

HOSTS_CONFIG_ENV = "JUPYTER_RJOBS_HOSTS"
RESOLVER_ENV = "JUPYTER_RJOBS_SSH_RESOLVER"
RESOLVERS = ("openssh", "python")
_READERS = {"openssh": "ssh -G", "python": "jupyter_rjobs' own reader"}
DEFAULT_CONNECT_TIMEOUT = 10.0  # ssh waits for the system's TCP timeout; a job should not


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
    hash_known_hosts: bool = False  # HashKnownHosts: lines we add to known_hosts are hashed
    pubkey_authentication: bool = True
    password_authentication: bool = True
    kbd_interactive_authentication: bool = True
    preferred_authentications: tuple[str, ...] = ("publickey", "keyboard-interactive", "password")
    number_of_password_prompts: int = 3
    python: str = "python3"
    connect_timeout: float | None = 10.0  # None: forever
    ssh_config: str | None = None
    resolved_by: str = ""  # "openssh" (ssh -G) or "python"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this host: ``name``, or ``[name]:port`` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def hosts_config_path() -> str:
    return os.environ.get(HOSTS_CONFIG_ENV) or os.path.expanduser("~/.config/jupyter_rjobs/hosts.ini")


def _our_settings(spec: str, name: str) -> dict[str, str]:
    """Per-host settings the user keeps in hosts.ini (python, user, port, accept_new_host,
    connect_timeout): section ``*``, then the host's name, then the spec as given."""
    parser = configparser.ConfigParser()
    path = hosts_config_path()
    if os.path.exists(path):
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise HostError(spec, f"cannot read {path} ({str(exc).splitlines()[0]}); fix that file") from None
    merged: dict[str, str] = {}
    for section in dict.fromkeys(("*", name, spec)):
        if parser.has_section(section):
            merged.update(parser[section])
    return merged


def parse_host_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``ssh://[user@]host[:port]``) → (user, host, port)."""
    text = spec.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://"):].rstrip("/")
    if not text or any(ch.isspace() for ch in text) or text.startswith("-"):
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
    if not host:
        raise HostError(spec, "not a host: give [user@]host[:port] or a Host alias from ~/.ssh/config")
    return (user or None), host, port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise HostError(spec, f"{text!r} is not a port number")
    return int(text)


def choose_resolver(resolver: Optional[str] = None) -> str:
    """``openssh`` or ``python``: the argument, else $JUPYTER_RJOBS_SSH_RESOLVER, else openssh
    where an ssh client is on PATH."""
    chosen = (resolver or os.environ.get(RESOLVER_ENV) or "").strip().lower()
    if not chosen:
        return "openssh" if ssh_program() else "python"
    if chosen not in RESOLVERS:
        raise HostError(RESOLVER_ENV, f"unknown resolver {chosen!r}; set it to openssh or python")
    return chosen


def resolve_host(
    spec: str,
    *,
    ssh_config: str | None = None,
    python: str | None = None,
    accept_new: bool | None = None,
    resolver: str | None = None,
    local_user: LocalUser | None = None,
) -> HostSettings:
    """Settings for ``spec`` (``[user@]host[:port]`` or a Host alias), as OpenSSH resolves them.

    ``ssh_config``: None reads ~/.ssh/config and /etc/ssh/ssh_config, as ssh does; a path is
    ``ssh -F PATH`` (only that file; ``none``: no file). User and port given in ``spec`` or in
    hosts.ini act like ``ssh -l``/``-p``. ``accept_new=True`` lets THIS host's unknown key be
    accepted; otherwise only its own StrictHostKeyChecking accept-new/no (or hosts.ini
    accept_new_host) does. ``local_user`` (tests): whose passwd entry ``~`` and ``%d`` use."""
    user, name, port = parse_host_spec(spec)
    ours = _our_settings(spec, name)
    user = user or ours.get("user") or None
    if port is None and ours.get("port"):
        port = _port(spec, ours["port"].strip())
    chosen = choose_resolver(resolver)
    local = local_user or LocalUser.current()
    try:
        if chosen == "openssh":
            options = openssh_options(name, config=ssh_config, user=user, port=port)
        else:
            options = python_options(name, config=ssh_config, user=user, port=port, local=local)
        return _settings(spec, name, options, ours, local, ssh_config=ssh_config, python=python,
                         accept_new=bool(accept_new), resolved_by=chosen)
    except (ConfigError, ExpandError) as exc:  # the message names the file and line, or the name
        raise HostError(spec, f"{exc} (ssh_config read by {_READERS[chosen]})") from None


def _settings(
    spec: str, host_arg: str, options: dict[str, list[str]], ours: dict[str, str], local: LocalUser, *,
    ssh_config: str | None, python: str | None, accept_new: bool, resolved_by: str,
) -> HostSettings:
    """``ssh -G``'s lines as HostSettings, with the expansions ssh does after ``-G``: IdentityFile
    (``~``, ``%`` tokens, ``${VAR}``) and ProxyCommand (``%h %k %n %p %r``)."""
    first = {key: values[0] for key, values in options.items()}
    host, user, port = first["hostname"], first["user"], int(first["port"])
    alias = first.get("hostkeyalias")
    tokens = client_tokens(local, host=host, host_arg=host_arg, port=port, user=user, key_alias=alias or host_arg)
    identities = tuple(
        percent_expand(tilde_expand(path, local), tokens, dollar=True)
        for path in options.get("identityfile", []) if path.lower() != "none"
    )
    proxy_command = first.get("proxycommand")
    if proxy_command is not None:
        proxy_command = percent_expand(proxy_command, {"h": host, "k": alias or host_arg, "n": host_arg,
                                                       "p": str(port), "r": user})
    strict = first.get("stricthostkeychecking", "ask")
    timeout = first.get("connecttimeout", "none")
    fallback = float(ours["connect_timeout"]) if ours.get("connect_timeout") else DEFAULT_CONNECT_TIMEOUT
    preferred = first.get("preferredauthentications")
    return HostSettings(
        alias=spec,
        hostname=host,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=first.get("identitiesonly") == "yes",
        identity_agent=_agent(first.get("identityagent")),
        proxy_jump=tuple(first["proxyjump"].split(",")) if "proxyjump" in first else (),
        proxy_command=proxy_command,
        known_hosts_files=_files(first.get("userknownhostsfile")),
        global_known_hosts_files=_files(first.get("globalknownhostsfile")),
        host_key_alias=alias,
        strict_host_key_checking=strict,
        accept_new=accept_new or strict in ("accept-new", "false")
        or ours.get("accept_new_host", "").strip().lower() in ("yes", "true", "1"),
        batch_mode=first.get("batchmode") == "yes",
        hash_known_hosts=first.get("hashknownhosts") == "yes",
        pubkey_authentication=first.get("pubkeyauthentication", "true") != "false",
        password_authentication=first.get("passwordauthentication", "yes") == "yes",
        kbd_interactive_authentication=first.get("kbdinteractiveauthentication", "yes") == "yes",
        preferred_authentications=tuple(preferred.split(",")) if preferred else HostSettings.preferred_authentications,
        number_of_password_prompts=int(first.get("numberofpasswordprompts", "3")),
        python=python or ours.get("python") or "python3",
        connect_timeout=fallback if timeout == "none" else (float(timeout) or None),
        ssh_config=ssh_config,
        resolved_by=resolved_by,
    )


def _files(value: str | None) -> tuple[str, ...]:
    return () if value is None or value.lower() == "none" else tuple(value.split())


def _agent(value: str | None) -> str | None:
    """IdentityAgent as ssh uses it: None for $SSH_AUTH_SOCK, ``none``, or a socket path."""
    if value is None or value in ("SSH_AUTH_SOCK", "$SSH_AUTH_SOCK"):
        return None
    if value.startswith("$") and not value.startswith("${"):
        return os.environ.get(value[1:]) or "none"
    return value


def settings_lines(settings: HostSettings) -> list[str]:
    """``key value`` lines in ``ssh -G``'s words (IdentityFile and ProxyCommand expanded), then
    jupyter_rjobs' own: for ``%rjob host show``."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    lines = [
        f"host {settings.alias}", f"user {settings.user}", f"hostname {settings.hostname}", f"port {settings.port}",
        f"batchmode {yes(settings.batch_mode)}", f"hashknownhosts {yes(settings.hash_known_hosts)}", f"identitiesonly {yes(settings.identities_only)}",
        f"kbdinteractiveauthentication {yes(settings.kbd_interactive_authentication)}",
        f"passwordauthentication {yes(settings.password_authentication)}",
        f"pubkeyauthentication {'true' if settings.pubkey_authentication else 'false'}",
        f"stricthostkeychecking {settings.strict_host_key_checking}",
        f"numberofpasswordprompts {settings.number_of_password_prompts}",
    ]
    if settings.host_key_alias:
        lines.append(f"hostkeyalias {settings.host_key_alias}")
    if settings.identity_agent:
        lines.append(f"identityagent {settings.identity_agent}")
    lines.append(f"preferredauthentications {','.join(settings.preferred_authentications)}")
    lines += [f"identityfile {path}" for path in settings.identity_files]
    lines.append(f"globalknownhostsfile {' '.join(settings.global_known_hosts_files) or 'none'}")
    lines.append(f"userknownhostsfile {' '.join(settings.known_hosts_files) or 'none'}")
    timeout = settings.connect_timeout
    lines.append(f"connecttimeout {'none' if timeout is None else format(timeout, 'g')}")
    if settings.proxy_jump:
        lines.append(f"proxyjump {','.join(settings.proxy_jump)}")
    elif settings.proxy_command:
        lines.append(f"proxycommand {settings.proxy_command}")
    lines += [f"python {settings.python}", f"acceptnewhost {yes(settings.accept_new)}",
              f"sshconfig {settings.ssh_config or 'default'}", f"resolvedby {settings.resolved_by}"]
    return lines
