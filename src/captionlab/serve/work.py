"""One queue for all model work, and jobs that report progress.

The networks are CPU-bound and already use every core for one image, so running two
requests at once only makes both slower and doubles memory. :class:`WorkQueue` runs work
items one at a time, in arrival order, on one worker thread; the event loop stays free to
accept, parse and answer requests while an item runs. An ``async`` handler awaits
:meth:`WorkQueue.run`; many simultaneous requests are answered in turn. The queue holds at
most ``max_pending`` items; beyond that :meth:`WorkQueue.run` raises :class:`QueueFull`
(the server answers 503 with Retry-After) instead of growing without bound.

A :class:`Job` is a long item (class visualization) whose progress the page polls:
:class:`JobStore` keeps the most recent ``keep`` jobs by a random id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Job", "JobStore", "QueueFull", "WorkQueue"]

log = logging.getLogger("captionlab.serve")


class QueueFull(Exception):
    """The work queue already holds its maximum number of items."""


class WorkQueue:
    """Runs callables one at a time on a single worker thread, in arrival order."""

    def __init__(self, max_pending: int = 256, name: str = "captionlab-serve-worker"):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._name = name
        self._items: queue.Queue = queue.Queue()
        self._pending = 0  # submitted, not yet finished (running included)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.completed = 0

    @property
    def pending(self) -> int:
        """Items waiting or running."""
        return self._pending

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            result, error = None, None
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the awaiting request
                    error = exc
            with self._lock:  # counted before the caller hears back
                self._pending -= 1
                self.completed += 1
            if future.cancelled():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> concurrent.futures.Future:
        """Queue ``fn(*args, **kwargs)``; its future. Raises QueueFull when full."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise QueueFull(
                    f"the server is busy: {self._pending} requests are queued (--max-queue "
                    f"{self.max_pending}); try again shortly"
                )
            self._pending += 1
            self._ensure_worker()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._items.put((future, fn, args, kwargs))
        return future

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Await ``fn(*args, **kwargs)`` run on the worker thread in its turn."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the worker after the items already queued."""
        if self._thread is not None and self._thread.is_alive():
            self._items.put(None)
            self._thread.join(timeout=30)
        self._thread = None


@dataclass
class Job:
    """A long piece of work whose progress is polled: ``state`` goes queued -> running ->
    done (``result`` set) or error (``error`` set, with the HTTP ``status`` it would get)."""

    id: str
    kind: str
    total: int
    state: str = "queued"
    step: int = 0
    preview: str | None = None
    result: dict | None = None
    error: str | None = None
    status: int = 200
    created: float = field(default_factory=time.time)

    def progress(self, step: int, total: int, preview: str | None = None) -> None:
        self.state = "running"
        self.step, self.total = step, total
        if preview is not None:
            self.preview = preview

    def describe(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "preview": self.preview,
            "result": self.result,
            "error": self.error,
        }


class JobStore:
    """The most recent ``keep`` jobs by id (older finished ones are forgotten)."""

    def __init__(self, keep: int = 32):
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    def new(self, kind: str, total: int) -> Job:
        job = Job(id=f"{next(self._counter)}-{secrets.token_hex(8)}", kind=kind, total=total)
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.state in ("done", "error")]
            while len(self._jobs) > self.keep and finished:
                del self._jobs[finished.pop(0)]
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(self, queue: WorkQueue, job: Job, fn: Callable[[Job], dict]) -> None:
        """Queue ``fn(job)``; its result or UserError lands in the job, not in a request."""
        from captionlab.errors import UserError

        def run() -> None:
            job.state = "running"
            try:
                job.result = fn(job)
                job.step = job.total
                job.state = "done"
            except UserError as exc:
                job.error, job.status, job.state = str(exc), 422, "error"
            except Exception as exc:  # a bug: reported in the job, the server goes on
                log.error("job %s failed", job.id, exc_info=exc)
                job.error, job.status, job.state = f"internal error: {exc!r}", 500, "error"

        try:
            queue.submit(run)
        except QueueFull as exc:
            job.error, job.status, job.state = str(exc), 503, "error"
            raise
