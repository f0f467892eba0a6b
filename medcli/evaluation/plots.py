"""Figures for evaluation reports, rendered headless to PNG.

Every function draws one figure, writes it atomically (to a temporary file in the destination folder that is
then renamed onto ``path``), closes it and returns the path. The Agg backend is selected on import, so the
functions work on machines without a display. Seaborn styles are applied per figure through context
managers, so importing this module leaves the global matplotlib settings of the caller untouched.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from .._io import atomic_path  # noqa: E402
from ..errors import MedcliError  # noqa: E402
from .calibration import DEFAULT_N_BINS, expected_calibration_error, reliability_bins  # noqa: E402
from .metrics import check_predictions  # noqa: E402

DPI = 150


@contextmanager
def _figure(path: str | os.PathLike, *args, **kwargs) -> Iterator[tuple]:
    """``plt.subplots(*args, **kwargs)`` under the seaborn style, yielding ``(fig, axes)``.

    When the block succeeds the figure is written as PNG to ``path`` atomically; the figure is closed
    either way, so a failed plot leaves neither an open figure nor a partial file behind.
    """
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=DPI)
        finally:
            plt.close(fig)


def _palette(n: int) -> list:
    return sns.color_palette("colorblind", max(n, 1))


# ----------------------------------------------------------------------------------------------------------
# confusion matrix


def plot_confusion_matrix(counts, classes: Sequence[str], path: str | os.PathLike, *, normalized: bool = True,
                          title: str | None = None) -> Path:
    """Heatmap of a confusion matrix (rows = true class, columns = predicted class).

    With ``normalized`` the colours show each row divided by its total (the per-class recall on the
    diagonal) and every cell is annotated as ``"0.85\\n(17)"``; otherwise colours and annotations are the raw
    counts. A row without samples is annotated ``n/a``. The figure grows with the number of classes and the
    predicted-class labels are rotated so that long names stay readable.
    """
    classes = [str(c) for c in classes]
    cm = np.asarray(counts)
    n = len(classes)
    if cm.shape != (n, n):
        raise MedcliError(f"confusion matrix must have shape ({n}, {n}) for classes {classes}, got {cm.shape}")
    if not np.all(np.isfinite(cm)) or cm.min(initial=0) < 0 or not np.all(cm == np.round(cm)):
        raise MedcliError("confusion matrix counts must be non-negative integers")
    cm = cm.astype(np.int64)
    totals = cm.sum(axis=1, keepdims=True)
    rates = cm / np.maximum(totals, 1)

    if normalized:
        values, vmax = rates, 1.0
        annot = np.array([[f"{rates[i, j]:.2f}\n({cm[i, j]})" if totals[i, 0] else "n/a\n(0)" for j in range(n)]
                          for i in range(n)])
    else:
        values, vmax = cm.astype(np.float64), max(float(cm.max(initial=0)), 1.0)
        annot = np.array([[str(v) for v in row] for row in cm])

    longest = max(len(c) for c in classes)
    side = min(2.5 + 0.9 * n + 0.05 * longest, 24.0)
    annot_size = max(6.0, 11.0 - 0.4 * n)
    with _figure(path, figsize=(side + 1.0, side)) as (fig, ax):
        sns.heatmap(values, annot=annot, fmt="", cmap="Blues", vmin=0.0, vmax=vmax, square=True,
                    xticklabels=classes, yticklabels=classes, linewidths=0.5, linecolor="white",
                    annot_kws={"size": annot_size}, cbar_kws={"label": "fraction of the true class (recall on the diagonal)" if normalized
                                                              else "count"}, ax=ax)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticklabels(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
        if title is None:
            title = "Confusion matrix (row-normalised)" if normalized else "Confusion matrix (counts)"
        ax.set_title(title)
        fig.tight_layout()
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# ROC and precision-recall curves


def _curve_classes(y: np.ndarray, classes: list[str], *, need_negatives: bool) -> tuple[list[int], list[str]]:
    """Class indices to draw one-vs-rest curves for, and notes on the classes that are skipped."""
    n_classes = len(classes)
    support = np.bincount(y, minlength=n_classes)
    candidates = [1] if n_classes == 2 else list(range(n_classes))
    drawn, absent, only = [], [], []
    for c in candidates:
        if support[c] == 0:
            absent.append(classes[c])
        elif need_negatives and support[c] == len(y):
            only.append(classes[c])
        else:
            drawn.append(c)
    notes = []
    if absent:
        notes.append(f"skipped, absent from y_true: {', '.join(absent)}")
    if only:
        notes.append(f"skipped, no negative samples: {', '.join(only)}")
    return drawn, notes


def _add_notes(ax: plt.Axes, notes: list[str], *, below: bool = False) -> None:
    """Add the notes on skipped classes as text-only legend entries and draw the legend."""
    for note in notes:
        ax.plot([], [], linestyle="none", label=note)
    fontsize = "small" if len(ax.get_legend_handles_labels()[0]) <= 6 else "x-small"
    if below:  # keeps the lower part of the axes, where baselines run, visible
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=fontsize, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=fontsize, frameon=True)


def plot_roc_curves(y_true, probs, classes: Sequence[str], path: str | os.PathLike, *,
                    title: str | None = None) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend, and the chance diagonal.

    Binary tasks show the positive class ``classes[1]`` only. A class that is absent from ``y_true`` (or,
    having no negatives, is the only class present) has no ROC curve; it is skipped and named in the legend.
    """
    classes = [str(c) for c in classes]
    y, p = check_predictions(y_true, probs, classes)
    drawn, notes = _curve_classes(y, classes, need_negatives=True)
    colors = _palette(len(classes))
    with _figure(path, figsize=(6.0, 5.6)) as (fig, ax):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
        for c in drawn:
            fpr, tpr, _ = skm.roc_curve(y == c, p[:, c])
            auc = skm.roc_auc_score(y == c, p[:, c])
            ax.plot(fpr, tpr, color=colors[c], linewidth=1.8, label=f"{classes[c]} (AUC = {auc:.3f})")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate",
               ylabel="true positive rate", aspect="equal")
        ax.set_title(title or (f"ROC curve (positive class: {classes[1]})" if len(classes) == 2
                               else "ROC curves (one-vs-rest)"))
        _add_notes(ax, notes)
        fig.tight_layout()
    return Path(path)


