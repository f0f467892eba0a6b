"""What ``medcli predict``'s MODEL argument names: one run, a configuration's fold ensemble, or a ``medcli ensemble``.

* a **run folder** (``config.json`` + ``model.pt``): its softmax; calibrated with the temperature and, for binary
  tasks, decided at the threshold that ``medcli eval`` fits on the run's validation predictions;
* a **fold ensemble**: a folder ``.../runs/<backbone>__<strategy>/seed-<s>/`` holding ``fold-<k>/`` run folders:
  the fold models' raw probabilities averaged per image, as the report's test column averages the fold models'
  ``predictions/test.csv`` probabilities (:func:`medcli.report.summary.average_frames` →
  :func:`medcli.ensemble.fold_ensemble`); no temperature or threshold (the report applies none);
* a **medcli ensemble** output (``ensemble.json``): each member configuration's fold ensemble of the same seed,
  combined with the recorded weights (``mean``, ``weighted``, ``greedy``), by the vote (``vote``, which has no
  parameters) or by the recorded logistic-regression stacker (``stacking``:
  :func:`medcli.ensemble.stacking_combine`), as :func:`medcli.ensemble.build_ensemble` combines their test
  predictions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import paths, runs
from .._io import read_json
from ..errors import MedcliError

#: Ensemble methods whose ``ensemble.json`` is enough to apply them to new images.
APPLICABLE_METHODS = ("mean", "weighted", "greedy", "vote", "stacking")
_FOLD = re.compile(r"^fold-(\d+)$")


@dataclass
class Member:
    """One configuration of an ensemble (or the whole model): fold runs whose probabilities are averaged."""

    name: str
    runs: list[runs.Run]


@dataclass
class Model:
    """A resolved MODEL: ``kind`` (``run``, ``fold-ensemble``, ``ensemble``), its members and how they combine."""

    kind: str
    path: Path
    members: list[Member]
    combine: Callable[[list[np.ndarray]], np.ndarray]
    description: str
    info: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.members[0].runs[0].classes

    @property
    def all_runs(self) -> list[runs.Run]:
        return [r for m in self.members for r in m.runs]


def _single(probs: list[np.ndarray]) -> np.ndarray:
    return probs[0]


def fold_runs(folder: str | os.PathLike) -> list[runs.Run]:
    """The ``fold-<k>/`` run folders of a seed folder, opened, in fold order (empty when there are none)."""
    folder = Path(folder)
    found = []
    for child in folder.iterdir() if folder.is_dir() else []:
        m = _FOLD.match(child.name)
        if m and child.is_dir() and Path(paths.config_file(child)).is_file():
            found.append((int(m.group(1)), child))
    return [runs.open_run(p) for _, p in sorted(found)]


def resolve_model(path: str | os.PathLike) -> Model:
    """Open MODEL (see the module docstring).

    Raises :class:`MedcliError` (one line naming the folder) when it is none of the three, when fold runs disagree on
    classes, or for an ensemble whose method cannot be applied from ``ensemble.json`` or whose member runs are missing.
    """
    path = Path(path)
    if Path(paths.config_file(path)).is_file() or Path(paths.model_file(path)).is_file():
        run = runs.open_run(path)
        return Model("run", path, [Member(path.name, [run])], _single, f"run {path}")
    if Path(paths.ensemble_file(path)).is_file():
        return _ensemble(path)
    folds = fold_runs(path)
    if folds:
        _same_classes(folds, path)
        return Model("fold-ensemble", path, [Member(path.parent.name, folds)], _single,
                     f"fold ensemble of {len(folds)} run(s) in {path}", {"folds": [r.config.get("fold") for r in folds]})
    raise MedcliError(
        f"{path}: not a model; give a run folder (config.json + model.pt), a configuration's seed folder "
        "(runs/<backbone>__<strategy>/seed-<s>/ with fold-<k>/ runs) or a `medcli ensemble` output (with ensemble.json)"
    )


def _same_classes(folds: list[runs.Run], where: Path) -> None:
    classes = {tuple(r.classes) for r in folds}
    if len(classes) > 1:
        raise MedcliError(f"{where}: the fold runs have different classes ({sorted(classes)}); they are not one configuration")


def _ensemble(path: Path) -> Model:
    from ..ensemble import fit_vote, stacking_combine, weighted_average

    doc = read_json(paths.ensemble_file(path))
    method, members, weights = doc.get("method"), doc.get("members") or [], doc.get("weights")
    if method not in APPLICABLE_METHODS or (method not in ("vote", "stacking") and (not weights or len(weights) != len(members))):
        raise MedcliError(
            f"{paths.ensemble_file(path)}: method {method!r} cannot be applied to new images from ensemble.json "
            f"(its fitted parameters are not saved); predict supports ensembles of method {', '.join(APPLICABLE_METHODS)}"
        )
    try:
        key = paths.parse_ensemble_dir(path.resolve())
    except ValueError as exc:
        raise MedcliError(f"{path}: {exc}") from None
    results = path.resolve().parents[3]
    loaded = []
    for config in members:
        backbone, strategy = paths.parse_run_name(config)
        seed_dir = Path(paths.run_dir(results, key.dataset, backbone, strategy, key.seed, 0)).parent
        folds = fold_runs(seed_dir)
        if not folds:
            raise MedcliError(f"{seed_dir}: no fold runs of ensemble member {config} seed {key.seed}; the ensemble cannot be applied without them")
        loaded.append(Member(config, folds))
    _same_classes([m.runs[0] for m in loaded], path)
    if method == "vote":
        combine = fit_vote([], np.zeros(0), members).combine
    elif method == "stacking":
        try:
            combine = stacking_combine(doc.get("details") or {}, len(loaded[0].runs[0].classes))
        except MedcliError as exc:
            raise MedcliError(f"{paths.ensemble_file(path)}: {exc}") from None
    else:
        combine = weighted_average(np.asarray(weights, dtype=np.float64))
    return Model("ensemble", path, loaded, combine, f"ensemble {key.name} ({method}, {len(members)} member(s)) in {path}",
                 {"method": method, "members": members, "weights": weights})
