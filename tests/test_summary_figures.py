"""The summary's figures, read as a reader would: what each axis says, how many runs each box holds, chance."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medcli import paths
from medcli.report import figures


def _run(backbone, strategy, value, tmp_path=None, history=None):
    path = ""
    if history is not None:
        path = tmp_path / f"{backbone}_{strategy}_{value}"
        path.mkdir()
        (path / paths.HISTORY_FILE).write_text(history)
    return SimpleNamespace(key=SimpleNamespace(backbone=backbone, strategy=strategy), val_metrics={"balanced_accuracy": value},
                           classes=["a", "b", "c"], path=str(path))


@pytest.fixture
def drawn(monkeypatch):
    """The figures' texts: every title, axis label, tick label and free text, instead of a PNG."""
    seen = {}

    def save(fig, path):
        texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
        seen[str(path)] = " | ".join(t for t in texts if t)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return path

    monkeypatch.setattr(figures, "_save", save)
    return seen


def test_chance_levels_are_given_only_where_class_frequencies_do_not_move_them():
    assert figures.chance_level("balanced_accuracy", 4) == 0.25
    assert figures.chance_level("roc_auc", 3) == 0.5
    assert figures.chance_level("accuracy", 3) is None and figures.chance_level("macro_f1", 3) is None
    assert figures.chance_level("balanced_accuracy", 1) is None


def test_the_strategy_figure_names_its_axes_runs_per_box_and_chance(drawn):
    runs = [_run("resnet18", "full", v) for v in (0.8, 0.9, 0.7)] + [_run("resnet18", "linear", v) for v in (0.6, 0.5)]
    figures.strategy_figure(runs, "balanced_accuracy", "balanced accuracy", "s.png")
    text = drawn["s.png"]
    assert "full\nn = 3" in text and "linear\nn = 2" in text
    assert "balanced accuracy (validation fold)" in text and "strategy" in text and "backbone: resnet18" in text
    assert "chance\n(0.33)" in text and "median and quartiles" in text


def test_the_learning_curves_give_each_backbone_a_column_and_say_what_is_averaged(drawn, tmp_path):
    history = "epoch,val_balanced_accuracy,val_loss\n1,0.4,1.0\n2,0.6,0.8\n"
    runs = [_run(b, s, 0.5, tmp_path, history) for b in ("customcnn", "resnet18") for s in ("full", "linear")]
    figures.learning_curve_figure(runs, "balanced_accuracy", "balanced accuracy", "c.png")
    text = drawn["c.png"]
    assert "backbone: customcnn" in text and "backbone: resnet18" in text
    assert "validation balanced accuracy" in text and "validation loss (cross-entropy)" in text and "epoch" in text
    assert "mean ± sd over the runs" in text and "chance" in text
