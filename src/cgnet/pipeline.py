"""Work beside the calling thread, results in order: `prefetch` computes the next items ahead
(decoded frames for `cgnet predict`, augmented batches for `cgnet train`), `OrderedWorker` takes
items to finish (colour, encode, write) in the order given. Both stop cleanly: an error is raised
in the caller at its item's turn, nothing runs after it, and leaving early waits for the threads."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

PIPELINE_DEPTH = 4  # items waiting between two stages (4 decoded 1080p frames: 25 MB)
_END = object()     # the last entry of a stage's queue


def _identity(item):
    return item


def _ran(make: Callable, job) -> Future:
    """A finished Future holding make(job), or the exception it raised."""
    done: Future = Future()
    try:
        done.set_result(make(job))
    except BaseException as error:  # noqa: BLE001 - raised by the consumer, at its turn
        done.set_exception(error)
    return done


def prefetch(jobs: Iterable, make: Callable = _identity, threads: int = 1, depth: int | None = None,
             name: str = "cgnet-prefetch") -> Iterator:
    """make(job) for each job of `jobs`, in order, computed ahead in the background.

    `jobs` is iterated in one background thread (so a generator's own work, e.g. decoding video
    frames, happens there too); with threads == 1 that thread runs `make`, with threads > 1 a pool
    of that many threads does. An exception raised by `jobs` or `make` is raised here, after the results before
    it. Closing the generator (`contextlib.closing`, a loop that breaks, or its end) stops the
    background thread, cancels what has not started and waits for the rest, so the jobs'
    resources can be released after. threads <= 0: plain iteration in the calling thread.

    Args:
        jobs: the work, in order (an iterable, possibly a generator).
        make: what is done with each job (default: the job itself is the result).
        threads: background threads running `make` (0: none).
        depth: results waiting at most (a bounded queue; default: `threads`), so at most depth + 1
            are computed ahead of the consumer.
        name: the background threads' name (prefix).
    """
    if threads <= 0:
        for job in jobs:
            yield make(job)
        return
    box: queue.Queue = queue.Queue(depth or threads)
    stop = threading.Event()
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name) if threads > 1 else None

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for job in jobs:
                if not put(pool.submit(make, job) if pool is not None else _ran(make, job)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            failed: Future = Future()
            failed.set_exception(error)
            put(failed)
            return
        put(_END)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while (entry := box.get()) is not _END:
            yield entry.result()
    finally:
        stop.set()
        thread.join()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class OrderedWorker:
    """Runs `fn(item)` in one background thread for each item `put`, in the order put, with at
    most `depth` items waiting (`put` blocks when they are). Its first error is raised by the next
    `put` or when the `with` block ends; it runs nothing after that error. Leaving the block
    normally or with an exception finishes the items already put (as a sequential loop would
    have written them before the error); Ctrl-C (a non-Exception) drops them.
    `overlap=False`: `put` runs `fn` in the calling thread."""

    def __init__(self, fn: Callable, depth: int = PIPELINE_DEPTH, overlap: bool = True,
                 name: str = "cgnet-worker"):
        self.fn, self.overlap, self.error = fn, overlap, None
        self.cancelled = threading.Event()
        self.box: queue.Queue = queue.Queue(depth)
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True) if overlap else None
        if self.thread is not None:
            self.thread.start()

    def _loop(self) -> None:
        while (item := self.box.get()) is not _END:  # after an error or a cancel: drain, run nothing
            if self.error is None and not self.cancelled.is_set():
                try:
                    self.fn(item)
                except BaseException as error:  # noqa: BLE001 - raised in the calling thread
                    self.error = error

    def put(self, item) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self.fn(item)
        else:
            self.box.put(item)

    def __enter__(self) -> "OrderedWorker":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.thread is not None:
            if kind is not None and not issubclass(kind, Exception):
                self.cancelled.set()
            self.box.put(_END)
            self.thread.join()
        if self.error is not None and (kind is None or issubclass(kind, Exception)):
            raise self.error  # an earlier item's error comes first, as in a sequential loop
