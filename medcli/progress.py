"""Progress and log output that suits both a terminal and a batch log.

On an interactive terminal long work shows a rich progress bar; elsewhere (SLURM logs, CI, pipes) it prints a
few plain, timestamped lines instead, so log files stay readable. Messages go through the ``medcli`` logger.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("medcli")


def is_interactive() -> bool:
    """True when a human is watching: stderr is a terminal and progress bars were not switched off."""
    if os.environ.get("MEDCLI_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def plain_formatter() -> logging.Formatter:
    """Timestamped plain lines (``2026-11-30 04:20:07 INFO message``), for logs that are files (SLURM, per cell)."""
    return logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(verbose: bool = False) -> None:
    """Send the ``medcli`` logger to stderr: rich on a terminal, plain timestamped lines elsewhere."""
    level = logging.DEBUG if verbose else logging.INFO
    log.setLevel(level)
    for handler in list(log.handlers):
        if getattr(handler, "_medcli", False):
            log.removeHandler(handler)
    if is_interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(plain_formatter())
    handler._medcli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.propagate = False


def track(items: Iterable[T], total: int, description: str, *, unit: str = "items", enabled: bool = True) -> Iterator[T]:
    """Iterate over ``items`` showing progress, one unit per item (see :func:`track_units` for chunks)."""
    yield from track_units(((item, 1) for item in items), total, description, unit=unit, enabled=enabled)


def track_units(
    items: Iterable[tuple[T, int]], total: int, description: str, *, unit: str = "items", enabled: bool = True
) -> Iterator[T]:
    """Like :func:`track` for ``(item, n_units)`` pairs, e.g. chunks of images decoded by worker processes.

    Without a terminal: a line at every tenth of the work (for 1,000 units or more) and a closing line with
    the rate.
    """
    start = time.perf_counter()
    done = 0
    if enabled and is_interactive() and total > 0:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            for item, n in items:
                yield item
                done += n
                bar.update(task, advance=n)
    else:
        next_report = total / 10 if total else float("inf")
        for item, n in items:
            yield item
            done += n
            if enabled and total >= 1000 and done >= next_report and done < total:
                log.info("%s: %d/%d %s (%.0f %s/s)", description, done, total, unit, _rate(done, start), unit)
                next_report += total / 10
    if enabled and total > 0:
        log.info("%s: %d %s in %.1f s (%.0f %s/s)", description, done, unit, time.perf_counter() - start, _rate(done, start), unit)


def _rate(done: int, start: float) -> float:
    return done / max(time.perf_counter() - start, 1e-9)
