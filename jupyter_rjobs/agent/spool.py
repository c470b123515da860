"""A job's spool on a host: ROOT/jobs/<instance>/ holds meta.json (what the job is, with the
spool's format version), pid (its supervisor), owner (the server forwarding it), cursor (how far
the kernel received it) and records: the job's frames, appended as they come. Everything under
ROOT is private (0700/0600) and is checked before anything is read from it: the kernel
unpickles what comes from there. The scanner reads the records with the protocol's one parser."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat as stat_module
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .proctree import alive, exit_text
from .protocol import (
    FINAL_STATES,
    KIND_ERROR,
    KIND_STATE,
    PROTOCOL_VERSION,
    RECORD,
    SPOOL_VERSION,
    FrameSource,
    IncompleteFrame,
    parse_frame,
    write_frame,
)


def check_private(path: str) -> None:
    """Refuse a spool path that is not ours alone (unpickling what it holds is code execution)."""
    info = os.lstat(path)
    if stat_module.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"{path} is a symbolic link; refusing to load anything from it (a link can point anywhere)."
            f" Fix it with: cp --remove-destination \"$(readlink -f {path})\" {path}"
        )
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} is not private (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}); refusing to load"
            f" anything from it. Fix it with: chown $USER {path} && chmod go-rwx {path}"
        )


def spool_refusal(spool: str) -> Optional[str]:
    """Why a job's spool (its directory, or its records) is refused, or None if it is ours alone
    (or gone: nothing to refuse)."""
    for path in (spool, os.path.join(spool, "records")):
        try:
            check_private(path)
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            return str(exc)
    return None


def write_private(path: str, data: bytes) -> None:
    """Replace a small file atomically, readable by its owner only."""
    part = f"{path}.{os.getpid()}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(part, path)


def write_over(path: str, data: bytes) -> None:
    """Write a small file of a spool in place, readable by its owner only: a new one, or the
    same file of a recycled spool (no file made or deleted, no block freed: see recycle_spool)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


SPOOL_FILES = ("records", "meta.json", "owner", "pid", "cursor")
NO_PROCESS = b"{}"  # a spool's pid file until a pair takes its job: no process runs it


