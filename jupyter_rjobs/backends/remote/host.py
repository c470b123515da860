"""A host's connection and the agent server on it, shared by every job and session there.

The connection is a :class:`~.transport.Transport`: SSH to a host, or a local pipe for
``localhost`` (this machine, no sshd); everything else here is the same for both. First contact
checks the host's Python, uploads the agent (and dill, if the host lacks it) into a private,
versioned cache directory (on localhost: a local copy, once per version), and starts the server
(``serve_main`` in agent/server.py). Frames for a job go to its runner; replies to requests (a
listing, a session's state) to whoever waits.
"""

from __future__ import annotations

import functools
import io
import logging
import queue
import shlex
import threading
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from jupyter_rjobs.agent import protocol
from jupyter_rjobs.agent.protocol import Inbox, read_forwarded, write_frame
from jupyter_rjobs.backends.remote.agent_files import AGENT_PACKAGE, PROBE, agent_zip, dill_zip, read_probe
from jupyter_rjobs.backends.remote.outbox import FLUSHER, Outbox
from jupyter_rjobs.backends.remote.ssh.config import HostSettings
from jupyter_rjobs.backends.remote.transport import Channel, LocalTransport, Transport, is_local_host
from jupyter_rjobs.core.errors import HostError, HostRequestFailed

if TYPE_CHECKING:
    from jupyter_rjobs.backends.remote.ssh.known_hosts import AcceptNewHost

__all__ = ["HostConnection", "FrameTarget"]

log = logging.getLogger(__name__)


class FrameTarget(Protocol):
    def on_frame(self, op: str | None, header: dict[str, Any], buffers: list[bytearray]) -> None: ...
    def frame_failed(self, exc: BaseException) -> None: ...
    def connection_lost(self) -> None: ...


MIN_PYTHON = (3, 9)
MAX_CONNECTING = 32


def channel_inbox(channel: Channel) -> Inbox:
    """What read_frame reads a channel (SSH or local pipe) through: many small frames per read,
    and a big value straight into its memory (an SSH channel's recv_into, see ssh/chunkpipe.py)."""
    return Inbox(channel.recv, getattr(channel, "recv_into", None))


class _ChannelWriter:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def write(self, data: Any) -> int:
        self._channel.sendall(data)
        return len(data)


