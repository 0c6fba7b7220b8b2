"""The batch queue of ``knet serve``: one thread, batches of up to ``batch_size`` in arrival order,
an outcome per job, a bounded queue."""
from __future__ import annotations

import threading

import pytest

from knet.serve.worker import BatchQueue, QueueFull


def test_waiting_jobs_share_a_batch_and_each_gets_its_outcome():
    gate, batches, threads = threading.Event(), [], set()

    def run(jobs):
        gate.wait(10)
        batches.append(list(jobs))
        threads.add(threading.current_thread().name)
        return [ValueError(f"bad {j}") if j < 0 else j * 10 for j in jobs]

    worker = BatchQueue(run, batch_size=3, queue_size=10)
    worker.start()
    try:
        first = worker.submit(0)
        while worker.queued:  # the worker holds job 0 at the gate; the next ones wait together
            threading.Event().wait(0.005)
        futures = [worker.submit(j) for j in (1, -2, 3, 4)]
        gate.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in futures if not f.exception(10)] == [10, 30, 40]
        with pytest.raises(ValueError, match="bad -2"):
            futures[1].result()
    finally:
        worker.stop()
    assert batches == [[0], [1, -2, 3], [4]] and threads == {"knet-serve-worker"}


def test_a_full_queue_refuses_and_a_failing_batch_fails_only_its_jobs():
    gate = threading.Event()

    def run(jobs):
        gate.wait(10)
        if "boom" in jobs:
            raise RuntimeError("model failed")
        return list(jobs)

    worker = BatchQueue(run, batch_size=1, queue_size=2)
    with pytest.raises(RuntimeError, match="not running"):
        worker.submit("early")
    worker.start()
    try:
        running = worker.submit("boom")
        while worker.queued:
            threading.Event().wait(0.005)
        waiting = [worker.submit("a"), worker.submit("b")]
        with pytest.raises(QueueFull) as refused:
            worker.submit("c")
        assert refused.value.queued == 2 and refused.value.retry_after >= 1
        gate.set()
        with pytest.raises(RuntimeError, match="model failed"):
            running.result(10)
        assert [f.result(10) for f in waiting] == ["a", "b"]  # the worker went on
    finally:
        worker.stop()


def test_stop_fails_the_jobs_still_waiting_and_skips_cancelled_ones():
    gate, seen = threading.Event(), []

    def run(jobs):
        gate.wait(10)
        seen.extend(jobs)
        return list(jobs)

    worker = BatchQueue(run, batch_size=1, queue_size=5)
    worker.start()
    first = worker.submit(1)
    while worker.queued:
        threading.Event().wait(0.005)
    cancelled, left = worker.submit(2), worker.submit(3)
    assert cancelled.cancel()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    while not worker._stop.is_set():  # stopping before job 1 ends: jobs 2 and 3 are never run
        threading.Event().wait(0.005)
    gate.set()
    stopper.join(10)
    assert first.result(10) == 1 and seen == [1]
    with pytest.raises(RuntimeError, match="shutting down"):
        left.result(1)


def test_on_idle_runs_after_a_batch_that_drains_the_queue_and_its_errors_are_ignored():
    gate, idle_calls = threading.Event(), []

    def on_idle():
        idle_calls.append(worker.batches_run)
        raise RuntimeError("housekeeping failed")

    worker = BatchQueue(lambda jobs: (gate.wait(10), [j for j in jobs])[1], batch_size=1, queue_size=10,
                        on_idle=on_idle)
    worker.start()
    try:
        futures = [worker.submit(j) for j in range(3)]  # three batches of one; only the last drains the queue
        gate.set()
        assert [f.result(10) for f in futures] == [0, 1, 2]
        assert worker.submit(3).result(10) == 3  # the worker goes on after on_idle raised
    finally:
        worker.stop()
    assert idle_calls == [3, 4]
