"""``medcli predict``'s INPUT arguments as a :class:`~medcli.data.Dataset`.

* image or DICOM files, taken as given (a file that is not an image becomes an error row, not a stop);
* folders, read recursively: files with an image/DICOM extension, and other files whose first bytes are an
  image header or the DICOM preamble (:func:`medcli.data.decode.sniff_format`); hidden files and known
  non-image files (``.txt``, ``.csv``, ``Thumbs.db``, ...) are skipped, as ``medcli data inspect`` skips them;
* CSV manifests (``.csv``): the ``path`` column (paths relative to the CSV, as in medcli's ``csv`` layout).

Labelled input: a single INPUT that is a CSV manifest with a ``label`` column, or a folder whose images all lie
in sub-folders named after the model's classes (``imagefolder``; ``presplit`` too), is read by
:func:`medcli.evaluation.runner.load_external`, as ``medcli eval --data`` reads it (``labels=False`` forces the
unlabelled reading, ``labels=True`` requires a labelled one).

Unlabelled samples get ids relative to the deepest folder holding every input (posix paths).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..data import Dataset, Sample
from ..data.decode import sniff_format
from ..data.layouts import IMAGE_EXTENSIONS, NON_IMAGE_EXTENSIONS, NON_IMAGE_NAMES
from ..errors import MedcliError

log = logging.getLogger("medcli")


def labelled_source(inputs: list[Path], labels: bool | None) -> Path | None:
    """The one INPUT to read as a labelled dataset, or None (see the module docstring)."""
    if labels is False or len(inputs) != 1:
        if labels and len(inputs) != 1:
            raise MedcliError("--labels: give exactly one labelled INPUT (a folder of class sub-folders or a CSV with a label column)")
        return None
    src = inputs[0]
    if src.is_file() and src.suffix.lower() == ".csv":
        has_label = "label" in _csv_columns(src)
        if labels and not has_label:
            raise MedcliError(f"{src}: --labels needs a 'label' column in the manifest")
        return src if has_label else None
    if src.is_dir():
        loose = [p for p in src.iterdir() if p.is_file() and not p.name.startswith(".") and _is_image_file(p)]
        subdirs = [p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if labels or (subdirs and not loose):
            return src
    if labels:
        raise MedcliError(f"{src}: --labels needs a folder of class sub-folders or a CSV manifest with a label column")
    return None


def _csv_columns(manifest: Path) -> list[str]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            return [c.strip().lower() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedcliError(f"{manifest}: cannot read the manifest ({exc})") from None


def _is_image_file(p: Path) -> bool:
    suffix = p.suffix.lower()
    if p.name.lower() in NON_IMAGE_NAMES or suffix in NON_IMAGE_EXTENSIONS:
        return False
    return suffix in IMAGE_EXTENSIONS or sniff_format(p) is not None


def _folder_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and p.is_file() and _is_image_file(p):
                out.append(p)
    return out


def _manifest_files(manifest: Path) -> list[Path]:
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedcliError(f"{manifest}: cannot read the manifest ({exc})") from None
    out = []
    for lineno, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        rel = row.get("path", "")
        if "path" not in row:
            raise MedcliError(f"{manifest}: the manifest needs a 'path' column (paths relative to the CSV)")
        if not rel:
            raise MedcliError(f"{manifest}:{lineno}: empty path")
        if "\\" in rel and not (base / rel).exists():
            rel = rel.replace("\\", "/")  # written on Windows
        out.append(base / rel)
    return out


def collect_files(inputs: list[Path]) -> list[Path]:
    """Every image file named by ``inputs`` (absolute, resolved, each once, in the order found).

    Raises :class:`MedcliError` for an INPUT that does not exist or a folder without any image file."""
    files: list[Path] = []
    for src in inputs:
        if not src.exists():
            raise MedcliError(f"{src}: not found (give image or DICOM files, folders or a CSV manifest)")
        if src.is_dir():
            found = _folder_files(src)
            if not found:
                raise MedcliError(f"{src}: no image files found in this folder or below")
            files += found
        elif src.suffix.lower() == ".csv":
            files += _manifest_files(src)
        else:
            files.append(src)
    seen, out = set(), []
    for f in files:
        real = Path(os.path.abspath(f)).resolve()
        if real not in seen:
            seen.add(real)
            out.append(real)
    return out


def unlabelled_dataset(files: list[Path], decode, inputs: list[Path] = ()) -> Dataset:
    """A :class:`Dataset` of ``files`` (label ``""``), ids relative to the deepest folder holding every file and every
    folder of ``inputs`` (so a folder INPUT's files keep their paths inside it as ids)."""
    folders = [str(Path(os.path.abspath(p)).resolve()) for p in inputs if Path(p).is_dir()]
    root = Path(os.path.commonpath([str(f.parent) for f in files] + folders))
    samples = []
    for f in files:
        try:
            st = f.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        samples.append(Sample(f.relative_to(root).as_posix(), str(f), "", "", None, None, size, mtime))
    return Dataset(root=root, layout="files", classes=[], class_mapping={}, samples=samples, decode=decode)
