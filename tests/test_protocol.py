"""The agent's protocol: the one frame codec (streams and spools), the versions at hello and in
spools. Property tests (hypothesis) of the codec and the spool scanner; a real agent server
(the zip hosts get, in a local process) for the spool versions; the real lab for a hello in
another protocol."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_rjobs.agent import protocol
from jupyter_rjobs.agent.protocol import IncompleteFrame, read_frame, write_frame
from jupyter_rjobs.agent.spool import Scanner

MIB = 1 << 20

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
small_buffers = st.lists(st.binary(max_size=300), max_size=4)
# a buffer around the 1 MiB line where the reader switches to an mmap: cheap to make, any byte
big_buffer = st.builds(lambda n, b: bytes([b]) * n, st.integers(MIB - 3, MIB + 70_000), st.integers(0, 255))


def encode(header: dict[str, Any], buffers: list[bytes]) -> bytes:
    out = io.BytesIO()
    write_frame(out, header, buffers)
    return out.getvalue()


# -- the frame codec ----------------------------------------------------------------------
@given(headers, small_buffers)
def test_frames_round_trip(header, buffers):
    data = encode(header, buffers) + encode({"op": "next"}, [])
    inp = io.BytesIO(data)
    got_header, got_buffers = read_frame(inp)
    assert got_header == header and [bytes(b) for b in got_buffers] == buffers
    assert read_frame(inp) == ({"op": "next"}, [])
    assert read_frame(inp) is None


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(big_buffer, small_buffers)
def test_frames_over_a_mebibyte_round_trip(big, small):
    header, buffers = read_frame(io.BytesIO(encode({"op": "x"}, [big, *small])))
    assert header == {"op": "x"} and bytes(buffers[0]) == big and [bytes(b) for b in buffers[1:]] == small


@pytest.mark.parametrize("size", [MIB - 1, MIB, MIB + 1, 3 * MIB])
def test_a_header_of_a_mebibyte_or_more_is_read(size):
    """Regression: the header went through the mmap path at >= 1 MiB, and json.loads refused it."""
    header = {"op": "record", "data": "x" * size}
    got, buffers = read_frame(io.BytesIO(encode(header, [b"v"])))
    assert got == header and [bytes(b) for b in buffers] == [b"v"]


@given(headers, small_buffers)
def test_a_stream_cut_anywhere_is_an_end_or_incomplete(header, buffers):
    data = encode(header, buffers)
    for cut in range(len(data)):
        inp = io.BytesIO(data[:cut])
        if cut < 8:  # not even a frame's first 8 bytes: an end of stream
            assert read_frame(inp) is None
        else:
            with pytest.raises(IncompleteFrame):
                read_frame(inp)
    assert issubclass(IncompleteFrame, EOFError)  # what read_frame documents


@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_frames_an_end_or_the_documented_errors(data):
    inp = io.BytesIO(data)
    try:
        while read_frame(inp) is not None:
            pass
    except (EOFError, ValueError):
        pass


# -- the spool scanner (the same parser, over a file that grows) ----------------------------
def frames_in(path: Path) -> list[tuple[dict[str, Any], int, int]]:
    scanner = Scanner(str(path))
    found = []
    try:
        while (frame := scanner.next()) is not None:
            found.append(frame)
    finally:
        scanner.close()
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(headers, small_buffers), min_size=1, max_size=3))
def test_a_spool_cut_anywhere_gives_its_whole_frames_then_the_rest(tmp_path, frames):
    encoded = [encode(h, b) for h, b in frames]
    data = b"".join(encoded)
    ends = [sum(len(e) for e in encoded[: i + 1]) for i in range(len(encoded))]
    path = tmp_path / f"records-{uuid.uuid4()}"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        found = frames_in(path)
        whole = [end for end in ends if end <= cut]
        assert [end for _, _, end in found] == whole
        assert [h for h, _, _ in found] == [h for h, _ in frames][: len(whole)]
    scanner = Scanner(str(path))  # a spool that grows: the scanner goes on where it was
    try:
        path.write_bytes(data[: ends[0] - 1])
        assert scanner.next() is None
        with open(path, "ab") as f:
            f.write(data[ends[0] - 1 :])
        assert [scanner.next()[2] for _ in ends] == ends and scanner.next() is None
    finally:
        scanner.close()


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_a_spool_of_arbitrary_bytes_gives_frames_an_end_or_value_error(tmp_path, data):
    path = tmp_path / "records"
    path.write_bytes(data)
    try:
        found = frames_in(path)
    except ValueError:
        return
    assert all(0 <= start < end <= len(data) for _, start, end in found)


def test_the_scanner_skips_big_buffers_without_reading_them(tmp_path):
    path = tmp_path / "records"
    path.write_bytes(encode({"seq": 1, "kind": "value"}, [b"\0" * (3 * MIB)]) + encode({"seq": 2, "kind": "state", "data": "Completed"}, []))
    scanner = Scanner(str(path))
    try:
        scanner.to_end()
        assert (scanner.last_seq, scanner.final, scanner.offset) == (2, "Completed", path.stat().st_size)
    finally:
        scanner.close()


class Delivery:
    """A stream that delivers ``data`` in the chunk sizes given (as a pipe or channel does), for
    protocol.Inbox; counts its calls."""

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self.data, self.at, self.chunks, self.calls, self.into = data, 0, list(chunks), 0, 0

    def _size(self, wanted: int) -> int:
        return min(wanted, self.chunks.pop(0) if self.chunks else wanted, len(self.data) - self.at)

    def recv(self, wanted: int) -> bytes:
        self.calls += 1
        n = self._size(wanted)
        self.at += n
        return self.data[self.at - n : self.at]

    def recv_into(self, view: memoryview) -> int:
        self.into += 1
        n = self._size(len(view))
        view[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(headers, small_buffers), min_size=1, max_size=6), st.lists(st.integers(1, 300), max_size=40))
def test_an_inbox_gives_the_frames_sent_whatever_the_pieces_they_arrive_in(frames, chunks):
    stream = Delivery(b"".join(encode(h, b) for h, b in frames), chunks)
    inbox = protocol.Inbox(stream.recv, stream.recv_into)
    got = []
    while (frame := read_frame(inbox)) is not None:
        got.append((frame[0], [bytes(b) for b in frame[1]]))
    assert got == [(h, [bytes(b) for b in bufs]) for h, bufs in frames]


def test_an_inbox_reads_many_small_frames_at_once_and_a_big_buffer_straight_into_its_memory():
    small = [encode({"op": "run", "job": str(n)}, []) for n in range(300)]
    big = encode({"op": "run", "job": "big"}, [bytes(range(256)) * (12 * MIB // 256)])
    stream = Delivery(b"".join(small) + big, [])
    inbox = protocol.Inbox(stream.recv, stream.recv_into)
    jobs = [read_frame(inbox)[0]["job"] for _ in small]
    assert jobs == [str(n) for n in range(300)] and stream.calls == 1  # 300 requests, one read
    assert inbox.buffered  # the start of the big one came with them: no wait for it
    header, buffers = read_frame(inbox)
    assert header["job"] == "big" and bytes(buffers[0]) == bytes(range(256)) * (12 * MIB // 256)
    assert stream.into >= 1 and stream.calls == 1  # the rest of its buffer went straight in
    assert read_frame(inbox) is None and not inbox.buffered


# -- versions -----------------------------------------------------------------------------
def test_a_hello_in_another_protocol_is_named_in_one_line():
    assert protocol.hello_problem({"op": "hello", "version": protocol.PROTOCOL_VERSION}) is None
    problem = protocol.hello_problem({"op": "hello", "version": protocol.PROTOCOL_VERSION + 1})
    assert problem is not None and "\n" not in problem
    assert f"version {protocol.PROTOCOL_VERSION + 1}" in problem and f"speaks {protocol.PROTOCOL_VERSION}" in problem
    assert protocol.hello_problem({"op": "hello"}) is not None  # no version at all: not ours either


def test_a_spool_without_a_version_is_version_1_and_another_version_is_refused():
    assert protocol.spool_version({}) == 1  # written by wave 1: the same format as version 1
    assert protocol.spool_problem({"spool_version": protocol.SPOOL_VERSION}) is None
    problem = protocol.spool_problem({"spool_version": 7, "protocol": 9})
    assert problem is not None and "\n" not in problem
    assert "agent version 9" in problem and "spool format 7" in problem and f"reads format {protocol.SPOOL_VERSION}" in problem


class LocalAgent:
    """The agent's server as hosts run it (the zip, imported as rjobs_agent), in a local process."""

    def __init__(self, tmp_path: Path) -> None:
        from jupyter_rjobs.backends.remote.agent_files import AGENT_ZIP

        archive = tmp_path / "rjobs_agent.zip"
        archive.write_bytes(AGENT_ZIP)
        self.root = tmp_path / "root"
        code = f"import sys; sys.path.insert(0, {str(archive)!r}); from rjobs_agent.server import serve_main; serve_main({str(self.root)!r})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.hello = self.receive()

    def send(self, header: dict[str, Any]) -> None:
        write_frame(self.proc.stdin, header)

    def receive(self) -> dict[str, Any]:
        frame = read_frame(self.proc.stdout)
        assert frame is not None, "the agent ended"
        return frame[0]

    def until(self, op: str) -> list[dict[str, Any]]:
        frames = [self.receive()]
        while frames[-1].get("op") != op:
            frames.append(self.receive())
        return frames

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def agent(tmp_path):
    agent = LocalAgent(tmp_path)
    yield agent
    agent.close()


