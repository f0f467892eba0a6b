"""Several grid cells in one process: ``medcli train --cells FILE``.

A cell is one training run (dataset x backbone x strategy x seed x fold). On small medical datasets a cell trains
in seconds on a GPU, while a new process pays the imports (torch alone ~3 s), the CUDA context, indexing the
dataset and opening its image store every time. :func:`train_cells` trains a list of cells one after another in
the process that is already warm (each through :func:`medcli.training.loop.train`, so every run folder is
exactly what ``medcli train`` writes for that cell), or ``at_once`` of them side by side in worker processes
that share one GPU (each worker pays its start-up once and then takes the next cell).

A cell that fails does not stop the others: its error is logged (with the traceback for unexpected errors) and
reported, and the other cells are trained. Each cell's finished run folder is also kept, as hard links (no
extra disk space), in ``<work run>/finished`` until every cell of the call has finished: a workflow job that
failed or was killed is rerun with its outputs removed, and the cells that had finished are then restored from
there (after checking that settings, data and splits are unchanged) instead of trained again, while an
interrupted cell resumes from its checkpoint (:mod:`medcli.training.resume`). Once every cell has finished,
the copies are deleted, so a later run (a forced rerun after a code change, say) always trains.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from .._io import read_json, write_json
from ..errors import MedcliError
from ..progress import plain_formatter
from .config import TrainConfig, resolve_quietly, splits_file, work_dir

log = logging.getLogger("medcli")

CELL_MARKER = "cell.json"  # in a finished copy: what it was trained with


@dataclass
class CellResult:
    """What happened to one cell: ``status`` is ``trained``, ``restored`` (from its finished copy) or ``failed``."""

    out: str  # the run folder
    status: str
    seconds: float  # wall seconds spent on the cell in this call
    summary: dict | None = None  # train()'s summary (config.json's ``summary`` for a restored cell)
    error: str | None = None  # one line, for a failed cell

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def cell_log_file(logs: str | os.PathLike, cfg: TrainConfig) -> str:
    """``<logs>/train/<dataset>/<run key>.log`` (:func:`medcli.paths.cell_log_file`): the log of one training cell."""
    return paths.cell_log_file(logs, cfg.dataset_name or paths.dataset_name(cfg.data), cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)


def train_cells(cells: Sequence[TrainConfig], *, at_once: int = 1, logs: str | os.PathLike | None = None) -> list[CellResult]:
    """Train ``cells`` in this process (``at_once`` 1) or in ``at_once`` worker processes; one result per cell, in order.

    Each cell is trained by :func:`medcli.training.loop.train` and writes its run folder as ``medcli train`` would,
    unless its finished copy from an earlier, unfinished call is still in ``<work run>/finished`` with the same
    settings key, data and splits fingerprints: then that copy is linked back into the run folder (``restored``).
    With ``logs``, each cell's log lines also go to :func:`cell_log_file`. Workers split this process's CPU
    threads between them and show no progress bars.

    Written: the run folders; ``<work run>/finished`` per cell while some cell of the call has not finished
    (deleted when all have). Raises :class:`MedcliError` before training anything when two cells would write the
    same run folder, when ``at_once`` < 1, or when ``at_once`` > 1 in a multi-process (data-parallel) launch; a
    cell's own errors are caught and returned as ``failed`` results (unexpected ones logged with their traceback).
    """
    if at_once < 1:
        raise MedcliError(f"--cells-at-once {at_once}: must be at least 1")
    if at_once > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MedcliError("--cells-at-once: several cells at once cannot be combined with a multi-process (torchrun) launch; use one or the other")
    resolved = [resolve_quietly(cfg) for cfg in cells]  # settings errors now, before any cell trains
    _check_distinct(resolved)
    _check_folds(resolved)
    logs = None if logs is None else str(logs)
    if at_once == 1 or len(cells) == 1:
        results = [train_cell(cfg, logs=logs, tag=_tag(k, len(cells))) for k, cfg in enumerate(cells)]
    else:
        results = _train_in_workers(cells, resolved, at_once, logs)
    if all(r.ok for r in results) and _is_main_process():
        for cfg in resolved:
            shutil.rmtree(paths.finished_copy_dir(work_dir(cfg)), ignore_errors=True)
    return results


def train_cell(cfg: TrainConfig, *, logs: str | None = None, tag: str = "") -> CellResult:
    """One cell, never raising for the cell's own errors: restored from its finished copy, or trained and then
    kept as a finished copy. ``tag`` prefixes its log lines (e.g. ``[2/8]``)."""
    from .loop import train

    t0 = time.perf_counter()
    try:
        where = resolve_quietly(cfg)  # the run folder and work folder of the cell (train() resolves cfg itself)
    except MedcliError as exc:  # train_cells resolved every cell already; a caller of train_cell alone may not have
        log.error("%s%s", tag, exc)
        return CellResult(str(cfg.out), "failed", 0.0, error=str(exc))
    with _cell_logging(tag, None if logs is None else cell_log_file(logs, where)):
        try:
            summary = restore_finished(where)
            if summary is not None:
                log.info("restored the finished run %s from %s", where.out, paths.finished_copy_dir(work_dir(where)))
                return CellResult(where.out, "restored", time.perf_counter() - t0, summary)
            summary = train(cfg)
            if _is_main_process():
                keep_finished(where)
            return CellResult(where.out, "trained", time.perf_counter() - t0, summary)
        except MedcliError as exc:
            log.error("cell %s failed: %s", where.out, exc)
            return CellResult(where.out, "failed", time.perf_counter() - t0, error=str(exc))
        except Exception as exc:  # a bug or a resource problem in one cell must not lose the others
            log.exception("cell %s failed", where.out)
            return CellResult(where.out, "failed", time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        finally:
            _release_memory()


# --- finished copies ----------------------------------------------------------------------------------------------


def keep_finished(cfg: TrainConfig) -> None:
    """Hard-link the files training wrote in ``cfg``'s run folder (:func:`medcli.paths.training_outputs`; not what
    evaluation added) into ``<work run>/finished`` (copies where the file system has no hard links), with a
    ``cell.json`` naming the settings key, written aside and renamed."""
    final = Path(paths.finished_copy_dir(work_dir(cfg)))
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out = Path(cfg.out)
    _link_files(out, tmp, [Path(f).relative_to(out) for f in paths.training_outputs(out)])
    write_json(tmp / CELL_MARKER, {"key": cfg.key(), "out": os.path.abspath(cfg.out)})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def restore_finished(cfg: TrainConfig) -> dict | None:
    """Link the finished copy of ``cfg`` back as its run folder when it was trained with the same settings key
    into the same folder, on the data and splits that ``cfg`` reads now; its summary, or None (nothing restored).
    The run folder is replaced whole, as training replaces it (a folder holding files that are not part of a run
    folder is refused).

    Raises :class:`MedcliError` (as training would) when the splits no longer match the data."""
    copy = Path(paths.finished_copy_dir(work_dir(cfg)))
    marker = copy / CELL_MARKER
    if not marker.is_file():
        return None
    mark = read_json(marker)
    if mark.get("key") != cfg.key() or mark.get("out") != os.path.abspath(cfg.out):
        log.info("finished copy %s is of other settings: training again", copy)
        return None
    if not all(Path(f).is_file() for f in paths.training_outputs(copy)):
        return None
    doc = read_json(paths.config_file(copy))
    if (doc.get("splits_fingerprint"), doc.get("data_fingerprint")) != _current_fingerprints(cfg):
        log.info("finished copy %s was trained on other data or splits: training again", copy)
        return None
    # swapped in whole, as training writes it: outputs derived from another model do not stay beside it
    from .._io import publish_dir, staging_dir
    from ..runs import check_replaceable

    check_replaceable(cfg.out)
    stage = staging_dir(cfg.out)
    try:
        _link_files(copy, stage, [Path(f).relative_to(copy) for f in paths.training_outputs(copy)])
        publish_dir(stage, cfg.out, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return doc.get("summary")


def _current_fingerprints(cfg: TrainConfig) -> tuple[str, str]:
    """(splits fingerprint, data fingerprint) of the splits ``cfg`` reads, checked against the dataset as training
    checks them."""
    from ..runs import load_run_dataset
    from ..splits import load_splits, splits_fingerprint

    splits_path = splits_file(cfg)
    if not os.path.exists(splits_path):
        return ("", "")
    doc = load_splits(splits_path, load_run_dataset(cfg.to_dict()))
    return splits_fingerprint(doc), doc["dataset"]["fingerprint"]


def _link_files(src: Path, dst: Path, names: list[Path]) -> None:
    """Each of ``names`` (relative paths) from ``src`` at the same place under ``dst``, hard-linked (copied across
    file systems); each file is put in place by a rename, so a reader never sees half a file."""
    for name in names:
        path, target = src / name, dst / name
        if target.exists() and os.path.samefile(path, target):
            continue  # already this very file (and rename() between two links of one file does nothing)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
        os.replace(tmp, target)


# --- processes ----------------------------------------------------------------------------------------------------


def _train_in_workers(cells: list[TrainConfig], resolved: list[TrainConfig], at_once: int, logs: str | None) -> list[CellResult]:
    """Cells spread over ``at_once`` spawned worker processes, each taking the next cell when it is free
    (``resolved``: the same cells resolved, for the run folder of a cell whose worker died)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    import torch

    threads = max(1, torch.get_num_threads() // at_once)
    workers = min(at_once, len(cells))
    log.info("training %d cells, %d at a time (%d CPU thread(s) each)", len(cells), workers, threads)
    results: list[CellResult | None] = [None] * len(cells)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads, log.level)) as pool:
        futures = {pool.submit(train_cell, _quiet(cfg), logs=logs, tag=_tag(k, len(cells))): k for k, cfg in enumerate(cells)}
        for future in as_completed(futures):
            k = futures[future]
            try:
                results[k] = future.result()
            except BrokenProcessPool:
                results[k] = CellResult(resolved[k].out, "failed", 0.0, error="its worker process died (killed, or out of memory)")
            log.info("cell %d/%d %s: %s", k + 1, len(cells), results[k].out, results[k].status)
    return [r for r in results if r is not None]


