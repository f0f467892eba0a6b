"""Statistics for the cross-validated comparison table.

Scores from repeated k-fold cross-validation are not independent: every pair of folds shares most of its
training data, so a plain paired t-test over the ``k * r`` per-fold differences underestimates their
variance and reports differences as significant far too often. :func:`corrected_resampled_ttest` applies
the correction of Nadeau & Bengio (2003, "Inference for the Generalization Error", Machine Learning 52),
in the form used by scikit-learn's example "Statistical comparison of models using grid search"::

    corrected variance = var(diffs, ddof=1) * (1 / (k * r) + n_test / n_train)

where ``n_train`` and ``n_test`` are the sizes of the training and held-out parts of one fold. The test
statistic ``mean(diffs) / sqrt(corrected variance)`` is compared with a Student t distribution with
``k * r - 1`` degrees of freedom.

When several comparisons are reported together, :func:`holm` adjusts their p-values for multiple testing.
"""

from __future__ import annotations

import math
from typing import Hashable, Iterable, Mapping

import numpy as np
from scipy import stats as sps

from ..errors import MedcliError

#: The smallest number of paired results for which :func:`corrected_resampled_ttest` reports a test.
MIN_PAIRED_RESULTS = 3


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def mean_sd(values: Iterable[float | None]) -> dict:
    """Mean, sample standard deviation (``ddof=1``) and count of ``values``.

    ``None`` and NaN entries are ignored and not counted in ``n``. ``sd`` is ``None`` when fewer than two
    values remain, and ``mean`` is ``None`` when none remain.
    """
    kept = [float(v) for v in values if not _is_missing(v)]
    n = len(kept)
    if any(math.isinf(v) for v in kept):
        raise MedcliError("cannot summarise infinite values; check the scores for a failed run")
    mean = float(np.mean(kept)) if n else None
    sd = float(np.std(kept, ddof=1)) if n >= 2 else None
    return {"mean": mean, "sd": sd, "n": n}


def corrected_resampled_ttest(diffs, n_train: int, n_test: int, *, confidence: float = 0.95) -> dict:
    """Nadeau & Bengio's corrected resampled t-test on paired score differences (see the module docstring).

    Args:
        diffs: one score difference (model A minus model B) per resample, i.e. per (seed, fold) pair; the
            number of resamples is ``k * r = len(diffs)``.
        n_train: number of training samples in one fold.
        n_test: number of held-out samples in one fold.
        confidence: coverage of the confidence interval for the mean difference.

    Returns a dict with ``mean_diff``, ``t``, ``df``, ``p`` (two-sided), ``ci_low`` and ``ci_high`` (from
    the same corrected standard error and the t quantile), ``n`` and ``note``. With fewer than
    :data:`MIN_PAIRED_RESULTS` differences, or when all differences are identical (zero variance), ``t``,
    ``p`` and the interval are ``None`` and ``note`` says why; otherwise ``note`` is ``None``.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if not np.all(np.isfinite(d)):
        raise MedcliError("paired differences contain NaN or infinite values; drop the unmatched or failed runs first")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise MedcliError(f"{name} must be a positive number of samples, got {value!r}")
    if not 0.0 < confidence < 1.0:
        raise MedcliError(f"confidence must be between 0 and 1, got {confidence}")

    n = int(d.size)
    out: dict = {"mean_diff": float(d.mean()) if n else None, "t": None, "df": n - 1 if n >= 2 else None,
                 "p": None, "ci_low": None, "ci_high": None, "n": n, "note": None}
    if n < MIN_PAIRED_RESULTS:
        out["note"] = f"n={n}: too few paired results for a test"
        return out
    # Not var == 0: differences that agree up to floating-point noise (scores rounded to a few digits, then
    # subtracted) leave a tiny non-zero variance and an absurd t. A spread below 1e-9 is no spread.
    if np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):
        out["note"] = "all differences identical"
        return out

    df = n - 1
    corrected_var = float(np.var(d, ddof=1)) * (1.0 / n + float(n_test) / float(n_train))
    se = math.sqrt(corrected_var)
    mean = out["mean_diff"]
    t_stat = mean / se
    half_width = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se
    out.update({
        "t": float(t_stat),
        "df": df,
        "p": float(min(1.0, 2.0 * sps.t.sf(abs(t_stat), df))),
        "ci_low": mean - half_width,
        "ci_high": mean + half_width,
    })
    return out


def holm(pvalues: Iterable[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the ``m`` available p-values sorted ascending, the ``i``-th smallest (1-based) is multiplied by
    ``m - i + 1``; a running maximum keeps the adjusted values monotone in the raw ones, and they are capped
    at 1. ``None`` (or NaN) entries stay ``None`` and do not count towards ``m``.
    """
    raw = list(pvalues)
    present = [i for i, p in enumerate(raw) if not _is_missing(p)]
    for i in present:
        if not 0.0 <= float(raw[i]) <= 1.0:
            raise MedcliError(f"p-values must lie in [0, 1], got {raw[i]} at position {i}")
    adjusted: list[float | None] = [None] * len(raw)
    m = len(present)
    order = sorted(present, key=lambda i: float(raw[i]))  # stable: ties keep their input order
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(raw[i])))
        adjusted[i] = running
    return adjusted


def paired_differences(scores_a: Mapping[Hashable, float | None],
                       scores_b: Mapping[Hashable, float | None]) -> tuple[np.ndarray, list]:
    """Per-resample differences ``scores_a[key] - scores_b[key]`` over the keys present in both mappings.

    Keys are typically ``(seed, fold)`` tuples. The matched keys are returned sorted, alongside the
    differences in the same order. A key whose score is ``None`` or NaN in either mapping (a metric that was
    undefined on that fold) is left out, as there is no difference to pair.
    """
    keys = sorted(k for k in scores_a.keys() & scores_b.keys()
                  if not _is_missing(scores_a[k]) and not _is_missing(scores_b[k]))
    diffs = np.array([float(scores_a[k]) - float(scores_b[k]) for k in keys], dtype=np.float64)
    return diffs, keys
