"""What a host is sent on first contact: the agent package as one zip (with its bytecode),
dill as a zip for hosts that lack it, and the probe that asks a host's Python what it is."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import py_compile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from jupyter_rjobs import agent
from jupyter_rjobs.core.errors import HostError

__all__ = ["AGENT_PACKAGE", "PROBE", "agent_zip", "dill_zip", "read_probe"]

AGENT_PACKAGE = "rjobs_agent"  # the agent's top-level name on hosts: jupyter_rjobs/__init__ never runs there


@functools.lru_cache(maxsize=None)
def agent_zip() -> tuple[bytes, str]:
    """The agent package as one zip (zipimport loads it) and its digest, built once, from the
    installed package's files (a wheel without one of them fails here, not on a host). Each
    module comes with its bytecode for this Python (unchecked-hash .pyc, which zipimport uses
    when the host's Python has the same magic number and skips otherwise): no host compiles
    the agent at every connection. The digest is of the sources and that magic number."""
    package = Path(agent.__file__).parent
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, tempfile.TemporaryDirectory() as scratch:
        for path in sorted(package.glob("*.py")):
            source = path.read_bytes()
            digest.update(path.name.encode() + b"\0" + source)
            name = f"{AGENT_PACKAGE}/{path.name}"
            bytecode = f"{scratch}/{path.name}c"
            py_compile.compile(str(path), cfile=bytecode, dfile=name, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            for member, data in ((name, source), (name + "c", Path(bytecode).read_bytes())):
                info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o600 << 16
                archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue(), digest.hexdigest()[:12]


def __getattr__(name: str) -> Any:
    """AGENT_ZIP and AGENT_DIGEST, built on first use (not when this module is imported)."""
    if name == "AGENT_ZIP":
        return agent_zip()[0]
    if name == "AGENT_DIGEST":
        return agent_zip()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PROBE = (
    "import json, os, sys\n"
    "root = os.path.join(os.path.expanduser('~'), '.cache', 'jupyter_rjobs')\n"
    "try:\n    import dill\n    has_dill = True\nexcept Exception:\n    has_dill = False\n"
    "st = os.lstat(root) if os.path.lexists(root) else None\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'dill': has_dill, 'root': root, 'uid': os.getuid(),"
    " 'root_uid': st.st_uid if st else None, 'root_mode': st.st_mode & 0o7777 if st else None,"
    " 'root_link': os.path.islink(root)}))\n"
)


def dill_zip() -> bytes:
    """The local dill package as a zip, for hosts whose Python lacks it (zipimport loads it)."""
    import dill

    package = Path(dill.__file__).parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in package.rglob("*.py"):
            archive.write(path, str(Path("dill") / path.relative_to(package)))
    return buffer.getvalue()


def read_probe(host: str, python: str, out: bytes) -> dict[str, Any]:
    """What the probe printed, or a HostError if ``python`` is not a Python that ran it (``true``
    prints nothing, ``echo`` its arguments)."""
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        probe = json.loads(lines[-1]) if lines else None
    except ValueError:
        probe = None
    keys = ("version", "dill", "root", "uid", "root_uid", "root_mode", "root_link")
    if not isinstance(probe, dict) or not all(key in probe for key in keys) or not isinstance(probe["version"], list):
        said = repr(lines[-1][:80]) if lines else "nothing"
        raise HostError(host, f"{python} there is not a Python that runs jobs (asked its version, it said {said}); name one with --python PATH")
    return probe

