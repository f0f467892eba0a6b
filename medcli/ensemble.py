"""Ensembles fitted on out-of-fold predictions (no retraining).

A *member* is one configuration (backbone × strategy) of one dataset and seed:

* its out-of-fold (OOF) predictions are the validation predictions of its K fold models, which together cover
  the development pool exactly once (``predictions/val.csv`` of each fold run);
* its test predictions are its **fold ensemble**: the average of the K fold models' test probabilities.

Methods (a :class:`~medcli.registry.Registry`: :func:`register_method`, :func:`list_methods`): ``mean`` (probability average), ``weighted`` (non-negative weights summing
to 1 that minimise OOF log-loss), ``vote`` (majority vote, ties broken by the mean probability), ``stacking``
(multinomial logistic regression on the members' OOF log-probabilities, its regularisation chosen by an inner
stratified cross-validation) and ``greedy`` (Caruana et al. 2004 forward selection with replacement on OOF
log-loss, as nnU-Net selects its best configuration).

Everything fitted (weights, the stacker, the selection) sees only OOF predictions and development labels;
test predictions are only scored. ``weighted`` and ``greedy`` can always fall back to the best single member,
so on OOF data they never lose to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import MedcliError
from .registry import Registry

_EPS = 1e-12


@dataclass
class Member:
    name: str
    oof: np.ndarray  # (N_dev, C) probabilities, rows aligned with the ensemble's OOF ids
    test: np.ndarray  # (N_test, C) fold-ensemble probabilities, rows aligned with the test ids


@dataclass
class Fitted:
    method: str
    members: list[str]
    weights: list[float] | None = None  # mean / weighted / greedy
    selected: list[str] | None = None  # greedy: the picks in order (with repeats)
    combine: Callable[[list[np.ndarray]], np.ndarray] | None = field(default=None, repr=False)
    details: dict = field(default_factory=dict)

    def predict(self, probs: list[np.ndarray]) -> np.ndarray:
        return self.combine(probs)


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], _EPS, 1.0))))


def weighted_average(weights: np.ndarray) -> Callable[[list[np.ndarray]], np.ndarray]:
    w = np.asarray(weights, dtype=np.float64)

    def combine(probs: list[np.ndarray]) -> np.ndarray:
        return np.tensordot(w, np.stack(probs), axes=1)

    return combine


def fit_mean(oof: list[np.ndarray], y: np.ndarray, names: list[str], seed: int = 0) -> Fitted:
    w = np.full(len(oof), 1 / len(oof))
    return Fitted("mean", names, weights=w.tolist(), combine=weighted_average(w))


def fit_weighted(oof: list[np.ndarray], y: np.ndarray, names: list[str], seed: int = 0) -> Fitted:
    """Softmax-parametrised weights minimising OOF log-loss (L-BFGS), started from the best single member."""
    from scipy.optimize import minimize

    stack = np.stack(oof)
    losses = [log_loss(y, p) for p in oof]
    best = int(np.argmin(losses))

    def objective(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return log_loss(y, np.tensordot(w, stack, axes=1))

    start = np.full(len(oof), -4.0)
    start[best] = 4.0
    result = minimize(objective, start, method="L-BFGS-B")
    w = np.exp(result.x - result.x.max())
    w /= w.sum()
    if objective(result.x) > losses[best]:  # never worse than the best member on OOF
        w = np.eye(len(oof))[best]
    return Fitted("weighted", names, weights=w.tolist(), combine=weighted_average(w), details={"oof_log_loss": min(objective(result.x), losses[best])})


def fit_vote(oof: list[np.ndarray], y: np.ndarray, names: list[str], seed: int = 0) -> Fitted:
    def combine(probs: list[np.ndarray]) -> np.ndarray:
        stack = np.stack(probs)
        n_classes = stack.shape[2]
        votes = np.zeros(stack.shape[1:])
        for member in stack:
            votes[np.arange(len(member)), member.argmax(1)] += 1
        # Vote shares, plus a tiny multiple of the mean probability so ties go to the more confident class.
        scores = votes / len(stack) + 1e-6 * stack.mean(0)
        return scores / scores.sum(1, keepdims=True) if n_classes else scores

    return Fitted("vote", names, combine=combine)


def fit_stacking(oof: list[np.ndarray], y: np.ndarray, names: list[str], seed: int = 0) -> Fitted:
    """Multinomial logistic regression on OOF log-probabilities; C chosen by inner stratified 5-fold CV."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    def features(probs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.log(np.clip(p, _EPS, 1.0)) for p in probs], axis=1)

    counts = np.bincount(y)
    n_splits = int(max(2, min(5, counts[counts > 0].min())))
    import warnings

    model = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(n_splits, shuffle=True, random_state=seed), scoring="neg_log_loss", max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's announcement about attribute names
        model.fit(features(oof), y)
    classes = model.classes_
    n_classes = oof[0].shape[1]

    def combine(probs: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(probs[0]), n_classes))
        out[:, classes] = model.predict_proba(features(probs))
        return out

    c = float(np.atleast_1d(model.C_)[0])
    return Fitted("stacking", names, combine=combine, details={
        "C": c, "inner_folds": n_splits,
        # the fitted stacker, enough to apply it to new images (medcli predict: stacking_combine)
        "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(), "stacker_classes": [int(k) for k in classes],
    })