def recycle_spool(spool: str, free: str) -> bool:
    """Make a removed spool (ours, renamed out of the way) ready for another job, renamed to
    ``free``: its records emptied, its cursor gone (its other files are written over before it
    serves a job: meta.json, owner, pid; it is out of sight meanwhile). Making and
    deleting a spool's directory and files costs far more than this on a journaled disk (on this
    project's VM, 1000 spools made after 1000 were deleted took 0.8-2.3 s; 1000 recycled, 0.08 s).
    False if it holds anything else (it is deleted instead)."""
    try:
        names = set(os.listdir(spool))
        if not names <= set(SPOOL_FILES) or "records" not in names:
            return False
        fd = os.open(os.path.join(spool, "records"), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        if "cursor" in names:
            os.unlink(os.path.join(spool, "cursor"))
        os.rename(spool, free)
    except OSError:
        return False
    return True


def remove_spool(spool: str) -> None:
    """Delete a job's spool: its known files, then the directory (anything else in it: every
    entry, never following a link)."""
    for name in SPOOL_FILES:
        try:
            os.unlink(os.path.join(spool, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(spool)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(spool, ignore_errors=True)


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        check_private(path)
        with open(path, "rb") as f:
            found = json.loads(f.read() or b"null")
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None



def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def read_cursor(spool: str) -> int:
    text = read_text(os.path.join(spool, "cursor"))
    return int(text) if text.isdigit() else 0



def spool_meta(header: Dict[str, Any], instance: str) -> Dict[str, Any]:
    """A new spool's meta.json: what the job is, and the format (and agent) that wrote it."""
    meta = {k: header.get(k) for k in ("code", "name", "cache", "detached", "session", "kernel", "host")}
    meta.update(instance=instance, started=time.time(), spool_version=SPOOL_VERSION, protocol=PROTOCOL_VERSION)
    return meta


def owner_elsewhere(spool: str) -> Optional[int]:
    """The pid of another live server that forwards this spool, if one does."""
    try:
        with open(os.path.join(spool, "owner"), "rb") as f:
            pid_text, start_text = f.read().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not start_text.isdigit() or not alive(pid, int(start_text)):
        return None
    return pid


NO_SPACE_EXIT = 75  # a job process's exit status when its spool could not be written: the disk is full
SPOOL_WRITE_EXIT = 74  # ... could not be written for another reason (said by the job's end records)


RECORDS = b"\0"  # on a job's notify pipe: records were written
READY = b"\1"  # on a pair's notify pipe: its job process is done with its job and waits for the next

WRITE_CHUNK = 4 << 20  # a big write goes in parts this big, each said on the notify pipe (it is streamed meanwhile)


class SpoolWriter:
    """The job side of a spool: append-only writes, and a byte on the notify pipe after each
    (and after each ``WRITE_CHUNK`` of a big one, so its server streams it while it is written).
    While hushed, the byte after a write is owed instead: a record the server need not wake for
    at once (a job's Running state, which the next record or :meth:`settle` says; a job's value
    and end, said once with its READY). Every wake-up is a context switch for host and kernel.
    After a write fails (a full disk), every later write fails too: the job cannot go on with
    its output missing. What it wrote before stays."""

    def __init__(self, path: str, notify_fd: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._notify = notify_fd
        self.failure: Optional[OSError] = None
        self._hushed = False
        self._owed = False

    def write(self, data: Any) -> int:
        if self.failure is not None:
            raise OSError(self.failure.errno, f"the job's spool could not be written: {self.failure.strerror}")
        view = memoryview(data).cast("B")
        size = view.nbytes
        try:
            while view.nbytes:
                view = view[os.write(self._fd, view[:WRITE_CHUNK]):]
                if view.nbytes or not self._hushed:  # a part of a big write is said at once: it streams
                    self.settle()
                else:
                    self._owed = True
        except OSError as exc:
            self.failure = exc
            raise
        if not size:
            self.settle()
        return size

    def hush(self, hushed: bool) -> None:
        """Owe the notify byte of the writes that follow (True), or say them again (False)."""
        self._hushed = hushed

    def settle(self, also: bytes = b"") -> None:
        """Say the records written (the owed byte too), and ``also`` (READY), in one write."""
        self._owed = False
        if self._notify >= 0:
            try:
                os.write(self._notify, RECORDS + also)
            except OSError:
                pass  # no server is listening (disconnected), or it has not read the last ones yet: the spool is enough

    @property
    def owed(self) -> bool:
        """Whether records were written that the notify pipe has not said yet."""
        return self._owed

    def close(self) -> None:
        os.close(self._fd)

    def exit_status(self) -> int:
        """The exit status for a job process whose spool failed (its supervisor says how it ended)."""
        return NO_SPACE_EXIT if self.failure is not None and self.failure.errno in (errno.ENOSPC, errno.EDQUOT) else SPOOL_WRITE_EXIT



class _SpoolSource(FrameSource):
    """A spool's bytes from ``offset``, read a window at a time (one read serves the small
    frames a job wrote since the last look); a buffer is skipped, not read (its length stands
    for it). The spool only grows: what was read of it stays true."""

    WINDOW = 65536

    def __init__(self, scanner: "Scanner", fd: int, offset: int) -> None:
        self._scanner = scanner
        self._fd = fd
        self.position = offset
        self._size: Optional[int] = None  # the spool's size, once a skipped buffer needed it

    def take(self, size: int, buffer: bool) -> Optional[Any]:
        start, end = self.position, self.position + size
        at, window = self._scanner.window
        if not at <= start or end > at + len(window):  # not in the window read last
            if buffer and size >= self.WINDOW:  # a big buffer is skipped: the spool's size says if it is all there
                if self._size is None or end > self._size:
                    self._size = os.fstat(self._fd).st_size
                if end > self._size:
                    return None
                self.position = end
                return size
            at, window = start, os.pread(self._fd, max(size, self.WINDOW), start)
            self._scanner.window = (at, window)
            if end > at + len(window):
                return None  # the spool ends before it (a read shorter than asked ends at its end)
        self.position = end
        return size if buffer else window[start - at : end - at]


class Scanner:
    """Reads complete frames of a spool from an offset without loading their buffers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.last_seq = 0
        self.final: Optional[str] = None
        self.final_time: Optional[float] = None
        self.corrupt: Optional[str] = None  # why the bytes at ``offset`` are not a frame
        self.window: Tuple[int, bytes] = (0, b"")  # the spool's bytes read last, and where they start
        self._fd: Optional[int] = None

    def fd(self) -> Optional[int]:
        """The spool's open descriptor (None until the spool was first read)."""
        return self._fd

    def next(self) -> Optional[Tuple[Dict[str, Any], int, int]]:
        """(header, start, end) of the next complete frame, or None if it is not all there yet.
        Raises ValueError if the spool holds something that is not a frame (``corrupt`` says why;
        ``offset`` stays where it starts)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        source = _SpoolSource(self, self._fd, self.offset)
        try:
            frame = parse_frame(source)
        except IncompleteFrame:
            self.window = (0, b"")  # what comes next is read when it is there
            return None
        except ValueError as exc:
            self.corrupt = str(exc)
            raise
        if frame is None:
            self.window = (0, b"")
            return None
        header, start, self.offset = frame[0], self.offset, source.position
        self.last_seq = max(self.last_seq, header.get("seq", 0))
        if header.get("kind") == KIND_STATE and header.get("data") in FINAL_STATES:
            self.final = header["data"]
            self.final_time = header.get("time")
        return header, start, self.offset

    def to_end(self) -> "Scanner":
        while self.next() is not None:
            pass
        return self

    def torn(self) -> bool:
        """Whether bytes follow the last whole frame (a frame being written, or a torn one)."""
        try:
            return os.stat(self.path).st_size > self.offset
        except OSError:
            return False

    def corrupt_records(self, torn: bool = False) -> List[Tuple[str, Any]]:
        """The records that end a job whose spool cannot be read past ``offset`` (never written
        into the spool: past that point nothing could read them)."""
        why = "it ends inside a frame and its writer is gone" if torn else self.corrupt
        evalue = (f"its spool is corrupt at offset {self.offset} ({why}); every record before that offset was"
                  f" delivered, and the spool is kept for inspection: {self.path}")
        return [(KIND_ERROR, {"ename": "SpoolCorrupt", "evalue": evalue, "traceback": [f"SpoolCorrupt: {evalue}"]}),
                (KIND_STATE, "Failed")]

    def copy(self, out_fd: int, start: int, end: int) -> None:
        """Send bytes [start, end) of the spool to ``out_fd`` (zero-copy where the kernel can)."""
        assert self._fd is not None
        while start < end:
            try:
                sent = os.sendfile(out_fd, self._fd, start, end - start)
            except OSError:
                sent = os.write(out_fd, os.pread(self._fd, min(end - start, 1 << 20), start))
            if sent == 0:
                raise EOFError("spool shrank while it was being sent")
            start += sent

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def end_records(path: str, records: Sequence[Tuple[str, Any]], instance: str) -> str:
    """Write a job's last records for it (it could not: killed, stopped, its session died)."""
    scanner = Scanner(path)
    try:
        scanner.to_end()
    except ValueError:
        return "Failed"  # a corrupt spool: what is written after it could never be read (the server says so)
    finally:
        scanner.close()
    if scanner.final is not None:
        return scanner.final
    if os.path.exists(path) and os.path.getsize(path) > scanner.offset:
        os.truncate(path, scanner.offset)  # a frame its writer could not finish (a full disk, a kill): never sent
    seq = scanner.last_seq
    writer = SpoolWriter(path, -1)
    try:
        for kind, data in records:
            seq += 1
            write_frame(writer, {"op": RECORD, "job": instance, "seq": seq, "kind": kind, "time": time.time(), "data": data})
    finally:
        writer.close()
    return str(records[-1][1])


def ended_records(status: Optional[int], stopping: bool, what: str, spool: str) -> List[Tuple[str, Any]]:
    """The end records of a job whose process ended with wait ``status`` without saying how."""
    code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
    if code not in (NO_SPACE_EXIT, SPOOL_WRITE_EXIT) or stopping:
        return died_records(exit_text(status), stopping, what)
    why = "no space left on the host's disk" if code == NO_SPACE_EXIT else "its spool could not be written"
    evalue = f"{why} (writing the job's spool {spool}); its output up to there is kept: free some space there and run it again"
    ename = "HostDiskFull" if code == NO_SPACE_EXIT else "SpoolWriteFailed"
    return [(KIND_ERROR, {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}), (KIND_STATE, "Failed")]


def died_records(how: str, stopping: bool, what: str = "worker") -> List[Tuple[str, Any]]:
    if stopping:
        return [(KIND_STATE, "Stopped")]
    evalue = f"{what} exited with {how}"
    return [(KIND_ERROR, {"ename": "WorkerDied", "evalue": evalue, "traceback": [f"WorkerDied: {evalue}"]}), (KIND_STATE, "Failed")]