class HostConnection:
    """A host's connection and agent server, shared by all jobs and sessions on it."""

    def __init__(
        self, settings: HostSettings, on_lost: Callable[[HostConnection], None] | None = None, accept_new_host: AcceptNewHost = False,
        orphan_grace: float | None = None,
    ) -> None:
        self.settings = settings
        self.orphan_grace = orphan_grace  # how long the host waits for this kernel to come back (agent/orphan.py)
        self._accept_new_host = accept_new_host  # which hops may accept an unknown key (first contact only)
        self.host = settings.alias
        self.server_pid = 0
        self._on_lost = on_lost
        self._replies: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._request_lock = threading.Lock()
        self.connection: Transport | None = None
        self.python_version = ""
        self.python: str | None = None  # the --python it was opened with (None: the host's default)
        self.root = ""
        self._channel: Channel | None = None
        self._writer: _ChannelWriter | None = None
        self._send_lock = threading.Lock()
        self._runners: dict[str, FrameTarget] = {}
        self._hello = threading.Event()
        self._hello_header: dict[str, Any] = {}
        self._pong = threading.Event()
        self._closed = False
        self._reader: int | None = None  # the reading thread's ident: it never waits to send (see later)
        self._later: queue.SimpleQueue[Callable[[], None] | None] | None = None
        self._sender: threading.Thread | None = None  # the thread that runs what later() queues
        self._outbox = Outbox()  # frames that may wait a moment (see send_soon)

    # -- first contact ------------------------------------------------------------------
    def open(self) -> HostConnection:
        self.connection = self._open_transport()
        try:
            agent_dir, python_path = self._install()
            problem = self._start_agent(agent_dir, python_path)
            if problem is not None:  # not our agent under our agent's name (damaged, edited): upload it again, once
                log.debug("%s: %s; uploading the agent again", self.host, problem)
                self._stop_agent()
                agent_dir, python_path = self._install(replace=True)
                problem = self._start_agent(agent_dir, python_path)
                if problem is not None:
                    raise HostError(self.host, f"{problem}; remove {agent_dir} there and connect again")
        except self._broken as exc:
            self.close()
            if isinstance(self.connection, LocalTransport):
                raise HostError(self.host, f"the local agent could not be started ({self._describe(exc)}); try again") from None
            raise HostError(self.host, f"the SSH connection broke while starting the agent there ({self._describe(exc)}); try again"
                            " (if it says the host refused a channel, sshd there allows no sessions: MaxSessions)") from None
        except BaseException:
            self.close()
            raise
        return self

    def _open_transport(self) -> Transport:
        """A local pipe for ``localhost`` (this machine, no SSH), else an SSH connection (paramiko
        is imported only then)."""
        if is_local_host(self.host):
            return LocalTransport().open()
        from jupyter_rjobs.backends.remote.ssh.connection import SshConnection

        connection = SshConnection(self.settings, self._accept_new_host)
        try:
            return connection.open()
        except connection.errors as exc:  # whatever the ssh layer did not name itself: still one line
            raise HostError(self.host, f"the SSH connection failed ({connection.describe(exc)}); check that the host is up and runs sshd") from None

    @property
    def _broken(self) -> tuple[type[BaseException], ...]:
        """What the transport raises when it breaks."""
        return self.connection.errors if self.connection is not None else (OSError, EOFError)

    def _describe(self, exc: BaseException) -> str:
        return self.connection.describe(exc) if self.connection is not None else str(exc)

    def _start_agent(self, agent_dir: str, python_path: str) -> str | None:
        """Start the agent's server from its zip; None once it said hello in our protocol, else what is wrong."""
        assert self.connection is not None
        entry = f"import sys; sys.path.insert(0, {agent_dir + '/' + AGENT_PACKAGE + '.zip'!r}); from {AGENT_PACKAGE}.server import serve_main; serve_main({self.root!r}, {self.orphan_grace!r})"
        command = f"exec env PYTHONPATH={shlex.quote(python_path)} {shlex.quote(self.settings.python)} -u -c " + shlex.quote(entry)
        self._hello.clear()
        self._channel = self.connection.exec(command)
        self._writer = _ChannelWriter(self._channel)
        threading.Thread(target=self._read, args=(self._channel,), name=f"rjob-host-{self.host}", daemon=True).start()
        if not self._hello.wait(30) or self._closed:
            raise HostError(self.host, f"the agent did not start there: {self._stderr_tail() or 'no message'}")
        return protocol.hello_problem(self._hello_header)

    def _stop_agent(self) -> None:
        """End the agent's server (its reader thread sees a replaced channel: nothing is lost)."""
        channel, self._channel, self._writer = self._channel, None, None
        try:
            if channel is not None:
                channel.close()
        except Exception:  # noqa: BLE001
            pass

    def _install(self, replace: bool = False) -> tuple[str, str]:
        assert self.connection is not None
        python = self.settings.python
        status, out, err = self.connection.run(f"{shlex.quote(python)} -c {shlex.quote(PROBE)}")
        if status == 127 or (status != 0 and b"not found" in err):
            raise HostError(self.host, f"no {python} there; install Python 3.9 or newer, or name one with --python PATH")
        if status != 0:
            raise HostError(self.host, f"{python} failed to start ({err.decode(errors='replace').strip()[-200:]})")
        probe = read_probe(self.host, python, out)
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
        zipped, digest = agent_zip()
        agent_dir = f"{self.root}/agent-{protocol.PROTOCOL_VERSION}-{digest}"
        files = {f"{AGENT_PACKAGE}.zip": zipped}
        if not probe["dill"]:
            files["dill.zip"] = dill_zip()
        quoted_dir = shlex.quote(agent_dir)
        for name, content in files.items():
            target = shlex.quote(f"{agent_dir}/{name}")
            missing = "true" if replace else f"[ ! -f {target} ]"
            command = (
                f"umask 077 && mkdir -p {shlex.quote(self.root + '/jobs')} {quoted_dir} && "
                f"if {missing}; then cat > {target}.part.$$ && mv -f {target}.part.$$ {target}; else cat > /dev/null; fi"
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
                tail: str = self._channel.recv_stderr(4096).decode(errors="replace").strip().splitlines()[-1]
                return tail
        except Exception:  # noqa: BLE001
            pass
        return ""

    # -- talking to the agent -----------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self._closed and self.connection is not None and self.connection.alive

    def send(self, header: dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        """Send one frame. From the reading thread (a frame's handler) it is queued instead (see
        :meth:`later`): that thread must never wait for the host to read."""
        if self._writer is None or self._closed:
            raise HostError(self.host, "the connection is closed")
        if threading.get_ident() == self._reader:
            self.later(functools.partial(self.send_quietly, header, buffers))
            return
        with self._send_lock:
            self._write(header, buffers)

    def _write(self, header: dict[str, Any] | None, buffers: Sequence[Any] = ()) -> None:
        """Write what waits in the outbox, then ``header``'s frame (one write when it is small),
        holding the send lock."""
        assert self._writer is not None
        waiting = self._outbox.take()
        joined = io.BytesIO()
        for frame, _ in waiting:
            write_frame(joined, frame)
        last = header if header is not None and buffers else None  # a frame with buffers goes on its own
        if header is not None and last is None:
            write_frame(joined, header)
        try:
            if joined.tell():
                try:
                    self._writer.write(joined.getvalue())
                except BaseException:
                    for _, lost in waiting:
                        lost()
                    raise
            if last is not None:
                write_frame(self._writer, last, buffers)
        except self._broken as exc:
            raise HostError(self.host, f"the connection is broken ({self._describe(exc)}); it reconnects by itself, or use %rjob connect") from None

    def send_soon(self, header: dict[str, Any], lost: Callable[[], None]) -> None:
        """Send a frame that may wait a moment (a CLEAN): with the next frame sent here, or within
        outbox.DELAY. ``lost`` is called if it cannot be sent after all. Never waits (the reading
        thread uses it)."""
        if self._writer is None or self._closed:
            raise HostError(self.host, "the connection is closed")
        self._outbox.put(header, lost)
        FLUSHER.due(self)

    def flush_outbox(self) -> None:
        """Send what waits in the outbox now (not from the reading thread: the flusher does it then)."""
        if not self._outbox or threading.get_ident() == self._reader:
            return
        if self._writer is None or self._closed:
            self._lose_outbox()
            return
        with self._send_lock:
            try:
                self._write(None)
            except HostError as exc:
                log.debug("%s: %s", self.host, exc)

    def _lose_outbox(self) -> None:
        for _, lost in self._outbox.take():
            lost()

    def later(self, action: Callable[[], None]) -> None:
        """Run ``action`` (which sends) on this connection's sending thread, in order. The reading
        thread hands its sends here: were it to wait while the host's input is full, and the host
        waits for us to read what it sends, neither would ever go on."""
        if self._later is None:
            self._later = queue.SimpleQueue()
            self._sender = threading.Thread(target=self._send_later, args=(self._later,), name=f"rjob-send-{self.host}", daemon=True)
            self._sender.start()
        self._later.put(action)

    def _send_later(self, actions: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while True:
            action = actions.get()
            if action is None:
                return
            try:
                action()
            except Exception:  # one failed send must not end the others
                log.debug("%s: a queued send failed", self.host, exc_info=True)

    def _drain(self, timeout: float) -> None:
        """Wait until what was queued by :meth:`later` has been sent (at most ``timeout`` s)."""
        if self._later is None or threading.current_thread() is self._sender:
            return
        done = threading.Event()
        self._later.put(done.set)
        done.wait(timeout)

    def send_quietly(self, header: dict[str, Any], buffers: Sequence[Any] = ()) -> None:
        """Send, or if the connection is broken, nothing (its reader sees that and reconnects;
        what must reach the host anyway is sent again on re-attach: a stop, a clean)."""
        try:
            self.send(header, buffers)
        except HostError as exc:  # the connection broke: its reader sees that too
            log.debug("%s: %s", self.host, exc)

    def attach(self, instance: str, runner: FrameTarget) -> None:
        self._runners[instance] = runner

    def runners(self) -> list[FrameTarget]:
        """What follows jobs over this connection."""
        return list(self._runners.values())

    def detach(self, instance: str) -> None:
        self._runners.pop(instance, None)

    def _read(self, channel: Channel) -> None:
        self._reader = threading.get_ident()
        reader = channel_inbox(channel)
        try:
            while True:
                frame = read_forwarded(reader)
                if frame is None:
                    break
                self._dispatch(*frame)
        except Exception as exc:  # noqa: BLE001 - a broken connection ends the session
            log.debug("session %s ended: %s", self.host, exc)
        if channel is not self._channel:
            return  # replaced (the agent uploaded again): nothing was lost
        lost = not self._closed  # not closed by us: the network, the host, sshd, a killed agent server
        self._closed = True
        if lost and self.connection is not None:
            self.connection.close()  # a channel that ended on a live connection (its server died): a new one comes
        self._hello.set()
        for event, _ in list(self._replies.values()):
            event.set()
        self._lose_outbox()  # their senders keep what they owe (sent again once reconnected)
        for runner in list(self._runners.values()):
            runner.connection_lost()
        if lost and self._on_lost is not None:
            self._on_lost(self)

    def _dispatch(self, header: dict[str, Any], buffers: list[bytearray]) -> None:
        op = header.get("op")
        if op == protocol.HELLO:
            self._hello_header = header
            self.server_pid = int(header.get("pid") or 0)
            self._hello.set()
            return
        reply_key = f"{op}:{header.get('session', '')}"
        if op == protocol.FAILED and "session" in header:  # a request that failed: its waiter hears why
            reply_key = f"{op}:{header.get('for')}:{header['session']}"
        if reply_key in self._replies:
            event, box = self._replies[reply_key]
            box.append(header)
            event.set()
            return
        if op == protocol.PONG:
            self._pong.set()
            return
        runner = self._runners.get(str(header.get("job")))
        if runner is not None:
            try:
                runner.on_frame(op, header, buffers)
            except Exception as exc:  # one job's bad frame fails that job, not the connection
                log.debug("%s: a frame for job %s failed", self.host, header.get("job"), exc_info=True)
                runner.frame_failed(exc)

    def request(self, header: dict[str, Any], reply: str, timeout: float = 60.0) -> dict[str, Any]:
        """Send ``header`` and wait for the server's ``reply`` frame (for a session: about it)."""
        session = header.get("session", "")
        key, failed_key = f"{reply}:{session}", f"{protocol.FAILED}:{header['op']}:{session}"
        event, box = threading.Event(), []  # type: ignore[var-annotated]
        with self._request_lock:
            self._replies[key] = self._replies[failed_key] = (event, box)
            try:
                self.send(header)
                if not event.wait(timeout) or not box:
                    raise HostError(self.host, f"no answer from the agent there within {timeout:g} s (the connection was lost?)")
                answer: dict[str, Any] = box[0]
                if answer.get("op") == protocol.FAILED:
                    raise HostRequestFailed(self.host, f"the agent there could not do {header['op']}: {answer.get('error')}")
                return answer
            finally:
                self._replies.pop(key, None)
                self._replies.pop(failed_key, None)

    def close(self, sync_timeout: float = 2.0) -> None:
        """Close the agent server's channel and the connection; first a ping, so that every frame
        sent before (the last clean and stop requests) has been acted on."""
        if self._writer is not None and not self._closed:
            self._drain(sync_timeout)
            self._pong.clear()
            try:
                self.send({"op": protocol.PING})
                self._pong.wait(sync_timeout)
            except HostError:
                pass
        self._closed = True
        self._lose_outbox()
        if self._later is not None:
            self._later.put(None)
        if self._channel is not None:
            try:
                self._channel.shutdown_write()
                self._channel.close()
            except Exception:  # noqa: BLE001
                pass
        if self.connection is not None:
            self.connection.close()
