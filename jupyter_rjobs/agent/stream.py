"""Streaming a big record while its job writes it: the frame's bytes go from the spool to the
kernel as they land (sendfile), between STREAM and STREAMED (see :mod:`.protocol`), so a big
value crosses the wire while it is being written instead of after. The spool stays the durable
copy: a stream that cannot be finished (its writer died and the spool was cut back, or it
stalled) is made up to the frame's length with zeros and said void; the kernel drops it, and
the record is forwarded again, whole, like any other.

No made-up byte can pass for a record: a frame counts only once every byte of it was read from
the spool and the spool held the whole frame; after its writer is gone only small end records
are written, into the place of the cut frame (:func:`.spool.end_records`), far below what was
streamed (a stream starts only with ``STREAM_MIN`` bytes of the frame there)."""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable, Dict, Optional, Sequence

from .protocol import _BUFLEN, _HEAD, MAX_BUFFER, MAX_HEADER, STREAM, STREAMED, decode_header

STREAM_MIN = 1 << 20  # a frame is streamed once this much of it is in the spool (smaller ones go whole)
STALL = 2.0  # seconds without a new byte of the frame: its writer is stopped or gone; the stream is void
_ZEROS = bytes(1 << 20)

Send = Callable[[Dict[str, Any], Sequence[Any]], None]


class FrameTail:
    """How far a frame being written at ``start`` of a spool can be sent: its header once it is
    all there, then its buffers, never a part of a buffer's length field (so that a void stream
    can be finished knowing every length it sent)."""

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.start = start
        self.sent = start
        self.header: Optional[Dict[str, Any]] = None
        self.nbuf = 0
        self.known = 0  # buffers whose length field was read
        self.data_end = start  # where the last known part (the header, or a buffer) ends
        self.end: Optional[int] = None  # the frame's end, once every length is known

    def safe_end(self, size: int) -> int:
        """How far bytes may be sent with ``size`` bytes in the spool. Raises ValueError if
        they are not a frame (the scanner says so, the stream is void)."""
        if self.header is None:
            if size - self.start < _HEAD.size:
                return self.start
            head_len, nbuf = _HEAD.unpack(os.pread(self.fd, _HEAD.size, self.start))
            if head_len > MAX_HEADER:
                raise ValueError(f"frame header of {head_len} bytes")
            if size < self.start + _HEAD.size + head_len:
                return self.start
            self.header = decode_header(os.pread(self.fd, head_len, self.start + _HEAD.size))
            self.nbuf, self.data_end = nbuf, self.start + _HEAD.size + head_len
        while self.known < self.nbuf and size >= self.data_end + _BUFLEN.size:
            length = _BUFLEN.unpack(os.pread(self.fd, _BUFLEN.size, self.data_end))[0]
            if length > MAX_BUFFER:
                raise ValueError(f"frame buffer of {length} bytes")
            self.known += 1
            self.data_end += _BUFLEN.size + length
        if self.known == self.nbuf:
            self.end = self.data_end
        return min(size, self.data_end)

    def padding(self) -> int:
        """How many zero bytes finish the frame from ``sent`` (the rest of the buffer being sent,
        then an empty buffer for each whose length was not sent)."""
        return self.data_end - self.sent + _BUFLEN.size * (self.nbuf - self.known)


def stream_frame(out_fd: int, send: Send, tail: FrameTail, instance: str, notify_fd: int,
                 heard: Optional[Callable[[bytes], None]] = None) -> bool:
    """Send the frame at ``tail`` as it is written; True if it was finished, False if void (then
    its zero-padded end went out, and STREAMED says not ok). What is read from the notify pipe
    meanwhile goes to ``heard`` (it may say more than that records were written)."""
    assert tail.header is not None
    seq = tail.header.get("seq", 0)
    send({"op": STREAM, "job": instance, "seq": seq}, ())
    ok = _follow(out_fd, tail, notify_fd, heard or (lambda said: None))
    if not ok:
        _write_zeros(out_fd, tail.padding())
    send({"op": STREAMED, "job": instance, "seq": seq, "ok": ok}, ())
    return ok


def _follow(out_fd: int, tail: FrameTail, notify_fd: int, heard: Callable[[bytes], None]) -> bool:
    """Copy the frame's bytes as they land; False when it cannot be finished."""
    progress = time.monotonic()
    gone = False  # its writers closed the notify pipe: what the spool has now is all it gets
    while True:
        size = os.fstat(tail.fd).st_size
        if size < tail.sent:
            return False  # cut back: its writer is gone and its end was written in its place
        try:
            safe = tail.safe_end(size)
        except ValueError:
            return False
        while tail.sent < safe:
            sent = os.sendfile(out_fd, tail.fd, tail.sent, safe - tail.sent)
            if sent == 0:
                return False  # cut back meanwhile
            tail.sent += sent
            progress = time.monotonic()
        if tail.end is not None and tail.sent == tail.end:
            return True
        if gone or time.monotonic() - progress > STALL:
            return False
        gone = _wait(notify_fd, heard)


def _wait(notify_fd: int, heard: Callable[[bytes], None]) -> bool:
    """Wait a moment for the writer to write more; True if it is gone (the pipe ended)."""
    if notify_fd < 0:
        time.sleep(0.005)
        return False
    if select.select([notify_fd], [], [], 0.05)[0]:
        try:
            said = os.read(notify_fd, 65536)
        except OSError:
            return True
        heard(said)
        return not said
    return False


def _write_zeros(out_fd: int, count: int) -> None:
    while count > 0:
        view = memoryview(_ZEROS)[: min(count, len(_ZEROS))]
        while view.nbytes:
            written = os.write(out_fd, view)
            view = view[written:]
            count -= written
