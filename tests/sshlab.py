"""A real OpenSSH lab for tests and benchmarks: private sshds on loopback and in network namespaces.

Plain Python (no pytest): tests use it through ``tests/sshfixtures.py``, benchmarks with
``sys.path.insert(0, "tests"); from sshlab import SshLab``.

    with SshLab(namespace_hosts=3) as lab:
        subprocess.run(["ssh", "-F", lab.ssh_config, "nshost2", "true"], check=True)

Hosts (aliases in ``lab.hosts``):

- ``server01``: sshd on 127.0.0.1 and a free high port, in the root network namespace.
- ``nshost1`` .. ``nshostN``: sshd on 10.231.I.2 port 22 inside namespace ``rj-hI``, linked to the
  root namespace by the veth pair ``rj-vI`` (10.231.I.1) / ``rj-vIp`` (10.231.I.2). They reach
  each other through the root namespace (a route to 10.231.0.0/16 via 10.231.I.1, and forwarding
  on ``rj-vI`` only); nothing else is forwarded.
- ``behind1`` (``behind_jump=True``): sshd on 10.231.100.2 port 22 in namespace ``rj-hb``, linked
  ONLY to ``rj-h1`` (veth ``rj-vb`` 10.231.100.1 in rj-h1 / ``rj-vbp``); reachable only through
  ``ProxyJump nshost1``. It reaches nshost1's addresses (a route via 10.231.100.1), nothing else.

Needs root, /usr/sbin/sshd, ssh-keygen, iproute2 with ``ip netns`` (and nft for ``partition``);
otherwise ``start()`` raises ``LabUnavailable(reason)``. Every remote command runs as a dedicated
test user (default ``rjtest``, created if missing, login shell /bin/sh, python /usr/bin/python3).

The network names are fixed, so only one lab runs on a machine at a time: a lock file
(``/run/rj-sshlab.lock``) makes a second lab wait, then fail with ``LabUnavailable``. A lab left
behind by a crashed run (its lock is free) is cleaned up by the next ``start()``.
Only 10.231.0.0/16 is used, only inside namespaces made here, with a blackhole guard route so
that nothing addressed there ever leaves the machine.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from jupyter_rjobs.agent.proctree import descendants

__all__ = ["SshLab", "LabUnavailable", "LabHost"]

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
SUBNET = "10.231.0.0/16"
GUARD_ROUTE = ["blackhole", SUBNET, "metric", "4000"]
LOCK_PATH = "/run/rj-sshlab.lock"
TMP_PREFIX = "rjlab-"
NS_PREFIX = "rj-h"
LINK_PREFIX = "rj-v"
NFT_PREFIX = "rj_part_"
MAX_NAMESPACE_HOSTS = 99  # 10.231.100.0/24 belongs to behind1
BEHIND_NET = 100


class LabUnavailable(RuntimeError):
    """The lab cannot run here (not root, no sshd, no network namespaces, ...); ``.reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LabHost:
    """One sshd of the lab."""

    alias: str
    address: str  # what the client connects to (HostName)
    port: int
    netns: Optional[str]  # None: root namespace
    jump: Optional[str] = None  # alias of the ProxyJump host
    # veth ends to drop packets on for partition(): (netns or None, device)
    links: list = field(default_factory=list)
    workdir: str = ""
    host_key: str = ""
    config: str = ""
    log: str = ""
    proc: Optional[subprocess.Popen] = None

    @property
    def known_hosts_names(self) -> list[str]:
        """The names OpenSSH (and paramiko) look up for this host, resolved address first."""
        if self.port == 22:
            return [self.address, self.alias]
        return [f"[{self.address}]:{self.port}", f"[{self.alias}]:{self.port}"]