def plot_pr_curves(y_true, probs, classes: Sequence[str], path: str | os.PathLike, *,
                   title: str | None = None) -> Path:
    """One-vs-rest precision-recall curve per class with its average precision (AP) in the legend.

    The dashed horizontal line in each class's colour is its prevalence in ``y_true``, the precision of a
    classifier without skill. Binary tasks show ``classes[1]`` only; classes absent from ``y_true`` are
    skipped and named in the legend.
    """
    classes = [str(c) for c in classes]
    y, p = check_predictions(y_true, probs, classes)
    drawn, notes = _curve_classes(y, classes, need_negatives=False)
    colors = _palette(len(classes))
    with _figure(path, figsize=(6.0, 5.4 + 0.22 * (len(drawn) + len(notes) + 1))) as (fig, ax):
        for c in drawn:
            positive = y == c
            precision, recall, _ = skm.precision_recall_curve(positive, p[:, c])
            ap = skm.average_precision_score(positive, p[:, c])
            prevalence = float(positive.mean())
            ax.plot(recall, precision, color=colors[c], linewidth=1.8, drawstyle="steps-post",
                    label=f"{classes[c]} (AP = {ap:.3f}, prevalence = {prevalence:.2f})")
            ax.axhline(prevalence, color=colors[c], linestyle="--", linewidth=1, alpha=0.8)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), xlabel="recall", ylabel="precision", aspect="equal")
        ax.set_title(title or (f"Precision-recall curve (positive class: {classes[1]})" if len(classes) == 2
                               else "Precision-recall curves (one-vs-rest)"))
        if drawn:
            ax.plot([], [], color="0.4", linestyle="--", linewidth=1, label="prevalence (no skill)")
        _add_notes(ax, notes, below=True)
        fig.tight_layout()
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# reliability diagram


