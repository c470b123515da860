"""Expansion as OpenSSH does it: ``%`` tokens, ``${ENV}``, ``~`` (with the passwd home), and who
the local user is. Shared by both ssh_config resolvers and by the settings built from them."""

from __future__ import annotations

import hashlib
import os
import pwd
import socket
from dataclasses import dataclass
from typing import Mapping

__all__ = ["LocalUser", "ExpandError", "percent_expand", "dollar_expand", "tilde_expand", "connection_hash", "client_tokens"]


class ExpandError(ValueError):
    """A value OpenSSH would refuse to expand (an unknown ``%`` token, a missing ``${VAR}``, ...)."""


@dataclass(frozen=True)
class LocalUser:
    """Who runs ssh, as OpenSSH sees it: the passwd entry of the real uid (not ``$HOME``)."""

    name: str
    uid: int
    home: str
    hostname: str  # gethostname(): %l; %L is the part before the first dot

    @classmethod
    def current(cls) -> LocalUser:
        uid = os.getuid()
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:  # no passwd entry (some containers): the environment is all there is
            name, home = os.environ.get("USER") or str(uid), os.path.expanduser("~")
        return cls(name=name, uid=uid, home=home, hostname=socket.gethostname())

    @property
    def shorthost(self) -> str:
        return self.hostname.split(".", 1)[0]


def dollar_expand(text: str) -> str:
    """Only ``${VAR}`` (OpenSSH's ``dollar_expand``); ``%`` is left alone."""
    return percent_expand(text, None, dollar=True)


def percent_expand(text: str, tokens: Mapping[str, str] | None, *, dollar: bool = False) -> str:
    """OpenSSH's ``percent_expand`` (and ``percent_dollar_expand`` with ``dollar``): ``%%`` is ``%``,
    ``%X`` one of ``tokens``, ``${VAR}`` the environment; anything else raises :class:`ExpandError`.
    ``tokens=None``: no ``%`` expansion at all."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if dollar and text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise ExpandError(f"environment variable {text[i:]!r} has no closing '}}'")
            name = text[i + 2 : end]
            if not name:
                raise ExpandError("zero-length environment variable ${}")
            if name not in os.environ:
                raise ExpandError(f"environment variable ${{{name}}} has no value")
            out.append(os.environ[name])
            i = end + 1
            continue
        if char != "%" or tokens is None:
            out.append(char)
            i += 1
            continue
        if i + 1 >= len(text):
            raise ExpandError(f"{text!r} ends with a lone '%'")
        key = text[i + 1]
        if key == "%":
            out.append("%")
        elif key in tokens:
            out.append(tokens[key])
        else:
            raise ExpandError(f"unknown token %{key} in {text!r} (this keyword allows %{' %'.join(sorted(tokens))})")
        i += 2
    return "".join(out)


def tilde_expand(path: str, local: LocalUser) -> str:
    """``~`` and ``~/x`` use the passwd home (as ssh does, not ``$HOME``); ``~user/x`` that user's."""
    if not path.startswith("~"):
        return path
    rest = path[1:]
    if rest == "" or rest.startswith("/"):
        home, tail = local.home, rest.lstrip("/")
    else:
        user, _, tail = rest.partition("/")
        tail = tail.lstrip("/")
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            raise ExpandError(f"no such user {user!r} in {path!r}") from None
    return home + ("" if home.endswith("/") else "/") + tail


def connection_hash(thishost: str, host: str, port: str, user: str) -> str:
    """``%C``: SHA-1 of local host name, remote host, port and remote user (OpenSSH 9.2)."""
    return hashlib.sha1((thishost + host + port + user).encode()).hexdigest()


def client_tokens(local: LocalUser, *, host: str, host_arg: str, port: int, user: str, key_alias: str) -> dict[str, str]:
    """ssh's DEFAULT_CLIENT_PERCENT_EXPAND_ARGS: the tokens of IdentityFile, UserKnownHostsFile,
    IdentityAgent, ControlPath, ... (%C %L %i %k %l %n %p %d %h %r %u)."""
    return {
        "C": connection_hash(local.hostname, host, str(port), user),
        "L": local.shorthost,
        "i": str(local.uid),
        "k": key_alias,
        "l": local.hostname,
        "n": host_arg,
        "p": str(port),
        "d": local.home,
        "h": host,
        "r": user,
        "u": local.name,
    }
