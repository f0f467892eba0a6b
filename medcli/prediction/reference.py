"""What the training images looked like, and the flags of new images unlike them.

The reference is the model's training dataset: every readable image of it, as ``medcli data inspect`` sees it
(original size before resizing, original mode, DICOM modality). It comes from the scan records of the dataset
(:func:`medcli.data.scan_dataset`, cached by ``inspect``/``split``/``eval``), which needs the dataset's folder;
without it, from ``results/<dataset>/inspect.json`` (written by ``medcli data inspect --json``) when present.
``config.json`` records neither sizes nor modes.

Rule: an image is flagged when
    * its width or its height lies outside the range (min..max) of the training images' widths or heights;
    * its mode (PIL mode, DICOM photometric interpretation) is not one the training images had;
    * its modality (DICOM ``Modality``; ``not DICOM`` for other files) is not one the training images had.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import MedcliError, one_line

log = logging.getLogger("medcli")
NOT_DICOM = "not DICOM"


@dataclass(frozen=True)
class Reference:
    """Ranges and values seen in training: ``width``/``height`` (min, max) px, ``modes``, ``modalities``."""

    source: str
    width: tuple[int, int]
    height: tuple[int, int]
    modes: frozenset[str]
    modalities: frozenset[str]

    def flags(self, width: int, height: int, mode: str | None, modality: str) -> list[str]:
        """The ways an image of this size, mode and modality is unlike the training images (empty: none)."""
        out = []
        if not (self.width[0] <= width <= self.width[1] and self.height[0] <= height <= self.height[1]):
            out.append(f"size {width}x{height} outside training's {_span(self.width)}x{_span(self.height)} px")
        if mode not in self.modes:
            out.append(f"mode {mode} not in training's ({', '.join(sorted(self.modes))})")
        if modality not in self.modalities:
            out.append(f"modality {modality} not in training's ({', '.join(sorted(self.modalities))})")
        return out


def _span(r: tuple[int, int]) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"


def modality_of(record) -> str:
    """A scan record's modality: the DICOM ``Modality`` (``DICOM`` when the tag is empty), else :data:`NOT_DICOM`."""
    return (record.modality or "DICOM") if record.format == "DICOM" else NOT_DICOM


def from_records(records, source: str) -> Reference | None:
    ok = [r for r in records if r.ok]
    if not ok:
        return None
    return Reference(source, (min(r.width for r in ok), max(r.width for r in ok)), (min(r.height for r in ok), max(r.height for r in ok)),
                     frozenset(r.mode for r in ok), frozenset(modality_of(r) for r in ok))


def from_inspect(path: str | os.PathLike) -> Reference | None:
    """The reference from an ``inspect.json`` (``image_sizes``, ``modes``, ``dicom``), or None when incomplete."""
    from .._io import read_json

    doc = read_json(path)
    try:
        sizes = doc["image_sizes"]
        width = (int(sizes["width"]["min"]), int(sizes["width"]["max"]))
        height = (int(sizes["height"]["min"]), int(sizes["height"]["max"]))
        modes = frozenset(doc["modes"])
        dicom = doc.get("dicom") or {}
        modalities = set((dicom.get("modality") or {}).keys())
        if int(dicom.get("n_images") or 0) < int(doc["dataset"]["n_readable"]):
            modalities.add(NOT_DICOM)
    except (KeyError, TypeError, ValueError):
        return None
    return Reference(str(path), width, height, modes, frozenset(modalities))


def training_reference(run, cache_dir=None) -> Reference | None:
    """The reference of a run's training dataset (see the module docstring), or None (with a warning) when
    neither the dataset nor an ``inspect.json`` can be read. ``cache_dir``: the reader's cache (None: the default)."""
    from ..data import scan_dataset

    try:
        dataset = run.load_dataset(cache_dir)
        records = scan_dataset(dataset, cache_dir)
        ref = from_records(records.values(), f"scan of {dataset.root}")
        if ref is not None:
            return ref
        reason = "no readable training image"
    except MedcliError as exc:
        reason = one_line(exc)
    inspect = _inspect_file(run)
    if inspect is not None and os.path.isfile(inspect):
        ref = from_inspect(inspect)
        if ref is not None:
            return ref
    log.warning("no 'unlike training' flags: the training images cannot be read (%s) and no inspect.json was found", reason)
    return None


def _inspect_file(run) -> str | None:
    try:
        key = paths.parse_run_dir(Path(run.path).resolve())
    except ValueError:
        return None
    return str(Path(run.path).resolve().parents[3] / paths.INSPECT_FILE) if key else None
