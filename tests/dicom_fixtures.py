"""A small DICOM dataset built from the files that ship inside pydicom, with several fake patients.

``make_dicom_dataset`` writes copies of ``CT_small.dcm`` (MONOCHROME2, signed 16-bit, rescale to HU) whose pixels
are replaced by a distinct structured picture per file (so no two files are duplicates and classes are
learnable), with fake PatientID / StudyInstanceUID values that must never appear in any output. Reusable by
end-to-end tests (inspect -> split -> train -> eval -> gradcam -> report).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def shipped(name: str) -> str:
    """Path of a DICOM file shipped inside pydicom (never downloaded; skips the test when absent)."""
    import pytest
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom")
    return str(path)


def patient_id(k: int) -> str:
    """The fake clear-text PatientID of patient ``k`` (tests check it never appears in outputs)."""
    return f"PAT{k:03d}-SECRET-ID"


def _picture(label: int, seed: int, size: int = 128) -> np.ndarray:
    """A structured picture in HU: class 0 has a bright disk, class 1 a bright square, on seeded texture."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(-200, 200, (8, 8)).astype(np.float32)
    base = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    r = size // 6
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if label == 0 else ((abs(yy - cy) < r) & (abs(xx - cx) < r))
    return np.clip(base + 600 * mask, -1000, 2000)


def write_dicom(path: Path, hu: np.ndarray, *, patient: str | None, study_uid: str | None = None,
                photometric: str = "MONOCHROME2") -> Path:
    """Write ``hu`` (2-D, Hounsfield units) as a CT image, based on pydicom's ``CT_small.dcm`` header."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    stored = np.round((np.asarray(hu, np.float64) - intercept) / slope).astype(np.int16)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.tobytes()
    ds.PhotometricInterpretation = photometric
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    if patient is None:
        del ds.PatientID
    else:
        ds.PatientID = patient
    ds.PatientName = "Anonymous^Test"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_dicom_dataset(root: Path, patients: int = 6, per_patient: int = 3, layout: str = "imagefolder",
                       no_extension_every: int = 2, seed: int = 0) -> Path:
    """Write a two-class DICOM dataset of ``patients`` fake patients with ``per_patient`` images each.

    Patient ``k`` has class ``k % 2`` (``disk`` or ``square``) and one study. Every ``no_extension_every``-th
    file has no extension (found by content). ``layout``: ``imagefolder`` (``ROOT/<class>/<file>``, returns
    ROOT) or ``csv`` (``ROOT/images/<file>`` + ``ROOT/manifest.csv`` with ``path,label``, returns the CSV).
    """
    from pydicom.uid import generate_uid

    root = Path(root)
    rows = []
    n = 0
    for k in range(patients):
        label = ("disk", "square")[k % 2]
        study = generate_uid()
        for i in range(per_patient):
            name = f"p{k:02d}_img{i}" + ("" if no_extension_every and n % no_extension_every == 1 else ".dcm")
            folder = root / label if layout == "imagefolder" else root / "images"
            write_dicom(folder / name, _picture(k % 2, seed * 10007 + n), patient=patient_id(k), study_uid=study)
            rows.append((f"images/{name}", label))
            n += 1
    if layout == "imagefolder":
        return root
    if layout != "csv":
        raise ValueError(f"layout must be imagefolder or csv, got {layout!r}")
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest
