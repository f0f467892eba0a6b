"""Figures of the summary: seaborn on the headless Agg backend, each PNG written atomically.

* ``<dataset>_strategies.png``: the primary CV metric of every run (one point per seed × fold) by strategy, one
  panel per backbone, with a box per configuration, its number of runs and the metric's chance level;
* ``<dataset>_learning_curves.png``: mean (± sd) over runs of the validation primary metric (top) and validation
  loss (bottom) per epoch from ``history.csv``, one column per backbone, one line per strategy;
* ``<dataset>_confusion_best.png``: the confusion matrix of the best configuration's fold ensembles on the test set
  (:func:`medcli.evaluation.plots.plot_confusion_matrix`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import paths  # noqa: E402
from .._io import atomic_path  # noqa: E402
from .collect import Run  # noqa: E402

DPI = 150
_HISTORY_LABELS = {"val_balanced_accuracy": "balanced accuracy", "val_macro_f1": "macro-F1", "val_accuracy": "accuracy",
                   "val_roc_auc": "ROC AUC"}


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` through a temporary file and ``os.replace``; the figure is closed either way."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


# What a score of a model that ignores the image reaches, for the metrics where it does not depend on the class
# frequencies: balanced accuracy = mean recall = 1/C for any constant or random prediction; ROC AUC = 0.5.
def chance_level(metric: str, n_classes: int) -> float | None:
    """The chance level of ``metric`` (``balanced_accuracy``: 1/C; ``roc_auc``: 0.5) for ``n_classes``; None for
    metrics whose chance level depends on the class frequencies (accuracy, macro F1) or on fewer than 2 classes."""
    if n_classes < 2:
        return None
    return {"balanced_accuracy": 1.0 / n_classes, "roc_auc": 0.5}.get(metric)


def _chance_line(ax, primary: str, n_classes: int, *, label: bool) -> None:
    """A dotted line at the chance level; with ``label``, its name written just outside the panel's right edge
    (where no data point can hide it)."""
    level = chance_level(primary, n_classes)
    if level is not None:
        ax.axhline(level, color="0.45", linestyle=":", linewidth=1.2, zorder=0)
        if label:
            ax.text(1.01, level, f"chance\n({level:.2f})", transform=ax.get_yaxis_transform(), ha="left", va="center", fontsize=8,
                    color="0.35")


def _n_classes(runs: list[Run]) -> int:
    return max((len(r.classes) for r in runs), default=0)


def strategy_figure(runs: list[Run], primary: str, label: str, path: str | os.PathLike) -> Path | None:
    """Primary metric of every run on its validation fold, by strategy, one panel per backbone: a box (median and
    quartiles) and a point per run (seed x fold), ``n`` under each strategy, the chance level as a dotted line.
    None when no run has the metric."""
    frame = pd.DataFrame([{"backbone": r.key.backbone, "strategy": r.key.strategy, "value": r.val_metrics.get(primary)}
                          for r in runs])
    frame = frame.dropna(subset=["value"])
    if frame.empty:
        return None
    strategies = sorted(frame["strategy"].unique())
    backbones = sorted(frame["backbone"].unique())
    palette = dict(zip(strategies, sns.color_palette("colorblind", len(strategies))))
    n_classes = _n_classes(runs)
    with sns.axes_style("whitegrid"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seaborn's own use of deprecated matplotlib arguments
        fig, axes = plt.subplots(1, len(backbones), figsize=(1.2 + 0.9 * len(strategies) * len(backbones) + 1.2 * len(backbones), 4.2),
                                 sharey=True, squeeze=False)
        for k, (ax, backbone) in enumerate(zip(axes[0], backbones)):
            sub = frame[frame["backbone"] == backbone]
            order = [s for s in strategies if s in set(sub["strategy"])]
            sns.boxplot(data=sub, x="strategy", y="value", order=order, hue="strategy", palette=palette, ax=ax,
                        fliersize=0, width=0.55, boxprops={"alpha": 0.35}, legend=False)
            sns.stripplot(data=sub, x="strategy", y="value", order=order, color="0.15", size=4.5, jitter=0.12, ax=ax)
            _chance_line(ax, primary, n_classes, label=k == len(backbones) - 1)
            counts = sub["strategy"].value_counts()
            ax.set_xticks(range(len(order)), [f"{s}\nn = {counts[s]}" for s in order])
            ax.set_title(f"backbone: {backbone}")
            ax.set_xlabel("strategy")
            ax.set_ylabel(f"{label} (validation fold)")
        fig.suptitle(f"Cross-validated {label} by strategy: one point per run (seed × fold), box = median and quartiles")
        fig.tight_layout()
    return _save(fig, path)


def learning_curve_figure(runs: list[Run], primary: str, label: str, path: str | os.PathLike) -> Path | None:
    """Validation primary metric (top row) and validation loss (bottom row) per epoch, one column per backbone, one
    line per strategy: mean ± sd over the configuration's runs (seeds x folds) still training at that epoch."""
    frames = []
    for r in runs:
        try:
            history = pd.read_csv(paths.history_file(r.path))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "epoch" not in history:
            continue
        history["strategy"], history["backbone"] = r.key.strategy, r.key.backbone
        frames.append(history)
    if not frames:
        return None
    history = pd.concat(frames, ignore_index=True)
    metric = f"val_{primary}"
    if metric not in history:
        metric = "val_balanced_accuracy" if "val_balanced_accuracy" in history else None
    metric_label = _HISTORY_LABELS.get(metric, label)
    panels = [(c, t) for c, t in ((metric, f"validation {metric_label}"), ("val_loss", "validation loss (cross-entropy)"))
              if c and c in history and history[c].notna().any()]
    if not panels:
        return None
    strategies = sorted(history["strategy"].unique())
    backbones = sorted(history["backbone"].unique())
    palette = dict(zip(strategies, sns.color_palette("colorblind", len(strategies))))
    n_classes = _n_classes(runs)
    with sns.axes_style("whitegrid"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig, axes = plt.subplots(len(panels), len(backbones), figsize=(1.5 + 4.2 * len(backbones), 3.0 * len(panels) + 0.8), squeeze=False,
                                 sharex=True, sharey="row")
        for col, backbone in enumerate(backbones):
            sub = history[history["backbone"] == backbone]
            for row, (column, title) in enumerate(panels):
                ax = axes[row][col]
                sns.lineplot(data=sub, x="epoch", y=column, hue="strategy", hue_order=strategies, palette=palette, errorbar="sd",
                             err_kws={"alpha": 0.12}, marker="o", markersize=3.5, ax=ax, legend=False)
                if column == metric:
                    _chance_line(ax, metric.removeprefix("val_"), n_classes, label=False)
                if row == 0:
                    ax.set_title(f"backbone: {backbone}")
                ax.set_ylabel(title if col == 0 else "")
                ax.set_xlabel("epoch")
                ax.xaxis.get_major_locator().set_params(integer=True)
        handles = [plt.Line2D([], [], color=palette[s], marker="o", markersize=4, label=s) for s in strategies]
        if chance_level(metric.removeprefix("val_") if metric else "", n_classes) is not None:
            handles.append(plt.Line2D([], [], color="0.45", linestyle=":", label="chance"))
        fig.legend(handles=handles, title="strategy", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title_fontsize=9)
        fig.suptitle("Validation curves: mean ± sd over the runs (seeds × folds) still training at each epoch")
        fig.tight_layout()
    return _save(fig, path)


def confusion_figure(counts: list[list[int]], classes: list[str], title: str, path: str | os.PathLike) -> Path:
    from ..evaluation.plots import plot_confusion_matrix

    return plot_confusion_matrix(np.asarray(counts), classes, path, title=title)
