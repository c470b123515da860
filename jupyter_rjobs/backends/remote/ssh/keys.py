"""The keys a login offers, in OpenSSH's order: ssh-agent keys that an IdentityFile names, the
agent's other keys (not with IdentitiesOnly), then the identity files the agent does not hold.

An encrypted identity file's passphrase is asked at most NumberOfPasswordPrompts times; the
decrypted key is kept in this process's memory (so it is asked once), the passphrase never.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import paramiko
from paramiko.agent import AgentSSH

from jupyter_rjobs.backends.remote.ssh.config import HostSettings

__all__ = ["Offer", "AgentConnection", "agent_socket", "offers", "load_identity", "OPENSSH_DEFAULT_IDENTITIES"]

# ssh -G's list when no IdentityFile is configured (the config layer fills it in; this is the fallback)
OPENSSH_DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")

_decrypted: dict[tuple[str, int, int, int], paramiko.PKey] = {}  # (realpath, inode, mtime_ns, size) -> key
_decrypted_lock = threading.Lock()


@dataclass
class Offer:
    """One key to offer: an agent key (``key`` set) or an identity file to load (``path``)."""

    label: str
    key: Optional[paramiko.PKey] = None
    path: Optional[str] = None


class AgentConnection(AgentSSH):
    """A connection to the ssh-agent listening on ``path`` (paramiko's Agent reads only $SSH_AUTH_SOCK)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(path)
            self._connect(sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self._close()


def agent_socket(settings: HostSettings) -> Optional[str]:
    """The agent socket IdentityAgent names (``none``: no agent; unset: $SSH_AUTH_SOCK)."""
    value = settings.identity_agent
    if value is None or value == "SSH_AUTH_SOCK":
        return os.environ.get("SSH_AUTH_SOCK") or None
    if value.lower() == "none":
        return None
    if value.startswith("$"):
        return os.environ.get(value[1:].strip("{}")) or None
    return os.path.expanduser(value)


def open_agent(settings: HostSettings) -> tuple[Optional[AgentConnection], str]:
    """(the agent, "") or (None, why there is none to use)."""
    path = agent_socket(settings)
    if path is None:
        return None, ""
    try:
        return AgentConnection(path), ""
    except (OSError, paramiko.SSHException) as exc:
        return None, f"ssh-agent at {path} unusable ({getattr(exc, 'strerror', None) or exc})"


def _identity_files(settings: HostSettings) -> list[str]:
    if settings.identity_files:
        return list(settings.identity_files)
    return [os.path.expanduser(f"~/.ssh/{name}") for name in OPENSSH_DEFAULT_IDENTITIES]


def _openssh_header(path: str) -> Optional[tuple[str, Optional[bytes]]]:
    """(cipher name, public key) from an OpenSSH-format private key's unencrypted header; None if
    the file is not one (a PEM key, say)."""
    try:
        with open(path) as f:
            text = f.read(64 * 1024)
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
        data = base64.b64decode("".join(body.split()))
        if not data.startswith(b"openssh-key-v1\0"):
            return None
        message = paramiko.Message(data[len(b"openssh-key-v1\0"):])
        cipher = message.get_text()
        message.get_string()  # kdf name
        message.get_string()  # kdf options
        return cipher, (message.get_string() if message.get_int() >= 1 else None)
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def public_blob(path: str) -> Optional[bytes]:
    """The public key of an identity file, read without its passphrase: ``PATH.pub``, or the public
    part an OpenSSH-format private key keeps unencrypted."""
    try:
        blob: bytes = paramiko.PublicBlob.from_file(path + ".pub").key_blob
        return blob
    except (OSError, ValueError, paramiko.SSHException):
        pass
    header = _openssh_header(path)
    return header[1] if header else None


def is_encrypted(path: str) -> bool:
    """The private key file needs a passphrase (OpenSSH format: a cipher; PEM: an ENCRYPTED header)."""
    header = _openssh_header(path)
    if header is not None:
        return header[0] != "none"
    try:
        with open(path) as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return "ENCRYPTED" in head


def offers(settings: HostSettings, agent_keys: tuple[paramiko.PKey, ...]) -> tuple[list[Offer], list[str]]:
    """(the keys to offer in OpenSSH's order, notes on identity files that cannot be offered)."""
    files, notes = [], []
    defaults = {os.path.expanduser(f"~/.ssh/{name}") for name in OPENSSH_DEFAULT_IDENTITIES}
    for path in _identity_files(settings):
        if os.path.exists(path) or os.path.exists(path + ".pub"):
            files.append(path)
        elif path not in defaults:
            notes.append(f"{path} (not found)")
    blobs = {path: public_blob(path) for path in files}
    from_agent, others = [], []
    for key in agent_keys:
        match = next((path for path in files if blobs[path] == key.asbytes()), None)
        if match is not None:
            files.remove(match)
            from_agent.append(Offer(f"{match} (in ssh-agent)", key=key))
        elif not settings.identities_only:
            comment = getattr(key, "comment", "") or key.fingerprint
            others.append(Offer(f"ssh-agent key {comment}", key=key))
    return from_agent + others + [Offer(path, path=path) for path in files], notes


def _stat_key(path: str) -> Optional[tuple[str, int, int, int]]:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_ino, st.st_mtime_ns, st.st_size)


def load_identity(path: str, ask: Callable[[str], Optional[str]], tries: int) -> tuple[Optional[paramiko.PKey], str]:
    """(the private key, "") or (None, why not). ``ask(prompt)`` asks for the passphrase (None: no one
    to ask), at most ``tries`` times; never again once the key is decrypted."""
    if not os.path.exists(path):
        return None, "no private key file"
    cache_key = _stat_key(path)
    with _decrypted_lock:
        cached = _decrypted.get(cache_key) if cache_key else None
    if cached is not None:
        return cached, ""
    if not is_encrypted(path):
        try:
            return paramiko.PKey.from_path(path), ""
        except Exception as exc:  # noqa: BLE001 - paramiko and cryptography raise many kinds for a bad or unknown key
            return None, f"unreadable: {' '.join(str(exc).split()) or type(exc).__name__}"
    for _attempt in range(max(tries, 0)):
        passphrase = ask(f"Enter passphrase for key '{path}': ")
        if not passphrase:
            return None, "encrypted, no passphrase given"
        try:  # positional: paramiko 5 renamed the argument (passphrase -> password)
            key = paramiko.PKey.from_path(path, passphrase.encode())
        except Exception:  # noqa: BLE001 - a wrong passphrase (ValueError), or a key paramiko cannot use
            continue
        finally:
            del passphrase
        if cache_key is not None:
            with _decrypted_lock:
                _decrypted[cache_key] = key
        return key, ""
    return None, f"wrong passphrase {tries} times" if tries > 0 else "encrypted, no passphrase given"
