"""Drive a real IPython kernel the way a notebook does, for the kernel tests.

:class:`KernelSession` starts an ipykernel through jupyter_client, runs cells and returns
the iopub outputs that belong to each cell (matched by ``parent_header.msg_id``). Every
iopub message it sees, whichever cell it belongs to, is kept in :attr:`KernelSession.messages`,
so a test can check that output did *not* land in some other cell.

The kernel runs the Python of the test run: it is launched from a temporary kernelspec
whose argv starts with ``sys.executable``, so neither an installed ``python3`` kernelspec
nor the user's Jupyter/IPython configuration plays any part (robust on a fresh CI machine).

Also here: process helpers for the "nothing is left behind" tests (:func:`pid_gone`,
:class:`ChildSubreaper`).
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from user_sees import ERROR_LINE, assert_user_sees_no_noise, from_kernel

from jupyter_rjobs.agent.proctree import descendants  # the package's own /proc walk

__all__ = [
    "CellResult",
    "ChildSubreaper",
    "KernelSession",
    "Output",
    "describe",
    "describe_pids",
    "descendants",
    "errors",
    "execute_results",
    "display_datas",
    "pid_gone",
    "proc_state",
    "strip_ansi",
    "stream_text",
]

OUTPUT_TYPES = ("stream", "display_data", "update_display_data", "execute_result", "error")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_KERNEL_NAME = "rjobs-test-python"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass
class Output:
    """One iopub output message: its type and content (``parent`` is the cell's msg_id)."""

    msg_type: str
    content: dict[str, Any]
    parent: str | None = None

    @property
    def text(self) -> str:
        """A readable form, for assertion messages and for searching."""
        c = self.content
        if self.msg_type == "stream":
            return c.get("text", "")
        if self.msg_type == "error":
            return strip_ansi("\n".join(c.get("traceback") or [f"{c.get('ename')}: {c.get('evalue')}"]))
        data = c.get("data") or {}
        return "\n".join(str(v) for v in data.values())


def stream_text(outputs: Iterable[Output], name: str = "stdout") -> str:
    return "".join(o.content.get("text", "") for o in outputs if o.msg_type == "stream" and o.content.get("name") == name)


def display_datas(outputs: Iterable[Output]) -> list[Output]:
    return [o for o in outputs if o.msg_type == "display_data"]


def execute_results(outputs: Iterable[Output]) -> list[Output]:
    return [o for o in outputs if o.msg_type == "execute_result"]


def errors(outputs: Iterable[Output]) -> list[Output]:
    return [o for o in outputs if o.msg_type == "error"]


def describe(outputs: Iterable[Output]) -> str:
    return "\n".join(f"  [{o.msg_type}{'/' + o.content['name'] if 'name' in o.content else ''}] {o.text!r}" for o in outputs) or "  (no outputs)"


@dataclass
class CellResult:
    msg_id: str
    outputs: list[Output] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)


