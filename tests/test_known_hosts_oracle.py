"""known_hosts and per-hop host key checks, with OpenSSH as the oracle.

Each variant writes the same known_hosts files and ssh_config twice: once for a real
``ssh -F CFG -o BatchMode=yes HOST true`` (exit 0: connected, 255: refused) and once for our
``SshConnection(resolve_host(HOST, ssh_config=CFG), accept_new_host=...).open()``. The verdicts
must agree, and so must every known_hosts file afterwards (what accept-new wrote, byte for byte).
No verdict is written by hand.

The user's ``accept_new_host`` has no OpenSSH flag; its OpenSSH equivalent is
``StrictHostKeyChecking accept-new`` in the config of exactly the hosts it names (bare ``True``:
the target), which is what the ssh side gets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from sshlab import SshLab

from jupyter_rjobs.backends.remote.ssh.connection import SshConnection, resolve_host
from jupyter_rjobs.backends.remote.ssh.known_hosts import DEFAULT_GLOBAL_FILES, AcceptNew, AcceptNewHost
from jupyter_rjobs.core.errors import HostError, HostKeyError

pytestmark = pytest.mark.ssh

FILES = {"user": "known_hosts", "user2": "known_hosts2", "global": "ssh_known_hosts", "global2": "ssh_known_hosts2"}


# -- the variants --------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """known_hosts lines per file (templates, see Names), extra ssh_config lines per host (put
    first: first match wins), and the user's accept_new_host."""

    id: str
    target: str
    files: dict[str, tuple[str, ...]]
    config: dict[str, tuple[str, ...]] = field(default_factory=dict)
    accept: AcceptNewHost = False


GARBAGE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFyYmFnZQ=="  # decodes, but is no ed25519 key
ACCEPT_NEW = ("StrictHostKeyChecking accept-new",)
ALIAS = ("HostKeyAlias Lab-Alias.example",)

