"""Ensembles fitted on out-of-fold predictions (no retraining).

A *member* is one configuration (backbone × strategy) of one dataset and seed:

* its out-of-fold (OOF) predictions are the validation predictions of its K fold models, which together cover
  the development pool exactly once (``predictions/val.csv`` of each fold run);
* its test predictions are its **fold ensemble**: the average of the K fold models' test probabilities.

Methods (registry, :data:`METHODS`): ``mean`` (probability average), ``weighted`` (non-negative weights summing
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
    return Fitted("stacking", names, combine=combine, details={"C": c, "inner_folds": n_splits})


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


METHODS: dict[str, Callable[..., Fitted]] = {
    "mean": fit_mean,
    "weighted": fit_weighted,
    "vote": fit_vote,
    "stacking": fit_stacking,
    "greedy": fit_greedy,
}


def get_method(name: str) -> Callable[..., Fitted]:
    try:
        return METHODS[name]
    except KeyError:
        raise MedcliError(f"unknown ensemble method {name!r}: choose one of {', '.join(METHODS)}") from None


def fit_ensemble(method: str, members: list[Member], y_oof: np.ndarray, seed: int = 0) -> Fitted:
    """Fit ``method`` on the members' OOF predictions and development labels only."""
    if len(members) < 1:
        raise MedcliError("an ensemble needs at least one member")
    shapes = {m.oof.shape for m in members}
    if len(shapes) != 1:
        raise MedcliError(f"ensemble members disagree on the OOF predictions' shape: {sorted(shapes)}")
    return get_method(method)([m.oof for m in members], np.asarray(y_oof), [m.name for m in members], seed=seed)


def fold_ensemble(test_probs: list[np.ndarray]) -> np.ndarray:
    """A configuration's fold models averaged on the test set (rows already aligned)."""
    if not test_probs:
        raise MedcliError("a fold ensemble needs at least one fold model")
    return np.mean(np.stack(test_probs), axis=0)
