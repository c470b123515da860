"""ssh_config resolved by OpenSSH itself: ``ssh -G`` prints every setting for a host, exactly as
the client would use it (Include, Match exec, canonicalisation, the defaults), without connecting.

What ``-G`` leaves undone is done by the settings built from it (see ``_ssh_config``): it prints
IdentityFile and ProxyCommand with their ``~`` and ``%`` tokens unexpanded.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

from jupyter_rjobs.backends.remote.ssh.config_rules import ConfigError

__all__ = ["openssh_options", "ssh_program"]

TIMEOUT = 30.0  # only a slow ``Match exec`` can take long
_NOISE = ("Pseudo-terminal will not be allocated",)


def ssh_program() -> Optional[str]:
    """The ``ssh`` client on PATH, or None."""
    return shutil.which("ssh")


def openssh_options(
    host_arg: str, *, config: Optional[str], user: Optional[str], port: Optional[int], program: Optional[str] = None,
) -> dict[str, list[str]]:
    """``ssh -G [-F config] [-p port] [-l user] -- host_arg`` as ``{key: [value, ...]}``.
    Raises :class:`ConfigError` with ssh's own first complaint when it refuses."""
    program = program or ssh_program()
    if program is None:
        raise ConfigError("no ssh client on PATH; install OpenSSH's client or set JUPYTER_RJOBS_SSH_RESOLVER=python")
    argv = [program, "-G"]
    if config is not None:
        argv += ["-F", config]
    if port:
        argv += ["-p", str(port)]
    if user:
        argv += ["-l", user]
    argv += ["--", host_arg]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"ssh -G did not finish within {TIMEOUT:g} s (a slow Match exec?)") from None
    except OSError as exc:
        raise ConfigError(f"cannot run {program} ({exc.strerror or exc})") from None
    stderr = proc.stderr.decode(errors="replace").splitlines()
    complaints = [line.strip() for line in stderr if line.strip() and not line.startswith(_NOISE)]
    if proc.returncode != 0:
        reason = complaints[0] if complaints else f"exit status {proc.returncode}"
        raise ConfigError(f"ssh -G refused the configuration: {reason}")
    options: dict[str, list[str]] = {}
    for line in proc.stdout.decode(errors="surrogateescape").splitlines():
        key, _, value = line.partition(" ")
        if key:
            options.setdefault(key.lower(), []).append(value)
    if "hostname" not in options:
        raise ConfigError(f"ssh -G printed no settings ({complaints[0] if complaints else 'no output'})")
    return options