VARIANTS = [
    # names
    Variant("exact", "server01", {"user": ("{server01} {server01.key}",)}),
    Variant("exact-port22", "nshost2", {"user": ("{nshost2} {nshost2.key}",)}),
    Variant("bracketed-port22", "nshost2", {"user": ("[{nshost2}]:22 {nshost2.key}",)}),
    Variant("hashed", "server01", {"user": ("{server01.hashed} {server01.key}",)}),
    Variant("hashed-port22", "nshost2", {"user": ("{nshost2.hashed} {nshost2.key}",)}),
    Variant("hashed-other-host", "nshost2", {"user": ("{nshost3.hashed} {nshost2.key}",)}),
    Variant("bare-name-on-other-port", "server01", {"user": ("{server01.addr} {server01.key}",)}),
    Variant("bare-hashed-on-other-port", "server01", {"user": ("{server01.bare_hashed} {server01.key}",)}),
    Variant("bare-name-wrong-key", "server01", {"user": ("{server01.addr} {wrong}",)}),
    Variant("bare-name-wrong-key-accept-new", "server01", {"user": ("{server01.addr} {wrong}",)}, accept=True),
    Variant("port-name-wrong-bare-right", "server01", {"user": ("{server01} {wrong}", "{server01.addr} {server01.key}")}),
    Variant("wildcard-in-brackets", "server01", {"user": ("[127.0.0.*]:{server01.port} {server01.key}",)}),
    Variant("wildcard-question-mark", "nshost2", {"user": ("10.231.?.2 {nshost2.key}",)}),
    Variant("wildcard-star-all", "nshost3", {"user": ("* {nshost3.key}",)}),
    Variant("wildcard-wrong-port", "server01", {"user": ("[127.0.0.*]:1 {server01.key}",)}),
    Variant("negated-excludes", "server01", {"user": ("[127.0.0.*]:{server01.port},!{server01} {server01.key}",)}),
    Variant("negated-other", "nshost2", {"user": ("10.231.*,!10.231.3.2 {nshost2.key}",)}),
    Variant("negated-only", "nshost2", {"user": ("!10.231.3.2 {nshost2.key}",)}),
    Variant("comma-list", "server01", {"user": ("first.example,{server01},last.example {server01.key}",)}),
    Variant("comma-list-port22", "nshost2", {"user": ("nshost2,{nshost2} {nshost2.key}",)}),
    # keys
    Variant("wrong-key", "server01", {"user": ("{server01} {wrong}",)}),
    Variant("wrong-key-accept-new", "server01", {"user": ("{server01} {wrong}",)}, accept=True),
    Variant("wrong-key-config-accept-new", "nshost2", {"user": ("{nshost2} {wrong}",)}, config={"nshost2": ACCEPT_NEW}),
    Variant("wrong-then-right", "server01", {"user": ("{server01} {wrong}", "{server01} {server01.key}")}),
    Variant("other-key-type-only", "server01", {"user": ("{server01} {rsa}",)}),
    Variant("other-key-type-accept-new", "server01", {"user": ("{server01} {rsa}",)}, accept=True),
    Variant("other-key-type-and-right", "server01", {"user": ("{server01} {rsa}", "{server01} {server01.key}")}),
    Variant("malformed-lines-skipped", "server01", {"user": (
        "# a comment", "", "   ", "just-one-word", "{server01}", "{server01} ssh-ed25519", "{server01} ssh-ed25519 !!notbase64!!",
        "{server01} {garbage}", "{server01} no-such-type AAAA", "@bogus-marker {server01} {wrong}", "|1|bad|hash {wrong}",
        "{server01} {server01.key}")}),
    Variant("malformed-matching-only", "server01", {"user": ("{server01} {garbage}", "{server01} ssh-ed25519 !!x!!")}),
    Variant("malformed-matching-only-accept-new", "server01", {"user": ("{server01} {garbage}",)}, accept=True),
    # markers
    Variant("revoked-only-key", "server01", {"user": ("@revoked {server01} {server01.key}",)}),
    Variant("revoked-with-correct-line", "server01", {"user": ("{server01} {server01.key}", "@revoked {server01} {server01.key}")}),
    Variant("revoked-wildcard", "nshost2", {"user": ("{nshost2} {nshost2.key}", "@revoked * {nshost2.key}")}),
    Variant("revoked-in-global", "nshost2", {"user": ("{nshost2} {nshost2.key}",), "global": ("@revoked {nshost2} {nshost2.key}",)}),
    Variant("revoked-other-key", "server01", {"user": ("@revoked {server01} {wrong}", "{server01} {server01.key}")}),
    Variant("revoked-other-host", "server01", {"user": ("@revoked {nshost2} {server01.key}", "{server01} {server01.key}")}),
    Variant("revoked-accept-new", "server01", {"user": ("@revoked {server01} {server01.key}",)}, accept=True),
    Variant("cert-authority-only", "server01", {"user": ("@cert-authority {server01} {ca}",)}),
    Variant("cert-authority-wildcard-only", "nshost2", {"user": ("@cert-authority * {ca}",)}),
    Variant("cert-authority-with-correct-line", "server01", {"user": ("@cert-authority * {ca}", "{server01} {server01.key}")}),
    Variant("cert-authority-of-host-key-only", "server01", {"user": ("@cert-authority {server01} {server01.key}",)}),
    # files
    Variant("known-hosts2-only", "server01", {"user2": ("{server01} {server01.key}",)}),
    Variant("global-only", "server01", {"global": ("{server01} {server01.key}",)}),
    Variant("global2-only", "nshost2", {"global2": ("{nshost2} {nshost2.key}",)}),
    Variant("wrong-in-user-right-in-global", "server01", {"user": ("{server01} {wrong}",), "global": ("{server01} {server01.key}",)}),
    Variant("no-files", "server01", {}),
    Variant("user-file-none-accept-new", "server01", {}, config={"server01": ("UserKnownHostsFile none",)}, accept=True),
    Variant("user-file-none-known-in-global", "server01", {"global": ("{server01} {server01.key}",)},
            config={"server01": ("UserKnownHostsFile none",)}),
    # HostKeyAlias
    Variant("host-key-alias", "server01", {"user": ("lab-alias.example {server01.key}",)}, config={"server01": ALIAS}),
    Variant("host-key-alias-real-name-only", "server01", {"user": ("{server01} {server01.key}",)}, config={"server01": ALIAS}),
    Variant("host-key-alias-uppercase-line", "server01", {"user": ("OTHER,LAB-Alias.Example {server01.key}",)}, config={"server01": ALIAS}),
    Variant("host-key-alias-accept-new", "server01", {}, config={"server01": ALIAS}, accept=True),
    # unknown keys and accept-new
    Variant("unknown-strict", "server01", {"user": ("{nshost2} {nshost2.key}",)}),
    Variant("unknown-accept-new", "server01", {"user": ("{nshost2} {nshost2.key}",)}, accept=True),
    Variant("unknown-accept-new-port22", "nshost2", {}, accept=True),
    Variant("unknown-config-accept-new", "nshost3", {"user": ("# keep", "{nshost2} {nshost2.key}")}, config={"nshost3": ACCEPT_NEW}),
    # jump hosts: each hop with its own settings
    Variant("jump-both-known", "behind1", {"user": ("{nshost1} {nshost1.key}", "{behind1} {behind1.key}")}),
    Variant("jump-unknown-target-config-accept-new", "behind1", {"user": ("{behind1} {behind1.key}",)},
            config={"behind1": ACCEPT_NEW}),
    Variant("jump-unknown-target-flag", "behind1", {"user": ("{behind1} {behind1.key}",)}, accept=True),
    Variant("jump-wrong-key", "behind1", {"user": ("{nshost1} {wrong}", "{behind1} {behind1.key}")}, accept="nshost1,behind1"),
    Variant("jump-known-target-unknown-flag", "behind1", {"user": ("{nshost1} {nshost1.key}",)}, accept=True),
    Variant("jump-named-both-unknown", "behind1", {}, accept="nshost1,behind1"),
    Variant("jump-named-jump-only", "behind1", {"user": ("{behind1} {behind1.key}",)}, accept="nshost1"),
    Variant("jump-named-by-address", "behind1", {"user": ("{behind1} {behind1.key}",)}, accept=["10.231.1.2"]),
    Variant("jump-own-config-accept-new", "behind1", {"user": ("{behind1} {behind1.key}",)}, config={"nshost1": ACCEPT_NEW}),
    Variant("jump-revoked", "behind1", {"user": ("{nshost1} {nshost1.key}", "@revoked {nshost1} {nshost1.key}", "{behind1} {behind1.key}")},
            accept="nshost1,behind1"),
]


