"""``jupyter rjobs install-kernel``: a kernel spec whose kernel starts with jupyter_rjobs loaded.

The console script ``jupyter-rjobs`` (so ``jupyter rjobs ...`` finds it) runs :func:`main`.
The kernel is this Python with ``--IPKernelApp.extensions=jupyter_rjobs``, so ``%rjob`` works
without ``%load_ext``. ``--host H`` sets ``JUPYTER_RJOBS_ENTER=H`` in the kernel's environment:
the extension enters that host's session when it loads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from typing import Any, NoReturn

__all__ = ["kernel_spec", "install_kernel", "main"]

ENTER_VARIABLE = "JUPYTER_RJOBS_ENTER"
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # what jupyter_client accepts as a kernel name


def kernel_spec(host: str | None = None, python: str | None = None) -> dict[str, Any]:
    """The kernel.json of an rjobs kernel (for ``host``: one that enters that host's session)."""
    spec: dict[str, Any] = {
        "argv": [
            python or sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
            "--IPKernelApp.extensions=jupyter_rjobs",
        ],
        "display_name": f"Python 3 (rjobs on {host})" if host else "Python 3 (rjobs)",
        "language": "python",
        "metadata": {"debugger": True},
    }
    if host:
        spec["env"] = {ENTER_VARIABLE: host}
    return spec


def default_name(host: str | None) -> str:
    return "rjobs" if not host else "rjobs-" + re.sub(r"[^A-Za-z0-9._-]+", "-", host).strip("-")


def install_kernel(name: str | None = None, *, user: bool = False, prefix: str | None = None, host: str | None = None) -> str:
    """Install the kernel spec (like ``jupyter kernelspec install``); returns the directory it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = name or default_name(host)
    with tempfile.TemporaryDirectory(prefix="rjobs-kernelspec-") as source:
        with open(os.path.join(source, "kernel.json"), "w") as spec_file:
            json.dump(kernel_spec(host), spec_file, indent=1)
        return KernelSpecManager().install_kernel_spec(source, kernel_name=name, user=user, prefix=prefix)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2 (argparse's own prints usage too)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jupyter rjobs", description="jupyter_rjobs tools for Jupyter.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="install-kernel")
    install = sub.add_parser(
        "install-kernel", help="install the kernel spec 'Python 3 (rjobs)': %%rjob works without %%load_ext",
        description="Install a kernel spec whose kernel is this Python with jupyter_rjobs loaded.",
    )
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only (~/.local/share/jupyter)")
    where.add_argument("--prefix", metavar="P", help="install under P/share/jupyter/kernels (a virtualenv, a conda env)")
    install.add_argument("--name", metavar="N", help="the kernel's name (default rjobs, or rjobs-HOST with --host)")
    install.add_argument("--host", metavar="H", help="the kernel enters host H's session when it starts (display name says so)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.name is not None and not _NAME.match(args.name):
        parser.error(f"--name {args.name!r} may use only letters, digits, '.', '_' and '-'")
    if args.host is not None and (not args.host.strip() or any(c.isspace() for c in args.host)):
        parser.error(f"--host {args.host!r} is not a host name; give one like server01 or user@server01:2222")
    try:
        path = install_kernel(args.name, user=args.user, prefix=args.prefix, host=args.host)
    except OSError as exc:
        print(f"jupyter rjobs: error: could not install the kernel spec ({exc}); try --user or --prefix P", file=sys.stderr)
        return 1
    print(f"Installed kernel spec {os.path.basename(path)!r} ({kernel_spec(args.host)['display_name']}) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
