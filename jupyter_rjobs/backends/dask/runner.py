"""The kernel side of one cluster job: submits its task, follows its frames, stops it.

Frames arrive on the job's event topic (``Client.subscribe_topic``) while it runs. Each carries
its sequence number: one at or below the last applied is a duplicate and dropped, one beyond a gap
waits until the gap is filled from the worker's journal (``task.journal_since``, read by
``Client.run``; the scheduler keeps only the last ``distributed.admin.low-level-log-length``
events of a topic, so a kernel that subscribed late misses the rest), and the task's result, which
holds every frame, completes the stream when the job ends. So records arrive exactly once, in order.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from jupyter_rjobs.agent.protocol import KIND_STATE, KIND_VALUE
from jupyter_rjobs.backends.base import FrameApplier, JobRunner
from jupyter_rjobs.backends.dask import task
from jupyter_rjobs.core.job import Job, JobState
from jupyter_rjobs.core.records import Record, RecordKind, RecordStream

__all__ = ["DaskRunner", "RemoteValue"]

log = logging.getLogger(__name__)

RESULT_WAIT = 600.0  # seconds the callback waits for a finished task's result (a big value takes its time)


class _Cancelled(Exception):
    """A task that ended without a result to fetch (cancelled, lost, or its client closing)."""


class RemoteValue:
    """The value of a ``--cache remote`` job, kept on the cluster: ``fetch()`` brings it here."""

    def __init__(self, future: Any) -> None:
        self.future = future

    def fetch(self, timeout: Optional[float] = None) -> Any:
        from jupyter_rjobs.agent.values import loads_value

        fmt, buffers = self.future.result(timeout=timeout)
        return loads_value(fmt, [bytearray(b) for b in buffers])

    def release(self) -> None:
        self.future.release()

    def __repr__(self) -> str:
        return f"<RemoteValue {self.future.key} on the cluster: receive the job, or .fetch()>"


class DaskStream(RecordStream):
    """The record stream of a detached or ``--cache remote`` job: what is received (without keep)
    of a detached job is acknowledged on the cluster, so a kernel that adopts it later gets only
    the rest; a value kept on the cluster (a :class:`RemoteValue`) is fetched when received."""

    def __init__(self, job_id: int, on_append: Callable[[Record], None], runner: DaskRunner) -> None:
        super().__init__(job_id, on_append)
        self._runner = runner

    def take(self, after: int = 0, keep: bool = False) -> list[Record]:
        records = super().take(after, keep)
        if records and not keep and self._runner.job.detached:
            self._runner.ack(records[-1].seq)
        return [r._replace(data=r.data.fetch()) if isinstance(r.data, RemoteValue) else r for r in records]


class DaskRunner(JobRunner):
    """Follows one job's task: frames in order, exactly once; stop ends the child's process tree."""

    def __init__(self, job: Job, client: Any, key: str, cache_remote: bool = False) -> None:
        super().__init__(job)
        self.client = client
        self.cluster_address = str(client.scheduler.address)
        self.key = key
        self.topic = task.topic_of(key)
        self.cache_remote = cache_remote
        self.received_before = 0  # an adopted job: what a kernel before received (not delivered again)
        if cache_remote or job.detached:
            job.use_stream(lambda on_append: DaskStream(job.id, on_append, self))
        self.worker: Optional[str] = None
        self.future: Any = None  # the task's
        self.value_future: Any = None  # --cache remote: the value, kept on the cluster
        self.published: list[str] = []  # dataset names to unpublish on remove
        self._apply = FrameApplier(job)
        self._applied = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._value: Any = None
        self._lock = threading.RLock()
        self._replaying = False

    # -- starting and following -------------------------------------------------------
    def follow(self, future: Any, final: Any) -> None:
        """Listen to the job's topic and to ``final`` (the future whose result ends the job)."""
        self.future = future
        final.add_done_callback(self._done)

    def subscribe(self) -> None:
        self.client.subscribe_topic(self.topic, self._on_event)

    def _on_event(self, event: Any) -> None:
        """An event of the job's topic (in the client's event loop: quick, never blocking)."""
        self.offer(event[1])  # the frames the task published together

    def offer(self, frames: list[dict[str, Any]], final: bool = False) -> None:
        """Apply ``frames`` in sequence order: duplicates dropped, a gap filled from the journal."""
        with self._lock:
            for frame in frames:
                if self._rerun(frame):
                    return
                if frame["seq"] > self._applied:
                    self._pending[frame["seq"]] = frame
            self._drain(final)
            gap = bool(self._pending) and (self._applied + 1) not in self._pending and not final
            if gap and not self._replaying:
                self._replaying = True
                threading.Thread(target=self._replay, daemon=True, name="rjobs-dask-replay").start()

    def _rerun(self, frame: dict[str, Any]) -> bool:
        """A second start on another worker: the first worker died mid-job (Dask re-ran the task)."""
        if frame["kind"] != KIND_STATE or frame["data"] != "Running" or self.worker is None or frame.get("worker") == self.worker:
            return False
        if not self.job.state.finished:
            self.job.fail("WorkerDied", f"the Dask worker {self.worker} died while running the job")
            threading.Thread(target=self.kill, daemon=True, name="rjobs-dask-stop").start()
        return True

    def _drain(self, final: bool) -> None:
        while self._applied + 1 in self._pending:
            frame = self._pending[self._applied + 1]
            if not final and frame["kind"] == KIND_VALUE and "inline" not in frame["data"]:
                return  # a value that is not in its event comes with the task's result, and then the end
            del self._pending[self._applied + 1]
            self._applied += 1
            if not self.job.state.finished:
                self._apply_frame(frame)

    def _apply_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["kind"]
        if frame["seq"] <= self.received_before and kind != KIND_STATE:
            return  # received in a kernel before this one
        if kind == KIND_STATE and frame["data"] == "Running":
            self.worker = frame.get("worker") or self.worker
            self.job.location = self.worker or self.job.location
        if kind == KIND_VALUE:
            if self.cache_remote:
                self.job.emit(RecordKind.VALUE, RemoteValue(self.value_future), seq=frame["seq"], when=frame["time"])
                return
            fmt, buffers = self._value or (frame["data"]["format"], frame["data"].get("inline") or [])
            self._apply(dict(frame, data={"format": fmt}), [bytearray(b) for b in buffers])
            return
        self._apply(frame, [])

    def replay_all(self) -> None:
        """Fill in from the journal whatever came before this runner listened (an adopted job)."""
        with self._lock:
            if self._replaying:
                return
            self._replaying = True
        threading.Thread(target=self._replay, daemon=True, name="rjobs-dask-replay").start()

    def _replay(self) -> None:
        """Fill a gap from the journal of the worker that runs the job (if it still runs)."""
        try:
            workers = [self.worker] if self.worker else None
            with self._lock:
                after = self._applied
            found = self.client.run(task.journal_since, self.key, after, workers=workers, on_error="ignore")
            frames = next((f for f in found.values() if isinstance(f, list)), None)
        except Exception:
            log.debug("journal replay of %s failed", self.key, exc_info=True)
            frames = None
        finally:
            with self._lock:
                self._replaying = False
        if frames:
            self.offer(frames)

    def _done(self, future: Any) -> None:
        """The task ended (in distributed's callback thread): its result completes the stream,
        unless its events did already (they usually come first)."""
        if self.job.state.finished:
            self._finished()
            return
        if future.status in ("cancelled", "lost") or self.client.status != "running":
            # asking a client that is closing would wait on its event loop, maybe for ever (a
            # callback thread that never ends hangs the process at exit)
            self._failed(_Cancelled(f"its Dask task is {future.status} (the client is {self.client.status})"))
            return
        try:
            result = future.result(timeout=RESULT_WAIT)
        except Exception as exc:  # noqa: BLE001 - cancelled, a worker that died, a lost scheduler, a timeout
            self._failed(exc)
            return
        with self._lock:
            self._value = result.get("value")
            self.worker = self.worker or result.get("worker")
        self.offer(result["frames"], final=True)
        if not self.job.state.finished:  # a result without a final frame: cannot happen, but never hang
            self.job.fail("DaskJobError", "the job's task ended without saying how")
        self._finished()

    def _finished(self) -> None:
        """Stop listening; a job that is not detached releases its task (a ``--cache remote``
        job's value is a future of its own, kept until the job is removed)."""
        self._unsubscribe()
        if not self.job.detached and self.future is not None:
            self.future.release()

    def _failed(self, exc: BaseException) -> None:
        name = "CancelledError" if isinstance(exc, _Cancelled) else type(exc).__name__
        if self.client.status in ("closing", "closed"):  # this kernel let go: a detached job runs on there
            self.job.set_state(JobState.Disconnected if self.job.detached else JobState.Stopped)
            return
        if name == "CancelledError" or self.job.state in (JobState.Stopping, JobState.Stopped):
            self.job.set_state(JobState.Stopped)
        elif name == "KilledWorker":
            where = f"the Dask worker {self.worker}" if self.worker else "its Dask worker"
            self.job.fail("WorkerDied", f"{where} died while running the job ({str(exc).splitlines()[0] if str(exc) else name})")
        else:
            self.job.fail(name, f"the job's Dask task failed: {str(exc).splitlines()[0] if str(exc) else name}")
        self._unsubscribe()

    def _unsubscribe(self) -> None:
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            log.debug("unsubscribing %s failed", self.topic, exc_info=True)

    # -- stopping and cleaning up --------------------------------------------------------
    def terminate(self) -> None:
        self._stop(hard=False)

    def kill(self) -> None:
        self._stop(hard=True)

    def _stop(self, hard: bool) -> None:
        """End the child's process tree where the job runs; a queued task is cancelled and marked,
        so it never starts."""
        workers = [self.worker] if self.worker and not hard else None
        try:
            running = self.client.run(task.stop_job, self.key, hard, workers=workers, on_error="ignore")
        except Exception:
            log.debug("stopping %s failed", self.key, exc_info=True)
            running = {}
        if self.future is not None and not any(v is True for v in running.values()) and self.worker is None:
            self.client.cancel([self.future], force=True)

    def ack(self, seq: int) -> None:
        """Note on the cluster how far this detached job was received (``rjobs-ack/<id>``)."""
        name = f"rjobs-ack/{self.key[len('rjob-'):]}"
        try:
            self.client.publish_dataset(seq, name=name, override=True)
        except Exception:
            log.debug("acknowledging %s failed", self.key, exc_info=True)
            return
        if name not in self.published:
            self.published.append(name)

    def cleanup(self) -> None:
        """Removed: unpublish its datasets and release its futures (the value kept on the cluster too)."""
        for name in self.published if self.client.status == "running" else ():  # a closed client: the cluster keeps nothing of ours
            try:
                self.client.unpublish_dataset(name)
            except Exception:
                log.debug("unpublishing %s failed", name, exc_info=True)
        self.published = []
        for future in (self.value_future, self.future):
            if future is not None:
                future.release()
        self.value_future = self.future = None

    def info(self) -> dict[str, Any]:
        return {"cluster": self.cluster_address, "key": self.key, "worker": self.worker}
