"""Host key checking as OpenSSH does it (hostfile.c, and check_host_key in sshconnect.c).

- The user's files (UserKnownHostsFile, the first is written to) and the global ones
  (GlobalKnownHostsFile, default ``/etc/ssh/ssh_known_hosts`` and ``ssh_known_hosts2``).
- A host is looked up as HostKeyAlias, else ``host`` on port 22 and ``[host]:port`` elsewhere; a
  bare ``host`` line is accepted too on another port when it has the key (as OpenSSH does).
- Name fields: hashed (``|1|salt|hash``), comma lists, wildcards ``*`` ``?``, negation ``!``.
- ``@revoked`` lines: that key is refused, whatever else lists it. ``@cert-authority`` lines are
  read but do not vouch for a plain key; we do not check host certificates, so a host known
  only through a CA is refused, saying so. Comments, blank and malformed lines are skipped.
- Unknown key: refused unless this hop may accept it (then remembered as OpenSSH writes it);
  a changed key is always refused (also with ``StrictHostKeyChecking no``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import paramiko

from jupyter_rjobs.backends.remote.ssh.config import HostSettings, parse_host_spec
from jupyter_rjobs.core.errors import HostKeyError

__all__ = ["check_host_key", "KnownHosts", "AcceptNew", "AcceptNewHost", "DEFAULT_GLOBAL_FILES"]

log = logging.getLogger(__name__)

DEFAULT_GLOBAL_FILES = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
CA_MARKER, REVOKED_MARKER = "@cert-authority", "@revoked"
_PLAIN_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com", "sk-ssh-ed25519@openssh.com", "ssh-xmss@openssh.com",
)
KEY_TYPES = frozenset(_PLAIN_TYPES) | {t.replace("@openssh.com", "") + "-cert-v01@openssh.com" for t in _PLAIN_TYPES}
# host key algorithms paramiko negotiates for a key type found in known_hosts
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}

AcceptNewHost = Union[bool, str, Sequence[str], None]


@dataclass(frozen=True)
class AcceptNew:
    """Which hops the user's ``--accept-new-host`` covers: ``True`` (bare flag) the target host(s)
    only; ``"jump1,server01"`` or ``["jump1", "server01"]`` exactly the hosts named (targets or
    jumps, by alias, spec, host name or HostKeyAlias)."""

    targets: bool = False
    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, value: AcceptNewHost | AcceptNew) -> AcceptNew:
        if isinstance(value, AcceptNew):
            return value
        if value is None or value is False:
            return cls()
        if value is True:
            return cls(targets=True)
        parts = value.split(",") if isinstance(value, str) else list(value)
        names = frozenset(str(p).strip().lower() for p in parts if str(p).strip())
        return cls(names=names) if names else cls(targets=True)

    def for_jumps(self) -> AcceptNew:
        """The same choice seen from a jump host: the bare flag does not reach it."""
        return AcceptNew(False, self.names)

    def applies(self, spec: str, settings: HostSettings) -> bool:
        """Whether this hop (reached as ``spec``, resolved to ``settings``) may accept a new key."""
        if self.targets:
            return True
        if not self.names:
            return False
        _, host, _ = parse_host_spec(spec)
        known = {spec, host, settings.alias, settings.hostname, settings.host_key_alias or ""}
        return bool(self.names & {n.lower() for n in known if n})


@dataclass(frozen=True)
class KnownLine:
    """One usable known_hosts line."""

    path: str
    lineno: int
    marker: str  # "", CA_MARKER or REVOKED_MARKER
    names: str  # the name field: patterns, or one hashed name
    key_type: str
    blob: bytes

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def _blob_type(blob: bytes) -> str:
    if len(blob) < 4:
        return ""
    (length,) = struct.unpack(">I", blob[:4])
    return blob[4:4 + length].decode("ascii", "replace")


def _parse_key(key_type: str, text: str) -> bytes | None:
    """The key blob of ``key_type text``, or None when OpenSSH would not read it."""
    if key_type not in KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if _blob_type(blob) != key_type:
        return None
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except paramiko.UnknownKeyType:
        return blob  # a type paramiko does not implement (sk, certificates): the type check above must do
    except Exception:  # noqa: BLE001 - a corrupt key: skipped, as OpenSSH skips it
        return None
    return blob if key.asbytes() == blob else None  # paramiko reads some corrupt keys; they do not encode back


def parse_line(path: str, lineno: int, line: str) -> KnownLine | None:
    """One line of a known_hosts file, or None for comments, blank and malformed lines."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return None
    marker = ""
    if words[0].startswith("@"):
        marker = words.pop(0)
        if marker not in (CA_MARKER, REVOKED_MARKER):
            return None
    if len(words) < 3 or words[1].startswith("#"):
        return None
    blob = _parse_key(words[1], words[2])
    return None if blob is None else KnownLine(path, lineno, marker, words[0], words[1], blob)


