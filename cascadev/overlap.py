"""File I/O overlapped with model work: a reader that runs ahead of the models, a writer that runs behind.

Decoding input video (decord), encoding output video (PyAV / x264) and the uint8 conversions around
them are CPU work that releases the GIL, as do torch's kernels and its waits for the GPU. On one
background thread each, chunk k+1 is read and chunk k-1 written while chunk k is on the models:

    main thread:    encode k   | sample + decode k   | encode k+1 | ...
    reader thread:  read k+1   | read k+2 ...
    writer thread:  write k-1  | write k ...

Both keep at most ``depth`` chunks in flight (default :data:`IO_DEPTH`, 1: double buffering, one chunk
in hand and one in the making), so memory stays bounded by the chunk size, not by the video's length.
Order is kept (one thread per side), and an error on the background thread is raised on the main one,
at the next hand-over, with its own type and message: the commands' one-line errors and their atomic
outputs are the same as without threads. ``depth=0`` runs everything inline, on the caller's thread
(same results; the benchmark's baseline).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

# Chunks in flight per side. One overlaps I/O with the models whenever a chunk's I/O takes less time than
# its model work; more would only absorb jitter, at a chunk of frames each (a 16-frame chunk of 2K frames
# is 200 MB of uint8, 800 MB as model input).
IO_DEPTH = 1
_READER = "cascadev-reader"  # the reader threads' name prefix
_END = object()  # what next() returns at the end of the source (StopIteration does not cross futures)


def read_ahead(chunks: Iterable[T], depth: int | None = None) -> Iterator[T]:
    """Yield the items of ``chunks`` in order, producing up to ``depth`` of them ahead on a background thread.

    The source is iterated on that thread only (one item at a time: it may hold a file open). Its
    exceptions are raised here, where the failed item would have come. Closing this generator early
    cancels what has not started, waits for the item in progress and closes the source.
    """
    depth = IO_DEPTH if depth is None else depth
    if depth <= 0:
        yield from chunks
        return
    source = iter(chunks)
    pool = ThreadPoolExecutor(1, thread_name_prefix=_READER)
    pending: deque[Future] = deque(pool.submit(next, source, _END) for _ in range(depth))
    try:
        while True:
            item = pending.popleft().result()  # the source's exception, if any, is raised here
            if item is _END:
                return
            pending.append(pool.submit(next, source, _END))  # one out, one in: ``depth`` stay in flight
            yield item
    finally:
        for future in pending:
            future.cancel()
        # A generator dropped without close() is finalised wherever the garbage collector runs, possibly on
        # a reader thread, which cannot wait for itself: there it only asks the pool to stop.
        pool.shutdown(wait=not threading.current_thread().name.startswith(_READER))
        close = getattr(source, "close", None)  # a generator's own finally blocks run now, not at GC
        if close is not None:
            close()


class WriteBehind:
    """Runs writes (any callables) on one background thread, in the order given, at most ``depth`` behind.

    Use as a context manager inside the writers' own ``with`` blocks, so that every write has finished
    (or failed) before a writer closes: a clean exit waits for them and raises the first failure; an
    exit by exception drops the writes not yet started, so the writers abort as they would inline.

        with VideoWriter(path, ...) as out, WriteBehind() as behind:
            for frames in chunks:
                behind.submit(out.write, convert(frames))
    """

    def __init__(self, depth: int | None = None):
        self.depth = IO_DEPTH if depth is None else depth
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def __enter__(self) -> "WriteBehind":
        if self.depth > 0:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cascadev-writer")
        return self

    def submit(self, write: Callable[..., object], *args: object) -> None:
        """Run ``write(*args)`` after the writes before it; block while ``depth`` are in flight.

        The arguments must not change afterwards (hand over fresh arrays, as the conversions make).
        A write that has failed by now raises here.
        """
        if self._pool is None:
            write(*args)
            return
        # Finished writes are collected (raising a failure early); a full queue waits for the oldest.
        while self._pending and (self._pending[0].done() or len(self._pending) >= self.depth):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is None:
            return
        try:
            if exc_type is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            for future in self._pending:
                future.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None