def stacking_combine(details: dict, n_classes: int) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The combiner of a fitted ``stacking`` ensemble from its recorded ``details`` (``coef``, ``intercept``,
    ``stacker_classes``): scikit-learn's ``LogisticRegression.predict_proba`` on the members' log-probabilities
    (a logistic for two stacker classes, a softmax otherwise), in numpy; columns of classes the stacker never saw
    are 0. Raises :class:`MedcliError` when the details predate recording the stacker (re-run ``medcli ensemble``)."""
    if not all(k in details for k in ("coef", "intercept", "stacker_classes")):
        raise MedcliError("this stacking ensemble was built before medcli recorded its fitted stacker; run `medcli ensemble` again")
    from .evaluation.calibration import softmax

    coef, intercept = np.asarray(details["coef"], np.float64), np.asarray(details["intercept"], np.float64)
    classes = np.asarray(details["stacker_classes"], dtype=np.int64)

    def combine(probs: list[np.ndarray]) -> np.ndarray:
        x = np.concatenate([np.log(np.clip(p, _EPS, 1.0)) for p in probs], axis=1)
        z = x @ coef.T + intercept
        if len(classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            stacked = np.stack([1.0 - p1, p1], axis=1)
        else:
            stacked = softmax(z)
        out = np.zeros((len(x), n_classes))
        out[:, classes] = stacked
        return out

    return combine


def fit_greedy(oof: list[np.ndarray], y: np.ndarray, names: list[str], seed: int = 0, rounds: int = 25) -> Fitted:
    """Caruana forward selection with replacement: add the member that lowers OOF log-loss most; stop when none does."""
    picks: list[int] = []
    total = np.zeros_like(oof[0])
    best_loss = np.inf
    for _ in range(rounds):
        trial = [log_loss(y, (total + p) / (len(picks) + 1)) for p in oof]
        k = int(np.argmin(trial))  # ties: the earlier member, deterministic
        if trial[k] >= best_loss - 1e-12:
            break
        picks.append(k)
        total += oof[k]
        best_loss = trial[k]
    w = np.bincount(picks, minlength=len(oof)) / len(picks)
    return Fitted("greedy", names, weights=w.tolist(), selected=[names[k] for k in picks], combine=weighted_average(w), details={"oof_log_loss": best_loss})


_METHODS: Registry[Callable[..., Fitted]] = Registry("ensemble method", sort=False)  # listed in registration order


def register_method(name: str, fit: Callable[..., Fitted], *, overwrite: bool = False) -> Callable[..., Fitted]:
    """Add an ensemble method: ``fit(oof, y, names, seed=0) -> Fitted``, fitted on out-of-fold predictions only."""
    return _METHODS.add(name, fit, overwrite=overwrite)


def list_methods() -> list[str]:
    return _METHODS.names()


def get_method(name: str) -> Callable[..., Fitted]:
    return _METHODS.get(name)


for _name, _fit in (("mean", fit_mean), ("weighted", fit_weighted), ("vote", fit_vote), ("stacking", fit_stacking), ("greedy", fit_greedy)):
    register_method(_name, _fit)

#: The registered method names (registration order).
METHODS = tuple(list_methods())


def fit_ensemble(method: str, members: list[Member], y_oof: np.ndarray, seed: int = 0) -> Fitted:
    """Fit ``method`` on the members' OOF predictions and development labels only."""
    if len(members) < 1:
        raise MedcliError("an ensemble needs at least one member")
    shapes = {m.oof.shape for m in members}
    if len(shapes) != 1:
        raise MedcliError(f"ensemble members disagree on the OOF predictions' shape: {sorted(shapes)}")
    return get_method(method)([m.oof for m in members], np.asarray(y_oof), [m.name for m in members], seed=seed)