class Names:
    """Template values: ``{alias}`` its known_hosts name, ``{alias.addr|port|key|hashed|bare_hashed}``,
    ``{wrong}`` / ``{rsa}`` / ``{ca}`` other public keys, ``{garbage}`` a key OpenSSH cannot read."""

    def __init__(self, lab: SshLab, keydir: Path) -> None:
        self.lab, self.keydir = lab, keydir
        self.extra = {kind: self._keygen(kind, bits) for kind, bits in (("wrong", "ed25519"), ("rsa", "rsa"), ("ca", "ed25519"))}
        self._hashes: dict[str, str] = {}

    def _keygen(self, name: str, kind: str) -> str:
        path = self.keydir / name
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)], check=True, capture_output=True)
        return " ".join(Path(f"{path}.pub").read_text().split()[:2])

    def hashed(self, name: str) -> str:
        """``name`` hashed by OpenSSH itself (ssh-keygen -H), not by us."""
        if name not in self._hashes:
            path = self.keydir / f"hash-{len(self._hashes)}"
            path.write_text(f"{name} {self.extra['wrong']}\n")
            subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
            self._hashes[name] = path.read_text().split()[0]
            assert self._hashes[name].startswith("|1|")
        return self._hashes[name]

    def values(self) -> dict[str, Any]:
        views: dict[str, Any] = {alias: _HostView(self, alias) for alias in self.lab.hosts}
        return {**views, **self.extra, "garbage": GARBAGE}


class _HostView:
    def __init__(self, names: Names, alias: str) -> None:
        host = names.lab.host(alias)
        self.addr, self.port = host.address, host.port
        self.name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        self.key = " ".join(Path(host.host_key + ".pub").read_text().split()[:2])
        self._names = names

    def __format__(self, spec: str) -> str:
        return self.name

    @property
    def hashed(self) -> str:
        return self._names.hashed(self.name)

    @property
    def bare_hashed(self) -> str:
        return self._names.hashed(self.addr)


