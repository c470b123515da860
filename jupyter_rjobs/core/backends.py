"""A manager's backends: made from the registry on first use, one throttle each, and the choice
of backend for a start (by kind, or by the options given)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from jupyter_rjobs.backends.base import Backend, BackendOptions, registered_backends
from jupyter_rjobs.core.errors import UsageProblem
from jupyter_rjobs.core.job import JobKind
from jupyter_rjobs.core.throttle import Throttle

if TYPE_CHECKING:
    from jupyter_rjobs.core.manager import JobManager

__all__ = ["ManagerSettings", "Backends"]


@dataclass(frozen=True)
class ManagerSettings:
    """A manager's settings, which the backends it makes read (see JobManager)."""

    max_thread_jobs: int = 8
    max_process_jobs: int | None = None
    warm_workers: int = 2
    stop_grace: float = 3.0
    python: str | None = None
    max_remote_jobs: int = 1000
    max_connecting_hosts: int = 32
    reconnect_for: float | None = 300.0
    default_kind: str = "process"


class Backends:
    """The backends one manager made (``factory(manager)`` from the registry), with their throttles."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager
        self._made: dict[JobKind, Backend[Any, Any]] = {}
        self._throttles: dict[JobKind, Throttle] = {}
        self._lock = threading.RLock()

    def add(self, backend: Backend[Any, Any]) -> None:
        with self._lock:
            self._made[backend.kind] = backend
            self._throttles[backend.kind] = Throttle(backend.max_concurrent)

    def get(self, kind: JobKind | str) -> Backend[Any, Any]:
        """The backend of ``kind``, made from the registry on first use."""
        kind = JobKind.parse(kind)
        backend = self._made.get(kind)  # made already: no lock needed to find it
        if backend is not None:
            return backend
        with self._lock:
            backend = self._made.get(kind)
            if backend is None:
                entry = next((e for e in registered_backends() if e.kind is kind), None)
                if entry is None:
                    raise UsageProblem(f"{kind} jobs are not available in this manager")
                backend = entry.factory(self._manager)
                self.add(backend)
            return backend

    def throttle(self, kind: JobKind) -> Throttle:
        return self._throttles[kind]

    def made(self) -> list[Backend[Any, Any]]:
        with self._lock:
            return list(self._made.values())

    def choose(self, kind: JobKind | str | None, options: BackendOptions | None, values: Mapping[str, Any]) -> tuple[Backend[Any, Any], BackendOptions]:
        """The backend of a start and its options: of ``kind``; without one, of the kind whose
        options type ``options`` is, or whose options take every value given (else the default)."""
        if options is not None:
            if values:
                raise UsageProblem("give the options either as an options object or as keywords, not both")
            backend = self.get(kind) if kind is not None else self._owner(lambda e: type(options) is e.options_type, type(options).__name__)
            if not isinstance(options, backend.options_type):
                raise UsageProblem(f"{type(options).__name__} are not options of {backend.kind.name} jobs")
            return backend, options
        if kind is not None:
            backend = self.get(kind)
        elif not values:
            backend = self.get(self._manager.settings.default_kind)
        else:
            backend = self._owner(lambda e: set(values) <= set(e.options_type.names()), ", ".join(values))
        return backend, backend.make_options(**values)

    def _owner(self, takes: Callable[[Any], bool], what: str) -> Backend[Any, Any]:
        owner = next((e.kind for e in registered_backends() if takes(e)), None)
        if owner is None:
            raise UsageProblem(f"{what}: no kind of job takes these options together")
        return self.get(owner)
