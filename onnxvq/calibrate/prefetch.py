"""Calibration batches produced on a background thread, one or two ahead of the forward pass.

Decoding and preprocessing images is Python and Pillow work; ONNX Runtime's `run` releases the GIL
and its lean calibration sessions leave a core idle between kernels (no spinning, `core.runtime`),
so the next batch can be decoded while this one runs. One producer thread keeps the order, so the
batches (and everything computed from them) are exactly those of the plain iterator; an exception
the producer meets is raised in the consumer at the batch where it happened. Memory stays flat:
at most `depth` batches wait in the queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.05  # how often a blocked producer checks whether the consumer went away


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, in order, produced on a daemon thread up to `depth` items ahead. Closing the
    iterator early (or an exception in the consumer's loop) stops the producer after the item it
    is producing; nothing is left running."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(iter(items), slots, stop), daemon=True,
                              name="onnxvq-prefetch")
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _produce(it: Iterator, slots: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in it:
            if not _put(slots, (item, None), stop):
                return
    except BaseException as exc:  # handed to the consumer, raised there with its traceback
        _put(slots, (_END, exc), stop)
        return
    finally:
        close = getattr(it, "close", None)
        if close is not None:  # a generator's cleanup runs on the thread that ran it
            close()
    _put(slots, (_END, None), stop)


def _put(slots: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Queue `entry` unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            slots.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False

