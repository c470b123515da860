"""Logging in: ssh-agent keys, then identity files, in the order OpenSSH tries them."""

from __future__ import annotations

import os

import paramiko

from ._errors import AuthenticationError, HostError
from ._ssh_config import HostSettings

__all__ = ["authenticate"]

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def _candidate_keys(settings: HostSettings) -> list[tuple[str, paramiko.PKey | None, str]]:
    """(label, key or None, why not loaded) in the order OpenSSH tries them."""
    candidates: list[tuple[str, paramiko.PKey | None, str]] = []
    if not settings.identities_only:
        try:
            for agent_key in paramiko.Agent().get_keys():
                candidates.append((f"agent key {agent_key.get_name()}", agent_key, ""))
        except paramiko.SSHException:
            pass
    paths = list(settings.identity_files)
    if not paths or not settings.identities_only:
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


def authenticate(settings: HostSettings, transport: paramiko.Transport) -> None:
    """Authenticate ``transport`` as ``settings.user``, or raise one clear error."""
    tried: list[str] = []
    for label, key, why_not in _candidate_keys(settings):
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
