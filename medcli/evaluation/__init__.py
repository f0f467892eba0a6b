"""Evaluation of predicted class probabilities: metrics, calibration and bootstrap confidence intervals.

Everything here is a pure function on numpy arrays; reading predictions and writing reports live elsewhere.
"""

from .bootstrap import bootstrap_ci, draw_indices, headline_metric_fns
from .calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability_bins, softmax
from .metrics import compute_metrics, predict_labels, youden_threshold

__all__ = [
    "apply_temperature",
    "bootstrap_ci",
    "compute_metrics",
    "draw_indices",
    "expected_calibration_error",
    "fit_temperature",
    "headline_metric_fns",
    "predict_labels",
    "reliability_bins",
    "softmax",
    "youden_threshold",
]