def run_to_end(agent: LocalAgent, code: str) -> tuple[str, Path, list[dict[str, Any]]]:
    instance = str(uuid.uuid4())
    agent.send({"op": protocol.RUN, "job": instance, "code": code, "filename": "<rjob-test>", "variables": [], "cache": "kernel"})
    records = []
    while not (records and records[-1]["kind"] == "state" and records[-1]["data"] in protocol.FINAL_STATES):
        records.append(agent.receive())
    agent.send({"op": protocol.RELEASE, "job": instance})
    return instance, agent.root / "jobs" / instance, records


def rewrite_meta(spool: Path, change: Any) -> None:
    meta = json.loads((spool / "meta.json").read_text())
    change(meta)
    (spool / "meta.json").write_text(json.dumps(meta))  # the file keeps its private mode


def test_the_agent_says_hello_in_its_protocol_and_versions_its_spools(agent):
    assert agent.hello["op"] == protocol.HELLO and protocol.hello_problem(agent.hello) is None
    _, spool, records = run_to_end(agent, "print('hi')\n6 * 7")
    assert [r["kind"] for r in records] == ["state", "stdout", "value", "state"]
    meta = json.loads((spool / "meta.json").read_text())
    assert (meta["spool_version"], meta["protocol"]) == (protocol.SPOOL_VERSION, protocol.PROTOCOL_VERSION)


