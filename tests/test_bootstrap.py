"""Bootstrap confidence intervals and the fast headline metrics behind them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medcli.errors import MedcliError
from medcli.evaluation import bootstrap_ci, compute_metrics, draw_indices, headline_metric_fns, softmax


def _predictions(n: int, n_classes: int, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    if ties:  # coarse probabilities: many tied scores per column, and tied argmaxes
        w = rng.integers(1, 4, size=(n, n_classes)) + 2 * np.eye(n_classes, dtype=int)[y] * rng.integers(0, 2, n)[:, None]
        return y, w / w.sum(axis=1, keepdims=True)
    return y, softmax(rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[y])


def test_stratified_draws_keep_class_counts():
    y = np.array([0] * 7 + [1] * 2 + [2] * 11)
    idx = draw_indices(y, 200, np.random.default_rng(0), stratified=True)
    assert idx.shape == (200, 20)
    for row in idx:
        np.testing.assert_array_equal(np.bincount(y[row], minlength=3), [7, 2, 11])
    assert len({tuple(row) for row in idx}) > 150  # the draws do vary

    plain = draw_indices(y, 200, np.random.default_rng(0), stratified=False)
    assert plain.shape == (200, 20) and plain.min() >= 0 and plain.max() < 20
    assert any(np.bincount(y[row], minlength=3)[1] != 2 for row in plain)


def test_interval_contains_estimate_and_is_reproducible():
    y, p = _predictions(200, 3)
    fns = headline_metric_fns(["a", "b", "c"])
    r1 = bootstrap_ci(y, p, fns, n_resamples=300, seed=7)
    assert set(r1) == set(fns)
    for name, ci in r1.items():
        assert set(ci) == {"estimate", "low", "high", "n_resamples", "n_valid"}
        assert ci["low"] <= ci["estimate"] <= ci["high"], name
        assert ci["n_resamples"] == ci["n_valid"] == 300
    assert r1["accuracy"]["high"] - r1["accuracy"]["low"] > 0.02
    assert bootstrap_ci(y, p, fns, n_resamples=300, seed=7) == r1
    r2 = bootstrap_ci(y, p, fns, n_resamples=300, seed=8)
    assert r2["accuracy"]["estimate"] == r1["accuracy"]["estimate"]
    assert (r2["accuracy"]["low"], r2["roc_auc"]["high"]) != (r1["accuracy"]["low"], r1["roc_auc"]["high"])


def test_wider_alpha_gives_narrower_interval():
    y, p = _predictions(150, 2)
    fns = {"accuracy": headline_metric_fns(["n", "p"])["accuracy"]}
    wide = bootstrap_ci(y, p, fns, n_resamples=400, alpha=0.05)["accuracy"]
    narrow = bootstrap_ci(y, p, fns, n_resamples=400, alpha=0.5)["accuracy"]
    assert wide["low"] <= narrow["low"] <= narrow["high"] <= wide["high"]


def test_resamples_where_a_metric_is_undefined_are_skipped_and_counted():
    # One sample of class 1 in 20: an unstratified resample misses it with probability (19/20)^20 ~ 36%.
    y = np.array([0] * 19 + [1])
    p = np.column_stack([np.linspace(0.9, 0.2, 20), np.linspace(0.1, 0.8, 20)])
    fns = headline_metric_fns(["n", "p"])
    r = bootstrap_ci(y, p, fns, n_resamples=500, seed=0, stratified=False)
    assert 100 < 500 - r["roc_auc"]["n_valid"] < 260
    assert r["sensitivity"]["n_valid"] == r["roc_auc"]["n_valid"]
    assert r["accuracy"]["n_valid"] == 500
    assert r["roc_auc"]["estimate"] == pytest.approx(1.0)
    # Stratified resampling always keeps the single positive.
    assert bootstrap_ci(y, p, fns, n_resamples=100, seed=0)["roc_auc"]["n_valid"] == 100


def test_metric_undefined_everywhere_gives_nulls():
    y, p = _predictions(30, 2)

    def never(y, p):
        raise ValueError("undefined")

    r = bootstrap_ci(y, p, {"never": never}, n_resamples=20)["never"]
    assert r == {"estimate": None, "low": None, "high": None, "n_resamples": 20, "n_valid": 0}


def test_bad_arguments_are_user_errors():
    y, p = _predictions(30, 2)
    with pytest.raises(MedcliError):
        bootstrap_ci(y, p, {}, alpha=1.5)
    with pytest.raises(MedcliError):
        bootstrap_ci(y, p, {}, n_resamples=0)
    with pytest.raises(MedcliError):
        bootstrap_ci(y[:0], p[:0], {})


@pytest.mark.parametrize(("n_classes", "threshold", "ties", "drop"), [
    (2, None, False, None),
    (2, 0.3, True, None),
    (4, None, False, None),
    (4, None, True, None),
    (4, None, True, 2),  # class 2 absent from y_true: macro AUC/AP over the rest
])
def test_headline_metrics_agree_with_compute_metrics(n_classes, threshold, ties, drop):
    y, p = _predictions(120, n_classes, seed=n_classes, ties=ties)
    if drop is not None:
        y, p = y[y != drop], p[y != drop]
    classes = [f"c{i}" for i in range(n_classes)]
    full = compute_metrics(y, p, classes, threshold=threshold)
    fns = headline_metric_fns(classes, threshold=threshold)
    expected_names = {"accuracy", "balanced_accuracy", "macro_f1", "mcc", "roc_auc", "pr_auc", "log_loss", "brier", "ece"}
    if n_classes == 2:
        expected_names |= {"sensitivity", "specificity"}
    assert set(fns) == expected_names
    for name, fn in fns.items():
        assert fn(y, p) == pytest.approx(full[name], abs=1e-12), name


def test_bootstrap_is_fast_enough():
    y, p = _predictions(300, 4)
    start = time.perf_counter()
    r = bootstrap_ci(y, p, headline_metric_fns(list("abcd")), n_resamples=1000)
    assert time.perf_counter() - start < 5.0
    assert r["roc_auc"]["n_valid"] == 1000



def test_blocked_resampling_is_complete_and_independent_of_the_metric_set(monkeypatch):
    import medcli.evaluation.bootstrap as bs

    y, p = _predictions(100, 3)
    fns = headline_metric_fns(["a", "b", "c"])
    monkeypatch.setattr(bs, "_BLOCK_ELEMENTS", 100 * 7)  # blocks of 7 resamples; 50 is not a multiple
    r = bootstrap_ci(y, p, fns, n_resamples=50)
    assert all(ci["n_valid"] == 50 for ci in r.values())
    # The resamples depend on the seed only, not on which metrics are evaluated on them.
    assert bootstrap_ci(y, p, {"accuracy": fns["accuracy"]}, n_resamples=50)["accuracy"] == r["accuracy"]
