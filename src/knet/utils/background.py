"""Running an iterable in a background thread, a bounded number of items ahead of its consumer.

    for frame in prefetch(video_frames, size=8):   # decoding overlaps whatever the loop does
        ...

Memory stays bounded by ``size`` items, whatever the iterable's length. An exception raised by the
iterable reaches the consumer after the items before it, as if the loop ran in the consumer's own
thread. Leaving the loop early (``break``, an exception, closing the generator) stops the thread
and closes the iterable there, so a file or a camera it holds is released.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["prefetch"]

_ITEM, _ERROR, _DONE = 0, 1, 2


def _put(box: "queue.Queue[Any]", entry: Any, stop: threading.Event) -> bool:
    """Put ``entry`` unless ``stop`` is set first; False when the consumer has gone."""
    while not stop.is_set():
        try:
            box.put(entry, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def prefetch(iterable: Iterable[T], size: int, name: str = "knet-prefetch") -> Iterator[T]:
    """Yield the items of ``iterable`` in order, computed by a daemon thread at most ``size`` items
    ahead of the consumer."""
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}")
    box: "queue.Queue[Any]" = queue.Queue(maxsize=size)
    stop = threading.Event()

    def work() -> None:
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not _put(box, (_ITEM, item), stop):
                    return
            _put(box, (_DONE, None), stop)
        except BaseException as err:  # handed to the consumer, which raises it in its own thread
            _put(box, (_ERROR, err), stop)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
