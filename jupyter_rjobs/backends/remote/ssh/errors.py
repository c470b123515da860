"""What counts as a broken SSH connection, and how to say it in one line (paramiko stays in the ssh modules)."""

from __future__ import annotations

import paramiko

__all__ = ["CONNECTION_ERRORS", "describe"]

# what paramiko and the socket layer raise when a connection, a channel or a handshake fails
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (paramiko.SSHException, EOFError, OSError)


def describe(exc: BaseException) -> str:
    """One line for ``exc``: a refused channel says why, anything else its text (or its kind)."""
    if isinstance(exc, paramiko.ChannelException):
        return f"the host refused to open a channel: {exc.text or exc.code}"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
