"""Run a function over chunks of work in worker processes, in order, with bounded memory."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Worker processes for decoding: the CPUs this process may use (SLURM's cgroup limits included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_chunks(fn: Callable[[T], R], chunks: Iterable[T], workers: int) -> Iterator[tuple[R, int]]:
    """Yield ``(fn(chunk), len(fn(chunk)))`` in input order (results are sequences, one entry per item).

    With ``workers <= 1`` everything runs in this process (cheap for small inputs and easy to debug). Otherwise at
    most ``2 * workers`` chunks are in flight, so results waiting to be consumed never pile up in memory.
    """
    if workers <= 1:
        for chunk in chunks:
            result = fn(chunk)
            yield result, len(result)
        return
    # spawn: safe even when the parent has threads (torch, BLAS); the workers import only numpy and PIL.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk))
            if len(pending) >= 2 * workers:
                result = pending.popleft().result()
                yield result, len(result)
        while pending:
            result = pending.popleft().result()
            yield result, len(result)
