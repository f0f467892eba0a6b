"""Summary statistics, the corrected resampled t-test and Holm's adjustment, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from medcli.errors import MedcliError
from medcli.report import corrected_resampled_ttest, holm, mean_sd, paired_differences

# Five paired differences (k * r = 5), folds with 80 training and 20 held-out samples:
#   mean             = (0.02 + 0.04 + 0.01 + 0.03 + 0.05) / 5 = 0.15 / 5 = 0.03
#   deviations       = -0.01, 0.01, -0.02, 0.00, 0.02 ; squares sum to 0.0001 + 0.0001 + 0.0004 + 0 + 0.0004 = 0.001
#   var (ddof=1)     = 0.001 / 4 = 0.00025
#   corrected var    = 0.00025 * (1/5 + 20/80) = 0.00025 * 0.45 = 0.0001125
#   t                = 0.03 / sqrt(0.0001125) = 3 / sqrt(1.125) = sqrt(8) = 2 * sqrt(2)
#   p (two-sided)    = 2 * P(T_4 > sqrt(8)). With 4 degrees of freedom the t CDF has the closed form
#                      F(t) = 1/2 + (3/8) * t / sqrt(1 + t^2/4) * (1 - t^2 / (12 * (1 + t^2/4))); at t^2 = 8 this is
#                      F = 1/2 + (3/8) * sqrt(8/3) * (7/9), so p = 2 * (1 - F) = 1 - (7/12) * sqrt(8/3) = 0.047421
#   95% interval     = 0.03 -/+ t_{0.975, 4} * sqrt(0.0001125) = 0.03 -/+ 2.776445 * 0.0106066
DIFFS = [0.02, 0.04, 0.01, 0.03, 0.05]
N_TRAIN, N_TEST = 80, 20
HAND_T = 2 * math.sqrt(2)
HAND_P = 1 - (7 / 12) * math.sqrt(8 / 3)
HAND_SE = math.sqrt(0.0001125)
T_975_DF4 = 2.7764451051977987  # the tabulated 97.5% quantile of Student's t with 4 degrees of freedom


def test_corrected_ttest_matches_hand_computation():
    r = corrected_resampled_ttest(DIFFS, N_TRAIN, N_TEST)
    assert r["n"] == 5 and r["df"] == 4 and r["note"] is None
    assert r["mean_diff"] == pytest.approx(0.03, abs=1e-15)
    assert r["t"] == pytest.approx(HAND_T, rel=1e-12)
    assert r["p"] == pytest.approx(HAND_P, rel=1e-10)
    assert HAND_P == pytest.approx(0.047421, abs=1e-6)
    assert r["p"] == pytest.approx(2 * sps.t.sf(HAND_T, 4), rel=1e-10)
    assert r["ci_low"] == pytest.approx(0.03 - T_975_DF4 * HAND_SE, rel=1e-9)
    assert r["ci_high"] == pytest.approx(0.03 + T_975_DF4 * HAND_SE, rel=1e-9)
    assert r["ci_low"] == pytest.approx(0.000551, abs=1e-6)
    assert r["ci_high"] == pytest.approx(0.059449, abs=1e-6)


def test_correction_is_conservative():
    # The uncorrected (naive paired) test divides var = 0.00025 by n = 5 only: se = sqrt(0.00005) and
    # t = 0.03 / sqrt(0.00005) = 3 * sqrt(2), larger than the corrected 2 * sqrt(2).
    naive_t = 0.03 / math.sqrt(0.00025 / 5)
    assert naive_t == pytest.approx(3 * math.sqrt(2))
    assert sps.ttest_1samp(DIFFS, 0.0).statistic == pytest.approx(naive_t)
    r = corrected_resampled_ttest(DIFFS, N_TRAIN, N_TEST)
    assert abs(r["t"]) < naive_t
    assert r["p"] > sps.ttest_1samp(DIFFS, 0.0).pvalue


def test_corrected_ttest_sign_and_symmetry():
    a = corrected_resampled_ttest(DIFFS, N_TRAIN, N_TEST)
    b = corrected_resampled_ttest([-d for d in DIFFS], N_TRAIN, N_TEST)
    assert b["t"] == pytest.approx(-a["t"]) and b["p"] == pytest.approx(a["p"])
    assert b["ci_low"] == pytest.approx(-a["ci_high"]) and b["ci_high"] == pytest.approx(-a["ci_low"])
    # a larger held-out share means stronger overlap correction, hence a smaller |t|
    assert abs(corrected_resampled_ttest(DIFFS, 50, 50)["t"]) < abs(a["t"])


@pytest.mark.parametrize("diffs, note", [
    ([], "n=0: too few paired results for a test"),
    ([0.1], "n=1: too few paired results for a test"),
    ([0.1, 0.2], "n=2: too few paired results for a test"),
    ([0.1, 0.1, 0.1, 0.1], "all differences identical"),
    ([0.0, 0.0, 0.0], "all differences identical"),
])
def test_corrected_ttest_degenerate_inputs_give_a_note(diffs, note):
    r = corrected_resampled_ttest(diffs, N_TRAIN, N_TEST)
    assert r["note"] == note
    assert r["t"] is None and r["p"] is None and r["ci_low"] is None and r["ci_high"] is None
    assert r["n"] == len(diffs)
    assert r["mean_diff"] == (pytest.approx(np.mean(diffs)) if diffs else None)


@pytest.mark.parametrize("kwargs", [
    {"diffs": [0.1, float("nan"), 0.2], "n_train": 80, "n_test": 20},
    {"diffs": DIFFS, "n_train": 0, "n_test": 20},
    {"diffs": DIFFS, "n_train": 80, "n_test": -1},
    {"diffs": DIFFS, "n_train": 80, "n_test": 20, "confidence": 1.0},
])
def test_corrected_ttest_rejects_bad_input(kwargs):
    with pytest.raises(MedcliError):
        corrected_resampled_ttest(**kwargs)


def test_holm_hand_example():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_order_of_raw_pvalues():
    # sorted: 0.2 * 3 = 0.6, 0.3 * 2 = 0.6, 0.9 * 1 = 0.9 ; and 0.5 * 3 = 1.5 -> 1
    assert holm([0.9, 0.2, 0.3]) == pytest.approx([0.9, 0.6, 0.6])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20)
    adj = np.array(holm(p.tolist()))
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)


def test_holm_passes_missing_values_through():
    # m = 3 (None and NaN are not counted): 0.01 * 3 = 0.03, 0.04 * 2 = 0.08, 0.5 * 1 = 0.5
    assert holm([0.04, None, 0.01, float("nan"), 0.5]) == [pytest.approx(0.08), None, pytest.approx(0.03), None,
                                                           pytest.approx(0.5)]
    assert holm([]) == []
    assert holm([None]) == [None]
    assert holm([0.02]) == [pytest.approx(0.02)]
    with pytest.raises(MedcliError):
        holm([0.1, 1.5])


def test_mean_sd_exact():
    # values 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; sd = sqrt(42/9 / 2) = sqrt(7/3)
    r = mean_sd([1.0, 2.0, None, float("nan"), 4.0])
    assert r["n"] == 3
    assert r["mean"] == pytest.approx(7 / 3, rel=1e-15)
    assert r["sd"] == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    assert mean_sd([None, float("nan")]) == {"mean": None, "sd": None, "n": 0}
    assert mean_sd(np.array([0.8, 0.8])) == {"mean": pytest.approx(0.8), "sd": 0.0, "n": 2}


def test_paired_differences_matches_common_keys_sorted():
    a = {(1, 0): 0.9, (0, 1): 0.8, (0, 0): 0.7, (2, 0): 0.5, (1, 1): None}
    b = {(0, 0): 0.6, (1, 0): 0.85, (0, 1): 0.9, (3, 0): 0.1, (1, 1): 0.4}
    diffs, keys = paired_differences(a, b)
    assert keys == [(0, 0), (0, 1), (1, 0)]
    np.testing.assert_allclose(diffs, [0.1, -0.1, 0.05])
    assert diffs.dtype == np.float64
    empty, none = paired_differences({}, b)
    assert empty.shape == (0,) and none == []
