"""The data stage: index datasets in any common layout, decode and check every image, find duplicates,
materialize decoded images into a uint8 store, and make synthetic datasets.

Submodules: ``layouts`` (indexing), ``classes`` (class-name reconciliation), ``decode`` (image modes),
``scan`` (per-file checks and hashes, cached), ``duplicates`` (exact/near duplicate search), ``inspect``
(the report), ``store`` (materialized images), ``synth`` (synthetic data).
"""

from __future__ import annotations

import os

from .duplicates import DEFAULT_NEAR_THRESHOLD
from .layouts import LAYOUTS, Dataset, Sample, load_dataset
from .scan import ScanRecord, require_readable, scan_dataset

__all__ = [
    "DEFAULT_NEAR_THRESHOLD", "LAYOUTS", "Dataset", "Sample", "ScanRecord",
    "inspect_data", "load_dataset", "require_readable", "scan_dataset",
]


def inspect_data(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    aliases: dict[str, str] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict:
    """Index, decode and check every image of the dataset at ``path``; return the inspection report."""
    from .inspect import build_report, duplicates_of

    dataset = load_dataset(path, layout, aliases)
    records = scan_dataset(dataset, cache_dir, workers)
    return build_report(dataset, records, duplicates_of(dataset, records, near_threshold))
