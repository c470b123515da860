"""What a host's replies mean here: a session's state, and which variables a host's Python can load."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Sequence

from jupyter_rjobs.core.errors import HostError
from jupyter_rjobs.core.sessions import SessionState

if TYPE_CHECKING:
    from jupyter_rjobs.backends.remote.host import HostConnection

__all__ = ["session_state_of", "refuse_version_bound"]


def session_state_of(reply: dict[str, Any]) -> tuple[SessionState, str]:
    state = reply.get("state")
    if state == "Opened":
        return SessionState.Opened, ""
    if state == "Closed":
        return SessionState.Closed, ""
    reason = str(reply.get("reason") or "its interpreter is gone")
    return SessionState.Broken, f"{reason}; close it (%rjob session close) and open a new one"


def refuse_version_bound(specs: Sequence[dict[str, Any]], connections: dict[str, HostConnection | HostError]) -> None:
    """Variables that only dill could send (functions, lambdas and classes defined in the notebook)
    travel as code objects, which load only on the same Python minor version: a host on another one
    gets a clear error now, instead of a job that fails there with a cryptic one."""
    by_value = [spec["name"] for spec in specs if spec.get("format") == "dill"]
    if not by_value:
        return
    mine = sys.version.split()[0]
    names = ", ".join(repr(name) for name in by_value)
    for host, connection in connections.items():
        theirs = getattr(connection, "python_version", "")
        if theirs and theirs.split(".")[:2] != mine.split(".")[:2]:
            connections[host] = HostError(
                host,
                f"{names} (defined in the notebook) can only be sent to the same Python version, and the host runs"
                f" Python {theirs} while this kernel runs {mine}: define {'it' if len(by_value) == 1 else 'them'} in the"
                f" cell, or run Python {'.'.join(mine.split('.')[:2])} there (--python PATH)",
            )