def test_a_spool_of_another_format_is_refused_saying_so_never_misread(agent):
    instance, spool, _ = run_to_end(agent, "1 + 1")
    rewrite_meta(spool, lambda meta: meta.update(spool_version=protocol.SPOOL_VERSION + 1, protocol=5))
    agent.send({"op": protocol.ATTACH, "job": instance, "after": 0})
    refused = agent.receive()
    assert refused["op"] == protocol.REFUSED and refused["job"] == instance
    assert refused["spool_problem"] == protocol.spool_problem({"spool_version": protocol.SPOOL_VERSION + 1, "protocol": 5})
    agent.send({"op": protocol.LIST})
    listed = agent.until(protocol.LISTING)[-1]["jobs"]
    assert [(j["instance"], j["state"]) for j in listed] == [(instance, "Unknown")]
    assert f"spool format {protocol.SPOOL_VERSION + 1}" in listed[0]["reason"]


def test_a_spool_without_a_version_is_read_as_version_1(agent):
    instance, spool, records = run_to_end(agent, "print('wave 1')\n'old'")
    rewrite_meta(spool, lambda meta: [meta.pop("spool_version"), meta.pop("protocol")])
    agent.send({"op": protocol.ATTACH, "job": instance, "after": 0})
    frames = agent.until(protocol.ATTACHED)
    while len([f for f in frames if f["op"] == protocol.RECORD]) < len(records):
        frames.append(agent.receive())
    assert [f for f in frames if f["op"] == protocol.RECORD] == records


