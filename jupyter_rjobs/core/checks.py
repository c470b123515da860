"""Checks of what a user gives the manager, each refused in one line that names the fix."""

from __future__ import annotations

import math
import threading

from jupyter_rjobs.core.errors import UsageProblem

__all__ = ["checked_name", "checked_timeout"]


def checked_timeout(timeout: float | None) -> float | None:
    """Seconds to wait: 0 or more (nan and negatives are refused); beyond what a wait can take
    (``inf``, ``1e10``) it means no timeout."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise UsageProblem(f"the timeout must be a number of seconds, 0 or more, not {timeout!r}; e.g. --timeout 30")
    return None if timeout > threading.TIMEOUT_MAX else float(timeout)


def checked_name(name: str | None) -> str | None:
    """A job's name. Ids win over names: a job is reached by its name unless the name is all
    digits, which reads as an id, so such names are refused."""
    if name is None:
        return None
    if not name.strip():
        raise UsageProblem("a job's name cannot be empty; leave --name out for the default Job<Id>")
    if name.isdigit():
        raise UsageProblem(f"a job cannot be named {name!r}: names of digits only read as ids; use e.g. job{name}")
    return name
