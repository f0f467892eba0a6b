"""Probability calibration: softmax, temperature scaling and reliability statistics.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides the logits by one
scalar ``T > 0`` before the softmax. ``T`` is fitted by minimising the negative log-likelihood on the
*validation* set only; :func:`fit_temperature` takes nothing else, so test data cannot leak into it.

The expected calibration error follows the same paper (and the widely used ``_ECELoss`` reference
implementation): confidences are the maximum class probability, binned into ``n_bins`` equal-width bins
``(lo, hi]``, and ``ECE = sum_b |accuracy_b - confidence_b| * n_b / N``.
"""

from __future__ import annotations

import numpy as np

from ..errors import MedcliError

#: Search interval for the fitted temperature. Below 0.05 or above 20 the model's scores are degenerate
#: (perfectly separated, or uninformative) and the bound is returned.
TEMPERATURE_BOUNDS = (0.05, 20.0)
DEFAULT_N_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, stable for arbitrarily large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def _check_logits(logits, y) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise MedcliError(f"logits must have shape (samples, classes) with at least 2 classes, got shape {z.shape}")
    if z.shape[0] == 0:
        raise MedcliError("cannot fit a temperature on zero validation samples")
    if not np.all(np.isfinite(z)):
        raise MedcliError("logits contain NaN or infinite values")
    y = np.asarray(y)
    if y.shape != (z.shape[0],):
        raise MedcliError(f"labels must have shape ({z.shape[0]},) to match the logits, got {y.shape}")
    if y.dtype.kind not in "iub" or y.min() < 0 or y.max() >= z.shape[1]:
        raise MedcliError(f"labels must be integers in [0, {z.shape[1] - 1}]")
    return z, y.astype(np.intp)


def temperature_nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` (natural log)."""
    z, y = _check_logits(logits, y)
    return _nll(z, y, float(temperature))


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    # -log p_y = log sum_k exp(d_k) with d = (z - z_y) / T, written as max(d) + log1p(sum of the other terms) so
    # that confidently correct samples contribute their tiny loss instead of rounding to exactly 0.
    rows = np.arange(len(y))
    d = z / temperature
    d -= d[rows, y][:, None]
    top = d.argmax(axis=1)
    m = d[rows, top]
    e = np.exp(d - m[:, None])
    e[rows, top] = 0.0
    return float(np.mean(m + np.log1p(e.sum(axis=1))))


def fit_temperature(val_logits: np.ndarray, val_y: np.ndarray) -> float:
    """The temperature ``T`` minimising validation NLL of ``softmax(val_logits / T)``.

    The search is a bounded scalar minimisation over ``log T`` in :data:`TEMPERATURE_BOUNDS`. The NLL is
    convex in ``1/T``, hence unimodal in ``log T``, so the bounded Brent search finds the global minimum; it
    involves no randomness, so the same inputs always give the same ``T``.

    ``T > 1`` softens over-confident predictions, ``T < 1`` sharpens under-confident ones. The argmax (and so
    accuracy) is unchanged by any ``T``.
    """
    from scipy.optimize import minimize_scalar  # here: ~0.3 s that training (which imports this module) never needs

    z, y = _check_logits(val_logits, val_y)
    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    res = minimize_scalar(lambda log_t: _nll(z, y, float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-7})
    best = float(np.exp(res.x))
    # Brent's method never evaluates the interval ends; check them so a degenerate model gets the bound.
    for edge in TEMPERATURE_BOUNDS:
        if _nll(z, y, edge) < _nll(z, y, best):
            best = float(edge)
    return best


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)``."""
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise MedcliError(f"temperature must be a positive finite number, got {temperature}")
    return softmax(np.asarray(logits, dtype=np.float64) / t)


def _confidence_and_correct(y, probs) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise MedcliError(f"probabilities must have shape (samples, classes) matching labels of shape {y.shape}, got {p.shape}")
    return p.max(axis=1), (p.argmax(axis=1) == y)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin ``i`` holds confidences in ``(i / n_bins, (i + 1) / n_bins]``; a confidence of exactly 0 goes to bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def _bin_sums(y, probs, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if int(n_bins) != n_bins or n_bins < 1:
        raise MedcliError(f"n_bins must be a positive integer, got {n_bins}")
    conf, correct = _confidence_and_correct(y, probs)
    idx = _bin_index(conf, int(n_bins))
    count = np.bincount(idx, minlength=n_bins)
    hits = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return count, hits, conf_sum


def expected_calibration_error(y, probs, n_bins: int = DEFAULT_N_BINS) -> float:
    """ECE of the top-class confidence with ``n_bins`` equal-width bins (see the module docstring)."""
    count, hits, conf_sum = _bin_sums(y, probs, n_bins)
    n = count.sum()
    if n == 0:
        raise MedcliError("cannot compute the calibration error of zero samples")
    return float(np.sum(np.abs(hits - conf_sum)) / n)


def reliability_bins(y, probs, n_bins: int = DEFAULT_N_BINS) -> list[dict]:
    """Per-bin statistics for a reliability diagram.

    Returns one dict per bin, in order: ``lo``, ``hi`` (the bin is ``(lo, hi]``), ``count``, ``accuracy``
    (fraction of argmax predictions that are correct) and ``confidence`` (mean top-class probability).
    ``accuracy`` and ``confidence`` are ``None`` for an empty bin.
    """
    count, hits, conf_sum = _bin_sums(y, probs, n_bins)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    out = []
    for i in range(int(n_bins)):
        c = int(count[i])
        out.append({
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "count": c,
            "accuracy": float(hits[i] / c) if c else None,
            "confidence": float(conf_sum[i] / c) if c else None,
        })
    return out