# -- a hello in another protocol, on a real host ---------------------------------------------
@pytest.mark.ssh
def test_an_agent_of_another_protocol_in_the_cache_is_uploaded_again(make_manager, ssh_lab):
    from jupyter_rjobs.backends.remote.agent_files import AGENT_DIGEST, AGENT_ZIP

    remote = make_manager(ssh_config=ssh_lab.ssh_config)
    assert remote.start("1", host="server01").result(timeout=30) == 1
    remote.shutdown()
    shipped = Path(ssh_lab.home) / ".cache" / "jupyter_rjobs" / f"agent-{protocol.PROTOCOL_VERSION}-{AGENT_DIGEST}" / "rjobs_agent.zip"
    stat = shipped.stat()
    other = io.BytesIO()  # the same agent, but saying hello in another protocol version
    with zipfile.ZipFile(io.BytesIO(AGENT_ZIP)) as source, zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():
            if item.filename == "rjobs_agent/protocol.pyc":
                continue  # its bytecode would win over the edited source
            data = source.read(item)
            if item.filename == "rjobs_agent/protocol.py":
                data = data.replace(b"\nPROTOCOL_VERSION = 1 ", b"\nPROTOCOL_VERSION = 99 ")
                assert b"PROTOCOL_VERSION = 99" in data
            target.writestr(item, data)
    shipped.write_bytes(other.getvalue())
    os.chown(shipped, stat.st_uid, stat.st_gid)
    os.chmod(shipped, 0o600)

    again = make_manager(ssh_config=ssh_lab.ssh_config)
    assert again.start("2", host="server01").result(timeout=30) == 2  # it said hello in 99: uploaded again
    assert shipped.read_bytes() == AGENT_ZIP
    assert oct(shipped.stat().st_mode & 0o777) == "0o600"


@pytest.mark.ssh
def test_a_left_job_whose_spool_is_of_another_format_is_named_not_misread(make_manager, ssh_lab_empty):
    from helpers import wait_until

    first = make_manager(ssh_config=ssh_lab_empty.ssh_config)
    job = first.start("print('left')\n'value'", host="server01", detached=True, name="old")
    assert job.result(timeout=30) == "value"
    first.shutdown()  # the kernel exits; the spool stays on the host
    spool = Path(ssh_lab_empty.home) / ".cache" / "jupyter_rjobs" / "jobs" / str(job.instance_id)
    stat = (spool / "meta.json").stat()
    rewrite_meta(spool, lambda meta: meta.update(spool_version=protocol.SPOOL_VERSION + 1, protocol=7))
    os.chown(spool / "meta.json", stat.st_uid, stat.st_gid)

    second = make_manager(ssh_config=ssh_lab_empty.ssh_config)
    adopted = [j for j in second.connect("server01") if j.instance_id == job.instance_id]
    assert len(adopted) == 1
    expected = (f"{adopted[0].label}'s spool on server01 was written by agent version 7 (spool format"
                f" {protocol.SPOOL_VERSION + 1}); this one reads format {protocol.SPOOL_VERSION}")
    assert wait_until(lambda: adopted[0].reason.startswith(expected), timeout=30), adopted[0].reason
    assert second.receive(adopted[0]) == []  # nothing read from it
