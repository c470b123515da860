"""Values across processes: pickle protocol 5 with out-of-band buffers, dill where pickle cannot."""

from __future__ import annotations

import io
import pickle
import types
from typing import Any, List, Sequence, Tuple


class _NeedsDill(Exception):
    pass


class _Pickler(pickle.Pickler):
    """Standard pickle, except that notebook-defined functions and classes go to dill.

    Plain pickle would store them by reference to ``__main__``, which the other side
    does not have; dill stores them by value.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise _NeedsDill
        return NotImplemented


def dumps_value(obj: Any) -> Tuple[str, List[Any]]:
    """Serialize ``obj``: (format, buffers). Pickle protocol 5 with out-of-band buffers, else dill."""
    if isinstance(obj, types.ModuleType):
        return "module", [obj.__name__.encode()]
    out_of_band: List[Any] = []
    stream = io.BytesIO()
    try:
        _Pickler(stream, protocol=5, buffer_callback=out_of_band.append).dump(obj)
        return "pickle", [stream.getbuffer()] + [b.raw() for b in out_of_band]
    except Exception:  # noqa: BLE001 - whatever pickle refuses, dill is tried next
        pass
    import dill  # pickle refused it (a lambda, a notebook class): dill keeps it by value

    return "dill", [dill.dumps(obj, protocol=5, recurse=True)]


def loads_value(fmt: str, buffers: Sequence[Any]) -> Any:
    """The value :func:`dumps_value` serialized as ``(fmt, buffers)``."""
    if fmt == "module":
        import importlib

        return importlib.import_module(bytes(buffers[0]).decode())
    if fmt == "pickle":
        return pickle.loads(buffers[0], buffers=buffers[1:])
    if fmt == "dill":
        import dill

        return dill.loads(bytes(buffers[0]))
    raise ValueError(f"unknown value format {fmt!r}")