class KernelSession:
    """A started kernel plus a blocking client. ``run(code)`` executes one cell."""

    def __init__(
        self, startup_timeout: float = 60.0, cwd: str | None = None, kernel: tuple[str, str] | None = None
    ) -> None:
        """``kernel``: (a kernels directory, a kernel name in it) to start instead of the plain test kernel."""
        self._tmp = tempfile.TemporaryDirectory(prefix="rjobs-kernel-")
        root = self._tmp.name
        kernels_dir, kernel_name = kernel or (os.path.join(root, "kernels"), _KERNEL_NAME)
        spec_dir = os.path.join(root, "kernels", _KERNEL_NAME)
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "jupyter_rjobs tests",
                    "language": "python",
                    "metadata": {"debugger": False},
                },
                f,
            )
        ipython_dir = os.path.join(root, "ipython")  # no user profile, startup files or extensions
        os.makedirs(ipython_dir)
        env = dict(os.environ)
        env["IPYTHONDIR"] = ipython_dir
        env.pop("PYTHONSTARTUP", None)
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        ksm = KernelSpecManager(kernel_dirs=[kernels_dir], ensure_native_kernel=False)
        self.km = KernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)
        self.km.start_kernel(env=env, cwd=cwd or root)
        self.process = self.km.provisioner.process  # type: ignore[union-attr]  # the kernel's Popen
        self.kernel_pid: int = self.process.pid
        self.client = self.km.blocking_client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=startup_timeout)
        except Exception:
            self.close()
            raise
        self.messages: list[Output] = []  # every iopub output message seen, in arrival order
        self.comm_messages: list[dict[str, Any]] = []  # every comm_open / comm_msg / comm_close (widgets)
        self.cells: dict[str, CellResult] = {}
        self.last: CellResult | None = None

    # -- running cells ---------------------------------------------------------------
    def run(self, code: str, timeout: float = 30.0, allow_errors: bool = False, allow_stderr: bool = False) -> list[Output]:
        """Execute ``code`` as a notebook cell; returns its outputs (stream, display_data,
        execute_result, error), in order. What the user sees is checked (tests/user_sees.py):
        unless ``allow_errors`` an error output or a traceback fails, unless ``allow_stderr``
        any stderr fails, and an ``Error in callback`` always fails."""
        cell = self.submit(code, stop_on_error=not allow_errors)
        self.wait(cell, timeout)
        if not allow_errors and (errors(cell.outputs) or cell.reply.get("status") != "ok"):
            raise AssertionError(
                f"cell failed (reply status {cell.reply.get('status')!r}):\n{code}\noutputs:\n{describe(cell.outputs)}"
            )
        seen = from_kernel(cell.outputs, code.strip().splitlines()[0][:60] if code.strip() else "cell", allow_stderr=allow_stderr)
        if allow_errors:
            seen.allowed_errors = tuple(seen.errors) + tuple(ERROR_LINE.findall(strip_ansi(seen.stdout)))
        assert_user_sees_no_noise([seen])
        return cell.outputs

    def submit(self, code: str, stop_on_error: bool = True) -> CellResult:
        """Send ``code`` as a cell. As nbclient does, a cell whose error is expected is sent
        with ``stop_on_error=False``: else the kernel may abort the next cell, sent the moment
        this one replies, as part of the queue that an error stops (ipykernel 6's abort window)."""
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=stop_on_error)
        cell = self.cells[msg_id] = CellResult(msg_id)
        self.last = cell
        return cell

    def wait(self, cell: CellResult, timeout: float = 30.0) -> CellResult:
        deadline = time.monotonic() + timeout
        idle = False
        while not idle:
            msg = self._next_iopub(deadline, cell)
            parent = msg["parent_header"].get("msg_id")
            if parent == cell.msg_id and msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
        while not cell.reply:
            remaining = deadline - time.monotonic()
            try:
                reply = self.client.get_shell_msg(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(f"no execute_reply within {timeout} s; outputs so far:\n{describe(cell.outputs)}") from None
            if reply["parent_header"].get("msg_id") == cell.msg_id:
                cell.reply = reply["content"]
        return cell

    def drain(self, seconds: float) -> None:
        """Collect the iopub messages that arrive in the next ``seconds`` (late output of any cell)."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                msg = self.client.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                return
            self._record(msg)

    def _next_iopub(self, deadline: float, cell: CellResult) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        try:
            msg = self.client.get_iopub_msg(timeout=max(remaining, 0.01))
        except queue.Empty:
            raise AssertionError(f"cell did not finish in time; outputs so far:\n{describe(cell.outputs)}") from None
        self._record(msg)
        return msg

    def _record(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] in ("comm_open", "comm_msg", "comm_close"):
            self.comm_messages.append(msg)
        if msg["msg_type"] not in OUTPUT_TYPES:
            return
        parent = msg["parent_header"].get("msg_id")
        output = Output(msg["msg_type"], msg["content"], parent)
        self.messages.append(output)
        cell = self.cells.get(parent) if parent else None
        if cell is not None:
            cell.outputs.append(output)

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> str:
        """Send a comm message to the kernel as a front end does (a widget click, say); returns its msg_id."""
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def wait_for_comm(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The first comm message (already seen or arriving within ``timeout``) that ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            for msg in self.comm_messages[checked:]:
                if predicate(msg):
                    return msg
            checked = len(self.comm_messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such comm message within {timeout} s ({checked} seen)")
            self.drain(min(remaining, 0.2))

    def outputs_not_of(self, *msg_ids: str) -> list[Output]:
        """Every output seen that belongs to none of these cells."""
        return [o for o in self.messages if o.parent not in msg_ids]

    def value(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate an expression in the kernel and return it (it must be JSON-serializable)."""
        outputs = self.run(f"import json as _j\nprint('<<' + _j.dumps({expression}) + '>>')", timeout)
        match = re.search(r"<<(.*)>>", stream_text(outputs), re.S)
        assert match, f"no value printed for {expression!r}:\n{describe(outputs)}"
        return json.loads(match.group(1))

    # -- life cycle ------------------------------------------------------------------
    def shutdown(self, now: bool = False) -> None:
        """Shut the kernel down as Jupyter does (a shutdown_request; killed only if it hangs)."""
        self.client.stop_channels()
        self.km.shutdown_kernel(now=now)

    def close(self) -> None:
        try:
            self.client.stop_channels()
        except Exception:
            pass
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        except Exception:
            pass
        try:
            self.km.cleanup_resources()
        except Exception:
            pass
        if self.process.poll() is None:  # never leave the kernel running
            self.process.kill()
            self.process.wait(10)
        self._tmp.cleanup()


# --------------------------------------------------------------------------- processes
def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat ("R", "S", "Z", ...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def pid_gone(pid: int) -> bool:
    """The process has ended *and been reaped*. A zombie still counts as present; if it is a
    child of this process (see :class:`ChildSubreaper`) it is reaped here first."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: whoever its parent is must reap it
    else:
        if reaped == pid:
            return True
    return proc_state(pid) is None


def describe_pids(pids: Iterable[int]) -> str:
    parts = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        parts.append(f"pid {pid} state={proc_state(pid)} ppid={proc_parent(pid)} cmd={cmd[:80]!r}")
    return "\n".join(parts)


class ChildSubreaper:
    """Make this process the Linux child subreaper while the block runs.

    Processes orphaned below us (workers whose kernel died, a job's children) are then
    re-parented to this process instead of to PID 1, so :func:`pid_gone` can reap them.
    Otherwise "gone" would depend on the machine's init reaping orphans, which some
    container inits (like the sandbox this was written in) never do.
    """

    PR_SET_CHILD_SUBREAPER = 36

    def __enter__(self) -> ChildSubreaper:
        self._set(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._set(0)

    def _set(self, value: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(self.PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
