"""A channel's incoming buffer that keeps the SSH packets it is fed as they are and hands each
out whole: paramiko's own (``BufferedPipe``) appends every packet to one array and cuts each
read off its front (two copies and a move of what is left per read), which at bulk rates costs
as much as decrypting. Only the buffer is replaced; reading, windows and timeouts stay paramiko's.

:func:`recv_into` fills a caller's memory straight from the packets as they arrive (the
transport's thread copies each one there): a big value lands where it will stay, and the
reader wakes once per ``WAKE`` bytes, not once per packet; it then gives the window back as
``recv`` does."""

from __future__ import annotations

import collections
import functools
import socket
import time
from typing import Any

from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
from paramiko.message import Message

__all__ = ["ChunkPipe", "recv_into", "install"]

WAKE = 1 << 20  # recv_into returns once this much came (or its memory is full, or the channel closed)


class ChunkPipe(BufferedPipe):  # type: ignore[misc]  # paramiko is untyped
    """``BufferedPipe`` over a queue of the packets fed to it: a read returns at most one packet
    (a whole one when it fits, without copying it)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._buffer = self  # what BufferedPipe's other methods measure with len(self._buffer)
        self._sink: memoryview | None = None  # where fed bytes go straight (a recv_into waits)
        self._sink_got = 0
        self._sink_wake = 0

    def __len__(self) -> int:
        return self._size

    def _buffer_frombytes(self, data: bytes) -> None:  # feed() calls it under the lock
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

    def feed(self, data: bytes) -> None:
        """Take a packet (the transport's thread): into a waiting recv_into's memory, else queued."""
        with self._lock:
            sink = self._sink
            if sink is None:
                if self._event is not None:
                    self._event.set()
                self._buffer_frombytes(data)
                self._cv.notify_all()
                return
            room = len(sink) - self._sink_got
            taken = min(room, len(data))
            sink[self._sink_got : self._sink_got + taken] = memoryview(data)[:taken]
            self._sink_got += taken
            if taken < len(data):
                self._buffer_frombytes(data[taken:])
                if self._event is not None:
                    self._event.set()
            if self._sink_got >= self._sink_wake:
                self._cv.notify_all()

    def fill(self, view: memoryview, wake: int, timeout: float | None) -> int:
        """Copy what is queued into ``view``, then let packets land there until ``wake`` bytes (or
        all of ``view``) came or the channel closed: how many came (0: closed). PipeTimeout if
        nothing came within ``timeout``."""
        with self._lock:
            got = 0
            while self._chunks and got < len(view):
                first = self._chunks[0]
                taken = min(len(first), len(view) - got)
                view[got : got + taken] = memoryview(first)[:taken]
                got += taken
                self._size -= taken
                if taken < len(first):
                    self._chunks[0] = first[taken:]
                else:
                    self._chunks.popleft()
            self._sink, self._sink_got, self._sink_wake = view, got, min(len(view), max(got, wake))
            try:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._sink_got < self._sink_wake and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if self._sink_got:
                            break
                        raise PipeTimeout()
                    self._cv.wait(left)
                got = self._sink_got
            finally:
                self._sink = None
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return got

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """At most ``nbytes`` of the first packet; b"" once closed and empty; PipeTimeout as
        paramiko's does."""
        with self._lock:
            while not self._size:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                then = time.time()
                self._cv.wait(timeout)
                if timeout is not None:
                    timeout -= time.time() - then
                    if timeout <= 0.0 and not self._size:
                        raise PipeTimeout()
            first = self._chunks[0]
            if len(first) <= nbytes:
                self._chunks.popleft()
                out = first
            else:
                out, self._chunks[0] = first[:nbytes], first[nbytes:]
            self._size -= len(out)
            if not self._size and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        with self._lock:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out


def recv_into(channel: Any, view: memoryview) -> int:
    """``channel.recv`` into ``view`` (a paramiko channel whose ``in_buffer`` is a ChunkPipe): how
    many bytes came (0: the channel closed); the window is given back for them as recv does."""
    try:
        got: int = channel.in_buffer.fill(view, WAKE, channel.timeout)
    except PipeTimeout:
        raise socket.timeout() from None
    ack = channel._check_add_window(got)
    if ack > 0:
        message = Message()
        message.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
        message.add_int(channel.remote_chanid)
        message.add_int(ack)
        channel.transport._send_user_message(message)
    return got


_PIPE_PARTS = ("_lock", "_cv", "_event", "_closed")  # BufferedPipe's, which ChunkPipe works with
_CHANNEL_PARTS = ("_check_add_window", "remote_chanid", "transport", "in_buffer", "timeout")


def install(channel: Any) -> bool:
    """Give a new channel (nothing came in yet) a ChunkPipe and ``recv_into``, if this paramiko
    has the parts they use (they are paramiko's private ones): else the channel stays as
    paramiko made it, which is slower for big values, and correct."""
    pipe = ChunkPipe()
    if not all(hasattr(pipe, part) for part in _PIPE_PARTS) or not all(hasattr(channel, part) for part in _CHANNEL_PARTS) \
            or not hasattr(channel.transport, "_send_user_message"):
        return False
    channel.in_buffer = pipe
    channel.recv_into = functools.partial(recv_into, channel)  # what host.py's reader fills big buffers with
    return True
