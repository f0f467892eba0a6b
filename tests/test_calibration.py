"""Softmax, temperature scaling (fitted on validation data only) and reliability bins."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from medcli.errors import MedcliError
from medcli.evaluation import apply_temperature, expected_calibration_error, fit_temperature, reliability_bins, softmax
from medcli.evaluation.calibration import TEMPERATURE_BOUNDS, temperature_nll


def _gaussian_logits(n: int, seed: int, n_classes: int = 3, mu: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``mu * onehot(y) + N(0, 2)``: for these, the Bayes posterior is ``softmax(mu / sigma^2 * z)``
    = ``softmax(z)``, so the raw logits are calibrated (T = 1) and ``5 * z`` needs T = 5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    z = mu * np.eye(n_classes)[y] + rng.normal(scale=np.sqrt(mu), size=(n, n_classes))
    return z, y


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(softmax(np.log([[1.0, 3.0]])), [[0.25, 0.75]])
    np.testing.assert_allclose(apply_temperature(np.log([[1.0, 3.0]]), 1.0), [[0.25, 0.75]])
    # T = 2 takes square roots of the odds: 1 : sqrt(3)
    np.testing.assert_allclose(apply_temperature(np.log([[1.0, 3.0]]), 2.0), [[1 / (1 + 3**0.5), 3**0.5 / (1 + 3**0.5)]])


def test_temperature_fixes_an_over_confident_model():
    val_z, val_y = _gaussian_logits(3000, seed=1)
    test_z, test_y = _gaussian_logits(3000, seed=2)
    val_z, test_z = 5 * val_z, 5 * test_z  # over-confident by a factor of 5
    t = fit_temperature(val_z, val_y)
    assert t > 1
    assert t == pytest.approx(5.0, rel=0.15)
    assert temperature_nll(val_z, val_y, t) < temperature_nll(val_z, val_y, 1.0)
    assert temperature_nll(test_z, test_y, t) < temperature_nll(test_z, test_y, 1.0)
    before = expected_calibration_error(test_y, softmax(test_z))
    after = expected_calibration_error(test_y, apply_temperature(test_z, t))
    assert after < before / 2
    # The argmax, and so accuracy, does not move.
    np.testing.assert_array_equal(apply_temperature(test_z, t).argmax(1), test_z.argmax(1))


def test_nll_matches_the_textbook_formula():
    z, y = _gaussian_logits(50, seed=6)
    for t in (0.3, 1.0, 4.0):
        expected = -np.mean(np.log(softmax(z / t)[np.arange(len(y)), y]))
        assert temperature_nll(z, y, t) == pytest.approx(expected, rel=1e-12)


def test_calibrated_model_keeps_temperature_near_one():
    z, y = _gaussian_logits(3000, seed=3)
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.15)


def test_fitting_uses_validation_data_only_and_is_deterministic():
    val_z, val_y = _gaussian_logits(500, seed=4)
    val_z *= 5
    val_z_copy, val_y_copy = val_z.copy(), val_y.copy()
    assert list(inspect.signature(fit_temperature).parameters) == ["val_logits", "val_y"]
    t1 = fit_temperature(val_z, val_y)

    # Whatever happens to a separate test set cannot influence T ...
    test_z, test_y = _gaussian_logits(500, seed=5)
    rng = np.random.default_rng(0)
    test_y[:] = rng.permutation(test_y)
    test_z[:] = rng.normal(scale=100, size=test_z.shape)
    t2 = fit_temperature(val_z, val_y)
    assert t1 == t2
    np.testing.assert_array_equal(val_z, val_z_copy)  # inputs are not modified
    np.testing.assert_array_equal(val_y, val_y_copy)

    # ... while the validation labels do: with poisoned (shuffled) labels the best T is much larger.
    assert fit_temperature(val_z, np.random.default_rng(1).permutation(val_y)) > 3 * t1


def test_separable_data_hits_the_lower_bound():
    # Every sample correct: the NLL keeps falling as T shrinks (tiny but representable losses).
    z = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert temperature_nll(z, np.array([0, 1]), 0.05) > 0
    assert fit_temperature(z, np.array([0, 1])) == TEMPERATURE_BOUNDS[0]


@pytest.mark.parametrize(("z", "y", "match"), [
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "zero"),
    (np.zeros((2, 3)), np.array([0, 3]), "labels"),
    (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
    (np.zeros(3), np.array([0]), "shape"),
])
def test_invalid_logits_are_user_errors(z, y, match):
    with pytest.raises(MedcliError, match=match):
        fit_temperature(z, y)


def test_invalid_temperature_is_a_user_error():
    with pytest.raises(MedcliError, match="positive"):
        apply_temperature(np.zeros((1, 2)), 0.0)


def test_reliability_bins_by_hand():
    # confidences .9 .9 .95 .7 .7 .7, correct 1 0 1 1 1 0
    y = np.array([1, 0, 0, 1, 1, 0])
    p1 = np.array([0.9, 0.9, 0.05, 0.7, 0.7, 0.7])
    bins = reliability_bins(y, np.column_stack([1 - p1, p1]))
    assert len(bins) == 15
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    assert sum(b["count"] for b in bins) == 6
    full = {i: b for i, b in enumerate(bins) if b["count"]}
    assert sorted(full) == [10, 13, 14]  # (10/15, 11/15], (13/15, 14/15], (14/15, 1]
    assert full[10]["count"] == 3 and full[10]["accuracy"] == pytest.approx(2 / 3)
    assert full[10]["confidence"] == pytest.approx(0.7)
    assert full[13]["accuracy"] == pytest.approx(0.5) and full[14]["confidence"] == pytest.approx(0.95)
    assert bins[5]["accuracy"] is None and bins[5]["confidence"] is None
    assert expected_calibration_error(y, np.column_stack([1 - p1, p1])) == pytest.approx(0.95 / 6)


def test_bins_are_closed_on_the_right():
    # A confidence of exactly 0.5 belongs to (0.4, 0.5] with 10 bins, and 1.0 to the last bin.
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    bins = reliability_bins(np.array([0, 0]), p, n_bins=10)
    assert bins[4]["count"] == 1 and bins[9]["count"] == 1
