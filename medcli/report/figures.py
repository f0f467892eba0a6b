"""Figures of the summary: seaborn on the headless Agg backend, each PNG written atomically.

* ``<dataset>_strategies.png``: the primary CV metric of every run (one point per seed × fold) by strategy, one
  panel per backbone, with a box per configuration;
* ``<dataset>_learning_curves.png``: mean (± sd) over runs of the validation primary metric and validation loss
  per epoch from ``history.csv``, one line per configuration (colour: strategy, dashes: backbone);
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


def strategy_figure(runs: list[Run], primary: str, label: str, path: str | os.PathLike) -> Path | None:
    """Primary CV metric per run by strategy, one panel per backbone; None when no run has the metric."""
    frame = pd.DataFrame([{"backbone": r.key.backbone, "strategy": r.key.strategy, "value": r.val_metrics.get(primary)}
                          for r in runs])
    frame = frame.dropna(subset=["value"])
    if frame.empty:
        return None
    strategies = sorted(frame["strategy"].unique())
    backbones = sorted(frame["backbone"].unique())
    palette = dict(zip(strategies, sns.color_palette("colorblind", len(strategies))))
    with sns.axes_style("whitegrid"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seaborn's own use of deprecated matplotlib arguments
        fig, axes = plt.subplots(1, len(backbones), figsize=(1.2 + 0.9 * len(strategies) * len(backbones) + 1.2 * len(backbones), 3.8),
                                 sharey=True, squeeze=False)
        for ax, backbone in zip(axes[0], backbones):
            sub = frame[frame["backbone"] == backbone]
            order = [s for s in strategies if s in set(sub["strategy"])]
            sns.boxplot(data=sub, x="strategy", y="value", order=order, hue="strategy", palette=palette, ax=ax,
                        fliersize=0, width=0.55, boxprops={"alpha": 0.35}, legend=False)
            sns.stripplot(data=sub, x="strategy", y="value", order=order, color="0.15", size=4.5, jitter=0.12, ax=ax)
            ax.set_title(backbone)
            ax.set_xlabel("")
            ax.set_ylabel(f"CV {label}")
            ax.tick_params(axis="x", rotation=25)
        fig.suptitle(f"{label} on the validation folds: one point per seed × fold")
        fig.tight_layout()
    return _save(fig, path)


def learning_curve_figure(runs: list[Run], primary: str, label: str, path: str | os.PathLike) -> Path | None:
    """Validation primary metric and loss per epoch, mean ± sd over each configuration's runs."""
    frames = []
    for r in runs:
        try:
            history = pd.read_csv(paths.history_file(r.path))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        if "epoch" not in history:
            continue
        history["configuration"] = r.config
        history["strategy"], history["backbone"] = r.key.strategy, r.key.backbone
        frames.append(history)
    if not frames:
        return None
    history = pd.concat(frames, ignore_index=True)
    metric = f"val_{primary}"
    if metric not in history:
        metric = "val_balanced_accuracy" if "val_balanced_accuracy" in history else None
    panels = [(c, t) for c, t in ((metric, f"validation {_HISTORY_LABELS.get(metric, label)}"), ("val_loss", "validation loss"))
              if c and c in history and history[c].notna().any()]
    if not panels:
        return None
    strategies = sorted(history["strategy"].unique())
    palette = dict(zip(strategies, sns.color_palette("colorblind", len(strategies))))
    with sns.axes_style("whitegrid"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels) + 1.5, 4.0), squeeze=False)
        for k, (ax, (column, title)) in enumerate(zip(axes[0], panels)):
            sns.lineplot(data=history, x="epoch", y=column, hue="strategy", style="backbone", palette=palette,
                         errorbar="sd", marker="o", markersize=3.5, ax=ax, legend=k == len(panels) - 1)
            ax.set_title(f"{title} (mean ± sd over runs)")
            ax.set_ylabel(title)
        if axes[0][-1].get_legend() is not None:
            sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
        fig.tight_layout()
    return _save(fig, path)


def confusion_figure(counts: list[list[int]], classes: list[str], title: str, path: str | os.PathLike) -> Path:
    from ..evaluation.plots import plot_confusion_matrix

    return plot_confusion_matrix(np.asarray(counts), classes, path, title=title)
