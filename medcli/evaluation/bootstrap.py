"""Percentile bootstrap confidence intervals for classification metrics.

:func:`bootstrap_ci` resamples the test set with replacement (by default within each class, so every
resample keeps the class counts) and reports the ``alpha/2`` and ``1 - alpha/2`` percentiles of each metric.
A resample on which a metric is undefined (the metric raises ``ValueError`` or returns a non-finite value,
e.g. an AUC when a class is missing) is skipped for that metric and counted in ``n_valid``.

:func:`headline_metric_fns` provides the headline metrics as plain numpy implementations with the same
definitions as :func:`~medcli.evaluation.metrics.compute_metrics` (the tests check that they agree), because
calling scikit-learn thousands of times is dominated by its input validation.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from ..errors import MedcliError
from .calibration import DEFAULT_N_BINS, expected_calibration_error
from .metrics import check_predictions, check_threshold, predict_labels

MetricFn = Callable[[np.ndarray, np.ndarray], float]
_BLOCK_ELEMENTS = 1 << 21  # bootstrap indices held in memory at once


def draw_indices(y: np.ndarray, n_resamples: int, rng: np.random.Generator, *, stratified: bool = True) -> np.ndarray:
    """Bootstrap sample indices, shape ``(n_resamples, N)``.

    With ``stratified=True`` each class's samples are drawn with replacement from that class only, so
    ``np.bincount(y[idx[b]])`` equals ``np.bincount(y)`` for every resample ``b`` (the columns are grouped
    by class, which no metric depends on). Otherwise indices are drawn uniformly from all ``N`` samples.
    """
    y = np.asarray(y)
    n = len(y)
    if not stratified:
        return rng.integers(0, n, size=(n_resamples, n))
    parts = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        parts.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    metric_fns: dict[str, MetricFn],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, dict]:
    """Point estimates and percentile confidence intervals of ``metric_fns`` on ``(y_true, probs)``.

    Args:
        y_true: integer class indices, shape ``(N,)``.
        probs: class probabilities, shape ``(N, C)``, validated as in
            :func:`~medcli.evaluation.metrics.compute_metrics`.
        metric_fns: ``{name: fn(y, probs) -> float}``, e.g. from :func:`headline_metric_fns`.
        n_resamples: number of bootstrap resamples.
        seed: seed of the ``numpy.random.Generator``; the same inputs and seed give identical results.
        alpha: the interval covers ``1 - alpha``.
        stratified: resample within each class (keeps class counts).

    Returns ``{name: {"estimate", "low", "high", "n_resamples", "n_valid"}}``. ``estimate`` is the metric on
    the full data (``None`` if undefined there); ``low``/``high`` are ``None`` when no resample was valid.
    """
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise MedcliError(f"n_resamples must be a positive integer, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise MedcliError(f"alpha must be in (0, 1), got {alpha}")
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise MedcliError(f"probabilities must have shape (samples, classes), got {probs.shape}")
    y, p = check_predictions(y_true, probs, [str(c) for c in range(probs.shape[1])])
    rng = np.random.default_rng(seed)
    # Indices are drawn in blocks so that memory stays bounded for large test sets.
    block = max(1, _BLOCK_ELEMENTS // len(y))

    names = list(metric_fns)
    values = {name: [] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimates = {name: _safe(metric_fns[name], y, p) for name in names}
        for start in range(0, int(n_resamples), block):
            for rows in draw_indices(y, min(block, int(n_resamples) - start), rng, stratified=stratified):
                yb, pb = y[rows], p[rows]
                for name in names:
                    v = _safe(metric_fns[name], yb, pb)
                    if v is not None:
                        values[name].append(v)

    out = {}
    for name in names:
        vals = np.asarray(values[name], dtype=np.float64)
        low = high = None
        if vals.size:
            low, high = (float(q) for q in np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
        out[name] = {"estimate": estimates[name], "low": low, "high": high,
                     "n_resamples": int(n_resamples), "n_valid": int(vals.size)}
    return out


def _safe(fn: MetricFn, y: np.ndarray, p: np.ndarray) -> float | None:
    try:
        v = float(fn(y, p))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return None
    return v if np.isfinite(v) else None


# -- headline metrics ----------------------------------------------------------------------------------------

def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _balanced_accuracy(cm: np.ndarray) -> float:
    rows = cm.sum(axis=1)
    present = rows > 0
    return float(np.mean(np.diag(cm)[present] / rows[present]))


def _macro_f1(cm: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Macro F1 over all classes (absent from both labels and predictions: 0), or over the ``classes`` mask."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(np.mean(f1 if classes is None else f1[classes]))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """``sklearn.metrics.balanced_accuracy_score(y, pred)``: the mean recall over the classes present in ``y``."""
    return _balanced_accuracy(_confusion(y, pred, n_classes))


def macro_f1_present(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """``sklearn.metrics.f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)``: the macro F1
    over the classes present in ``y`` (the training loop's validation F1)."""
    cm = _confusion(y, pred, n_classes)
    return _macro_f1(cm, cm.sum(axis=1) > 0)


def _mcc(cm: np.ndarray) -> float:
    # Multiclass MCC (Gorodkin's R_K), as in sklearn.metrics.matthews_corrcoef; 0 when undefined.
    t = cm.sum(axis=1).astype(np.float64)
    pk = cm.sum(axis=0).astype(np.float64)
    c, s = float(np.trace(cm)), float(cm.sum())
    denom = np.sqrt(s * s - pk @ pk) * np.sqrt(s * s - t @ t)
    return float((c * s - pk @ t) / denom) if denom > 0 else 0.0


def _average_ranks(p: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(p, axis=0)``: 1-based ranks within each column, tied values sharing their average
    rank, a column holding NaN all NaN. Written with numpy because importing scipy.stats takes ~0.7 s and every
    training process would pay it for the validation AUC of its epochs; tests/test_startup.py checks that the
    two agree exactly (it is also faster than rankdata, which the bootstrap calls thousands of times)."""
    ranks = np.empty(p.shape)
    for c in range(p.shape[1]):
        _, inverse, counts = np.unique(p[:, c], return_inverse=True, return_counts=True)
        ranks[:, c] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # a tie group of k ending at rank r: r - (k-1)/2
    ranks[:, np.isnan(p).any(axis=0)] = np.nan
    return ranks


def _onehot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=bool)[y]


def _summarise(per_class: np.ndarray, defined: np.ndarray, n_classes: int, present: int, metric: str) -> float:
    if n_classes == 2:
        if not defined[1]:
            raise ValueError(f"{metric} undefined: positive class absent from or the only class in y_true")
        return float(per_class[1])
    if present < 2:
        raise ValueError(f"{metric} undefined: fewer than 2 classes present")
    return float(np.mean(per_class[defined]))


def roc_auc_ovr(y: np.ndarray, p: np.ndarray) -> float:
    """Binary: AUC of column 1; multiclass: one-vs-rest macro AUC over the classes where it is defined.

    Uses the Mann-Whitney form ``(rank sum of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with
    average ranks for ties, which equals the trapezoidal ROC AUC of :func:`sklearn.metrics.roc_auc_score`.
    """
    n, n_classes = p.shape
    hot = _onehot(y, n_classes)
    n_pos = hot.sum(axis=0).astype(np.float64)
    n_neg = n - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    rank_sum = np.where(hot, _average_ranks(p), 0.0).sum(axis=0)
    auc = np.divide(rank_sum - n_pos * (n_pos + 1) / 2, n_pos * n_neg, out=np.full(n_classes, np.nan), where=defined)
    return _summarise(auc, defined, n_classes, int(np.count_nonzero(n_pos)), "roc_auc")


def average_precision_ovr(y: np.ndarray, p: np.ndarray) -> float:
    """Binary: average precision of column 1; multiclass: macro over classes present in ``y``.

    Same step-wise definition as :func:`sklearn.metrics.average_precision_score`: each positive contributes
    ``1 / n_pos`` times the precision at the end of its group of tied scores.
    """
    n, n_classes = p.shape
    hot = _onehot(y, n_classes)
    order = np.argsort(-p, axis=0, kind="stable")
    s = np.take_along_axis(p, order, axis=0)
    pos = np.take_along_axis(hot, order, axis=0)
    precision = np.cumsum(pos, axis=0) / np.arange(1, n + 1)[:, None]
    # For every row, the last row of its run of equal scores: the precision that sklearn uses for it.
    last = np.vstack([s[1:] != s[:-1], np.ones((1, n_classes), dtype=bool)])
    end = np.where(last, np.arange(n)[:, None], n)
    end = np.flip(np.minimum.accumulate(np.flip(end, axis=0), axis=0), axis=0)
    n_pos = hot.sum(axis=0)
    defined = n_pos > 0
    total = np.where(pos, np.take_along_axis(precision, end, axis=0), 0.0).sum(axis=0)
    ap = np.divide(total, n_pos, out=np.full(n_classes, np.nan), where=defined)
    return _summarise(ap, defined, n_classes, int(np.count_nonzero(defined)), "pr_auc")


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean natural-log cross-entropy, clipping probabilities to ``[eps, 1 - eps]`` like scikit-learn."""
    eps = np.finfo(p.dtype).eps
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1 - eps))))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of ``sum_c (p_c - [y == c])^2``."""
    return float(np.mean(np.sum((p - _onehot(y, p.shape[1])) ** 2, axis=1)))


def headline_metric_fns(classes: list[str], threshold: float | None = None) -> dict[str, MetricFn]:
    """The headline metrics as ``{name: fn(y, probs) -> float}`` for :func:`bootstrap_ci`.

    Names (matching the keys of :func:`~medcli.evaluation.metrics.compute_metrics`): ``accuracy``,
    ``balanced_accuracy``, ``macro_f1``, ``mcc``, ``roc_auc``, ``pr_auc``, ``log_loss``, ``brier``, ``ece``,
    and for binary tasks also ``sensitivity`` and ``specificity``. Label-based metrics use the same decision
    rule as ``compute_metrics(..., threshold=threshold)``. A function raises ``ValueError`` where its metric
    is undefined. Inputs are expected to be validated (``bootstrap_ci`` does this).
    """
    n_classes = len(classes)
    if n_classes < 2:
        raise MedcliError(f"classification metrics need at least 2 classes, got {list(classes)}")
    threshold = check_threshold(threshold, n_classes)

    def cm(y, p):
        return _confusion(y, predict_labels(p, threshold), n_classes)

    def sensitivity(y, p):
        m = cm(y, p)
        if m[1].sum() == 0:
            raise ValueError("sensitivity undefined: no positive samples")
        return m[1, 1] / m[1].sum()

    def specificity(y, p):
        m = cm(y, p)
        if m[0].sum() == 0:
            raise ValueError("specificity undefined: no negative samples")
        return m[0, 0] / m[0].sum()

    fns: dict[str, MetricFn] = {
        "accuracy": lambda y, p: float(np.mean(predict_labels(p, threshold) == y)),
        "balanced_accuracy": lambda y, p: _balanced_accuracy(cm(y, p)),
        "macro_f1": lambda y, p: _macro_f1(cm(y, p)),
        "mcc": lambda y, p: _mcc(cm(y, p)),
    }
    if n_classes == 2:
        fns["sensitivity"] = sensitivity
        fns["specificity"] = specificity
    fns.update({
        "roc_auc": roc_auc_ovr,
        "pr_auc": average_precision_ovr,
        "log_loss": log_loss,
        "brier": brier,
        "ece": lambda y, p: expected_calibration_error(y, p, DEFAULT_N_BINS),
    })
    return fns
