"""Asking the user a question at login (a passphrase, a password, a one-time code), without IPython.

A prompter is a callable ``prompter(text, echo) -> answer``; it raises :class:`PromptUnavailable`
when it has no way to ask. The default asks on the terminal (``getpass``), only when stdin is a
tty; the IPython layer installs one that asks in the notebook (``_ipython_prompt.py``). Answers are
returned to the caller only: never logged, stored or put in a message.
"""

from __future__ import annotations

import getpass
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

__all__ = [
    "Prompter", "PromptUnavailable", "install_prompter", "installed_prompter", "current_prompter", "prompts_disabled",
    "terminal_prompter",
]

Prompter = Callable[[str, bool], str]


class PromptUnavailable(Exception):
    """There is no way to ask the user here; the message says why (for the login error)."""


def terminal_prompter(text: str, echo: bool) -> str:
    """Ask on the terminal: ``getpass`` (no echo) or ``input``; only when stdin is a tty."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise PromptUnavailable("no terminal to ask on")
    return input(text) if echo else getpass.getpass(text)


_installed: Optional[Prompter] = None
_asking = threading.Lock()  # one question at a time (connections to several hosts run in threads)
_local = threading.local()


def install_prompter(prompter: Optional[Prompter]) -> Optional[Prompter]:
    """Make ``prompter`` the one logins ask through (None: back to the terminal); returns the previous one."""
    global _installed
    previous, _installed = _installed, prompter
    return previous


def installed_prompter() -> Optional[Prompter]:
    return _installed


def current_prompter() -> Prompter:
    """The prompter for a login started in this thread: the installed one (or the terminal), asked
    one question at a time, or one that refuses inside :func:`prompts_disabled`."""
    reason = getattr(_local, "disabled", None)
    if reason is not None:
        return _refusing(reason)
    chosen = _installed or terminal_prompter

    def ask(text: str, echo: bool) -> str:
        with _asking:
            return chosen(text, echo)

    return ask


def _refusing(reason: str) -> Prompter:
    def refuse(text: str, echo: bool) -> str:
        raise PromptUnavailable(reason)

    return refuse


@contextmanager
def prompts_disabled(reason: str) -> Iterator[None]:
    """No login started in this thread inside the block asks anything (``reason`` says why)."""
    previous = getattr(_local, "disabled", None)
    _local.disabled = reason
    try:
        yield
    finally:
        _local.disabled = previous
