"""The scalar-metric registry: one entry makes a metric appear in metrics JSON, the summary and --primary."""

from __future__ import annotations

import numpy as np
import pytest

from medcli.evaluation import metrics as metrics_mod
from medcli.evaluation.metrics import MetricInfo, compute_metrics, list_metrics, register_metric
from medcli.report import collect, markdown, summary  # their metric lists are derived from the registry on import


@pytest.fixture
def top2_registered():
    info = MetricInfo("top2_accuracy", "top-2 accuracy",
                      lambda y, p, pred, labels: float(np.mean([yi in np.argsort(-pi)[:2] for yi, pi in zip(y, p)])))
    register_metric(info)
    yield info
    del metrics_mod._METRICS._entries[info.name]


def test_a_registered_metric_is_computed_and_listed(top2_registered):
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    out = compute_metrics(y, p, ["a", "b", "c"])
    assert out["top2_accuracy"] == pytest.approx(0.75)  # the last image's true class is third
    listed = {m.name: m for m in list_metrics()}
    assert listed["top2_accuracy"].report and listed["top2_accuracy"].primary and listed["top2_accuracy"].label == "top-2 accuracy"


def test_registry_drives_the_report_constants():
    names = [m.name for m in list_metrics()]
    assert list(collect.METRICS) == [m.name for m in list_metrics() if m.report]
    assert summary.LOWER_IS_BETTER == {m.name for m in list_metrics() if m.lower_is_better} >= {"log_loss", "brier", "ece"}
    assert set(summary.PRIMARY_CHOICES) <= set(names) and "sensitivity" not in summary.PRIMARY_CHOICES
    assert all(markdown.metric_label(n) for n in names)


def test_binary_only_metrics_appear_only_for_two_classes():
    y2, p2 = np.array([0, 1, 1, 0]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    binary = compute_metrics(y2, p2, ["neg", "pos"])
    assert {"sensitivity", "specificity", "brier_positive"} <= set(binary)
    assert binary["sensitivity"] == 0.5 and binary["specificity"] == 0.5
    multi = compute_metrics(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])
    assert not {"sensitivity", "specificity", "brier_positive"} & set(multi)
    assert multi["accuracy"] == 1.0 and multi["log_loss"] == pytest.approx(0.0, abs=1e-9)


def test_duplicate_metric_names_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_metric(MetricInfo("accuracy", "accuracy again"))
