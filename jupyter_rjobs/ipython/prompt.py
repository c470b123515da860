"""Login questions (password, passphrase, one-time code) asked in the notebook.

In a kernel, ipykernel forwards ``getpass.getpass`` and ``input`` to the front end (an
``input_request`` on the stdin channel) while a cell runs; the question then appears under that
cell. Outside a running cell, or when the front end takes no input (nbclient and papermill run
kernels with ``allow_stdin=False``), the prompter says so and the login fails with one line.
Terminal IPython needs nothing: the plain terminal prompter asks on the tty.
"""

from __future__ import annotations

import builtins
import getpass
from typing import Any

from jupyter_rjobs.backends.remote.ssh.prompt import PromptUnavailable, install_prompter, installed_prompter

__all__ = ["install", "uninstall"]


class KernelPrompter:
    """Asks through the kernel's stdin, in the cell that is running."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __call__(self, text: str, echo: bool) -> str:
        from IPython.core.error import StdinNotImplementedError

        forwarded = self.kernel.raw_input if echo else self.kernel.getpass
        if (builtins.input if echo else getpass.getpass) != forwarded:
            raise PromptUnavailable("no cell is running to ask in; run the command in a cell")
        try:
            return str(forwarded(text))
        except StdinNotImplementedError:
            raise PromptUnavailable("this notebook runs without input, as nbclient and papermill run it") from None


def install(shell: Any) -> None:
    """Ask login questions in ``shell``'s notebook (nothing to do in terminal IPython)."""
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "getpass"):
        install_prompter(KernelPrompter(kernel))


def uninstall(shell: Any) -> None:
    """Back to the terminal prompter, if ``shell``'s is the one installed."""
    current = installed_prompter()
    if isinstance(current, KernelPrompter) and current.kernel is getattr(shell, "kernel", None):
        install_prompter(None)
