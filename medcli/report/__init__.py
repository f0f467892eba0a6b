"""Reporting across cross-validation runs: summary statistics and model comparisons."""

from .stats import corrected_resampled_ttest, holm, mean_sd, paired_differences

__all__ = [
    "corrected_resampled_ttest",
    "holm",
    "mean_sd",
    "paired_differences",
]