@pytest.fixture(scope="module")
def names(ssh_lab: SshLab, tmp_path_factory: pytest.TempPathFactory) -> Names:
    return Names(ssh_lab, tmp_path_factory.mktemp("keys"))


def _accepted_aliases(variant: Variant) -> set[str]:
    """The hosts the user's accept_new_host covers, as OpenSSH config blocks to give accept-new."""
    accept = AcceptNew.of(variant.accept)
    aliases = {variant.target} if accept.targets else set()
    for alias in ("server01", "nshost1", "nshost2", "nshost3", "behind1"):
        if alias in accept.names:
            aliases.add(alias)
    if "10.231.1.2" in accept.names:
        aliases.add("nshost1")
    return aliases


def write_side(lab: SshLab, names: Names, variant: Variant, root: Path, accept_in_config: set[str], extra: dict[str, tuple[str, ...]] | None = None) -> str:
    """The variant's known_hosts files and ssh_config under ``root``; returns the config path."""
    root.mkdir()
    values = names.values()
    for key, lines in variant.files.items():
        text = "".join(line.format_map(values) + "\n" for line in lines)
        (root / FILES[key]).write_text(text)
    blocks = []
    for alias in lab.hosts:
        host = lab.host(alias)
        lines = [f"Host {alias}", *variant.config.get(alias, ()), *(extra or {}).get(alias, ())]
        if alias in accept_in_config:
            lines.append("StrictHostKeyChecking accept-new")
        lines += [
            f"HostName {host.address}", f"Port {host.port}", f"User {lab.user}", f"IdentityFile {lab.client_key}", "IdentitiesOnly yes",
            f"UserKnownHostsFile {root / FILES['user']} {root / FILES['user2']}",
            f"GlobalKnownHostsFile {root / FILES['global']} {root / FILES['global2']}",
            "StrictHostKeyChecking yes", "BatchMode yes", "ConnectTimeout 10", "UpdateHostKeys no",
        ]
        if host.jump:
            lines.append(f"ProxyJump {host.jump}")
        blocks.append("\n    ".join(lines) + "\n")
    config = root / "ssh_config"
    config.write_text("\n".join(blocks))
    return str(config)


