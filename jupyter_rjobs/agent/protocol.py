"""The wire: the one frame codec, the operation names and the versions, for pipes, SSH channels
and spools alike.

A frame is ``!II`` (header length, buffer count), the JSON header (an object), then each buffer
as ``!Q`` length + bytes. Reading a frame never unpickles. A spool is the frames a job wrote,
appended to a file: the server forwards its bytes as they are, so this format is also the
on-disk format of jobs left on hosts, and it carries its own version (``SPOOL_VERSION``, in
the spool's meta.json; a spool without one was written by wave 1 and is version 1, the same
bytes).

Map of operations (``op`` of a header), who sends them, and the reply:

    kernel -> worker (a pipe)    RUN                               -> RECORD..., IDLE
    worker -> kernel             READY (at start: pid, version, python)
    kernel -> host server        RUN (a job, or a request in a session) -> RECORD... or FAILED
                                 STOP, ACK, CLEAN, RELEASE          (no reply)
                                 FETCH                             -> RECORD..., FETCHED
                                 ATTACH                            -> ATTACHED, RECORD... | REFUSED | GONE
                                 LIST                              -> LISTING
                                 SESSION_NEW, SESSION_ATTACH, SESSION_CLOSE -> SESSION_STATE
                                 PING                              -> PONG
    host server -> kernel        HELLO (at start: version, python, pid); NOTICE (a remote-cache
                                 job's record stays on the host); GONE (its spool vanished)
                                 STREAM, <a record frame>, STREAMED (a big record sent while it is
                                 being written into the spool; it counts only if STREAMED says ok)

STREAM is an addition the kernel reads with :func:`read_forwarded` (the agent is always the
kernel's own version, so the protocol version stays): STREAM (job, seq), then the record frame's
own bytes as they land in the spool, then STREAMED (job, seq, ok). Not ok (its writer died, the
spool shrank or stalled): the bytes in between were made up to the frame's length and are void;
the record is forwarded again, whole, like any other, once its spool has it (or its job's end).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

PROTOCOL_VERSION = 1  # the frames and operations below; sent in HELLO and READY as "version"
SPOOL_VERSION = 1  # a spool's format (meta.json "spool_version"; none: 1)

# -- operations ----------------------------------------------------------------------------
HELLO = "hello"
READY = "ready"
IDLE = "idle"
RUN = "run"
RECORD = "record"
NOTICE = "notice"
STOP = "stop"
FETCH = "fetch"
FETCHED = "fetched"
ACK = "ack"
CLEAN = "clean"
ATTACH = "attach"
ATTACHED = "attached"
RELEASE = "release"
REFUSED = "refused"
GONE = "gone"
FAILED = "failed"
LIST = "list"
LISTING = "listing"
PING = "ping"
PONG = "pong"
SESSION_NEW = "session_new"
SESSION_ATTACH = "session_attach"
SESSION_CLOSE = "session_close"
SESSION_STATE = "session_state"
STREAM = "stream"
STREAMED = "streamed"

# -- record kinds the agent itself looks at ------------------------------------------------
KIND_STATE = "state"
KIND_ERROR = "error"
KIND_VALUE = "value"
FINAL_STATES = ("Completed", "Failed", "Stopped")

# -- frames --------------------------------------------------------------------------------
_HEAD = struct.Struct("!II")
_BUFLEN = struct.Struct("!Q")
MAX_HEADER = 256 * 1024 * 1024
MAX_BUFFER = 1 << 40  # 1 TiB: a longer buffer means the bytes are not a frame
_BIG = 1 << 20


class Writable(Protocol):
    """Where frames are written: a binary file, pipe or channel (``write`` may write less, or
    return None when it wrote everything)."""

    def write(self, data: Any, /) -> Optional[int]: ...


class ReadsInto(Protocol):
    """What frames are read from: a binary file, or an :class:`Inbox` (``readinto`` returns 0
    at the end)."""

    def readinto(self, view: Any, /) -> Optional[int]: ...


Input = Union[BinaryIO, ReadsInto]  # a file (typing's BinaryIO names no readinto), or an Inbox


class IncompleteFrame(EOFError):
    """The input ended inside a frame (a torn stream; a spool still being written)."""


def write_frame(out: Writable, header: Dict[str, Any], buffers: Sequence[Any] = ()) -> None:
    """Write one frame; ``out`` is an unbuffered binary file (a pipe, a socket file, a spool)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: List[Any] = [_HEAD.pack(len(head), len(buffers)), head]
    for buf in buffers:
        view = memoryview(buf).cast("B")
        parts.append(_BUFLEN.pack(view.nbytes))
        parts.append(view)
    small = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts) < 65536
    if small:
        out.write(b"".join(bytes(p) if isinstance(p, memoryview) else p for p in parts))
    else:
        for part in parts:
            _write_all(out, part)


