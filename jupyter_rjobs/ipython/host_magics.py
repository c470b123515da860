"""``%rjob host show ALIAS``: how jupyter_rjobs reaches a host, for debugging a connection. Mixed
into RJobMagics; a thin layer over ``resolve_host``."""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.magic_arguments import argument, magic_arguments

from jupyter_rjobs.backends.remote.ssh.config import resolve_host, settings_lines
from jupyter_rjobs.backends.remote.transport import is_local_host

__all__ = ["HostMagics", "HOST_SUBCOMMANDS"]


@magic_arguments(name="rjob host")
@argument("action", choices=["show"], help="show: print the settings, one `key value` line each")
@argument("alias", help="[user@]host[:port] or a Host alias of ssh_config")
def _host_args() -> None:
    """How a host is reached: `%rjob host show ALIAS` prints its settings the way `ssh -G` does
    (ssh_config as OpenSSH resolves it, IdentityFile and ProxyCommand expanded), then ours
    (python, acceptnewhost, ...). Nothing connects."""


HOST_SUBCOMMANDS = {"host": _host_args}


class HostMagics:
    """Mixed into RJobMagics (which provides manager and the argument parsing)."""

    manager: Any

    def _do_host(self, rest: str, cell: str | None) -> None:
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_host_args, rest)
        if is_local_host(args.alias):
            print(f"localhost is this machine's local agent, reached through a pipe (no SSH, ssh_config not read)\n"
                  f"python {sys.executable} (or --python)")
            return
        settings = resolve_host(args.alias, ssh_config=self.manager.ssh_config)
        print("\n".join(settings_lines(settings)))