def _run(cmd: Sequence[str], check: bool = True, netns: Optional[str] = None, **kw) -> subprocess.CompletedProcess:
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path: str, mode: str = "r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _cmdline(pid: int) -> Optional[list[str]]:
    raw = _read(f"/proc/{pid}/cmdline", "rb")
    if raw is None:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat_fields(pid: int) -> Optional[tuple[str, int]]:
    """(state, ppid) of a process."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def _descendants(root_pids: Iterable[int]) -> list[int]:
    """Every process below any of ``root_pids`` (the package's own /proc walk)."""
    found: list[int] = []
    for root in root_pids:
        found += [pid for pid in descendants(root) if pid not in found]
    return found


def _kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for pid in pids if _alive(pid)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.01)


_PR_SET_CHILD_SUBREAPER = 36
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not glibc/Linux: sshd then runs without it
    _prctl = None


def _become_subreaper() -> None:
    """In the forked child, before exec: make the sshd listener a child subreaper (kept over execve).

    Orphans of its sessions (a remote job whose connection died, a double-forked daemon) are then
    re-parented to the listener, which reaps them at once, instead of to PID 1, which on this
    machine reaps only every couple of seconds (zombies of the test user would linger). Real hosts
    have a subreaper there too (systemd --user), so no code may take ``getppid() == 1`` to mean
    "orphaned".
    """
    if _prctl is not None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshLab:
    """Real sshds (root namespace, network namespaces, one behind a jump host) for one test session.

    Attributes after ``start()``: ``hosts`` (aliases), ``user``, ``uid``, ``home``, ``python``,
    ``tmpdir``, ``client_key`` (+ ``client_pubkey``), ``authorized_keys``, ``ssh_config``,
    ``known_hosts``, ``scratch`` (a directory the test user owns), ``timings``.
    """

    def __init__(
        self,
        namespace_hosts: int = 3,
        behind_jump: bool = True,
        user: str = "rjtest",
        sshd_options: Sequence[str] = (),
        lock_timeout: Optional[float] = None,
    ) -> None:
        if not 0 <= namespace_hosts <= MAX_NAMESPACE_HOSTS:
            raise ValueError(f"namespace_hosts must be 0..{MAX_NAMESPACE_HOSTS}")
        if behind_jump and namespace_hosts < 1:
            raise ValueError("behind_jump needs namespace_hosts >= 1 (behind1 sits behind nshost1)")
        self.namespace_hosts = namespace_hosts
        self.behind_jump = behind_jump
        self.user = user
        self.sshd_options = list(sshd_options)  # extra sshd_config lines, e.g. "RekeyLimit 64M"
        # RJOBS_LAB_LOCK_TIMEOUT: how long to wait for another lab (several test runs on one machine)
        self.lock_timeout = lock_timeout if lock_timeout is not None else float(os.environ.get("RJOBS_LAB_LOCK_TIMEOUT") or 30)
        self.python = "/usr/bin/python3"
        self.uid: int = -1
        self.home = ""
        self.tmpdir = ""
        self.client_key = ""
        self.client_pubkey = ""
        self.authorized_keys = ""
        self.ssh_config = ""
        self.known_hosts = ""
        self.scratch = ""  # a directory owned by the test user, removed by close()
        self._hosts: dict[str, LabHost] = {}
        self._lock_fd: Optional[int] = None
        self._started = False
        self._made_guard = False
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- public API

    @property
    def hosts(self) -> list[str]:
        """Aliases of every host, in ssh_config order: server01, nshost1..N, behind1."""
        return list(self._hosts)

    def address(self, alias: str) -> tuple[str, int]:
        """(ip, port) the host's sshd listens on (behind1's is reachable only from rj-h1)."""
        host = self._host(alias)
        return host.address, host.port

    def host(self, alias: str) -> LabHost:
        """Everything the lab knows about one host (netns, jump, host key, sshd log path, ...)."""
        return self._host(alias)

    def netns(self, alias: str) -> Optional[str]:
        """The network namespace the host's sshd runs in (None for server01)."""
        return self._host(alias).netns

    def sshd_log(self, alias: str) -> str:
        """Text of the host's sshd log (``sshd -D -e`` stderr) so far."""
        return _read(self._host(alias).log) or ""

    def __enter__(self) -> "SshLab":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "SshLab":
        if self._started:
            return self
        t0 = time.monotonic()
        self._check_prerequisites()
        self._acquire_lock()
        try:
            self._cleanup_leftovers()
            self._ensure_user()
            self._make_files()
            self._plan_hosts()
            self._make_network()
            self._write_sshd_configs()
            self._start_all_sshd()
            self._write_client_files()
            self._started = True
            atexit.register(self.close)  # a benchmark that forgets close() leaves nothing behind
        except BaseException:
            self.close()
            raise
        self.timings["setup"] = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Stop everything the lab started and remove what it made. Idempotent."""
        t0 = time.monotonic()
        hosts = list(self._hosts.values())
        listeners = [h.proc.pid for h in hosts if h.proc is not None and h.proc.poll() is None]
        # sessions and whatever the test user still runs go first, while the listeners (child
        # subreapers) are alive to reap them; then the listeners
        sessions = _descendants(listeners)
        _kill(sessions)
        if self._lock_fd is not None:
            self._kill_user_processes()
        _wait_gone(sessions, 1.0)
        if self._lock_fd is not None:
            self._wait_user_reaped(0.5)
        _kill(listeners, signal.SIGTERM)
        for h in hosts:
            if h.proc is not None:
                try:
                    h.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    h.proc.kill()
                    h.proc.wait()
                h.proc = None
        if self._lock_fd is not None:  # only the lock holder touches the shared names
            for h in hosts:
                if h.netns:
                    self._kill_netns_processes(h.netns)
            self._kill_user_processes()
            self._wait_user_reaped(3.0)  # stragglers re-parented to PID 1, which reaps slowly
            for h in hosts:
                if h.netns is None:
                    self._nft_delete(None, self._nft_table(h.alias))
            # root-side veth ends first: deleting one end removes the pair at once, whereas a
            # deleted namespace is torn down by the kernel asynchronously
            for h in hosts:
                for ns, dev in h.links:
                    if ns is None:
                        _run(["ip", "link", "del", dev], check=False)
            for h in hosts:
                if h.netns:
                    _run(["ip", "netns", "del", h.netns], check=False)
            if self._made_guard:
                _run(["ip", "route", "del", *GUARD_ROUTE], check=False)
                self._made_guard = False
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = ""
        self._hosts = {}
        self._started = False
        atexit.unregister(self.close)
        self._release_lock()
        self.timings["teardown"] = time.monotonic() - t0

    def run_as_user(self, cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` locally as the test user (runuser), capturing text output, from its home."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("cwd", self.home or "/")
        kwargs.setdefault(
            "env",
            {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.home, "USER": self.user,
             "LOGNAME": self.user, "LANG": "C.UTF-8", "SHELL": "/bin/sh"},
        )
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # resolved here: env's PATH may lack sbin
        return subprocess.run([runuser, "-u", self.user, "--", *cmd], **kwargs)

    def user_processes(self) -> list[tuple[int, str]]:
        """(pid, cmdline) of the test user's live processes, sshd session processes excluded."""
        uid = self._user_uid()
        found = []
        for pid in _pids():
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
            except OSError:
                continue
            fields = _stat_fields(pid)
            argv = _cmdline(pid)
            if not fields or fields[0] == "Z" or not argv:
                continue
            if argv[0].startswith("sshd") or argv[0] == SSHD:
                continue
            found.append((pid, " ".join(argv)))
        return found

    def kill_user_processes(self) -> None:
        """SIGKILL every process of the test user (remote jobs included), sshd sessions too."""
        self._kill_user_processes()

    def write_known_hosts(self, path: str, hosts: Optional[Iterable[str]] = None,
                          wrong_key_for: Iterable[str] = ()) -> str:
        """Write a known_hosts with ``hosts`` (default all); aliases in ``wrong_key_for`` get a fresh wrong key."""
        wrong = list(wrong_key_for)
        chosen = list(self.hosts if hosts is None else hosts)
        chosen += [alias for alias in wrong if alias not in chosen]
        lines = []
        for alias in chosen:
            host = self._host(alias)
            key = self._fresh_public_key() if alias in wrong else _read(host.host_key + ".pub").split()[:2]
            lines.append(f"{','.join(host.known_hosts_names)} {key[0]} {key[1]}\n")
        with open(path, "w") as f:
            f.writelines(lines)
        return path

    def partition(self, alias: str) -> None:
        """Silently drop every packet to/from the host (nft netdev ingress, policy drop, both veth ends).

        For server01 (loopback) only packets of its TCP port are dropped. ``heal(alias)`` undoes it.
        """
        host = self._host(alias)
        if shutil.which("nft") is None:
            raise LabUnavailable("partition() needs nft (apt-get install nftables)")
        table = self._nft_table(alias)
        if host.netns is None:
            script = (
                f"table inet {table} {{\n chain input {{\n  type filter hook input priority -300; policy accept;\n"
                f"  tcp dport {host.port} drop\n  tcp sport {host.port} drop\n }}\n}}\n"
            )
            self._nft_delete(None, table)
            _run(["nft", "-f", "-"], input=script)
            return
        for ns, dev in host.links:
            script = (
                f"table netdev {table} {{\n chain ingress {{\n"
                f"  type filter hook ingress device \"{dev}\" priority -500; policy drop;\n }}\n}}\n"
            )
            self._nft_delete(ns, table)
            _run(["nft", "-f", "-"], netns=ns, input=script)

    def heal(self, alias: str) -> None:
        """Remove the partition of ``alias`` (no-op when there is none)."""
        host = self._host(alias)
        table = self._nft_table(alias)
        if host.netns is None:
            self._nft_delete(None, table)
        for ns, _dev in host.links:
            self._nft_delete(ns, table)

    def stop_sshd(self, alias: str, kill_sessions: bool = False) -> None:
        """SIGTERM the host's sshd listener (new connections are then refused).

        Like ``systemctl stop ssh`` (Debian's KillMode=process), open sessions survive unless
        ``kill_sessions``.
        """
        host = self._host(alias)
        if host.proc is None:
            return
        sessions = _descendants([host.proc.pid]) if kill_sessions else []
        if host.proc.poll() is None:
            host.proc.terminate()
        try:
            host.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            host.proc.kill()
            host.proc.wait()
        host.proc = None
        if sessions:
            _kill(sessions, signal.SIGTERM)
            _kill(_wait_gone(sessions, 1.0))

    def drop_connections(self, alias: str) -> int:
        """Kill the host's per-connection sshd processes only (what a crashed or restarted sshd
        does to its clients), leaving whatever the sessions started running. Returns how many."""
        host = self._host(alias)
        if host.proc is None:
            return 0
        pids = [p for p in _descendants([host.proc.pid]) if (_cmdline(p) or [""])[0].startswith("sshd:")]
        _kill(pids, signal.SIGKILL)
        return len(pids)

    def start_sshd(self, alias: str) -> None:
        """Start the host's sshd again (same config, keys and address); waits until it listens."""
        host = self._host(alias)
        if host.proc is not None and host.proc.poll() is None:
            return
        self._spawn_sshd(host)
        self._wait_listening([host])

    def restart_sshd(self, alias: str, kill_sessions: bool = False) -> None:
        """``stop_sshd`` then ``start_sshd``: same keys, same address and port."""
        self.stop_sshd(alias, kill_sessions=kill_sessions)
        self.start_sshd(alias)

    def reset(self) -> None:
        """Back to the started state: heal every partition, restart stopped sshds, kill the user's processes."""
        for alias in self.hosts:
            self.heal(alias)
        for alias in self.hosts:
            self.start_sshd(alias)
        self._kill_user_processes()

    def sshd_running(self, alias: str) -> bool:
        host = self._host(alias)
        return host.proc is not None and host.proc.poll() is None

    # ---------------------------------------------------------------- setup steps

    def _host(self, alias: str) -> LabHost:
        try:
            return self._hosts[alias]
        except KeyError:
            raise KeyError(f"no lab host {alias!r} (hosts: {', '.join(self._hosts) or 'none, lab not started'})") from None

    def _check_prerequisites(self) -> None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise LabUnavailable("the SSH lab needs root (network namespaces, a test user, sshd)")
        if not os.path.exists(SSHD):
            raise LabUnavailable(f"no {SSHD} (apt-get install openssh-server)")
        for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"),
                              ("ip", "iproute2"), ("runuser", "util-linux"), ("useradd", "passwd")):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"no {tool} on PATH (apt-get install {package})")
        if not os.path.exists(self.python):
            raise LabUnavailable(f"no {self.python} for the test user")
        probe = _run(["ip", "netns", "list"], check=False)
        if probe.returncode != 0:
            raise LabUnavailable(f"`ip netns` is not usable: {probe.stderr.strip()}")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        os.chmod("/run/sshd", 0o755)

    def _acquire_lock(self) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = (_read(LOCK_PATH) or "?").strip()
                    os.close(fd)
                    raise LabUnavailable(f"another SSH lab is running (pid {holder}, lock {LOCK_PATH})") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _cleanup_leftovers(self) -> None:
        """Remove what a crashed earlier lab left (we hold the lock, so none of it is live)."""
        # sshd listeners of old labs in the root namespace, and their sessions
        # (a listener retitles itself "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ...")
        marker = os.path.join(tempfile.gettempdir(), TMP_PREFIX)
        stale = []
        for pid in _pids():
            argv = _cmdline(pid)
            if argv and argv[0].startswith(("sshd", SSHD)) and marker in " ".join(argv):
                stale.append(pid)
        if stale:
            _kill(stale + _descendants(stale))
            _wait_gone(stale, 2.0)
        # root-namespace nft tables
        self._nft_cleanup_root()
        # namespaces (kill what runs in them first: `ip netns del` only drops the name)
        names = [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
        for name in names:
            if name.startswith(NS_PREFIX):
                self._kill_netns_processes(name)
                _run(["ip", "netns", "del", name], check=False)
        # veth ends left in the root namespace
        for line in _run(["ip", "-o", "link", "show"]).stdout.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2:
                dev = parts[1].strip().split("@")[0]
                if dev.startswith(LINK_PREFIX):
                    _run(["ip", "link", "del", dev], check=False)
        _run(["ip", "route", "del", *GUARD_ROUTE], check=False)
        # processes of the test user, and old temp dirs
        if self._user_exists():
            self._kill_user_processes()
        tmp = tempfile.gettempdir()
        for name in os.listdir(tmp):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)

    def _user_exists(self) -> bool:
        try:
            pwd.getpwnam(self.user)
            return True
        except KeyError:
            return False

    def _user_uid(self) -> int:
        """The test user's uid, -1 while the user does not exist."""
        if self.uid < 0 and self._user_exists():
            self.uid = pwd.getpwnam(self.user).pw_uid
        return self.uid

    def _ensure_user(self) -> None:
        if not self._user_exists():
            _run(["useradd", "-m", "-s", "/bin/sh", self.user])
        entry = pwd.getpwnam(self.user)
        if entry.pw_uid == 0:
            raise LabUnavailable(f"test user {self.user!r} has uid 0")
        if entry.pw_shell != "/bin/sh":
            _run(["usermod", "-s", "/bin/sh", self.user])
        shadow = _read("/etc/shadow") or ""
        for line in shadow.splitlines():
            if line.startswith(self.user + ":"):
                if line.split(":")[1] != "*":
                    _run(["usermod", "-p", "*", self.user])
                break
        self.uid = entry.pw_uid
        self.home = entry.pw_dir
        os.makedirs(self.home, exist_ok=True)

    def _make_files(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix=TMP_PREFIX)
        os.chmod(self.tmpdir, 0o755)  # sshd reads authorized_keys as the test user
        self.client_key = os.path.join(self.tmpdir, "id_ed25519")
        self.client_pubkey = self.client_key + ".pub"
        self.authorized_keys = os.path.join(self.tmpdir, "authorized_keys")
        self.ssh_config = os.path.join(self.tmpdir, "ssh_config")
        self.known_hosts = os.path.join(self.tmpdir, "known_hosts")
        # files the test user must reach (fake interpreters, ...): pytest's tmp_path is under
        # /tmp/pytest-of-root (mode 700), which the test user cannot enter
        self.scratch = os.path.join(self.tmpdir, "scratch")
        os.mkdir(self.scratch, 0o755)
        os.chown(self.scratch, self.uid, -1)

    def _plan_hosts(self) -> None:
        hosts: dict[str, LabHost] = {}
        hosts["server01"] = LabHost("server01", "127.0.0.1", _free_port(), None)
        for i in range(1, self.namespace_hosts + 1):
            hosts[f"nshost{i}"] = LabHost(
                f"nshost{i}", f"10.231.{i}.2", 22, f"{NS_PREFIX}{i}",
                links=[(None, f"{LINK_PREFIX}{i}"), (f"{NS_PREFIX}{i}", f"{LINK_PREFIX}{i}p")],
            )
        if self.behind_jump:
            hosts["behind1"] = LabHost(
                "behind1", f"10.231.{BEHIND_NET}.2", 22, f"{NS_PREFIX}b", jump="nshost1",
                links=[(f"{NS_PREFIX}1", f"{LINK_PREFIX}b"), (f"{NS_PREFIX}b", f"{LINK_PREFIX}bp")],
            )
        self._hosts = hosts
        # keys: the client's and one host key per host, generated in parallel
        jobs = [self._keygen(self.client_key, "rjlab-client")]
        for host in hosts.values():
            host.workdir = os.path.join(self.tmpdir, host.alias)
            os.mkdir(host.workdir)
            host.host_key = os.path.join(host.workdir, "ssh_host_ed25519_key")
            host.config = os.path.join(host.workdir, "sshd_config")
            host.log = os.path.join(host.workdir, "sshd.log")
            jobs.append(self._keygen(host.host_key, f"rjlab-{host.alias}"))
        self._wait_all(jobs, "ssh-keygen")
        shutil.copyfile(self.client_pubkey, self.authorized_keys)
        os.chmod(self.authorized_keys, 0o644)

    @staticmethod
    def _keygen(path: str, comment: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    @staticmethod
    def _wait_all(jobs: list[subprocess.Popen], what: str) -> None:
        for job in jobs:
            out, err = job.communicate()
            if job.returncode != 0:
                raise RuntimeError(f"{what} failed ({job.returncode}): {' '.join(job.args)}: {(err or out).strip()}")

    def _make_network(self) -> None:
        if not any(h.netns for h in self._hosts.values()):
            return
        _run(["ip", "route", "add", *GUARD_ROUTE])
        self._made_guard = True
        for i in range(1, self.namespace_hosts + 1):
            ns, dev = f"{NS_PREFIX}{i}", f"{LINK_PREFIX}{i}"
            self._netns_add(ns)
            self._veth(None, dev, ns, i)
            # the namespace hosts reach each other (a Dask cluster spans them) through the root
            # namespace, which forwards only what arrives on their own links (not behind1's)
            _run(["ip", "-n", ns, "route", "add", SUBNET, "via", f"10.231.{i}.1"])
            with open(f"/proc/sys/net/ipv4/conf/{dev}/forwarding", "w") as f:
                f.write("1")
        if self.behind_jump:
            ns, jump_ns, dev = f"{NS_PREFIX}b", f"{NS_PREFIX}1", f"{LINK_PREFIX}b"
            self._netns_add(ns)
            # both ends created inside rj-h1, then one moved: nothing of it ever touches the root namespace
            self._veth(jump_ns, dev, ns, BEHIND_NET)
            # behind1 reaches nshost1's addresses (a Dask worker there joins a scheduler on nshost1);
            # rj-h1 forwards nothing, so behind1 stays reachable only from rj-h1
            _run(["ip", "-n", ns, "route", "add", SUBNET, "via", f"10.231.{BEHIND_NET}.1"])

    @staticmethod
    def _veth(outer_ns: Optional[str], dev: str, inner_ns: str, net: int) -> None:
        """veth ``dev`` (10.231.NET.1, in outer_ns) / ``dev``p (10.231.NET.2, in inner_ns).

        Fixed MACs and PERMANENT neighbour entries on both ends: no ARP ever, so a partition
        stays a silent drop (connects time out) instead of turning into "No route to host"
        once the neighbour entries expire, as it would on one L2 segment.
        """
        outer = ["ip"] if outer_ns is None else ["ip", "-n", outer_ns]
        inner = ["ip", "-n", inner_ns]
        mac_outer, mac_inner = f"02:72:6a:{net:02x}:00:01", f"02:72:6a:{net:02x}:00:02"
        ip_outer, ip_inner = f"10.231.{net}.1", f"10.231.{net}.2"
        _run([*outer, "link", "add", dev, "address", mac_outer, "type", "veth",
              "peer", "name", dev + "p", "address", mac_inner, "netns", inner_ns])
        _run([*outer, "addr", "add", f"{ip_outer}/24", "dev", dev])
        _run([*outer, "neigh", "replace", ip_inner, "lladdr", mac_inner, "nud", "permanent", "dev", dev])
        _run([*outer, "link", "set", dev, "up"])
        _run([*inner, "addr", "add", f"{ip_inner}/24", "dev", dev + "p"])
        _run([*inner, "neigh", "replace", ip_outer, "lladdr", mac_outer, "nud", "permanent", "dev", dev + "p"])
        _run([*inner, "link", "set", dev + "p", "up"])

    @staticmethod
    def _netns_add(ns: str) -> None:
        proc = _run(["ip", "netns", "add", ns], check=False)
        if proc.returncode != 0:
            raise LabUnavailable(f"cannot create network namespace {ns}: {proc.stderr.strip()}")
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _write_sshd_configs(self) -> None:
        jobs = []
        for host in self._hosts.values():
            lines = [
                f"ListenAddress {host.address}",
                f"Port {host.port}",
                f"HostKey {host.host_key}",
                f"PidFile {os.path.join(host.workdir, 'sshd.pid')}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "MaxSessions 100",
                "MaxStartups 100:30:200",
                f"AllowUsers {self.user}",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                *self.sshd_options,
                f"Subsystem sftp {SFTP_SERVER}",
            ]
            with open(host.config, "w") as f:
                f.write("\n".join(lines) + "\n")
            jobs.append(subprocess.Popen([SSHD, "-t", "-f", host.config], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        self._wait_all(jobs, "sshd -t")

    def _spawn_sshd(self, host: LabHost) -> None:
        cmd = [SSHD, "-D", "-e", "-f", host.config]
        if host.netns:
            cmd = ["ip", "netns", "exec", host.netns, *cmd]  # ip execs sshd: same pid
        with open(host.log, "a") as log:
            log.write(f"--- lab: starting sshd at {time.strftime('%H:%M:%S')}\n")
            log.flush()
            host.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=_become_subreaper)

    def _wait_listening(self, hosts: list[LabHost], timeout: float = 10.0) -> None:
        """Wait for each sshd's 'Server listening' line (works for behind1 too, unreachable from here)."""
        deadline = time.monotonic() + timeout
        offsets = {h.alias: (_read(h.log) or "").rfind("--- lab: starting sshd") for h in hosts}
        pending = list(hosts)
        while pending:
            for host in list(pending):
                text = (_read(host.log) or "")[max(offsets[host.alias], 0):]
                if "Server listening on" in text:
                    pending.remove(host)
                elif host.proc is None or host.proc.poll() is not None:
                    raise RuntimeError(f"sshd of {host.alias} exited: {text.strip()[-2000:]}")
            if pending and time.monotonic() >= deadline:
                raise RuntimeError(f"sshd of {', '.join(h.alias for h in pending)} not listening after {timeout} s")
            if pending:
                time.sleep(0.005)

    def _start_all_sshd(self) -> None:
        server = self._hosts["server01"]
        for host in self._hosts.values():
            self._spawn_sshd(host)
        try:
            self._wait_listening(list(self._hosts.values()))
        except RuntimeError:
            # the free port of server01 may have been taken meanwhile: retry it on new ports
            others = [h for h in self._hosts.values() if h is not server]
            self._wait_listening(others)
            for _attempt in range(3):
                if server.proc is not None and server.proc.poll() is None:
                    break
                server.port = _free_port()
                self._write_sshd_configs()
                self._spawn_sshd(server)
                try:
                    self._wait_listening([server])
                except RuntimeError:
                    continue
            self._wait_listening([server])

    def _write_client_files(self) -> None:
        self.write_known_hosts(self.known_hosts)
        blocks = []
        for host in self._hosts.values():
            lines = [
                f"Host {host.alias}",
                f"    HostName {host.address}",
                f"    Port {host.port}",
                f"    User {self.user}",
                f"    IdentityFile {self.client_key}",
                "    IdentitiesOnly yes",
                f"    UserKnownHostsFile {self.known_hosts}",
                "    GlobalKnownHostsFile /dev/null",
                "    StrictHostKeyChecking yes",
                "    BatchMode yes",
                "    ConnectTimeout 10",
            ]
            if host.jump:
                lines.append(f"    ProxyJump {host.jump}")
            blocks.append("\n".join(lines) + "\n")
        with open(self.ssh_config, "w") as f:
            f.write("\n".join(blocks))

    # ---------------------------------------------------------------- helpers

    def _fresh_public_key(self) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="rjlab-wrongkey-") as d:
            path = os.path.join(d, "key")
            self._wait_all([self._keygen(path, "rjlab-wrong")], "ssh-keygen")
            return _read(path + ".pub").split()[:2]

    def _kill_user_processes(self) -> None:
        uid = self._user_uid()
        for _round in range(50 if uid >= 0 else 0):
            pids = []
            for pid in _pids():
                try:
                    if os.stat(f"/proc/{pid}").st_uid == uid and _alive(pid):
                        pids.append(pid)
                except OSError:
                    pass
            if not pids:
                return
            _kill(pids)
            _wait_gone(pids, 0.2)

    def _wait_user_reaped(self, timeout: float) -> None:
        """Wait until the test user has no process at all, zombies included (so `pgrep -u` is empty)."""
        uid = self._user_uid()
        deadline = time.monotonic() + timeout
        while uid >= 0 and time.monotonic() < deadline:
            left = []
            for pid in _pids():
                try:
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        left.append(pid)
                except OSError:
                    pass
            if not left:
                return
            time.sleep(0.01)

    @staticmethod
    def _kill_netns_processes(ns: str) -> None:
        for _round in range(20):
            proc = _run(["ip", "netns", "pids", ns], check=False)
            pids = [int(p) for p in proc.stdout.split() if p.isdigit()]
            if not pids:
                return
            _kill(pids)
            _wait_gone(pids, 0.5)

    @staticmethod
    def _nft_table(alias: str) -> str:
        return NFT_PREFIX + alias

    @staticmethod
    def _nft_delete(ns: Optional[str], table: str) -> None:
        if shutil.which("nft") is None:
            return
        listing = _run(["nft", "list", "tables"], netns=ns, check=False).stdout
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table" and parts[2] == table:
                _run(["nft", "delete", "table", parts[1], table], netns=ns, check=False)

    @staticmethod
    def _nft_cleanup_root() -> None:
        if shutil.which("nft") is None:
            return
        listing = _run(["nft", "list", "tables"], check=False).stdout
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table" and parts[2].startswith(NFT_PREFIX):
                _run(["nft", "delete", "table", parts[1], parts[2]], check=False)
