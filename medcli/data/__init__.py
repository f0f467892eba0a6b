"""The data stage: index datasets in any common layout, decode and check every image, find duplicates,
materialize decoded images into a uint8 store, and make synthetic datasets.

Submodules: ``layouts`` (indexing), ``classes`` (class-name reconciliation), ``decode`` (image modes, decode
options), ``dicom`` (the DICOM pixel pipeline and window presets),
``scan`` (per-file checks and hashes, cached), ``duplicates`` (exact/near duplicate search), ``inspect``
(the report), ``store`` (materialized images), ``synth`` (synthetic data).
"""

from __future__ import annotations

import os

from .decode import DecodeOptions
from .duplicates import DEFAULT_NEAR_THRESHOLD
from .layouts import GROUP_BY, LAYOUTS, Dataset, Sample, load_dataset
from .scan import ScanRecord, load_image, require_readable, scan_dataset

__all__ = [
    "DEFAULT_NEAR_THRESHOLD", "GROUP_BY", "LAYOUTS", "Dataset", "DecodeOptions", "Sample", "ScanRecord",
    "inspect_data", "load_dataset", "load_image", "require_readable", "scan_dataset",
]


def inspect_data(
    path: str | os.PathLike,
    *,
    layout: str = "auto",
    aliases: dict[str, str] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    decode: DecodeOptions | None = None,
    group_by: str | None = None,
    contact_sheet: str | os.PathLike | None = None,
) -> dict:
    """Index, decode and check every image of the dataset at ``path``; return the inspection report. With
    ``contact_sheet``, also write the PNG contact sheet of the duplicate groups there
    (:func:`medcli.data.contact_sheet.write_contact_sheet`) and record its path in the report."""
    from .inspect import build_report, duplicates_of

    dataset = load_dataset(path, layout, aliases, decode=decode, group_by=group_by, cache_dir=cache_dir)
    records = scan_dataset(dataset, cache_dir, workers)
    dups = duplicates_of(dataset, records, near_threshold)
    report = build_report(dataset, records, dups)
    if contact_sheet is not None:
        from .contact_sheet import write_contact_sheet

        write_contact_sheet(dataset, records, dups, contact_sheet)
        report["contact_sheet"] = str(contact_sheet)
    return report
