"""Cluster workers run this kernel's jupyter_rjobs: the task and the job process are its code.

A worker that cannot import it (a cluster on SSH hosts whose Python has only distributed), or
imports another version, gets this kernel's package, and dill, as a zip (``Client.upload_file``:
the workers of now and those that join later put it first on their path).
"""

from __future__ import annotations

import os
import tempfile
import threading
import types
import zipfile
from typing import Any, Callable, Optional

__all__ = ["ensure_package"]

_PROBE = '''
def probe():
    try:
        import dill, jupyter_rjobs, jupyter_rjobs.backends.dask.task
    except ImportError:
        return None
    return jupyter_rjobs.__version__
'''

_lock = threading.Lock()
_zip: Optional[str] = None


def _probe() -> Callable[[], Optional[str]]:
    """A function that says which jupyter_rjobs a worker imports; defined here at run time, so
    cloudpickle sends it by value (the worker may not have this module)."""
    namespace: dict[str, Any] = {"__name__": "__rjobs_probe__"}
    exec(compile(_PROBE, "<rjobs probe>", "exec"), namespace)
    probe = namespace["probe"]
    assert isinstance(probe, types.FunctionType)
    return probe


def ensure_package(client: Any) -> bool:
    """Upload this kernel's jupyter_rjobs (and dill) to the cluster's workers unless every worker
    imports the same version already. Returns whether it uploaded."""
    import jupyter_rjobs

    found = client.run(_probe(), on_error="return")
    if found and all(v == jupyter_rjobs.__version__ for v in found.values()):
        return False
    client.upload_file(_package_zip())
    return True


def _package_zip() -> str:
    """jupyter_rjobs and dill as one zip (Python sources only), made once per process."""
    global _zip
    import dill

    import jupyter_rjobs

    with _lock:
        if _zip is None:
            folder = tempfile.mkdtemp(prefix="rjobs-ship-")
            path = os.path.join(folder, "jupyter_rjobs_for_workers.zip")
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
                for package in (jupyter_rjobs, dill):
                    root = os.path.dirname(os.path.dirname(os.path.abspath(str(package.__file__))))
                    for here, dirs, files in os.walk(os.path.dirname(os.path.abspath(str(package.__file__)))):
                        dirs[:] = [d for d in dirs if d != "__pycache__"]
                        for name in files:
                            if name.endswith((".py", ".typed")):
                                full = os.path.join(here, name)
                                archive.write(full, os.path.relpath(full, root))
            _zip = path
        return _zip