def read_known_hosts(paths: Iterable[str]) -> list[KnownLine]:
    """The usable lines of ``paths`` in order; missing or unreadable files are skipped."""
    lines: list[KnownLine] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as known_hosts:
                for lineno, text in enumerate(known_hosts, start=1):
                    parsed = parse_line(path, lineno, text)
                    if parsed is not None:
                        lines.append(parsed)
        except OSError:
            continue
    return lines


def _glob(name: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only (``[`` is an ordinary character)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def _hashed_match(name: str, field: str) -> bool:
    parts = field.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, digest = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(salt) != hashlib.sha1().digest_size:
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def name_matches(name: str, field: str) -> bool:
    """Whether known_hosts' name field ``field`` covers ``name`` (lowercase), as match_maybe_hashed."""
    if field.startswith("|"):
        return _hashed_match(name, field)
    positive = False
    for pattern in field.split(","):
        negated = pattern.startswith("!")
        if _glob(name, pattern[1:].lower() if negated else pattern.lower()):
            if negated:
                return False
            positive = True
    return positive


def _hash_name(name: str) -> str:
    salt = os.urandom(hashlib.sha1().digest_size)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@dataclass
class _Verdict:
    status: str  # ok, new, changed, revoked
    line: KnownLine | None = None
    ca: KnownLine | None = None


def _judge(lines: list[KnownLine], name: str, blob: bytes) -> _Verdict:
    """check_hostkeys_by_key_or_type for a plain key: the status of ``blob`` for ``name``."""
    matching = [line for line in lines if name_matches(name, line.names)]
    verdict = _Verdict("new", ca=next((line for line in matching if line.marker == CA_MARKER), None))
    for line in matching:
        if line.marker:
            continue
        if line.blob == blob:
            verdict.status, verdict.line = "ok", line
            break
        verdict.status, verdict.line = "changed", line
    revoked = next((line for line in matching if line.marker == REVOKED_MARKER and line.blob == blob), None)
    if revoked is not None:
        verdict.status, verdict.line = "revoked", revoked
    return verdict


class KnownHosts:
    """The known_hosts lines that concern one hop, and the check of the key it presents."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        # "UserKnownHostsFile none" (or GlobalKnownHostsFile none): no such files at all
        given = tuple(settings.global_known_hosts_files)
        self.global_files = tuple(f for f in given if f.lower() != "none") if given else DEFAULT_GLOBAL_FILES
        # a global file is never the user's (nothing is ever written to a system file)
        self.user_files = tuple(f for f in settings.known_hosts_files if f.lower() != "none" and f not in self.global_files)
        alias = (settings.host_key_alias or "").lower()
        hostname = settings.hostname.lower()
        self.name = alias or (hostname if settings.port == 22 else f"[{hostname}]:{settings.port}")
        # OpenSSH also accepts a bare-name line on another port, unless HostKeyAlias is set
        self.bare_name = hostname if not alias and settings.port != 22 else None
        self.lines = read_known_hosts(self.user_files + self.global_files)

    def known_key_types(self) -> list[str]:
        """Host key algorithms known for this host, to be preferred in the handshake (as
        OpenSSH's order_hostkeyalgs), so that a host with several keys shows one we know."""
        names = [n for n in (self.name, self.bare_name) if n]
        found: list[str] = []
        for line in self.lines:
            if not line.marker and any(name_matches(n, line.names) for n in names):
                for algorithm in _ALGORITHMS.get(line.key_type, (line.key_type,)):
                    if algorithm not in found:
                        found.append(algorithm)
        return found

    def check(self, key: paramiko.PKey) -> None:
        """Return if ``key`` is known for this host (or may be accepted, and was remembered);
        raise :class:`HostKeyError` (one line: what, where, and the fix) otherwise."""
        blob = key.asbytes()
        verdict = _judge(self.lines, self.name, blob)
        bare = _judge(self.lines, self.bare_name, blob) if self.bare_name and verdict.status == "new" else None
        if verdict.status == "ok" or (bare is not None and bare.status == "ok"):
            return
        if bare is not None and bare.status == "revoked":
            verdict = bare  # OpenSSH would still accept-new it under [host]:port; we refuse a revoked key
        settings, what = self.settings, f"{key.get_name()} {key.fingerprint}"
        if verdict.status == "revoked":
            raise HostKeyError(settings.alias, f"the host key of {self.name} ({what}) is marked @revoked in {verdict.line.where}"  # type: ignore[union-attr]
                               " and is refused (it may be a stolen key); ask the host's administrator for its new key", changed=True)
        if verdict.status == "changed":
            line = verdict.line
            assert line is not None
            raise HostKeyError(
                settings.alias,
                f"THE HOST KEY OF {self.name} HAS CHANGED (now {what}; {line.where} has another); refused. If the host was"
                f" really rebuilt, remove the old line (ssh-keygen -R '{self.name}' -f {line.path}) and connect again",
                changed=True,
            )
        ca = verdict.ca or (bare.ca if bare is not None else None)
        if ca is not None:
            raise HostKeyError(
                settings.alias,
                f"{self.name} is known only through the @cert-authority line at {ca.where}, and jupyter_rjobs does not check"
                f" host certificates; refused. Check its key ({what}) and add it for {self.name} to {self._user_file()}",
                changed=False,
            )
        if settings.accept_new and not self.user_files:  # OpenSSH: nowhere to record it, so refused
            raise HostKeyError(settings.alias, f"unknown host key for {self.name} ({what}) and UserKnownHostsFile is none, so it"
                               " cannot be remembered; refused. Name a UserKnownHostsFile for this host in ~/.ssh/config", changed=False)
        if not settings.accept_new:
            raise HostKeyError(
                settings.alias,
                f"unknown host key for {self.name} ({what}); refused. Check the fingerprint, then accept it with"
                f" --accept-new-host={settings.alias} (or StrictHostKeyChecking accept-new for it in ~/.ssh/config)",
                changed=False,
            )
        self._remember(key)

    def _user_file(self) -> str:
        return self.user_files[0] if self.user_files else os.path.expanduser("~/.ssh/known_hosts")

    def _remember(self, key: paramiko.PKey) -> None:
        """Append the line OpenSSH would write (hashed under HashKnownHosts yes) to the first user file."""
        path = self._user_file()
        name = _hash_name(self.name) if self.settings.hash_known_hosts else self.name
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "rb+") as known_hosts:
                size = known_hosts.seek(0, os.SEEK_END)
                newline = b""
                if size:
                    known_hosts.seek(size - 1)
                    newline = b"" if known_hosts.read(1) == b"\n" else b"\n"
                known_hosts.write(newline + f"{name} {key.get_name()} {key.get_base64()}\n".encode())
        except OSError as exc:  # OpenSSH connects anyway and says the key was not added
            log.warning("%s: accepted the new host key of %s but could not add it to %s (%s)", self.settings.alias, self.name, path, exc)


def check_host_key(settings: HostSettings, key: paramiko.PKey) -> None:
    """Return if ``key`` is the known key of ``settings``' host (or may be accepted and was
    remembered); raise :class:`HostKeyError` otherwise."""
    KnownHosts(settings).check(key)
