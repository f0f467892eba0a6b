"""Reporting across cross-validation runs: summary statistics, model comparisons and ``summary.md``."""

from .build import write_report
from .stats import corrected_resampled_ttest, holm, mean_sd, paired_differences

__all__ = [
    "corrected_resampled_ttest",
    "holm",
    "mean_sd",
    "paired_differences",
    "write_report",
]
