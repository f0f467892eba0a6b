"""Figures of the summary (seaborn, headless), each written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import paths  # noqa: E402
from .._io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def strategy_comparison(summary: dict, path: Path) -> Path | None:
    """The primary CV metric of every run (one point per seed × fold), by strategy, one panel per backbone."""
    primary = summary["primary"]
    rows = [{"backbone": t[1], "strategy": t[2], "value": t[7]} for t in summary["tidy"] if t[5] == "val" and t[6] == primary and t[7] is not None]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    order = sorted(frame["strategy"].unique())
    backbones = sorted(frame["backbone"].unique())
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, len(backbones), figsize=(3.2 * len(backbones) + 1, 3.6), sharey=True, squeeze=False)
        for ax, backbone in zip(axes[0], backbones):
            sub = frame[frame["backbone"] == backbone]
            sns.boxplot(data=sub, x="strategy", y="value", order=order, ax=ax, color="#dfe8f3", fliersize=0, width=0.5)
            sns.stripplot(data=sub, x="strategy", y="value", order=order, ax=ax, color="#1f4e79", size=4, jitter=0.15)
            ax.set_title(backbone)
            ax.set_xlabel("")
            ax.set_ylabel(f"{primary} (validation folds)")
            ax.tick_params(axis="x", rotation=30)
        fig.suptitle("strategies compared: one point per seed × fold")
    return _save(fig, path)


def learning_curves(runs: pd.DataFrame, primary: str, path: Path) -> Path | None:
    """Mean validation metric and loss per epoch for each configuration (over its seeds and folds)."""
    frames = []
    for _, r in runs.iterrows():
        try:
            h = pd.read_csv(paths.history_file(r["run"]))
        except OSError:
            continue
        h["config"] = r["config"]
        frames.append(h)
    if not frames:
        return None
    history = pd.concat(frames)
    column = "val_loss" if primary == "loss" else f"val_{primary}"
    if column not in history:
        column = "val_balanced_accuracy"
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        sns.lineplot(data=history, x="epoch", y=column, hue="config", ax=axes[0], errorbar="sd")
        sns.lineplot(data=history, x="epoch", y="val_loss", hue="config", ax=axes[1], errorbar="sd", legend=False)
        axes[0].set_title(f"{column} (mean ± sd over runs)")
        axes[1].set_title("val_loss (mean ± sd over runs)")
        axes[0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def confusion_best(row: dict, classes: list[str], path: Path) -> Path:
    from ..evaluation.plots import plot_confusion_matrix

    return Path(plot_confusion_matrix(np.array(row["test"]["confusion"]), classes, path,
                                      title=f"{row['config']}: fold ensemble on the test set"))
