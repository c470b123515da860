"""Big records streamed while they are spooled (agent/stream.py, STREAM/STREAMED in
agent/protocol.py): a frame goes to the kernel as its bytes land in the spool; one that cannot
be finished is void and never taken for a record. Property tests of the stream against real
spool files and pipes; on the real-sshd lab, a connection dropped while a big value is half
written and sent (it arrives whole, once, after the reconnect), and a job whose value write
fails half way (its stream is void; the job fails saying why, with no value)."""

from __future__ import annotations

import io
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_rjobs import JobError, JobState, RecordKind
from jupyter_rjobs.agent.protocol import STREAM, STREAMED, read_forwarded, read_frame, write_frame
from jupyter_rjobs.agent.spool import SpoolWriter
from jupyter_rjobs.agent.stream import FrameTail, stream_frame

MIB = 1 << 20

headers = st.fixed_dictionaries({"op": st.just("record"), "seq": st.integers(1, 10**6)},
                                optional={"data": st.text(max_size=30)})
buffers = st.lists(st.binary(max_size=200), max_size=4)


def encode(header: dict[str, Any], bufs: list[bytes]) -> bytes:
    out = io.BytesIO()
    write_frame(out, header, bufs)
    return out.getvalue()


def head_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:4], "big")


def gone_pipe() -> int:
    """A notify pipe whose writers are gone (the job and its supervisor ended)."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


# -- the stream, against real spool files ---------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(headers, buffers, st.sampled_from(["plain", "streamed", "cut"]), st.floats(0, 1)), max_size=5))
def test_a_stream_gives_exactly_the_frames_that_were_finished_in_order(tmp_path, frames):
    """Frames sent whole, streamed whole, or streamed and cut (their writer died): the kernel's
    reader gives every finished one, in order, and nothing of a cut one."""
    spool = tmp_path / f"records-{os.urandom(4).hex()}"
    out = tmp_path / f"wire-{os.urandom(4).hex()}"
    expected = []
    with open(spool, "w+b", buffering=0) as spool_file, open(out, "w+b", buffering=0) as wire:
        for header, bufs, how, where in frames:
            data = encode(header, bufs)
            if how == "plain":
                wire.write(data)
                expected.append((header, bufs))
                continue
            start = os.fstat(spool_file.fileno()).st_size
            cut = len(data) if how == "streamed" else head_length(data) + int(where * (len(data) - head_length(data)))
            spool_file.write(data[:cut])
            tail = FrameTail(spool_file.fileno(), start)
            assert tail.safe_end(start + cut) >= start + head_length(data)
            notify = gone_pipe()
            try:
                finished = stream_frame(wire.fileno(), lambda h, b: write_frame(wire, h, b), tail, "job", notify)
            finally:
                os.close(notify)
            assert finished == (cut == len(data))
            if finished:
                expected.append((header, bufs))
            else:
                os.truncate(spool, start)  # what end_records does with a cut frame
                spool_file.seek(0, os.SEEK_END)
        wire.seek(0)
        got = []
        while True:
            frame = read_forwarded(wire)  # type: ignore[arg-type]
            if frame is None:
                break
            got.append((frame[0], [bytes(b) for b in frame[1]]))
    assert got == expected


def test_a_frame_is_streamed_while_its_writer_writes_it_and_arrives_whole(tmp_path):
    """A 40 MiB record written in parts by a SpoolWriter (its notify pipe wakes the stream)."""
    payload = os.urandom(MIB) * 40
    path = tmp_path / "records"
    path.touch(mode=0o600)
    notify_r, notify_w = os.pipe()
    os.set_blocking(notify_w, False)
    go = threading.Event()

    def write() -> None:
        writer = SpoolWriter(str(path), notify_w)
        go.wait(30)
        write_frame(writer, {"op": "record", "seq": 1, "kind": "value"}, [b"head", payload])
        writer.close()
        os.close(notify_w)

    writer = threading.Thread(target=write)
    writer.start()
    fd = os.open(path, os.O_RDONLY)
    out = tmp_path / "wire"
    try:
        with open(out, "wb", buffering=0) as wire:
            wire.write(encode({"op": "hello"}, []))
            go.set()
            tail = FrameTail(fd, 0)
            assert wait_until(lambda: tail.safe_end(os.fstat(fd).st_size) > 0 and tail.header is not None, timeout=30)
            assert stream_frame(wire.fileno(), lambda h, b: write_frame(wire, h, b), tail, "job", notify_r)
    finally:
        writer.join(60)
        os.close(fd)
        os.close(notify_r)
    with open(out, "rb") as wire:
        assert read_forwarded(wire)[0] == {"op": "hello"}  # type: ignore[index]
        raw = [read_frame(wire) for _ in range(3)]  # on the wire: STREAM, the frame, STREAMED
        assert [f[0]["op"] for f in raw if f] == [STREAM, "record", STREAMED] and raw[2][0]["ok"] is True  # type: ignore[index]
        assert bytes(raw[1][1][1]) == payload  # type: ignore[index]
        assert read_forwarded(wire) is None


def test_a_stream_whose_writer_stalls_is_void_and_its_frame_goes_whole_later(tmp_path):
    """Half a frame, then nothing for longer than STALL (a stopped job): the stream is void and
    made up to the frame's length; the record is not taken; once written, the frame is whole
    in the spool, for the forwarder to send as any other."""
    data = encode({"op": "record", "seq": 3, "kind": "value"}, [b"x" * (3 * MIB), b"y" * 100])
    path = tmp_path / "records"
    notify_r, notify_w = os.pipe()
    with open(path, "w+b", buffering=0) as spool, open(tmp_path / "wire", "w+b", buffering=0) as wire:
        spool.write(data[: len(data) // 2])
        tail = FrameTail(spool.fileno(), 0)
        assert tail.safe_end(len(data) // 2) == len(data) // 2 and tail.header is not None
        try:
            assert not stream_frame(wire.fileno(), lambda h, b: write_frame(wire, h, b), tail, "job", notify_r)
        finally:
            os.close(notify_w)
            os.close(notify_r)
        spool.write(data[len(data) // 2 :])  # the job goes on
        write_frame(wire, {"op": "next"})
        wire.seek(0)
        assert read_forwarded(wire)[0] == {"op": "next"}  # type: ignore[index,arg-type]
        spool.seek(0)
        assert spool.read() == data


def test_a_big_value_from_localhost_arrives_whole(make_manager, local_home):
    """``localhost``: the same agent and spool, through a local pipe (read straight into the value's memory)."""
    remote = make_manager()
    value = remote.start("bytes(range(256)) * (24 * 4096)", host="localhost").result(timeout=120)
    assert value == bytes(range(256)) * (24 * 4096)


# -- on the real-sshd lab --------------------------------------------------------------------
STOP_HALF_WAY = """
import os, signal, threading, time
print(os.getpid(), flush=True)
def stop_half_way():
    records = next(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                   if os.readlink(f"/proc/self/fd/{fd}").endswith("/records"))
    while os.path.getsize(records) < {half}:
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGSTOP)  # half of the value is in the spool (and on its way)
threading.Thread(target=stop_half_way, daemon=True).start()
bytes(range(256)) * ({size} // 256)
"""


def spool_of(lab, job) -> Path:
    return Path(lab.home) / ".cache" / "jupyter_rjobs" / "jobs" / str(job.instance_id)


def stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


@pytest.mark.ssh
def test_a_connection_dropped_while_a_big_value_streams_delivers_it_whole_once(make_manager, ssh_lab_empty):
    lab = ssh_lab_empty
    size = 256 * MIB
    remote = make_manager(ssh_config=lab.ssh_config)
    job = remote.start(STOP_HALF_WAY.replace("{half}", str(32 * MIB)).replace("{size}", str(size)), host="server01")
    pid = int(next(r for r in remote.follow(job, keep=True) if r.kind is RecordKind.STDOUT).data)
    try:
        assert wait_until(lambda: stopped(pid), timeout=60), "the job did not stop half way through its value"
        records = spool_of(lab, job) / "records"
        assert 32 * MIB <= records.stat().st_size < size  # half of the value is written, and no more
        assert lab.drop_connections("server01") > 0
        assert wait_until(lambda: job.state is JobState.Disconnected, timeout=30)
        assert wait_until(lambda: job.state is JobState.Running, timeout=60), job.reason  # reconnected by itself
    finally:
        os.kill(pid, signal.SIGCONT)
    value = job.result(timeout=120)
    assert value == bytes(range(256)) * (size // 256)
    kept = remote.receive(job, keep=True)
    assert [r.kind for r in kept].count(RecordKind.VALUE) == 1
    seqs = [r.seq for r in kept]
    assert seqs == sorted(set(seqs))


@pytest.mark.ssh
def test_a_value_whose_spool_write_fails_half_way_is_never_delivered(make_manager, ssh_lab_empty):
    """The job's files may not grow past 32 MiB: its 128 MiB value's write fails after the server
    began streaming it; that stream is void, and the job fails saying why."""
    lab = ssh_lab_empty
    remote = make_manager(ssh_config=lab.ssh_config)
    code = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({32 * MIB}, {32 * MIB}))\nbytes({128 * MIB})")
    job = remote.start(code, host="server01")
    with pytest.raises(JobError):
        job.result(timeout=120)
    assert job.state is JobState.Failed
    assert job.error.ename == "SpoolWriteFailed", job.error
    kept = remote.receive(job, keep=True)
    assert RecordKind.VALUE not in [r.kind for r in kept]
    seqs = [r.seq for r in kept]
    assert seqs == sorted(set(seqs))
    # the server goes on serving: a next job on the same connection completes
    assert remote.start("6*7", host="server01").result(timeout=60) == 42


@pytest.mark.ssh
def test_an_ssh_channel_fills_big_buffers_straight_from_its_packets_byte_for_byte(ssh_lab):
    """The kernel's reader over a real SSH channel (ChunkPipe, recv_into): reads of every size,
    small ones served from a buffer and big ones filled by the transport's thread, give the
    bytes the host sent, in order, and the end."""
    import hashlib
    import random

    from jupyter_rjobs.backends.remote.host import channel_inbox
    from jupyter_rjobs.backends.remote.ssh.config import resolve_host
    from jupyter_rjobs.backends.remote.ssh.connection import SshConnection

    lab = ssh_lab
    path = os.path.join(lab.scratch, "random-48MiB")
    made = lab.run_as_user(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", "count=48", "status=none"])
    assert made.returncode == 0, made.stderr
    with open(path, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    connection = SshConnection(resolve_host("server01", ssh_config=lab.ssh_config)).open()
    try:
        channel = connection.exec(f"cat {shlex.quote(path)}")
        assert hasattr(channel, "recv_into"), "this paramiko lacks a part ChunkPipe uses: big values take the slow path"
        reader = channel_inbox(channel)
        digest, total, sizes = hashlib.sha256(), 0, random.Random(7)
        while True:
            buf = bytearray(sizes.choice([1, 7, 4096, 65535, 65536, 3 * MIB, 9 * MIB]))
            got = reader.readinto(memoryview(buf))
            if not got:
                break
            digest.update(buf[:got])
            total += got
    finally:
        connection.close()
    assert total == 48 * MIB and digest.hexdigest() == expected
