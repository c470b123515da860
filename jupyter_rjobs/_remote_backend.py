"""Remote jobs: the code runs on SSH hosts, under the agent's ``serve`` (see _agent.py).

One :class:`HostSession` per host: one SSH connection and one agent server on it, shared by
every job there. First contact checks the host's Python, uploads the agent (and dill, if the
host lacks it) into a private, versioned cache directory, and starts the server. Each job is a
detached process on the host writing an append-only spool; with ``cache="kernel"`` its records
stream into the kernel and the spool is deleted once they are all here; with ``cache="remote"``
they stay on the host and ``receive`` fetches them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shlex
import sys
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import _agent
from ._agent import compile_job, read_frame, write_frame
from ._backend import Backend, FrameApplier, JobRunner
from ._errors import HostError
from ._job import Job, JobKind, JobState
from ._namespace import capture_variables, serialize_variables
from ._records import Record, RecordKind, RecordStream
from ._ssh import HostSettings, SshConnection, resolve_host

__all__ = ["RemoteBackend", "HostSession"]

log = logging.getLogger(__name__)

MIN_PYTHON = (3, 9)
MAX_CONNECTING = 32
AGENT_SOURCE = Path(_agent.__file__).read_bytes()
AGENT_DIGEST = hashlib.sha256(AGENT_SOURCE).hexdigest()[:12]

_PROBE = (
    "import json, os, sys\n"
    "root = os.path.join(os.path.expanduser('~'), '.cache', 'jupyter_rjobs')\n"
    "try:\n    import dill\n    has_dill = True\nexcept Exception:\n    has_dill = False\n"
    "st = os.lstat(root) if os.path.lexists(root) else None\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'dill': has_dill, 'root': root, 'uid': os.getuid(),"
    " 'root_uid': st.st_uid if st else None, 'root_mode': st.st_mode & 0o7777 if st else None,"
    " 'root_link': os.path.islink(root)}))\n"
)


def _dill_zip() -> bytes:
    """The local dill package as a zip, for hosts whose Python lacks it (zipimport loads it)."""
    import dill

    package = Path(dill.__file__).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in package.rglob("*.py"):
            archive.write(path, str(Path("dill") / path.relative_to(package)))
    return buffer.getvalue()


class _ChannelReader:
    """A file-like ``readinto`` over a paramiko channel, for read_frame: small reads are served
    from a buffer (a frame's head, its JSON), large ones go straight into the caller's memory."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._buffer = b""

    def readinto(self, view: memoryview) -> int:
        wanted = len(view)
        if not self._buffer and wanted < 65536:
            self._buffer = self._channel.recv(65536)
        if self._buffer:
            n = min(wanted, len(self._buffer))
            view[:n] = self._buffer[:n]
            self._buffer = self._buffer[n:]
            return n
        data = self._channel.recv(min(wanted, 4 * 2**20))
        view[: len(data)] = data
        return len(data)


class _ChannelWriter:
    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def write(self, data: Any) -> int:
        self._channel.sendall(data)
        return len(data)


class HostSession:
    """A host's connection and agent server, shared by all jobs on it."""

    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.host = settings.alias
        self.connection: SshConnection | None = None
        self.python_version = ""
        self.root = ""
        self._channel: Any = None
        self._writer: _ChannelWriter | None = None
        self._send_lock = threading.Lock()
        self._runners: dict[str, RemoteRunner] = {}
        self._hello = threading.Event()
        self._pong = threading.Event()
        self._closed = False

    # -- first contact ------------------------------------------------------------------
    def open(self) -> HostSession:
        self.connection = SshConnection(self.settings).open()
        try:
            agent_dir, python_path = self._install()
            command = (
                f"exec env PYTHONPATH={shlex.quote(python_path)} {shlex.quote(self.settings.python)} -u -c "
                + shlex.quote(f"import sys; sys.path.insert(0, {agent_dir!r}); import rjobs_agent; rjobs_agent.serve_main({self.root!r})")
            )
            self._channel = self.connection.exec(command)
            self._writer = _ChannelWriter(self._channel)
            threading.Thread(target=self._read, name=f"rjob-host-{self.host}", daemon=True).start()
            if not self._hello.wait(30) or self._closed:
                raise HostError(self.host, f"the agent did not start there: {self._stderr_tail() or 'no message'}")
        except BaseException:
            self.close()
            raise
        return self

    def _install(self) -> tuple[str, str]:
        assert self.connection is not None
        python = self.settings.python
        status, out, err = self.connection.run(f"{shlex.quote(python)} -c {shlex.quote(_PROBE)}")
        if status == 127 or (status != 0 and b"not found" in err):
            raise HostError(self.host, f"no {python} there; install Python 3.9 or newer, or name one with --python PATH")
        if status != 0:
            raise HostError(self.host, f"{python} failed to start ({err.decode(errors='replace').strip()[-200:]})")
        probe = json.loads(out.decode().strip().splitlines()[-1])
        version = tuple(probe["version"])
        self.python_version = ".".join(map(str, version))
        if version[:2] < MIN_PYTHON:
            raise HostError(self.host, f"{python} there is Python {self.python_version}; jobs need 3.9 or newer (give one with --python PATH)")
        self.root = probe["root"]
        if probe["root_mode"] is not None and (
            probe["root_link"] or probe["root_uid"] != probe["uid"] or probe["root_mode"] & 0o077
        ):
            raise HostError(
                self.host,
                f"the spool directory {self.root} is not private (mode {oct(probe['root_mode'])}, owner uid {probe['root_uid']});"
                f" refusing to load anything from it. Fix it there with: chmod 700 {self.root}",
            )
        agent_dir = f"{self.root}/agent-{_agent.AGENT_VERSION}-{AGENT_DIGEST}"
        files = {"rjobs_agent.py": AGENT_SOURCE}
        if not probe["dill"]:
            files["dill.zip"] = _dill_zip()
        quoted_dir = shlex.quote(agent_dir)
        for name, content in files.items():
            target = shlex.quote(f"{agent_dir}/{name}")
            command = (
                f"umask 077 && mkdir -p {shlex.quote(self.root + '/jobs')} {quoted_dir} && "
                f"if [ ! -f {target} ]; then cat > {target}.part && mv {target}.part {target}; else cat > /dev/null; fi"
            )
            status, _, err = self.connection.run(command, stdin=content)
            if status != 0:
                message = err.decode(errors="replace").strip()
                if "No space left" in message:
                    raise HostError(self.host, f"no space left on the host's disk (installing the agent in {agent_dir}); free some space there")
                raise HostError(self.host, f"could not install the agent in {agent_dir} ({message[-200:]})")
        return agent_dir, f"{agent_dir}/dill.zip"

    def _stderr_tail(self) -> str:
        try:
            if self._channel is not None and self._channel.recv_stderr_ready():
                return self._channel.recv_stderr(4096).decode(errors="replace").strip().splitlines()[-1]
        except Exception:  # noqa: BLE001
            pass
        return ""

    # -- talking to the agent -----------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self._closed and self.connection is not None and self.connection.alive

    def send(self, header: dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        if self._writer is None or self._closed:
            raise HostError(self.host, "the connection is closed")
        with self._send_lock:
            write_frame(self._writer, header, buffers)

    def attach(self, instance: str, runner: RemoteRunner) -> None:
        self._runners[instance] = runner

    def detach(self, instance: str) -> None:
        self._runners.pop(instance, None)

    def _read(self) -> None:
        reader = _ChannelReader(self._channel)
        try:
            while True:
                frame = read_frame(reader)  # type: ignore[arg-type]
                if frame is None:
                    break
                self._dispatch(*frame)
        except Exception as exc:  # noqa: BLE001 - a broken connection ends the session
            log.debug("session %s ended: %s", self.host, exc)
        finally:
            self._closed = True
            self._hello.set()
            for runner in list(self._runners.values()):
                runner.connection_lost()

    def _dispatch(self, header: dict[str, Any], buffers: list[bytearray]) -> None:
        op = header.get("op")
        if op == "hello":
            self._hello.set()
            return
        if op == "pong":
            self._pong.set()
            return
        runner = self._runners.get(str(header.get("job")))
        if runner is not None:
            runner.on_frame(op, header, buffers)

    def close(self, sync_timeout: float = 2.0) -> None:
        """Close the agent server's channel and the connection; first a ping, so that every frame
        sent before (the last clean and stop requests) has been acted on."""
        if self._writer is not None and not self._closed:
            self._pong.clear()
            try:
                self.send({"op": "ping"})
                self._pong.wait(sync_timeout)
            except HostError:
                pass
        self._closed = True
        if self._channel is not None:
            try:
                self._channel.shutdown_write()
                self._channel.close()
            except Exception:  # noqa: BLE001
                pass
        if self.connection is not None:
            self.connection.close()


class RemoteSpoolStream(RecordStream):
    """The record stream of a ``cache="remote"`` job: the records stay in the host's spool.

    The kernel hears only how far the spool goes (and the job's states and errors); ``take``
    fetches from the host, and without ``keep`` tells the host how far it was received.
    """

    def __init__(self, job_id: int, on_append: Callable[[Record], None], runner: RemoteRunner) -> None:
        super().__init__(job_id, on_append)
        self._runner = runner
        self._host_last = 0
        self._received = 0

    def append(self, kind: RecordKind, data: Any, seq: int | None = None, when: float | None = None) -> Record | None:
        seq = seq if seq is not None else self._host_last + 1
        self.notice(seq)
        record = Record(seq, RecordKind(kind), data, when or 0.0, self.job_id)
        if self._on_append is not None:  # the job learns its error; the record itself stays on the host
            self._on_append(record)
        return record

    def notice(self, seq: int) -> None:
        with self._lock:
            self._host_last = max(self._host_last, seq)

    @property
    def has_unreceived(self) -> bool:
        return self._host_last > self._received

    def has_after(self, seq: int) -> bool:
        return self._host_last > max(seq, self._received)

    def take(self, after: int = 0, keep: bool = False) -> list[Record]:
        start = max(after, self._received)
        if self._host_last <= start:
            return []
        records = self._runner.fetch(start)
        if not keep and records:
            self._received = max(self._received, records[-1].seq)
            self._runner.ack(self._received)
        return records


class RemoteRunner(JobRunner):
    def __init__(self, job: Job, session: HostSession, cache: str, stop_grace: float) -> None:
        super().__init__(job)
        self.session = session
        self.cache = cache
        self.instance = str(job.instance_id)
        self.stop_grace = stop_grace
        self._apply = FrameApplier(job, session.python_version)
        self._fetch_lock = threading.Lock()
        self._fetched: list[Record] | None = None
        self._fetch_done = threading.Event()
        if cache == "remote":
            job.stream = RemoteSpoolStream(job.id, job._record_appended, self)

    def start(self, header: dict[str, Any], buffers: Sequence[Any]) -> None:
        self.session.attach(self.instance, self)
        self.session.send(dict(header, job=self.instance, cache=self.cache, name=self.job.name), buffers)

    # frames from the host
    def on_frame(self, op: str | None, header: dict[str, Any], buffers: list[bytearray]) -> None:
        job = self.job
        if op == "record":
            if self._fetched is not None and header["kind"] != "state":
                self._fetched.append(self._apply.record(header, buffers))
                return
            self._apply(header, buffers)
            if header["kind"] == "state" and JobState(header["data"]).finished and self.cache == "kernel":
                self._clean()  # every record is safely here: the host's spool can go
        elif op == "notice" and isinstance(job.stream, RemoteSpoolStream):
            job.stream.notice(int(header["seq"]))
        elif op == "fetched":
            self._fetch_done.set()
        elif op == "failed":  # the host could not start it (a full disk, say): nothing of it may stay there
            job.fail("HostError", f"{self.session.host}: {header.get('error')}")
            self._clean()

    def fetch(self, after: int) -> list[Record]:
        with self._fetch_lock:
            self._fetched = []
            self._fetch_done.clear()
            self.session.send({"op": "fetch", "job": self.instance, "after": after})
            if not self._fetch_done.wait(300):
                self._fetched = None
                raise HostError(self.session.host, "the host did not send the job's records within 300 s")
            records, self._fetched = self._fetched, None
        records = sorted({r.seq: r for r in records if r.seq > after}.values(), key=lambda r: r.seq)
        return records

    def ack(self, seq: int) -> None:
        self.session.send({"op": "ack", "job": self.instance, "seq": seq})

    def connection_lost(self) -> None:
        if not self.job.state.finished:
            self.job.set_state(JobState.Disconnected)
        self._fetch_done.set()

    # stopping and cleaning
    def terminate(self) -> None:
        self._send_quietly({"op": "stop", "job": self.instance, "grace": self.stop_grace})

    def kill(self) -> None:
        self._send_quietly({"op": "stop", "job": self.instance, "grace": 0})

    def cleanup(self) -> None:
        self._clean()

    def _clean(self) -> None:
        """Delete the job's spool on the host; a finished job needs no more frames from there."""
        self._send_quietly({"op": "clean", "job": self.instance})
        if self.job.state.finished:
            self.session.detach(self.instance)

    def _send_quietly(self, header: dict[str, Any]) -> None:
        try:
            self.session.send(header)
        except HostError:
            pass


class _RemotePrepared:
    def __init__(self, header: dict[str, Any], buffers: list[Any], sessions: dict[str, HostSession | HostError], cache: str) -> None:
        self.header = header
        self.buffers = buffers
        self.sessions = sessions
        self.cache = cache


class RemoteBackend(Backend):
    kind = JobKind.REMOTE

    def __init__(
        self,
        max_concurrent: int = 1000,
        stop_grace: float = 3.0,
        ssh_config: str | None = None,
        max_connecting: int = MAX_CONNECTING,
    ) -> None:
        super().__init__(max_concurrent)
        self.stop_grace = stop_grace
        self.ssh_config = ssh_config
        self.max_connecting = max_connecting
        self._sessions: dict[tuple[str, str], HostSession] = {}
        self._lock = threading.Lock()
        self._connecting = threading.Semaphore(max_connecting)
        self._host_locks: dict[tuple[str, str], threading.Lock] = {}

    def session(self, host: str, python: str | None = None, accept_new: bool = False) -> HostSession:
        """The open session to ``host`` (connecting on first use; ssh_config is read only then)."""
        key = (host, python or "", self.ssh_config or "")
        existing = self._sessions.get(key)
        if existing is not None and existing.alive:
            return existing
        with self._lock:
            host_lock = self._host_locks.setdefault(key, threading.Lock())
        with host_lock:
            existing = self._sessions.get(key)
            if existing is not None and existing.alive:
                return existing
            settings = resolve_host(host, ssh_config=self.ssh_config, python=python, accept_new=accept_new)
            with self._connecting:
                session = HostSession(settings).open()
            self._sessions[key] = session
            return session

    def prepare(
        self,
        code: str,
        filename: str,
        namespace: Mapping[str, Any] | None,
        push: Sequence[str] | None,
        hosts: Sequence[str] = (),
        cache: str = "kernel",
        python: str | None = None,
        accept_new_host: bool = False,
    ) -> _RemotePrepared:
        if cache not in ("kernel", "remote"):
            raise HostError(",".join(hosts), f"--cache is kernel or remote, not {cache!r}")
        compile_job(code, filename)
        specs, buffers = serialize_variables(capture_variables(code, namespace, push), where="a remote job")
        header = {"op": "run", "code": code, "filename": filename, "variables": specs, "python": sys.version.split()[0]}
        sessions: dict[str, HostSession | HostError] = {}

        def connect(host: str) -> None:
            try:
                sessions[host] = self.session(host, python, accept_new_host)
            except HostError as exc:
                sessions[host] = exc

        if len(hosts) == 1:
            connect(hosts[0])
        else:
            with ThreadPoolExecutor(min(len(hosts), self.max_connecting)) as pool:
                list(pool.map(connect, hosts))
        failures = [s for s in sessions.values() if isinstance(s, HostError)]
        if len(failures) == len(hosts):
            raise failures[0] if len(failures) == 1 else HostError(
                ",".join(hosts), "no host could be used: " + "; ".join(str(f) for f in failures)
            )
        return _RemotePrepared(header, buffers, sessions, cache)

    def launch(self, job: Job, prepared: _RemotePrepared) -> None:
        session = prepared.sessions[job.location]
        if isinstance(session, HostError):
            job.fail("HostError", str(session))
            return
        runner = RemoteRunner(job, session, prepared.cache, self.stop_grace)
        try:
            runner.start(prepared.header, prepared.buffers)
        except HostError as exc:
            job.fail("HostError", str(exc))

    def shutdown(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
