"""Classification metrics against values worked out by hand, plus the degenerate cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medcli.errors import MedcliError
from medcli.evaluation import compute_metrics, predict_labels, youden_threshold

# Three classes, eight samples. Argmax predictions: [0, 0, 1, 1, 1, 1, 2, 0].
CLASSES3 = ["a", "b", "c"]
Y3 = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P3 = np.array([
    [0.8, 0.1, 0.1],
    [0.6, 0.3, 0.1],
    [0.3, 0.6, 0.1],  # a predicted as b
    [0.1, 0.8, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.6, 0.3],
    [0.1, 0.2, 0.7],
    [0.5, 0.2, 0.3],  # c predicted as a
])

# Binary, eight samples; p(positive) per sample. Argmax predictions: [0, 0, 0, 1, 1, 0, 1, 1].
YB = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PB1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.35, 0.9, 0.6])
PB = np.column_stack([1 - PB1, PB1])


def test_multiclass_label_metrics_by_hand():
    m = compute_metrics(Y3, P3, CLASSES3)
    # Confusion matrix, rows = true class: a -> [2, 1, 0], b -> [0, 3, 0], c -> [1, 0, 1].
    assert m["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert m["confusion_matrix"]["labels"] == CLASSES3
    np.testing.assert_allclose(m["confusion_matrix"]["normalized"], [[2 / 3, 1 / 3, 0], [0, 1, 0], [0.5, 0, 0.5]])
    assert m["n"] == 8 and m["task"] == "multiclass" and m["threshold"] is None
    assert m["accuracy"] == pytest.approx(0.75)  # (2 + 3 + 1) / 8
    # recalls 2/3, 3/3, 1/2 -> (2/3 + 1 + 1/2) / 3 = 13/18
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    # precisions (columns) 2/3, 3/4, 1/1; F1: a = 2/3, b = 2*(3/4*1)/(3/4+1) = 6/7, c = 2*(1*1/2)/(1+1/2) = 2/3
    # macro F1 = (2/3 + 6/7 + 2/3) / 3 = 46/63
    assert m["macro_f1"] == pytest.approx(46 / 63)
    pc = m["per_class"]
    assert pc["b"]["precision"] == pytest.approx(0.75) and pc["b"]["recall"] == pytest.approx(1.0)
    assert pc["b"]["f1"] == pytest.approx(6 / 7) and pc["c"]["support"] == 2
    # Multiclass MCC: correct c = 6, s = 8, true counts t = [3, 3, 2], predicted counts p = [3, 4, 1]
    # (c*s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t)) = (48 - 23) / sqrt((64 - 26)(64 - 22)) = 25 / sqrt(1596)
    assert m["mcc"] == pytest.approx(25 / math.sqrt(1596))
    assert m["undefined"] == {} and m["notes"] == {}


def test_multiclass_probability_metrics_by_hand():
    m = compute_metrics(Y3, P3, CLASSES3)
    # p(true class) = .8 .6 .3 .8 .7 .6 .7 .3  ->  log loss = -(2 ln .8 + 2 ln .6 + 2 ln .3 + 2 ln .7) / 8
    #                                                     = -ln(.8 * .6 * .3 * .7) / 4 = -ln(0.1008) / 4
    assert m["log_loss"] == pytest.approx(-math.log(0.1008) / 4)
    # Brier, sum over classes per sample: .06 .26 .86 .06 .14 .26 .14 .78 (e.g. sample 3: .7^2 + .6^2 + .1^2)
    # total 2.56 / 8 = 0.32
    assert m["brier"] == pytest.approx(0.32)
    assert "brier_positive" not in m
    # OvR AUC of c: positives score .7 and .3; negatives .1 x5 and .3.
    # .7 beats all 6; .3 beats five, ties one (counts 1/2) -> (6 + 5.5) / (2 * 6) = 11.5 / 12
    assert m["per_class"]["c"]["roc_auc"] == pytest.approx(11.5 / 12)
    # The macro over complete classes equals scikit-learn's one-vs-rest macro AUC.
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y3, P3, multi_class="ovr", average="macro"))
    json.dumps(m, allow_nan=False)


def test_binary_metrics_by_hand():
    m = compute_metrics(YB, PB, ["benign", "malignant"])
    assert m["task"] == "binary" and m["positive_class"] == "malignant"
    # Argmax: TP = 3 (.7 .9 .6), FN = 1 (.35), FP = 1 (.8), TN = 3 (.1 .4 .35)
    assert m["confusion_matrix"]["counts"] == [[3, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(3 / 4)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    assert m["mcc"] == pytest.approx(0.5)
    # AUC by concordant pairs, positives .7 .35 .9 .6 vs negatives .1 .4 .35 .8:
    # .7 -> 3, .35 -> 1 + 1/2 (tie), .9 -> 4, .6 -> 3;  11.5 / 16
    assert m["roc_auc"] == pytest.approx(11.5 / 16)
    assert m["per_class"]["benign"]["roc_auc"] == pytest.approx(11.5 / 16)
    # Average precision of the positive class, ranking .9+ .8- .7+ .6+ .4- .35(+,-) .1-:
    # positives at precision 1/1, 2/3, 3/4 and 4/7 (end of the tied group) -> (1 + 2/3 + 3/4 + 4/7) / 4
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 7) / 4)
    # Positive-class Brier is half the two-class sum.
    assert m["brier_positive"] == pytest.approx(np.mean((PB1 - YB) ** 2))
    assert m["brier"] == pytest.approx(2 * m["brier_positive"])


def test_binary_threshold_changes_the_decision_rule():
    m = compute_metrics(YB, PB, ["neg", "pos"], threshold=0.35)
    # p >= .35 is positive: all four positives (TP 4), negatives .4 .35 .8 (FP 3), TN 1
    assert m["threshold"] == 0.35
    assert m["confusion_matrix"]["counts"] == [[1, 3], [0, 4]]
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(0.25)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["roc_auc"] == pytest.approx(11.5 / 16)  # ranking metrics ignore the threshold
    np.testing.assert_array_equal(predict_labels(PB, 0.35), [0, 1, 1, 1, 1, 1, 1, 1])


def test_ece_by_hand():
    # conf .9 x2 in bin (.8667, .9333]: acc 1/2 -> |.5 - .9| * 2
    # conf .95 in bin (.9333, 1]:        acc 1   -> |1 - .95| * 1
    # conf .7 x3 in bin (.6667, .7333]:  acc 2/3 -> |2/3 - .7| * 3
    # ECE = (.8 + .05 + .1) / 6
    y = np.array([1, 0, 0, 1, 1, 0])
    p1 = np.array([0.9, 0.9, 0.05, 0.7, 0.7, 0.7])
    m = compute_metrics(y, np.column_stack([1 - p1, p1]), ["n", "p"])
    assert m["ece"] == pytest.approx(0.95 / 6)


def test_youden_threshold_by_hand():
    # Thresholds .9 .8 .7 .6 .4 .35 .1 give (TP, FP) = (1,0) (1,1) (2,1) (3,1) (3,2) (4,3) (4,4);
    # J = TP/4 - FP/4 = .25 0 .25 .5 .25 .25 0 -> maximum at .6
    assert youden_threshold(YB, PB1) == pytest.approx(0.6)


def test_youden_ties_go_to_the_highest_threshold_and_never_infinity():
    # Thresholds .8 .6 .4 .2: J = .5, 0, .5, 0 -> the tie resolves to the first candidate, .8
    assert youden_threshold([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.8]) == pytest.approx(0.8)
    # An inverted scorer: every finite threshold has J <= 0, so the sentinel (inf) wins and is clipped.
    assert youden_threshold([1, 0], [0.2, 0.8]) == 1.0
    with pytest.raises(MedcliError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.8])


def test_class_absent_from_y_true_is_explained_not_fatal():
    keep = Y3 != 2
    y, p = Y3[keep], P3[keep]
    m = compute_metrics(y, p, CLASSES3)
    assert m["per_class"]["c"]["roc_auc"] is None and m["per_class"]["c"]["pr_auc"] is None
    assert "class absent from y_true" in m["undefined"]["roc_auc[c]"]
    assert "class absent from y_true" in m["undefined"]["pr_auc[c]"]
    assert "averages the 2 classes present" in m["undefined"]["roc_auc[c]"]
    expected = np.mean([roc_auc_score(y == k, p[:, k]) for k in (0, 1)])
    assert m["roc_auc"] == pytest.approx(expected)
    assert "2 of 3 classes" in m["notes"]["roc_auc"]
    assert "absent: c" in m["notes"]["balanced_accuracy"]
    assert m["confusion_matrix"]["normalized"][2] == [None, None, None]
    json.dumps(m, allow_nan=False)


def test_single_class_in_y_true_gives_null_macro_auc():
    m = compute_metrics(np.zeros(4, dtype=int), PB[:4], ["neg", "pos"])
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["sensitivity"] is None
    assert "absent" in m["undefined"]["roc_auc"]
    assert "every sample is 'neg'" in m["undefined"]["roc_auc[neg]"]
    assert m["specificity"] == pytest.approx(3 / 4)
    m3 = compute_metrics(np.ones(3, dtype=int), P3[:3], CLASSES3)
    assert m3["roc_auc"] is None and "fewer than 2 classes" in m3["undefined"]["roc_auc"]
    json.dumps(m3, allow_nan=False)


def test_one_predicted_class_does_not_crash():
    p = np.tile([0.7, 0.2, 0.1], (len(Y3), 1))
    m = compute_metrics(Y3, p, CLASSES3)
    assert m["accuracy"] == pytest.approx(3 / 8)
    assert m["mcc"] == 0.0 and "single class" in m["notes"]["mcc"]
    assert m["per_class"]["b"]["precision"] == 0.0
    assert m["roc_auc"] == pytest.approx(0.5)  # all scores tied
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize(("y", "p", "classes", "kwargs", "match"), [
    (np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"], {}, "zero samples"),
    (np.array([0, 1]), np.array([[0.5, 0.6], [0.5, 0.5]]), ["a", "b"], {}, "do not sum to 1"),
    (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), ["a", "b"], {}, "non-negative"),
    (np.array([0, 3]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"], {}, "class indices"),
    (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b", "c"], {}, "shape"),
    (np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"], {}, "integer"),
    (Y3, P3, CLASSES3, {"threshold": 0.5}, "binary"),
    (YB, PB, ["a", "b"], {"threshold": 1.5}, r"\[0, 1\]"),
])
def test_invalid_input_is_a_user_error(y, p, classes, kwargs, match):
    with pytest.raises(MedcliError, match=match):
        compute_metrics(y, p, classes, **kwargs)


def test_small_rounding_errors_are_tolerated():
    p = P3 * (1 + 5e-4)  # rows sum to 1.0005
    m = compute_metrics(Y3, p, CLASSES3)
    assert m["brier"] == pytest.approx(0.32, abs=1e-3)
    assert m["roc_auc"] == pytest.approx(compute_metrics(Y3, P3, CLASSES3)["roc_auc"])
