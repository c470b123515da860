"""A channel's incoming buffer that keeps the SSH packets it is fed as they are and hands each
out whole: paramiko's own (``BufferedPipe``) appends every packet to one array and cuts each
read off its front (two copies and a move of what is left per read), which at bulk rates costs
as much as decrypting. Only the buffer is replaced; reading, windows and timeouts stay paramiko's."""

from __future__ import annotations

import collections
import time

from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

__all__ = ["ChunkPipe"]


class ChunkPipe(BufferedPipe):  # type: ignore[misc]  # paramiko is untyped
    """``BufferedPipe`` over a queue of the packets fed to it: a read returns at most one packet
    (a whole one when it fits, without copying it)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._buffer = self  # what BufferedPipe's other methods measure with len(self._buffer)

    def __len__(self) -> int:
        return self._size

    def _buffer_frombytes(self, data: bytes) -> None:  # feed() calls it under the lock
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)

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