def _start_worker(threads: int, level: int) -> None:
    import torch

    from ..progress import setup_logging

    setup_logging()
    log.setLevel(level)
    torch.set_num_threads(threads)


def _quiet(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` without a progress bar (several processes cannot share a terminal's)."""
    from dataclasses import replace

    return replace(cfg, progress=False)


# --- helpers ------------------------------------------------------------------------------------------------------


def _check_distinct(cells: list[TrainConfig]) -> None:
    seen: dict[str, int] = {}
    for k, cfg in enumerate(cells):
        out = os.path.abspath(cfg.out)
        if out in seen:
            raise MedcliError(f"cells {seen[out] + 1} and {k + 1} would both write the run folder {cfg.out}; give them different seeds, folds or --out")
        seen[out] = k


def _check_folds(cells: list[TrainConfig]) -> None:
    """A fold the cell's (existing) splits file does not have is an error of the cells list: refused before any
    cell trains, naming the cell."""
    import json

    folds: dict[str, int | None] = {}
    for k, cfg in enumerate(cells):
        splits = splits_file(cfg)
        if splits not in folds:
            try:
                folds[splits] = len(json.loads(Path(splits).read_text())["folds"])
            except (OSError, ValueError, KeyError, TypeError):
                folds[splits] = None  # made by the first cell, or reported by training as it reads it
        n = folds[splits]
        if n is not None and not 0 <= cfg.fold < n:
            raise MedcliError(f"cell {k + 1} ({cfg.out}): fold {cfg.fold}: {splits} has folds 0..{n - 1}")


def _tag(k: int, n: int) -> str:
    return f"[cell {k + 1}/{n}] " if n > 1 else ""


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _Prefix(logging.Filter):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        if self.tag and not getattr(record, "_medcli_tagged", False):
            record.msg = f"{self.tag}{record.msg}"
            record._medcli_tagged = True  # type: ignore[attr-defined]
        return True


class _cell_logging:
    """While a cell runs: its log lines prefixed with ``tag`` and, with ``path``, also appended to that file."""

    def __init__(self, tag: str, path: str | None) -> None:
        self.prefix = _Prefix(tag)
        self.path = path
        self.handler: logging.Handler | None = None

    def __enter__(self):
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(self.path, mode="w", encoding="utf-8")
            self.handler.setFormatter(plain_formatter())
            log.addHandler(self.handler)
            self.level = log.level
            if log.getEffectiveLevel() > logging.INFO:  # the cell's log file gets its progress lines in any case
                log.setLevel(logging.INFO)
        self.handlers = list(log.handlers)
        for handler in self.handlers:
            handler.addFilter(self.prefix)
        return self

    def __exit__(self, *exc) -> None:
        for handler in self.handlers:
            handler.removeFilter(self.prefix)
        if self.handler is not None:
            log.removeHandler(self.handler)
            self.handler.close()
            log.setLevel(self.level)


def _release_memory() -> None:
    """What one cell held (model, optimizer, images on the GPU) is freed before the next starts."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