def _write_all(out: Writable, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = out.write(view)
        if written is None:  # a buffered file wrote it all
            return
        view = view[written:]


class FrameSource:
    """Where :func:`parse_frame` takes a frame's parts from. ``take`` returns ``size`` bytes, or
    None if the input ends first; ``buffer=True`` marks a buffer (a source may skip loading it)."""

    def take(self, size: int, buffer: bool) -> Optional[Any]:
        raise NotImplementedError


def parse_frame(source: FrameSource) -> Optional[Tuple[Dict[str, Any], List[Any]]]:
    """The one frame parser: (header, buffers), or None if the input ends before a frame's
    first 8 bytes. Raises IncompleteFrame (an EOFError) if it ends inside the frame, and
    ValueError if the bytes are not a frame of ours (or a buffer cannot be allocated here);
    nothing else."""
    first = source.take(_HEAD.size, False)
    if first is None:
        return None
    head_len, nbuf = _HEAD.unpack(bytes(first))
    if head_len > MAX_HEADER:
        raise ValueError(f"frame header of {head_len} bytes: not a jupyter_rjobs stream")
    head = source.take(head_len, False)
    if head is None:
        raise IncompleteFrame("stream ended inside a frame")
    header = decode_header(head)
    buffers = []
    for _ in range(nbuf):
        size_bytes = source.take(_BUFLEN.size, False)
        if size_bytes is None:
            raise IncompleteFrame("stream ended inside a frame")
        size = _BUFLEN.unpack(bytes(size_bytes))[0]
        if size > MAX_BUFFER:
            raise ValueError(f"frame buffer of {size} bytes: not a jupyter_rjobs stream")
        data = source.take(size, True)
        if data is None:
            raise IncompleteFrame("stream ended inside a frame")
        buffers.append(data)
    return header, buffers


def decode_header(head: Any) -> Dict[str, Any]:
    """A frame's JSON header, from bytes (never an mmap: json reads str, bytes or bytearray)."""
    try:
        header = json.loads(bytes(head))
    except RecursionError as exc:  # nested too deep for this interpreter
        raise ValueError(f"frame header nested too deep: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"frame header is a JSON {type(header).__name__}, not an object: not a jupyter_rjobs stream")
    return header


class _StreamSource(FrameSource):
    """A file's ``readinto``: a frame's head in bytes; a large buffer in a private anonymous
    mmap, whose pages the OS zeroes lazily (a bytearray would be zero-filled up front, holding
    the GIL, while the sender stalls; a shared one, mmap's default, is shmem: slower to fault
    in, and counted as shared memory)."""

    def __init__(self, inp: Input) -> None:
        self._inp = inp

    def take(self, size: int, buffer: bool) -> Optional[Any]:
        if buffer and size >= _BIG:
            import mmap

            try:
                private = getattr(mmap, "MAP_PRIVATE", None)
                buf: Any = mmap.mmap(-1, size) if private is None else mmap.mmap(-1, size, flags=private)
            except (OSError, OverflowError) as exc:
                raise ValueError(f"a frame buffer of {size} bytes cannot be allocated here: {exc}") from exc
        else:
            buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self._inp.readinto(view[got:])  # type: ignore[union-attr]  # a file has it; typing.BinaryIO names no readinto
            if not n:
                return None
            got += n
        return buf


class Inbox:
    """A ``readinto`` for :func:`read_frame` over a stream that delivers what it has (a pipe, a
    channel): small reads are served from one buffer (many small frames per system call: a
    frame's head, its JSON), big ones go straight into the caller's memory. ``recv(n)`` returns
    up to ``n`` bytes, b"" at the end, waiting for at least one; ``recv_into(view)`` the same
    into ``view`` (None: big reads go through ``recv``)."""

    CHUNK = 65536

    def __init__(self, recv: Callable[[int], bytes], recv_into: Optional[Callable[[memoryview], int]] = None) -> None:
        self._recv = recv
        self._recv_into = recv_into
        self._buffer = b""
        self._at = 0  # where the unread part of the buffer starts (no copy of the rest per read)

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet: a frame may be there with no more to wait for."""
        return len(self._buffer) - self._at

    def readinto(self, view: memoryview) -> int:
        wanted = len(view)
        if self._at >= len(self._buffer) and wanted < self.CHUNK:
            self._buffer, self._at = self._recv(self.CHUNK), 0
        left = len(self._buffer) - self._at
        if left:
            n = min(wanted, left)
            view[:n] = self._buffer[self._at : self._at + n]
            self._at += n
            return n
        if self._recv_into is not None:
            return self._recv_into(view)
        data = self._recv(min(wanted, 4 * 2**20))
        view[: len(data)] = data
        return len(data)


def read_frame(inp: Input) -> Optional[Tuple[Dict[str, Any], List[Any]]]:
    """Read one frame from a file with ``readinto``; None at an end of file before a frame
    (fewer than its first 8 bytes). A torn frame raises EOFError (IncompleteFrame), bytes that
    are not a frame ValueError."""
    return parse_frame(_StreamSource(inp))


def read_forwarded(inp: Input) -> Optional[Tuple[Dict[str, Any], List[Any]]]:
    """Read the next frame a host server sends (:func:`read_frame`), taking a streamed record
    (STREAM, the frame, STREAMED) as that record if it was finished, and skipping it if it was
    void. A stream that ends inside one raises IncompleteFrame, like a torn frame."""
    while True:
        frame = read_frame(inp)
        if frame is None or frame[0].get("op") != STREAM:
            return frame
        try:
            inner = read_frame(inp)
            end = read_frame(inp)
        except IncompleteFrame:
            inner = None
        if inner is None or end is None:
            raise IncompleteFrame("stream ended inside a streamed record")
        if end[0].get("op") != STREAMED or end[0].get("seq") != frame[0].get("seq"):
            raise ValueError(f"a streamed record ended by {end[0].get('op')!r}, not {STREAMED!r}: not a jupyter_rjobs stream")
        if end[0].get("ok"):
            return inner


# -- versions ------------------------------------------------------------------------------
def hello_problem(header: Mapping[str, Any]) -> Optional[str]:
    """What is wrong with a HELLO (or READY) from an agent, or None if it speaks our protocol."""
    theirs = header.get("version")
    if theirs == PROTOCOL_VERSION:
        return None
    return f"the agent there speaks protocol version {theirs}, this jupyter_rjobs speaks {PROTOCOL_VERSION}"


def spool_version(meta: Mapping[str, Any]) -> int:
    """The format version of a spool, from its meta.json (a wave-1 spool has none: version 1)."""
    value = meta.get("spool_version", 1)
    return value if isinstance(value, int) else -1


def spool_problem(meta: Mapping[str, Any]) -> Optional[str]:
    """Why a spool cannot be read by this agent, or None if it can."""
    version = spool_version(meta)
    if version == SPOOL_VERSION:
        return None
    return (
        f"was written by agent version {meta.get('protocol', version)} (spool format {version}); this one reads"
        f" format {SPOOL_VERSION}: receive it with the jupyter_rjobs that started it, or remove it"
    )