def openssh_verdict(config: str, target: str) -> tuple[bool, str]:
    proc = subprocess.run(["ssh", "-F", config, "-o", "BatchMode=yes", target, "true"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 255), proc.stderr
    return proc.returncode == 0, proc.stderr


def our_verdict(config: str, target: str, accept: AcceptNewHost) -> tuple[bool, HostError | None]:
    try:
        connection = SshConnection(resolve_host(target, ssh_config=config), accept_new_host=accept).open()
    except HostError as exc:
        return False, exc
    connection.close()
    return True, None


def _system_files() -> dict[str, tuple[int, int] | None]:
    """(size, mtime) of the machine's global known_hosts files: nothing may ever write there."""
    found: dict[str, tuple[int, int] | None] = {}
    for path in DEFAULT_GLOBAL_FILES:
        found[path] = (os.stat(path).st_size, os.stat(path).st_mtime_ns) if os.path.exists(path) else None
    return found


def _file_texts(root: Path) -> dict[str, str | None]:
    return {key: (root / name).read_text() if (root / name).exists() else None for key, name in FILES.items()}


def _params() -> Iterator[Any]:
    for variant in VARIANTS:
        yield pytest.param(variant, id=variant.id)


FIXES = ("--accept-new-host=", "ssh-keygen -R", "@revoked", "does not check host certificates", "Name a UserKnownHostsFile")


@pytest.mark.parametrize("variant", list(_params()))
def test_known_hosts_verdict_agrees_with_openssh(variant: Variant, ssh_lab: SshLab, names: Names, tmp_path: Path) -> None:
    ssh_config = write_side(ssh_lab, names, variant, tmp_path / "openssh", _accepted_aliases(variant))
    our_config = write_side(ssh_lab, names, variant, tmp_path / "ours", set())
    assert _file_texts(tmp_path / "openssh") == _file_texts(tmp_path / "ours")
    system_files = _system_files()
    theirs, their_stderr = openssh_verdict(ssh_config, variant.target)
    ours, error = our_verdict(our_config, variant.target, variant.accept)
    assert _system_files() == system_files
    assert ours == theirs, f"OpenSSH {'connected' if theirs else 'refused'} ({their_stderr.strip()[-300:]}); we said {error}"
    # what accept-new wrote (or not) is the same, byte for byte
    assert _file_texts(tmp_path / "ours") == _file_texts(tmp_path / "openssh")
    if not theirs:
        assert "Host key verification failed" in their_stderr  # refused for its host key, not something else
        assert isinstance(error, HostKeyError), error
        message = str(error)
        assert "\n" not in message
        assert message.startswith(variant.target) or message.startswith(f"{ssh_lab.host(variant.target).jump} (jump host for {variant.target})")
        assert any(fix in message for fix in FIXES), message


# -- what accept-new writes, and the user's choice of hops --------------------------------
def test_accept_new_creates_a_private_file_that_openssh_then_trusts(ssh_lab: SshLab, names: Names, tmp_path: Path) -> None:
    variant = Variant("fresh", "server01", {})
    config = write_side(ssh_lab, names, variant, tmp_path / "side", set())
    nested = tmp_path / "side" / "new" / "dir" / "known_hosts"
    Path(config).write_text(Path(config).read_text().replace(str(tmp_path / "side" / FILES["user"]), str(nested)))
    ours, error = our_verdict(config, "server01", True)
    assert ours, error
    assert nested.stat().st_mode & 0o777 == 0o600
    assert nested.parent.stat().st_mode & 0o777 == 0o700
    assert openssh_verdict(config, "server01")[0]  # OpenSSH reads what we wrote
    assert len(nested.read_text().splitlines()) == 1


def test_hash_known_hosts_writes_a_hashed_line_that_openssh_finds_and_trusts(ssh_lab: SshLab, names: Names, tmp_path: Path) -> None:
    variant = Variant("hashed-accept", "server01", {}, config={"server01": ("HashKnownHosts yes",)})
    config = write_side(ssh_lab, names, variant, tmp_path / "side", set())
    user = tmp_path / "side" / FILES["user"]
    ours, error = our_verdict(config, "server01", True)
    assert ours, error
    line = user.read_text()
    assert line.startswith("|1|") and len(line.splitlines()) == 1  # no host name in clear
    host = ssh_lab.host("server01")
    found = subprocess.run(["ssh-keygen", "-F", f"[{host.address}]:{host.port}", "-f", str(user)], capture_output=True, text=True)
    assert found.returncode == 0 and "|1|" in found.stdout, found.stdout + found.stderr  # OpenSSH's own lookup finds it
    assert openssh_verdict(config, "server01")[0]


def test_accept_new_after_a_last_line_without_newline(ssh_lab: SshLab, names: Names, tmp_path: Path) -> None:
    """OpenSSH 9.2 glues the new line onto such a last line (fixed in OpenSSH 10.0, hostfile.c
    "Ensure that there is a terminating newline"); we write it as 10.0 does, and OpenSSH then
    trusts both hosts from the file."""
    variant = Variant("no-final-newline", "server01", {"user": ("{nshost2} {nshost2.key}",)})
    config = write_side(ssh_lab, names, variant, tmp_path / "side", set())
    user = tmp_path / "side" / FILES["user"]
    user.write_text(user.read_text().rstrip("\n"))
    ours, error = our_verdict(config, "server01", True)
    assert ours, error
    assert len(user.read_text().splitlines()) == 2
    assert openssh_verdict(config, "server01")[0] and openssh_verdict(config, "nshost2")[0]


def test_the_user_names_the_hops_that_may_accept(make_manager: Any, ssh_lab: SshLab, names: Names, tmp_path: Path) -> None:
    """Through the JobManager: a bare opt-in covers the target only; naming the jump host covers it."""
    variant = Variant("flag", "behind1", {"user": ("{behind1} {behind1.key}",)})
    config = write_side(ssh_lab, names, variant, tmp_path / "side", set())
    manager = make_manager(ssh_config=config)
    with pytest.raises(HostKeyError) as caught:
        manager.start("1", host="behind1", accept_new_host=True)
    assert str(caught.value).startswith("nshost1 (jump host for behind1): unknown host key")
    assert "--accept-new-host=nshost1" in str(caught.value)
    assert manager.list() == []
    assert manager.start("1 + 1", host="behind1", accept_new_host="nshost1").result(timeout=60) == 2
    assert ssh_lab.address("nshost1")[0] in (tmp_path / "side" / FILES["user"]).read_text()


def test_the_magic_option_names_hosts_only_with_equals() -> None:
    from jupyter_rjobs.ipython.magics import _parse, _start_args
    from jupyter_rjobs.ipython.session_magics import _session_args, accept_new_option

    assert accept_new_option(_parse(_start_args, "--host a --accept-new-host").accept_new_host) is True
    assert accept_new_option(_parse(_start_args, "--accept-new-host=j1,a --host a").accept_new_host) == "j1,a"
    assert accept_new_option(_parse(_start_args, "--host a").accept_new_host) is False
    args = _parse(_session_args, "new server01 --accept-new-host")
    assert (args.target, accept_new_option(args.accept_new_host)) == ("server01", True)
    assert AcceptNew.of("j1, A") == AcceptNew(names=frozenset({"j1", "a"}))
    assert AcceptNew.of(["x"]).for_jumps() == AcceptNew(names=frozenset({"x"}))
    assert AcceptNew.of(True).for_jumps() == AcceptNew()


# -- ProxyCommand, run as OpenSSH runs it ----------------------------------------------------
RELAY = """\
import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    os.write(1, data)
"""

PROXY_COMMANDS = {
    "home-variable": "{python} $HOME/relay.py %h %p",
    "pipe": "cat | {python} \"$HOME\"/relay.py %h %p",
    "fails-with-message": "sh -c 'echo bastion.example: no route to host >&2; exit 3'",
    "not-found": "/nonexistent/proxy-tool %h %p",
}


@pytest.mark.parametrize("case", list(PROXY_COMMANDS))
def test_proxy_command_runs_through_the_shell_like_openssh(case: str, ssh_lab: SshLab, names: Names, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "relay.py").write_text(RELAY)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SHELL", "/bin/sh")
    command = PROXY_COMMANDS[case].format(python=shutil.which("python3") or sys.executable)
    variant = Variant(f"proxy-{case}", "server01", {"user": ("{server01} {server01.key}",)})
    extra = {"server01": (f"ProxyCommand {command}",)}
    ssh_config = write_side(ssh_lab, names, variant, tmp_path / "openssh", set(), extra)
    our_config = write_side(ssh_lab, names, variant, tmp_path / "ours", set(), extra)
    theirs, their_stderr = openssh_verdict(ssh_config, "server01")
    try:
        connection = SshConnection(resolve_host("server01", ssh_config=our_config)).open()
    except HostError as exc:
        ours, error = False, exc
    else:
        ours, error = True, None
        status, out, _ = connection.run("echo $SSH_CONNECTION")
        assert status == 0 and out.split()[2] == b"127.0.0.1"
        proxy = connection._proxy
        assert proxy is not None
        connection.close()
        assert proxy.process.poll() is not None  # the command was hung up and reaped
    assert ours == theirs, f"OpenSSH: {their_stderr.strip()[-300:]}; we said {error}"
    if error is not None:
        message = str(error)
        assert "\n" not in message and message.startswith("server01: its ProxyCommand")
        assert "No existing session" not in message and "check ProxyCommand" in message
        if case == "fails-with-message":
            assert "exited with status 3" in message
        # OpenSSH's own last words vary with timing (the proxy gone before or after ssh wrote its
        # banner): "kex_exchange_identification: Connection closed ..." or "banner exchange: ...
        # Broken pipe"; the command's own words are what must be in ours
        own = ("kex_exchange_identification", "Connection closed", "banner exchange")
        tail = [line for line in their_stderr.splitlines() if not any(word in line for word in own)]
        assert tail and tail[-1].strip() in message  # the command's own words, as OpenSSH shows them