def cross_fitted_oof(method: str, members: list[Member], y_oof: np.ndarray, seed: int = 0, folds: int = 5) -> np.ndarray:
    """Honest OOF predictions of the ensemble itself: fitted on 4/5 of the OOF rows, applied to the rest.

    Methods without parameters (mean, vote) need no cross-fitting; for the others, scoring the fit on its own
    training rows would flatter it (a stacker can reach 100 %).
    """
    from sklearn.model_selection import StratifiedKFold

    y_oof = np.asarray(y_oof)
    if method in ("mean", "vote"):
        return fit_ensemble(method, members, y_oof, seed).predict([m.oof for m in members])
    counts = np.bincount(y_oof)
    k = int(max(2, min(folds, counts[counts > 0].min())))
    out = np.zeros_like(members[0].oof)
    for fit_rows, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(members[0].oof, y_oof):
        part = [Member(m.name, m.oof[fit_rows], m.test) for m in members]
        out[held] = fit_ensemble(method, part, y_oof[fit_rows], seed).predict([m.oof[held] for m in members])
    return out


def fold_ensemble(test_probs: list[np.ndarray]) -> np.ndarray:
    """A configuration's fold models averaged on the test set (rows already aligned)."""
    if not test_probs:
        raise MedcliError("a fold ensemble needs at least one fold model")
    return np.mean(np.stack(test_probs), axis=0)


# --- building ensembles from run folders ------------------------------------------------------------------


def member_configs(results, dataset: str, seed: int) -> list[str]:
    """Configurations (``backbone__strategy``) of ``dataset`` with at least one fold run of ``seed``, sorted."""
    import glob

    from . import paths

    pattern = paths.run_dir(glob.escape(str(results)), glob.escape(dataset), "*", "*", seed, "*")
    configs = set()
    for folder in glob.glob(pattern):
        try:
            key = paths.parse_run_dir(folder)
        except ValueError:
            continue
        configs.add(paths.run_name(key.backbone, key.strategy))
    return sorted(configs)


def load_member(results, dataset: str, config: str, seed: int, n_folds: int, classes: list[str]):
    """One member's predictions, from its K fold runs (read by :func:`medcli.runs.read_predictions`).

    Returns ``(oof, test)``: ``oof`` indexed by image id with ``path``, ``label`` and ``prob_<class>`` columns (the
    val predictions of every fold, each development image once); ``test`` likewise for the test set, with the
    fold models' probabilities averaged (:func:`fold_ensemble`). Raises :class:`MedcliError` when a fold's
    predictions are missing or unreadable, or an image is in two validation folds.
    """
    import os

    import pandas as pd

    from . import paths, runs

    backbone, strategy = paths.parse_run_name(config)
    cols = [f"prob_{c}" for c in classes]
    oof, tests = [], []
    for fold in range(n_folds):
        run = paths.run_dir(results, dataset, backbone, strategy, seed, fold)
        val_path, test_path = paths.predictions_file(run, "val"), paths.predictions_file(run, "test")
        if not os.path.exists(val_path) or not os.path.exists(test_path):
            raise MedcliError(f"{run}: missing predictions (train and `medcli eval` every fold of {config} seed {seed} first)")
        oof.append(runs.read_predictions(val_path, classes).set_index("id"))
        tests.append(runs.read_predictions(test_path, classes).set_index("id").sort_index())
    oof_frame = pd.concat(oof).sort_index()
    if oof_frame.index.duplicated().any():
        raise MedcliError(f"{config} seed {seed}: an image is in two validation folds; the splits are broken")
    test_frame = tests[0][["path", "label"]].copy()
    test_frame[cols] = fold_ensemble([t.loc[test_frame.index, cols].to_numpy() for t in tests])
    return oof_frame[["path", "label", *cols]], test_frame


