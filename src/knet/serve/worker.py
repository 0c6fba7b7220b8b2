"""The queue between the HTTP handlers and the model: one thread runs one batch at a time.

Handlers :meth:`BatchQueue.submit` a job and await its future; the worker thread takes the oldest
job and whatever else is waiting (up to ``batch_size``), runs them together, and resolves each
job's future with its own outcome. So however many clients send at once, the model runs in one
thread, one batch at a time, and never oversubscribes the CPU or the GPU; a queue that is full
refuses at once (:class:`QueueFull`, answered 503 with ``Retry-After``) rather than buffering
without bound.

Nothing here knows about HTTP or models: ``run_batch`` maps a list of jobs to one outcome each
(a value, or an exception for that job alone).
"""
from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, List, Optional, TypeVar, Union

J = TypeVar("J")

Outcome = Union[Any, BaseException]


class QueueFull(Exception):
    """The queue holds ``queue_size`` jobs already; ``retry_after`` (seconds) estimates when a
    slot frees."""

    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"server busy: {queued} requests are waiting; retry in {retry_after} s")
        self.queued = queued
        self.retry_after = retry_after


@dataclass
class Pending(Generic[J]):
    """A job in the queue and the future its submitter awaits."""

    job: J
    future: "Future[Any]" = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


class BatchQueue(Generic[J]):
    """A bounded queue of jobs served by one worker thread, ``batch_size`` jobs at a time.

    Args:
        run_batch: jobs -> one outcome per job, in order (a result, or an exception raised for
            that job's submitter). It runs on the worker thread only. If it raises, every job of
            the batch gets that exception.
        batch_size: the most jobs handed to one ``run_batch`` call.
        queue_size: the most jobs waiting (the batch being run is not counted).
        on_idle: called on the worker thread after a batch that leaves the queue empty (e.g. to
            hand memory back to the system); its errors are ignored.
    """

    def __init__(self, run_batch: Callable[[List[J]], List[Outcome]], batch_size: int, queue_size: int,
                 on_idle: Optional[Callable[[], Any]] = None) -> None:
        if batch_size < 1 or queue_size < 1:
            raise ValueError(f"batch_size and queue_size must be positive, got {batch_size}, {queue_size}")
        self.run_batch = run_batch
        self.on_idle = on_idle
        self.batch_size = batch_size
        self.queue_size = queue_size
        self._queue: "queue.Queue[Pending[J]]" = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._seconds_per_batch = 1.0  # a running estimate, for Retry-After
        self.batches_run = 0

    # ---- submitting ----------------------------------------------------------------------------
    def submit(self, job: J) -> "Future[Any]":
        """Queue ``job``; its future resolves to its outcome.

        Raises:
            QueueFull: ``queue_size`` jobs are already waiting.
            RuntimeError: the worker is not running.
        """
        if self._thread is None or self._stop.is_set():
            raise RuntimeError("the batch worker is not running")
        pending: Pending[J] = Pending(job)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise QueueFull(self._queue.qsize(), self.retry_after()) from None
        return pending.future

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds until the jobs waiting now should be done (at least 1)."""
        batches = math.ceil(self._queue.qsize() / self.batch_size) + 1
        return max(1, math.ceil(batches * self._seconds_per_batch))

    # ---- the worker --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="knet-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch being run, then fail the jobs still waiting with RuntimeError."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    def _take_batch(self) -> List[Pending[J]]:
        """The oldest job (waiting up to 0.1 s for one) and those behind it, up to ``batch_size``;
        jobs whose submitter gave up (a cancelled future) are dropped."""
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [p for p in batch if p.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                outcomes = self.run_batch([p.job for p in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(outcomes)} outcomes for {len(batch)} jobs")
            except Exception as err:  # noqa: BLE001 - every submitter hears of it; the worker goes on
                outcomes = [err] * len(batch)
            for pending, outcome in zip(batch, outcomes):
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
            elapsed = time.perf_counter() - start
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * elapsed
            self.batches_run += 1
            if self.on_idle is not None and self._queue.empty():
                try:
                    self.on_idle()
                except Exception:  # noqa: BLE001 - housekeeping never stops the worker
                    pass


__all__ = ["BatchQueue", "Pending", "QueueFull"]
