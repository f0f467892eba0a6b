"""Headless evaluation figures: each call writes one readable PNG atomically and leaves no figure open."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medcli.errors import MedcliError
from medcli.evaluation.calibration import apply_temperature, softmax
from medcli.evaluation.plots import (plot_confusion_matrix, plot_learning_curves, plot_pr_curves, plot_reliability,
                                     plot_roc_curves)

import matplotlib.pyplot as plt  # noqa: E402  (after the plots module has selected the Agg backend)

CLASSES_4 = ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
CLASSES_2 = ["normal", "abnormal"]


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert len(plt.get_fignums()) == 0, "a plotting function left a figure open"


def _predictions(n_classes: int, n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    logits = 2.0 * np.eye(n_classes)[y] + rng.normal(size=(n, n_classes))
    return y, softmax(3.0 * logits)


def _check_png(path, min_size=(300, 300)) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        w, h = img.size
    assert w >= min_size[0] and h >= min_size[1]
    assert w <= 5000 and h <= 5000
    # the write is atomic: nothing but finished outputs remains in the folder
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return w, h


def _history(n_epochs: int, *, phases: bool = True) -> pd.DataFrame:
    e = np.arange(1, n_epochs + 1, dtype=float)
    return pd.DataFrame({
        "epoch": e.astype(int),
        "phase": (["head"] * 3 + ["finetune"] * (n_epochs - 3))[:n_epochs] if phases else "finetune",
        "train_loss": 1 / e, "train_accuracy": 1 - 0.5 / e,
        "val_loss": 1 / e + 0.02 * e, "val_accuracy": 1 - 0.6 / e,
        "val_balanced_accuracy": 1 - 0.7 / e - 0.01 * e, "val_macro_f1": 0.5, "lr": 1e-3, "seconds": 2.0,
    })


@pytest.mark.parametrize("classes", [CLASSES_2, CLASSES_4])
@pytest.mark.parametrize("normalized", [True, False])
def test_confusion_matrix(tmp_path, classes, normalized):
    n = len(classes)
    counts = np.arange(n * n).reshape(n, n) + 3 * np.eye(n, dtype=int)
    out = plot_confusion_matrix(counts, classes, tmp_path / "sub" / "cm.png", normalized=normalized, title="fold 0")
    assert out == tmp_path / "sub" / "cm.png"
    _check_png(out)


def test_confusion_matrix_grows_with_classes_and_handles_empty_rows(tmp_path):
    counts = np.array([[5, 1, 0, 0], [0, 0, 0, 0], [1, 0, 7, 2], [0, 1, 0, 9]])
    w4, h4 = _check_png(plot_confusion_matrix(counts, CLASSES_4, tmp_path / "cm4.png"))
    w2, h2 = _check_png(plot_confusion_matrix(counts[:2, :2], CLASSES_2, tmp_path / "cm2.png"))
    assert w4 > w2 and h4 > h2


@pytest.mark.parametrize("counts, classes", [
    (np.eye(3, dtype=int), CLASSES_2),
    (np.array([[1, -1], [0, 2]]), CLASSES_2),
    (np.array([[1.5, 0], [0, 2]]), CLASSES_2),
])
def test_confusion_matrix_rejects_bad_counts(tmp_path, counts, classes):
    with pytest.raises(MedcliError):
        plot_confusion_matrix(counts, classes, tmp_path / "cm.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("plot", [plot_roc_curves, plot_pr_curves])
def test_ranking_curves(tmp_path, plot, n_classes):
    y, p = _predictions(n_classes)
    classes = CLASSES_2 if n_classes == 2 else CLASSES_4
    _check_png(plot(y, p, classes, tmp_path / "curve.png"))


@pytest.mark.parametrize("plot", [plot_roc_curves, plot_pr_curves])
def test_ranking_curves_skip_absent_classes(tmp_path, plot):
    y, p = _predictions(4)
    y = np.where(y == 1, 0, y)  # 'large.cell.carcinoma' never occurs
    _check_png(plot(y, p, CLASSES_4, tmp_path / "absent.png"))
    # binary task whose positive class is absent, and one where every sample is positive: no curve, no crash
    yb, pb = _predictions(2)
    _check_png(plot(np.zeros_like(yb), pb, CLASSES_2, tmp_path / "no_positives.png"))
    _check_png(plot(np.ones_like(yb), pb, CLASSES_2, tmp_path / "no_negatives.png"))


def test_ranking_curves_reject_malformed_input(tmp_path):
    y, p = _predictions(4)
    with pytest.raises(MedcliError):
        plot_roc_curves(y, p, CLASSES_2, tmp_path / "roc.png")
    with pytest.raises(MedcliError):
        plot_pr_curves(y[:-1], p, CLASSES_4, tmp_path / "pr.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("n_classes", [2, 4])
def test_reliability(tmp_path, n_classes):
    y, p = _predictions(n_classes)
    _check_png(plot_reliability(y, p, tmp_path / "rel.png"), min_size=(300, 400))
    calibrated = apply_temperature(np.log(p), 2.0)
    _check_png(plot_reliability(y, p, tmp_path / "rel_ts.png", n_bins=10, probs_calibrated=calibrated),
               min_size=(300, 400))


def test_reliability_rejects_mismatched_calibrated_probs(tmp_path):
    y, p = _predictions(3)
    with pytest.raises(MedcliError):
        plot_reliability(y, p, tmp_path / "rel.png", probs_calibrated=p[:, :2])
    with pytest.raises(MedcliError):
        plot_reliability(y, p[:, 0], tmp_path / "rel.png")


@pytest.mark.parametrize("n_epochs, monitor", [(1, "val_balanced_accuracy"), (1, None), (2, "val_loss"),
                                               (12, "val_balanced_accuracy"), (12, "val_loss")])
def test_learning_curves(tmp_path, n_epochs, monitor):
    _check_png(plot_learning_curves(_history(n_epochs), tmp_path / "lc.png", monitor=monitor), min_size=(600, 300))


def test_learning_curves_tolerate_partial_histories(tmp_path):
    h = _history(6, phases=False)[["epoch", "train_loss", "val_accuracy"]]
    h.loc[2, "val_accuracy"] = np.nan
    _check_png(plot_learning_curves(h, tmp_path / "partial.png", monitor="val_accuracy"))
    # epoch restarting in each phase is plotted against a cumulative count
    restarted = _history(6).assign(epoch=[1, 2, 3, 1, 2, 3])
    _check_png(plot_learning_curves(restarted, tmp_path / "restarted.png", monitor="val_loss"))


@pytest.mark.parametrize("history, monitor", [
    (pd.DataFrame({"epoch": []}), None),
    (pd.DataFrame({"step": [1, 2], "train_loss": [1.0, 0.5]}), None),
    (_history(4), "val_auc"),
])
def test_learning_curves_reject_unusable_history(tmp_path, history, monitor):
    with pytest.raises(MedcliError):
        plot_learning_curves(history, tmp_path / "lc.png", monitor=monitor)
    assert not list(tmp_path.iterdir())


def test_repeated_plotting_leaves_no_figures_open(tmp_path):
    y, p = _predictions(4)
    for _ in range(2):
        plot_roc_curves(y, p, CLASSES_4, tmp_path / "roc.png")
        plot_reliability(y, p, tmp_path / "rel.png")
        plot_learning_curves(_history(5), tmp_path / "lc.png")
        assert len(plt.get_fignums()) == 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["lc.png", "rel.png", "roc.png"]


def test_failed_write_keeps_the_previous_file_and_closes_the_figure(tmp_path, monkeypatch):
    import matplotlib.figure

    y, p = _predictions(2)
    target = tmp_path / "roc.png"
    target.write_bytes(b"previous")

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError):
        plot_roc_curves(y, p, CLASSES_2, target)
    assert target.read_bytes() == b"previous"
    assert [f.name for f in tmp_path.iterdir()] == ["roc.png"]
