"""Decoding in worker processes with the results in input order, shared by the image builders.

The shard bytes must not depend on the number of workers, so results come back in the order of
the input; and at most a few chunks may be in flight, or decoded images pile up in memory
whenever the shard writer (tar, sha256, fsync) falls behind the decoders.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import multiprocessing
from contextlib import closing
from typing import Any


def ordered_map(pool: ProcessPoolExecutor, function: Callable, items: Sequence, max_pending: int) -> Iterator:
    """``pool.map`` with at most ``max_pending`` tasks in flight, results in input order.

    ``Executor.map`` submits every task at once (Python 3.11).
    """
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= max_pending:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        # E.g. killed for memory, or a main script read from stdin, which spawn cannot re-import.
        raise RuntimeError(f"the image decoding processes stopped abruptly ({exc}); workers=1 decodes in "
                           "this process") from exc
    finally:
        for future in pending:  # on an error or an early close: drop the queued work
            future.cancel()


def decoded_in_order(load_chunk: Callable[[Sequence[Any]], list], tasks: Sequence[Any], chunk_size: int,
                     pool: ProcessPoolExecutor | None, workers: int) -> Iterator:
    """``load_chunk`` over ``tasks`` in chunks of ``chunk_size``, in ``pool`` (or in this process
    when ``pool`` is None), yielding one result per task in task order."""
    chunks = [tasks[start:start + chunk_size] for start in range(0, len(tasks), chunk_size)]
    if pool is None:
        for chunk in chunks:
            yield from load_chunk(chunk)
        return
    with closing(ordered_map(pool, load_chunk, chunks, max_pending=4 * workers)) as results:
        for chunk in results:
            yield from chunk


class DecodingPool:
    """Worker processes for decoding, started on first use: a build whose splits are all up to
    date starts none. ``get()`` is None for ``workers`` <= 1 (decode in this process).

    spawn, not fork: the caller may have threads (tqdm's monitor, Ray, torch), and a forked child
    of a threaded process can deadlock. The workers import only numpy and PIL."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def __enter__(self) -> "DecodingPool":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