def plot_reliability(y_true, probs, path: str | os.PathLike, *, n_bins: int = DEFAULT_N_BINS,
                     probs_calibrated=None, title: str | None = None) -> Path:
    """Reliability diagram of the top-class confidence, with a histogram of the confidences underneath.

    Each non-empty bin is drawn at its mean confidence (x) and accuracy (y); a perfectly calibrated model lies
    on the diagonal. The expected calibration error (ECE, same bins) is in the title. When
    ``probs_calibrated`` is given (for example after temperature scaling) both sets are overlaid and labelled
    "before" and "after temperature scaling".
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise MedcliError(f"probabilities must have shape (samples, classes), got {p.shape}")
    names = [str(i) for i in range(p.shape[1])]
    y, p = check_predictions(y_true, p, names)
    series = [("before temperature scaling" if probs_calibrated is not None else "model", p)]
    if probs_calibrated is not None:
        pc = np.asarray(probs_calibrated)
        if pc.shape != p.shape:
            raise MedcliError(f"calibrated probabilities must have the same shape as the probabilities {p.shape}, "
                              f"got {pc.shape}")
        series.append(("after temperature scaling", check_predictions(y, pc, names)[1]))

    results = [(label, reliability_bins(y, q, n_bins), expected_calibration_error(y, q, n_bins))
               for label, q in series]
    colors = _palette(2)
    width = 1.0 / int(n_bins)
    with _figure(path, 2, 1, figsize=(6.0, 7.0), sharex=True,
                 gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}) as (fig, (ax, hist)):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
        for k, (label, bins, ece) in enumerate(results):
            filled = [b for b in bins if b["count"]]
            ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", markersize=5,
                    linewidth=1.5, color=colors[k], label=f"{label} (ECE = {ece:.3f})")
            # side-by-side bars when two sets share a bin
            share = width / len(results)
            left = np.array([b["lo"] for b in bins]) + k * share
            hist.bar(left, [b["count"] for b in bins], width=share, align="edge", color=colors[k], alpha=0.8,
                     edgecolor="white", linewidth=0.5)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy")
        ax.legend(loc="upper left", fontsize="small")
        eces = " \u2192 ".join(f"{ece:.3f}" for _, _, ece in results)
        ax.set_title(title or f"Reliability diagram (ECE {eces}, {int(n_bins)} bins, n = {len(y)})")
        hist.set(xlabel="confidence (top-class probability)", ylabel="count")
        fig.subplots_adjust(left=0.13, right=0.96, top=0.94, bottom=0.09)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------
# learning curves

_LOSS_COLUMNS = (("train_loss", "training loss"), ("val_loss", "validation loss"))
_ACCURACY_COLUMNS = (("train_accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"),
                     ("val_balanced_accuracy", "validation balanced accuracy"), ("val_roc_auc", "validation ROC AUC"))


_COLUMN_NAMES = {**dict(_LOSS_COLUMNS), **dict(_ACCURACY_COLUMNS), "val_macro_f1": "validation macro F1", "epoch": "last epoch"}


def _phase_runs(phases: pd.Series, x: np.ndarray) -> list[tuple[str, float, float]]:
    """Contiguous runs of equal ``phase`` values as ``(phase, first x, last x)``."""
    runs: list[tuple[str, float, float]] = []
    for value, xi in zip(phases.astype(str), x):
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1], xi)
        else:
            runs.append((value, xi, xi))
    return runs


def plot_learning_curves(history: pd.DataFrame, path: str | os.PathLike, *, monitor: str | None = None,
                         title: str | None = None) -> Path:
    """Loss and accuracy per epoch, training against validation.

    ``history`` has one row per epoch with an ``epoch`` column and any of ``train_loss``, ``val_loss``,
    ``train_accuracy``, ``val_accuracy``, ``val_balanced_accuracy`` and ``val_roc_auc``; missing columns are left out. With
    ``monitor`` (a column such as ``"val_balanced_accuracy"``) a vertical line marks the best epoch: the
    minimum when the column name contains "loss", the maximum otherwise, the earliest on ties. When a
    ``phase`` column holds more than one value, the phases are shaded and labelled. If epoch numbers repeat
    (a counter that restarts in every phase), rows are plotted in order against a cumulative epoch count.
    """
    if not isinstance(history, pd.DataFrame):
        raise MedcliError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    if "epoch" not in history.columns:
        raise MedcliError(f"history has no 'epoch' column (columns: {', '.join(map(str, history.columns))}); "
                          "pass the history.csv written by training")
    if history.empty:
        raise MedcliError("history has no rows; training recorded no epochs")
    if monitor is not None and monitor not in history.columns:
        raise MedcliError(f"monitor column '{monitor}' is not in the history "
                          f"(columns: {', '.join(map(str, history.columns))})")

    h = history.reset_index(drop=True)
    epoch = pd.to_numeric(h["epoch"], errors="coerce")
    if epoch.isna().any() or epoch.duplicated().any():
        x, xlabel = np.arange(1, len(h) + 1, dtype=np.float64), "epoch (cumulative)"
    else:
        order = np.argsort(epoch.to_numpy(dtype=np.float64), kind="stable")
        h = h.iloc[order].reset_index(drop=True)
        x, xlabel = epoch.to_numpy(dtype=np.float64)[order], "epoch"
    marker = "o" if len(h) <= 60 else None
    colors = [_palette(6)[k] for k in (0, 1, 2, 4)]  # blue, orange, green, pink: the palette's 4th (vermillion) reads as orange

    with _figure(path, 1, 2, figsize=(11.0, 5.0), sharex=True) as (fig, (ax_loss, ax_acc)):
        for ax, columns, ylabel, title_ in ((ax_loss, _LOSS_COLUMNS, "cross-entropy loss", "Loss (lower is better)"),
                                            (ax_acc, _ACCURACY_COLUMNS, "score", "Accuracy, balanced accuracy, ROC AUC")):
            drawn = 0
            for k, ((column, label), style) in enumerate(zip(columns, ("-", "--", ":", "-."))):
                if column not in h.columns:
                    continue
                values = pd.to_numeric(h[column], errors="coerce").to_numpy(dtype=np.float64)
                if np.isnan(values).all():
                    continue
                ax.plot(x, values, color=colors[k], marker=marker, markersize=3.5, linewidth=1.5,
                        linestyle=style, label=label)
                drawn += 1
            if not drawn:
                ax.text(0.5, 0.5, f"no {ylabel} recorded", transform=ax.transAxes, ha="center", va="center",
                        color="0.4")
            ax.set(xlabel=xlabel, ylabel=ylabel, title=title_)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))

        if "phase" in h.columns and h["phase"].dropna().nunique() > 1:
            runs = _phase_runs(h["phase"].fillna("?"), x)
            for ax in (ax_loss, ax_acc):
                for i, (_, lo, hi) in enumerate(runs):
                    ax.axvspan(lo - 0.5, hi + 0.5, color="0.85" if i % 2 == 0 else "0.95", alpha=0.6, zorder=0,
                               linewidth=0)
                    if i > 0:
                        ax.axvline(lo - 0.5, color="0.5", linewidth=0.8, zorder=1)
                # phase names along the top edge, clear of the data
                top = ax.secondary_xaxis("top")
                top.set_xticks([(lo + hi) / 2 for _, lo, hi in runs], labels=[name for name, _, _ in runs],
                               fontsize="small", color="0.3")
                top.tick_params(length=0)

        best_note = ""
        if monitor is not None:
            scores = pd.to_numeric(h[monitor], errors="coerce")
            if scores.notna().any():
                best = int(scores.idxmin() if "loss" in monitor else scores.idxmax())
                name = _COLUMN_NAMES.get(monitor, monitor)
                for ax in (ax_loss, ax_acc):  # named by the title and a word at the top, not in the legends
                    ax.axvline(x[best], color="firebrick", linewidth=1.2, linestyle="-.", zorder=3)
                    ax.text(x[best], 1.0, " best", transform=ax.get_xaxis_transform(), color="firebrick", ha="left", va="top",
                            fontsize="small")
                best_note = f", best epoch {x[best]:g} by {name}: {scores[best]:.3f}"
            else:
                best_note = f", {monitor} not recorded"

        for ax in (ax_loss, ax_acc):  # legends below the plots: curves often run through every corner
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
        if len(x) == 1:
            ax_loss.set_xlim(x[0] - 1, x[0] + 1)
        fig.suptitle(title or f"Learning curves ({len(h)} epoch{'s' if len(h) != 1 else ''}{best_note})")
        fig.tight_layout()
    return Path(path)


__all__ = ["plot_confusion_matrix", "plot_learning_curves", "plot_pr_curves", "plot_reliability",
           "plot_roc_curves"]
