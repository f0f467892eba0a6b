"""Classification metrics for one set of predictions, as a JSON-ready dict.

Inputs are integer labels ``y_true`` (indices into ``classes``) and a probability matrix ``probs`` of shape
``(N, C)``. Scikit-learn computes every metric it provides (always with ``labels=range(C)`` and
``zero_division=0``); the expected calibration error comes from :mod:`medcli.evaluation.calibration`.

A metric that is mathematically undefined for the given data (for example the ROC AUC of a class that never
occurs in ``y_true``) is reported as ``None`` and explained in the ``"undefined"`` map; values that are
defined but deserve a caveat (a macro average over fewer classes, a recall reported as 0 for an absent class)
are explained in ``"notes"``. Nothing in here raises for degenerate but valid data; malformed inputs raise
:class:`~medcli.errors.MedcliError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import MedcliError
from ..registry import Registry
from .calibration import DEFAULT_N_BINS, expected_calibration_error

#: Rows of ``probs`` must sum to 1 within this tolerance (float32 softmax outputs are well within it).
SUM_TOLERANCE = 1e-3


def _skm():
    """``sklearn.metrics``, imported on first use: the import takes ~1 s (it pulls scipy.stats and pandas), and the
    training process imports this module (through :mod:`medcli.evaluation.bootstrap`) without calling sklearn."""
    from sklearn import metrics

    return metrics


# --- the scalar-metric registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """A scalar metric: how it is computed, named and compared.

    ``compute(y, probs, pred, labels)`` returns a float from integer labels ``(N,)``, probabilities ``(N, C)``,
    predicted labels ``(N,)`` and ``labels = range(C)``; ``None`` marks the metrics :func:`compute_metrics`
    computes itself (the one-vs-rest rankings with their per-class values; sensitivity and specificity, which
    can be undefined). ``report``: a column of the summary; ``primary``: may be the report's primary metric.
    """

    name: str
    label: str
    compute: Callable[..., float] | None = None
    lower_is_better: bool = False
    binary_only: bool = False
    report: bool = True
    primary: bool = True


_METRICS: Registry[MetricInfo] = Registry("metric", sort=False)  # registration order is the column order


def register_metric(info: MetricInfo, *, overwrite: bool = False) -> MetricInfo:
    """Add a scalar metric: it appears in ``metrics/<split>.json``, the summary's columns and ``--primary``."""
    return _METRICS.add(info.name, info, overwrite=overwrite)


def list_metrics() -> list[MetricInfo]:
    return [_METRICS.get(name) for name in _METRICS.names()]


def get_metric(name: str) -> MetricInfo:
    return _METRICS.get(name)


