"""Find and read what the report is built from: run folders, ``experiment.json`` and ensemble outputs.

Nothing here computes a comparison; this module only turns files into plain values, and says precisely which
runs it could not use and why. Every location comes from :mod:`medcli.paths` (called with ``*`` wildcards to
obtain glob patterns).

A *run* is usable for the cross-validation columns when it has ``config.json`` and either ``metrics/val.json``
(written by ``medcli eval``) or ``predictions/val.csv`` (written by ``medcli train``; its metrics are then
recomputed here with :func:`~medcli.evaluation.metrics.compute_metrics`). It is *evaluated* when it also has
``metrics/test.json`` and ``predictions/test.csv``; only evaluated runs enter the test column. A run whose
metrics were written for another model than its ``model.pt`` (their ``run_id`` differs from ``config.json``'s) is
not used, and the reason says to re-run ``medcli eval``.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths, runs
from .._io import read_json
from ..errors import MedcliError
from ..evaluation.metrics import list_metrics

log = logging.getLogger("medcli")

#: Scalar metrics carried into the tables, ``summary.csv`` and ``summary.json``: the metric registry's
#: ``report`` entries (:mod:`medcli.evaluation.metrics`; binary tasks add sensitivity and specificity).
METRICS = tuple(m.name for m in list_metrics() if m.report)

#: Where the validation metrics of a run came from.
VAL_FROM_METRICS = "metrics/val.json"
VAL_FROM_PREDICTIONS = "predictions/val.csv"


@dataclass(frozen=True)
class Run:
    """One usable run folder, read once."""

    key: paths.RunKey
    path: str  # the run folder as found below the results folder
    rel: str  # the same, relative to the results folder (posix), for tables and JSON
    doc: dict  # config.json
    val_metrics: dict  # scalar metrics on the run's validation fold
    val_source: str  # VAL_FROM_METRICS or VAL_FROM_PREDICTIONS
    test_metrics: dict | None  # scalar metrics of metrics/test.json; None when not evaluated
    has_test_predictions: bool

    @property
    def config(self) -> str:
        return paths.run_name(self.key.backbone, self.key.strategy)

    @property
    def evaluated(self) -> bool:
        return self.test_metrics is not None and self.has_test_predictions

    @property
    def classes(self) -> list[str]:
        return list(self.doc.get("classes") or [])

    def summary_value(self, name: str):
        return (self.doc.get("summary") or {}).get(name)


@dataclass(frozen=True)
class EnsembleOutput:
    """One seed of an ensemble written by ``medcli ensemble`` (same files as a run, plus ``ensemble.json``)."""

    dataset: str
    name: str  # ``<name>__<method>``
    seed: int
    path: str
    rel: str
    val_metrics: dict | None
    has_test_predictions: bool
    statement: str | None
    members: list[str]


def scalar_metrics(metrics: dict) -> dict[str, float | None]:
    """The scalar entries of a ``metrics`` block (see :data:`METRICS`); undefined or non-finite values are None."""
    out: dict[str, float | None] = {}
    for name in METRICS:
        if name not in metrics:
            continue
        value = metrics[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[name] = float(value)
        else:
            out[name] = None
    return out


def _rel(path: str, results: str | os.PathLike) -> str:
    return Path(os.path.relpath(path, results)).as_posix()


def _pattern(results: str | os.PathLike) -> str:
    return paths.run_dir(glob.escape(str(results)), "*", "*", "*", "*", "*")


def read_probabilities(path: str | os.PathLike, classes: list[str]) -> pd.DataFrame:
    """A predictions CSV as a frame indexed by image ``id`` with ``label`` and one ``prob_<class>`` column per class.

    Read by :func:`medcli.runs.read_predictions` (class names kept as text; files without probability columns,
    from older runs, fall back to the softmax of their ``logit_<class>`` columns). MedcliError when unreadable.
    """
    frame = runs.read_predictions(path, classes)
    return frame.set_index("id")[["label", *(f"prob_{c}" for c in classes)]]


def _metrics_from_predictions(path: str, classes: list[str]) -> dict:
    from ..evaluation.metrics import compute_metrics

    frame = runs.read_predictions(path, classes)
    return scalar_metrics(compute_metrics(runs.label_indices(frame, classes), runs.probabilities(frame, classes), classes))


def _read_run(folder: str, key: paths.RunKey, results: str | os.PathLike) -> Run | str:
    """The run, or the reason it cannot be used."""
    if not os.path.isfile(paths.config_file(folder)):
        return "no config.json (training did not finish)"
    try:
        doc = runs.read_config(folder)
        classes = list(doc.get("classes") or [])
        if len(classes) < 2:
            return "config.json lists no classes"
        fix = f"re-run `medcli eval {folder} --split all`"
        if os.path.isfile(paths.metrics_file(folder, "val")):
            val_doc = runs.read_metrics(paths.metrics_file(folder, "val"))
            runs.check_derived(doc, val_doc, paths.metrics_file(folder, "val"), fix)
            val, source = scalar_metrics(val_doc.get("metrics") or {}), VAL_FROM_METRICS
        elif os.path.isfile(paths.predictions_file(folder, "val")):
            val, source = _metrics_from_predictions(paths.predictions_file(folder, "val"), classes), VAL_FROM_PREDICTIONS
        else:
            return "neither metrics/val.json nor predictions/val.csv"
        test = None
        if os.path.isfile(paths.metrics_file(folder, "test")):
            test_doc = runs.read_metrics(paths.metrics_file(folder, "test"))
            runs.check_derived(doc, test_doc, paths.metrics_file(folder, "test"), fix)
            test = scalar_metrics(test_doc.get("metrics") or {})
    except runs.StaleOutputError as exc:
        return str(exc)
    except MedcliError as exc:
        return f"unreadable: {exc}"
    return Run(key=key, path=folder, rel=_rel(folder, results), doc=doc, val_metrics=val, val_source=source,
               test_metrics=test, has_test_predictions=os.path.isfile(paths.predictions_file(folder, "test")))


def collect_runs(results: str | os.PathLike) -> tuple[list[Run], list[dict]]:
    """Every run folder below ``results``: the usable runs and, for the others, ``{dataset, backbone, strategy,
    seed, fold, run, reason}``.

    Datasets whose name starts with ``_`` (the demo's ``_pretrain`` source task) are not part of the comparison
    and are skipped. Runs are ordered by (dataset, backbone, strategy, seed, fold).
    """
    found: list[tuple[paths.RunKey, str]] = []
    for folder in glob.glob(_pattern(results)):
        if not os.path.isdir(folder):
            continue
        try:
            key = paths.parse_run_dir(folder)
        except ValueError:
            continue
        if not key.dataset.startswith("_"):
            found.append((key, folder))
    runs, unusable = [], []
    for key, folder in sorted(found, key=lambda item: (item[0].dataset, item[0].backbone, item[0].strategy, item[0].seed, item[0].fold)):
        run = _read_run(folder, key, results)
        if isinstance(run, Run):
            runs.append(run)
        else:
            unusable.append({**_cell(key), "run": _rel(folder, results), "reason": run})
    return runs, unusable


def _cell(key) -> dict:
    if isinstance(key, dict):
        return {k: key[k] for k in ("dataset", "backbone", "strategy", "seed", "fold")}
    return {"dataset": key.dataset, "backbone": key.backbone, "strategy": key.strategy, "seed": key.seed, "fold": key.fold}


def load_experiment(results: str | os.PathLike) -> dict | None:
    """``experiment.json`` written by the workflow, or None when the runs were made by hand."""
    path = paths.experiment_file(results)
    return read_json(path) if os.path.isfile(path) else None


def missing_runs(results: str | os.PathLike, experiment: dict | None, runs: list[Run], unusable: list[dict]) -> list[dict]:
    """Cells of the experiment without a usable run, plus run folders on disk that could not be used.

    Each entry is ``{dataset, backbone, strategy, seed, fold, run, reason}``.
    """
    have = {(r.key.dataset, r.key.backbone, r.key.strategy, r.key.seed, r.key.fold) for r in runs}
    why = {(u["dataset"], u["backbone"], u["strategy"], u["seed"], u["fold"]): u for u in unusable}
    out: dict[tuple, dict] = {}
    for cell in (experiment or {}).get("cells", []):
        try:
            key = (str(cell["dataset"]), str(cell["backbone"]), str(cell["strategy"]), int(cell["seed"]), int(cell["fold"]))
        except (KeyError, TypeError, ValueError):
            raise MedcliError(f"{paths.experiment_file(results)}: a cell lacks dataset/backbone/strategy/seed/fold: {cell}") from None
        if key in have or key[0].startswith("_"):
            continue
        run = _rel(paths.run_dir(results, *key), results)
        out[key] = why.get(key) or {**dict(zip(("dataset", "backbone", "strategy", "seed", "fold"), key)),
                                    "run": run, "reason": "no run folder"}
    for key, entry in why.items():
        out.setdefault(key, entry)
    return [out[k] for k in sorted(out)]


def experiment_cells(experiment: dict | None) -> set[tuple] | None:
    """The experiment's cells as ``(dataset, backbone, strategy, seed, fold)`` tuples (None without one)."""
    if not experiment or "cells" not in experiment:
        return None
    return {(str(c.get("dataset")), str(c.get("backbone")), str(c.get("strategy")), int(c.get("seed", -1)), int(c.get("fold", -1)))
            for c in experiment["cells"]}


def gradcam_indexes(run: Run) -> list[tuple[str, str, dict]]:
    """``(split, folder, index)`` for every ``medcli gradcam`` output of a run (``paths.gradcam_index_file``).

    An unreadable or foreign ``index.json`` is skipped: explanations are an illustration, never a reason to fail.
    One written for another model of the run folder (its ``run_id``) is skipped with a warning.
    """
    pattern = paths.gradcam_index_file(glob.escape(run.path), "*")
    out = []
    for file in sorted(glob.glob(pattern)):
        try:
            index = read_json(file)
        except MedcliError:
            continue
        if str(index.get("format", "")).startswith("medcli.gradcam/") and isinstance(index.get("galleries"), dict):
            if _stale(run, index, file, f"re-run `medcli gradcam {run.path} --split {Path(file).parent.name}`"):
                continue
            out.append((Path(file).parent.name, str(Path(file).parent), index))
    return out


def external_results(run: Run) -> list[tuple[str, dict]]:
    """``(name, metrics document)`` for every ``medcli eval --data`` result of a run
    (``paths.external_metrics_file``), sorted by name.

    An unreadable or foreign ``metrics.json`` is skipped: external results are reported, never a reason to fail.
    Documents written before the overlap check have no ``overlap`` key. One written for another model of the run
    folder (its ``run_id``) is skipped with a warning.
    """
    pattern = paths.external_metrics_file(glob.escape(run.path), "*")
    out = []
    for file in sorted(glob.glob(pattern)):
        try:
            doc = runs.read_metrics(file)
        except MedcliError:
            continue
        if str(doc.get("format", "")).startswith("medcli.metrics/") and isinstance(doc.get("metrics"), dict):
            if _stale(run, doc, file, f"re-run `medcli eval {run.path} --data {(doc.get('external') or {}).get('data', 'DATA')}`"):
                continue
            out.append((Path(file).parent.name, doc))
    return out


def _stale(run: Run, derived: dict, file: str, fix: str) -> bool:
    """Whether ``derived`` was written for another model than the run's (logged as a warning)."""
    try:
        runs.check_derived(run.doc, derived, file, fix)
    except MedcliError as exc:
        log.warning("left out of the report: %s", exc)
        return True
    return False


def collect_ensembles(results: str | os.PathLike, dataset: str) -> list[EnsembleOutput]:
    """The seeds of every ensemble of ``dataset`` (``<dataset>/ensembles/<name>__<method>/seed-<s>/``).

    An ensemble seed without ``metrics/val.json`` is ignored (it was not completed).
    """
    pattern = paths.ensemble_dir(glob.escape(str(results)), glob.escape(dataset), "*", "*", "*")
    out = []
    for folder in sorted(glob.glob(pattern)):
        try:
            key = paths.parse_ensemble_dir(folder)
        except ValueError:
            continue
        name, seed = paths.ensemble_name(key.name, key.method), key.seed
        if not os.path.isfile(paths.metrics_file(folder, "val")):
            continue
        statement = None
        members: list[str] = []
        if os.path.isfile(paths.ensemble_file(folder)):
            info = read_json(paths.ensemble_file(folder))
            statement, members = info.get("statement"), list(info.get("members") or [])
        out.append(EnsembleOutput(
            dataset=dataset, name=name, seed=seed, path=folder, rel=_rel(folder, results),
            val_metrics=scalar_metrics(runs.read_metrics(paths.metrics_file(folder, "val")).get("metrics") or {}),
            has_test_predictions=os.path.isfile(paths.predictions_file(folder, "test")),
            statement=statement, members=members))
    return sorted(out, key=lambda e: (e.name, e.seed))
