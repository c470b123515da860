"""Host key checking as OpenSSH does it: known_hosts files, unknown and changed keys."""

from __future__ import annotations

import os

import paramiko

from ._errors import HostKeyError
from ._ssh_config import HostSettings

__all__ = ["check_host_key"]


def check_host_key(settings: HostSettings, key: paramiko.PKey) -> None:
    """Return if ``key`` is the known key of ``settings``' host (or may be accepted and was
    remembered); raise :class:`HostKeyError` otherwise."""
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
    _remember(settings, name, key)


def _remember(settings: HostSettings, name: str, key: paramiko.PKey) -> None:
    path = settings.known_hosts_files[0]
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as known_hosts:
        known_hosts.write(f"{name} {key.get_name()} {key.get_base64()}\n")