for _info in (
    MetricInfo("accuracy", "accuracy", lambda y, p, pred, labels: _skm().accuracy_score(y, pred)),
    MetricInfo("balanced_accuracy", "balanced accuracy", lambda y, p, pred, labels: _skm().balanced_accuracy_score(y, pred)),
    MetricInfo("macro_f1", "macro-F1", lambda y, p, pred, labels: _skm().f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    MetricInfo("mcc", "MCC", lambda y, p, pred, labels: _skm().matthews_corrcoef(y, pred)),
    MetricInfo("roc_auc", "ROC-AUC"),
    MetricInfo("pr_auc", "PR-AUC"),
    MetricInfo("log_loss", "log-loss", lambda y, p, pred, labels: _skm().log_loss(y, p, labels=labels), lower_is_better=True),
    MetricInfo("brier", "Brier score", lambda y, p, pred, labels: _skm().brier_score_loss(y, p, labels=labels, scale_by_half=False),
               lower_is_better=True),
    MetricInfo("brier_positive", "Brier score (positive class)", lambda y, p, pred, labels: _skm().brier_score_loss(y, p[:, 1], pos_label=1, labels=labels),
               lower_is_better=True, binary_only=True, report=False, primary=False),
    MetricInfo("ece", "ECE", lambda y, p, pred, labels: expected_calibration_error(y, p, DEFAULT_N_BINS), lower_is_better=True),
    MetricInfo("sensitivity", "sensitivity", binary_only=True, primary=False),
    MetricInfo("specificity", "specificity", binary_only=True, primary=False),
):
    register_metric(_info)


def check_predictions(y_true, probs, classes) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; return them as ``(y, p)`` integer and float64 arrays.

    Raises :class:`MedcliError` for an empty set, mismatched shapes, labels outside ``range(C)``,
    non-finite or negative probabilities, or rows that do not sum to 1 within :data:`SUM_TOLERANCE`.
    The probabilities are not renormalised: dividing rows by slightly different sums would break ties
    between equal scores and so change rank-based metrics such as the ROC AUC.
    """
    classes = list(classes)
    if len(classes) < 2:
        raise MedcliError(f"classification metrics need at least 2 classes, got {classes}")
    if len(set(classes)) != len(classes):
        raise MedcliError(f"class names must be unique, got {classes}")
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise MedcliError(f"probabilities must have shape (samples, {len(classes)}) for classes {classes}, got {p.shape}")
    if p.shape[0] == 0:
        raise MedcliError("cannot compute metrics on zero samples")
    if y.shape != (p.shape[0],):
        raise MedcliError(f"y_true must have shape ({p.shape[0]},) to match the probabilities, got {y.shape}")
    if y.dtype.kind not in "iub":
        raise MedcliError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= len(classes):
        raise MedcliError(f"y_true must hold class indices in [0, {len(classes) - 1}], found {int(y.min())}..{int(y.max())}")
    if not np.all(np.isfinite(p)):
        raise MedcliError("probabilities contain NaN or infinite values")
    if p.min() < 0:
        raise MedcliError(f"probabilities must be non-negative, found {p.min():.6g}")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad.size:
        raise MedcliError(f"probabilities of {bad.size} sample(s) do not sum to 1 (sample {bad[0]} sums to "
                          f"{sums[bad[0]]:.6g}); pass softmax outputs, not logits")
    return y.astype(np.intp), p


def check_threshold(threshold, n_classes: int) -> float | None:
    if threshold is None:
        return None
    if n_classes != 2:
        raise MedcliError(f"a decision threshold only applies to binary tasks, this one has {n_classes} classes")
    t = float(threshold)
    if not (0.0 <= t <= 1.0):
        raise MedcliError(f"the decision threshold must be in [0, 1], got {threshold}")
    return t


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class indices: the argmax (ties go to the lower index), or, for two columns and a given
    ``threshold``, 1 where ``probs[:, 1] >= threshold``."""
    p = np.asarray(probs)
    if threshold is None:
        return p.argmax(axis=1)
    return (p[:, 1] >= threshold).astype(np.intp)


def youden_threshold(y_true_binary, p_positive) -> float:
    """The threshold maximising Youden's J = TPR - FPR on (validation) data.

    Candidates are the distinct scores from :func:`sklearn.metrics.roc_curve` (``drop_intermediate=False``),
    so the rule "positive iff ``p >= threshold``" reproduces the chosen ROC point. Ties go to the first
    candidate, i.e. the highest threshold. The infinite sentinel that ``roc_curve`` puts first (chosen only
    when no threshold beats "all negative") is returned as 1.0.
    """
    y = np.asarray(y_true_binary)
    s = np.asarray(p_positive, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise MedcliError(f"labels and scores must be 1-D of the same length, got {y.shape} and {s.shape}")
    if y.size == 0 or not np.all(np.isin(y, (0, 1))):
        raise MedcliError("Youden's threshold needs a non-empty set of 0/1 labels")
    if not np.all(np.isfinite(s)):
        raise MedcliError("scores contain NaN or infinite values")
    if y.min() == y.max():
        raise MedcliError(f"Youden's threshold needs both classes in the labels, found only class {int(y[0])}")
    fpr, tpr, thresholds = _skm().roc_curve(y.astype(np.intp), s, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def _float(x) -> float | None:
    return None if x is None else float(x)


def _per_class_ranking(y, p, classes, metric: str, fn, undefined: dict, notes: dict) -> tuple[list, float | None]:
    """Per-class one-vs-rest ``fn`` (ROC AUC or average precision) and the task-level summary."""
    n, n_classes = p.shape
    support = np.bincount(y, minlength=n_classes)
    present = [classes[c] for c in range(n_classes) if support[c] > 0]
    values: list[float | None] = []
    for c, name in enumerate(classes):
        if support[c] == 0:
            why = f"class absent from y_true: {metric} of '{name}' needs at least one positive sample"
        elif metric == "roc_auc" and support[c] == n:
            why = f"every sample is '{name}': roc_auc needs at least one negative sample"
        else:
            values.append(float(fn(y == c, p[:, c])))
            continue
        values.append(None)
        if n_classes > 2 and len(present) >= 2:
            why += f"; the macro {metric} averages the {len(present)} classes present ({', '.join(present)})"
        undefined[f"{metric}[{name}]"] = why

    if n_classes == 2:
        summary = values[1]
        if summary is None:
            undefined[metric] = f"the positive class '{classes[1]}' " + (
                "is absent from y_true" if support[1] == 0 else "is the only class in y_true")
        return values, summary
    defined = [v for v in values if v is not None]
    if len(present) < 2:
        undefined[metric] = f"fewer than 2 classes present in y_true ({', '.join(present)}); a one-vs-rest macro average is undefined"
        return values, None
    if len(defined) < n_classes:
        notes[metric] = f"one-vs-rest macro average over the {len(defined)} of {n_classes} classes where it is defined"
    return values, float(np.mean(defined))


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, threshold: float | None = None) -> dict:
    """All standard metrics of one set of predictions (see the module docstring).

    Args:
        y_true: integer class indices, shape ``(N,)``.
        probs: class probabilities, shape ``(N, C)``; rows must sum to 1 (within 1e-3).
        classes: the ``C`` class names; for binary tasks ``classes[1]`` is the positive class.
        threshold: binary tasks only: predict ``classes[1]`` iff its probability is ``>= threshold``
            (for example a Youden threshold chosen on validation data). ``None`` uses the argmax.

    Returns a dict of plain Python values with the keys ``n``, ``classes``, ``task`` ("binary" or
    "multiclass"), ``threshold``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``mcc``, ``roc_auc``,
    ``pr_auc``, ``log_loss``, ``brier``, ``ece``, ``per_class`` (``{class: {precision, recall, f1, support,
    roc_auc, pr_auc}}``), ``confusion_matrix`` (``{labels, counts, normalized}``, rows = true class),
    ``undefined`` and ``notes`` (``{metric: reason}``); binary tasks add ``positive_class``,
    ``sensitivity``, ``specificity`` and ``brier_positive``.
    """
    classes = list(classes)
    y, p = check_predictions(y_true, probs, classes)
    threshold = check_threshold(threshold, len(classes))
    n, n_classes = p.shape
    labels = list(range(n_classes))
    pred = predict_labels(p, threshold)
    undefined: dict[str, str] = {}
    notes: dict[str, str] = {}
    skm = _skm()

    with warnings.catch_warnings():
        # Degenerate cases (absent classes, a single predicted class) are reported in ``undefined``/``notes``.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=RuntimeWarning)
        cm = skm.confusion_matrix(y, pred, labels=labels)
        precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        out: dict = {"n": int(n), "classes": classes, "task": "binary" if n_classes == 2 else "multiclass", "threshold": threshold}
        for info in list_metrics():
            if info.binary_only and n_classes != 2:
                continue
            if info.compute is not None:
                out[info.name] = float(info.compute(y, p, pred, labels))
            elif info.name == "roc_auc":
                auc, out["roc_auc"] = _per_class_ranking(y, p, classes, "roc_auc", skm.roc_auc_score, undefined, notes)
            elif info.name == "pr_auc":
                ap, out["pr_auc"] = _per_class_ranking(y, p, classes, "pr_auc", skm.average_precision_score, undefined, notes)

    absent = [classes[c] for c in labels if support[c] == 0]
    if absent:
        notes["balanced_accuracy"] = f"mean recall over the classes present in y_true; absent: {', '.join(absent)}"
        notes["macro_f1"] = (f"includes F1 = 0 for classes absent from y_true ({', '.join(absent)}), "
                             "as precision/recall/F1 use zero_division=0")
    if len(np.unique(pred)) < 2 or len(np.unique(y)) < 2:
        notes["mcc"] = "set to 0: the labels or the predictions contain a single class, so MCC is 0/0"

    if n_classes == 2:
        out["positive_class"] = classes[1]
        (tn, fp), (fn, tp) = cm
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else None
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else None
        if out["sensitivity"] is None:
            undefined["sensitivity"] = f"no samples of the positive class '{classes[1]}' in y_true"
        if out["specificity"] is None:
            undefined["specificity"] = f"no samples of the negative class '{classes[0]}' in y_true"

    out["per_class"] = {
        name: {
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
            "roc_auc": _float(auc[c]),
            "pr_auc": _float(ap[c]),
        }
        for c, name in enumerate(classes)
    }
    rows = cm.sum(axis=1)
    out["confusion_matrix"] = {
        "labels": classes,
        "counts": cm.astype(int).tolist(),
        "normalized": [[float(v) / rows[i] for v in cm[i]] if rows[i] else [None] * n_classes for i in range(n_classes)],
    }
    out["undefined"] = undefined
    out["notes"] = notes
    return out
