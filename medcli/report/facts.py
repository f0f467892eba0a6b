"""What the report says besides scores: the data behind each dataset and the provenance of the runs.

Both are JSON-ready dicts: the data facts come from ``<dataset>/inspect.json`` and ``<dataset>/splits.json``,
the provenance from every run's ``config.json`` and from ``experiment.json``.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np

from .. import __version__, paths
from .._io import read_json
from ..errors import MedcliError
from .collect import Run

_SPLIT_ORDER = ("train", "val", "test", "all")


def _rel(path: str, results: str | os.PathLike) -> str:
    return Path(os.path.relpath(path, results)).as_posix()


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path)
    except MedcliError:
        return None


def data_facts(results: str | os.PathLike, dataset: str, classes: list[str]) -> dict:
    """Class counts, renamed classes, duplicates and how the splits handled them, for one dataset.

    Keys: ``inspect_file`` / ``splits_file`` (relative paths, None when absent), ``classes``, ``counts``
    (``{column: {class: n}}``: the dataset's own splits, then ``development`` and ``test`` as used),
    ``renamed`` (``{raw name: class}``, renamed entries only), ``duplicates``, ``bad_files``, ``handling``.
    """
    facts: dict = {"inspect_file": None, "splits_file": None, "classes": list(classes), "counts": {}, "renamed": {},
                   "duplicates": None, "bad_files": None, "handling": None}
    inspect_path, splits_path = paths.inspect_file(results, dataset), paths.splits_file(results, dataset)
    inspect, splits = _read(inspect_path), _read(splits_path)
    if inspect is not None:
        facts["inspect_file"] = _rel(inspect_path, results)
        counts = inspect.get("counts") or {}
        for split in sorted(counts, key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else len(_SPLIT_ORDER), s)):
            facts["counts"][f"dataset {split}"] = {c: int(counts[split].get(c, 0)) for c in classes}
        facts["renamed"] = {raw: c for raw, c in (inspect.get("class_mapping") or {}).items() if raw != c}
        facts["duplicates"] = {k: v for k, v in (inspect.get("duplicates") or {}).items() if k != "groups"}
        facts["bad_files"] = len(inspect.get("bad_files") or [])
    if splits is not None:
        facts["splits_file"] = _rel(splits_path, results)
        labels: dict = splits.get("labels") or {}
        test = set(splits.get("test") or [])
        dev = Counter(label for i, label in labels.items() if i not in test)
        held = Counter(label for i, label in labels.items() if i in test)
        facts["counts"]["development (CV folds)"] = {c: int(dev.get(c, 0)) for c in classes}
        facts["counts"]["test (held out)"] = {c: int(held.get(c, 0)) for c in classes}
        facts["renamed"].update({raw: c for raw, c in (splits.get("class_mapping") or {}).items() if raw != c})
        leakage = splits.get("leakage") or {}
        settings = splits.get("settings") or {}
        groups = splits.get("groups") or {}
        excluded = Counter(str(e.get("reason", "?")) for e in splits.get("excluded") or [])
        facts["handling"] = {
            "test_source": splits.get("test_source"),
            "n_test": len(test),
            "folds": [{"fold": f.get("fold"), "train": len(f.get("train") or []), "val": len(f.get("val") or [])}
                      for f in splits.get("folds") or []],
            "grouped_images": len(groups),
            "groups": len(set(groups.values())),
            "largest_group": leakage.get("largest_group"),
            "near_duplicate_threshold": settings.get("near_duplicate_threshold"),
            "test_duplicating_dev": len(leakage.get("test_duplicating_dev") or []),
            "test_duplicates_dropped": bool(leakage.get("test_duplicates_dropped")),
            "val_duplicating_train": len(leakage.get("val_duplicating_train") or []),
            "n_label_conflicts": leakage.get("n_label_conflicts"),
            "excluded": dict(sorted(excluded.items())),
        }
    return facts


def current_splits_fingerprint(results: str | os.PathLike, dataset: str) -> str | None:
    """The fingerprint of ``<dataset>/splits.json`` as training computes it (None when there is no file)."""
    doc = _read(paths.splits_file(results, dataset))
    if doc is None:
        return None
    from ..splits import splits_fingerprint

    try:
        return splits_fingerprint(doc)
    except (KeyError, TypeError):
        return None


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(str(v) for v in values).items()))


def _backbones(runs: list[Run]) -> dict:
    """``{backbone: {family, tag, weights: {source: number of runs}}}`` from the runs' ``config.json`` (runs written
    before medcli recorded it: the family and source are unknown)."""
    out: dict = {}
    for r in runs:
        b = r.doc.get("backbone") or {"name": r.key.backbone}
        entry = out.setdefault(b["name"], {"family": b.get("family"), "tag": b.get("tag"), "weights": Counter()})
        entry["weights"][str(b.get("weights_source", (r.doc.get("config") or {}).get("weights")))] += 1
    return {name: {**e, "weights": dict(sorted(e["weights"].items()))} for name, e in sorted(out.items())}


def provenance(runs: list[Run], experiment: dict | None, generated: datetime) -> dict:
    """Versions, revisions, hardware and training time of ``runs``; config hash and pretraining of the experiment.

    Multi-valued entries are ``{value: number of runs}`` so that a mixture (two torch versions, a run made from
    uncommitted changes) is visible rather than hidden behind the first run's value.
    """
    seconds = [float(s) for s in (r.summary_value("train_seconds") for r in runs) if isinstance(s, (int, float))]
    packages: dict[str, dict[str, int]] = {}
    for r in runs:
        for name, version in (r.doc.get("versions") or {}).items():
            packages.setdefault(name, Counter())[str(version)] += 1
    slowest = max(runs, key=lambda r: float(r.summary_value("train_seconds") or 0.0)) if seconds else None
    experiment = experiment or {}
    return {
        "generated": generated.isoformat(timespec="seconds"),
        "report_medcli_version": __version__,
        "experiment_file": "experiment.json" if experiment else None,
        "experiment_medcli_version": experiment.get("medcli_version"),
        "config_hash": experiment.get("config_hash"),
        "pretraining": experiment.get("pretraining"),
        "n_runs": len(runs),
        "backbones": _backbones(runs),
        # runs before recipes existed were trained with that version's defaults: "none"
        "recipes": _counts((r.doc.get("config") or {}).get("recipe") or "none (medcli before recipes)" for r in runs),
        "runs_per_dataset": _counts(r.key.dataset for r in runs),
        "git_revisions": _counts(r.doc.get("git_revision") or "unknown" for r in runs),
        "packages": {name: dict(sorted(c.items())) for name, c in packages.items()},
        "cpus": _counts((r.doc.get("hardware") or {}).get("cpu") or "unknown" for r in runs),
        "gpus": _counts(g for r in runs for g in ((r.doc.get("hardware") or {}).get("gpus") or [])),
        "devices": _counts(r.summary_value("device") or "unknown" for r in runs),
        "precision": _counts(r.summary_value("precision") or "unknown" for r in runs),
        "processes": _counts(r.summary_value("num_processes") or 1 for r in runs),
        "train_seconds": {
            "total": float(np.sum(seconds)) if seconds else None,
            "mean": float(np.mean(seconds)) if seconds else None,
            "max": float(np.max(seconds)) if seconds else None,
            "slowest_run": slowest.rel if slowest else None,
            "n_runs": len(seconds),
        },
    }