def build_ensemble(results, dataset: str, members: list[str], method: str, seed: int, *, name: str = "ensemble",
                   n_bootstrap: int = 1000) -> dict:
    """Fit ``method`` on the members' out-of-fold predictions, score it once on the test set, write it like a run.

    Args:
        results: the results folder (``<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/``).
        dataset: the dataset's name in the results layout; its ``splits.json`` gives the classes and the folds.
        members: configurations ``<backbone>__<strategy>``; every fold run of each needs ``predictions/val.csv``
            (``medcli train``) and ``predictions/test.csv`` (``medcli eval``).
        method: a registered method (:func:`list_methods`).
        seed: the seed whose runs are combined (also seeds the stacker's inner CV and the bootstrap).
        name: the ensemble's name (folder ``ensembles/<name>__<method>/seed-<s>/``).
        n_bootstrap: bootstrap resamples for the test intervals (0: none).

    Only images present in every member are used (N_oof development images, N_test test images).

    Writes, in :func:`medcli.paths.ensemble_dir`: ``predictions/{val,test}.csv`` (val: the cross-fitted OOF
    predictions; logits are log-probabilities, fold ``-1``), ``metrics/{val,test}.json`` (``medcli.metrics/1``,
    non-finite values null; intervals on test only) and ``ensemble.json`` (``medcli.ensemble/1``: members, weights,
    selection, OOF log-loss and balanced accuracy of the ensemble and each member).

    Returns the ``ensemble.json`` document. Raises :class:`MedcliError` for an unknown method, a missing
    ``splits.json`` or member predictions, or members that disagree on the images.
    """
    from . import paths, runs
    from ._io import read_json, write_json
    from .evaluation.bootstrap import bootstrap_ci, headline_metric_fns
    from .evaluation.metrics import compute_metrics

    get_method(method)
    splits = read_json(paths.splits_file(results, dataset))
    classes, n_folds = splits["classes"], len(splits["folds"])
    index = {c: k for k, c in enumerate(classes)}
    cols = [f"prob_{c}" for c in classes]
    loaded = {m: load_member(results, dataset, m, seed, n_folds, classes) for m in members}
    oof_ids = sorted(set.intersection(*(set(o.index) for o, _ in loaded.values())))
    test_ids = sorted(set.intersection(*(set(t.index) for _, t in loaded.values())))
    first_oof, first_test = next(iter(loaded.values()))
    y_oof = first_oof.loc[oof_ids, "label"].map(index).to_numpy()
    y_test = first_test.loc[test_ids, "label"].map(index).to_numpy()
    member_list = [Member(m, o.loc[oof_ids, cols].to_numpy(), t.loc[test_ids, cols].to_numpy()) for m, (o, t) in loaded.items()]
    fitted = fit_ensemble(method, member_list, y_oof, seed=seed)
    oof_probs = cross_fitted_oof(method, member_list, y_oof, seed=seed)
    test_probs = fitted.predict([m.test for m in member_list])

    out = paths.ensemble_dir(results, dataset, name, method, seed)
    for split, ids, y, probs, frame in (("val", oof_ids, y_oof, oof_probs, first_oof), ("test", test_ids, y_test, test_probs, first_test)):
        logits = np.log(np.clip(probs, _EPS, 1.0))
        runs.write_predictions(paths.predictions_file(out, split), ids, list(frame.loc[ids, "path"]), y, logits, classes,
                               fold=-1, seed=seed, split=split, probs=probs)
        metrics = compute_metrics(y, probs, classes)
        ci = bootstrap_ci(y, probs, headline_metric_fns(classes), n_resamples=n_bootstrap, seed=seed) if split == "test" and n_bootstrap else {}
        doc = {"format": runs.METRICS_FORMAT, "run": {"dataset_name": dataset, "backbone": name, "strategy": method, "seed": seed, "fold": None},
               "split": split, "n": len(y), "classes": classes, "tta": False, "metrics": metrics, "threshold": None,
               "calibration": None, "ci": ci, "external": None, "versions": runs.versions(),
               "note": "val = out-of-fold predictions; fitted methods are cross-fitted (5-fold) on them" if split == "val" else None}
        runs.write_metrics(paths.metrics_file(out, split), doc)

    member_scores = {m.name: {"balanced_accuracy": compute_metrics(y_oof, m.oof, classes)["balanced_accuracy"], "log_loss": log_loss(y_oof, m.oof)} for m in member_list}
    best = max(member_scores, key=lambda k: member_scores[k]["balanced_accuracy"])
    ens_oof = {"balanced_accuracy": compute_metrics(y_oof, oof_probs, classes)["balanced_accuracy"], "log_loss": log_loss(y_oof, oof_probs)}
    line = (f"OOF balanced accuracy {ens_oof['balanced_accuracy']:.3f} (log-loss {ens_oof['log_loss']:.3f}) vs best member "
            f"{best} {member_scores[best]['balanced_accuracy']:.3f} (log-loss {member_scores[best]['log_loss']:.3f})")
    summary = {"format": "medcli.ensemble/1", "dataset": dataset, "name": name, "method": method, "seed": seed,
               "members": fitted.members, "weights": fitted.weights, "selected": fitted.selected, "details": fitted.details,
               "fitted_on": "out-of-fold validation predictions", "n_oof": len(oof_ids), "n_test": len(test_ids),
               "oof": {"ensemble": ens_oof, "members": member_scores, "best_member": best}, "statement": line}
    write_json(paths.ensemble_file(out), runs.json_safe(summary))
    return summary
