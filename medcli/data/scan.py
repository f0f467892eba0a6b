"""Decode every image once to learn what it is: readable?, format, mode, size, pixel hash, perceptual hash,
and for DICOM files modality, photometric interpretation, bits stored, transfer syntax, window and frames.

:func:`load_image` is the one function that turns a sample into pixels (scan, image store and Grad-CAM all call
it, with the dataset's :class:`~medcli.data.decode.DecodeOptions`).

Decoding runs in worker processes with a progress bar. Results are cached per file (keyed by its size and
modification time) under the cache directory, so ``inspect`` followed by ``split`` decodes each image once,
and editing one file re-scans only that file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from .._io import write_text
from ..errors import MedcliError
from ..progress import track_units
from ._parallel import chunked, default_workers, map_chunks
from .decode import (
    DecodeError, DecodeOptions, MultiFrameError, array_to_image, extension_lies, normalize_mode, open_image,
    perceptual_hashes, pixel_hash,
)
from .layouts import Dataset, Sample, npz_layout

SCAN_VERSION = 3  # 3: EXIF orientation, multi-frame refusal, npz scaling, DICOM facts
_CHUNK = 32
_IN_PROCESS_BELOW = 200  # starting worker processes costs more than decoding a few images


@dataclass(frozen=True)
class ScanRecord:
    id: str
    ok: bool
    error: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    ext_lies: bool = False
    pixel_hash: str | None = None
    phash: int | None = None
    phash256: str | None = None
    # DICOM facts (None for other files); ``window`` is the window applied: "C,W", "file VOI LUT" or "full range"
    modality: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    window: str | None = None
    frames: int | None = None  # frames in the file (every format); None when unknown (unreadable)


@dataclass(frozen=True)
class Decoded:
    """One decoded sample: ``image`` (PIL, ``L`` or ``RGB``), the file's original ``mode`` (PIL mode, DICOM
    photometric interpretation or npz dtype), ``format`` (PIL format, ``DICOM`` or ``NPZ``), ``frames`` in the
    file, and ``dicom`` facts (None for other files)."""

    image: object
    mode: str
    format: str
    frames: int = 1
    dicom: object | None = None


def decode_sample(sample: Sample, options: DecodeOptions | None = None) -> Decoded:
    """Decode one sample with the dataset's decode options (see :func:`load_image`).

    Raises:
        DecodeError: the file cannot be read (MultiFrameError for an unchosen or out-of-range frame).
    """
    options = options or DecodeOptions()
    if sample.npz_index is not None:
        arr = _npz_array(sample.path, sample.split or "train")[sample.npz_index]
        img, dtype = array_to_image(arr)
        return Decoded(img, dtype, "NPZ")
    from .dicom import is_dicom_file, read_dicom

    if is_dicom_file(sample.path):
        img, facts = read_dicom(sample.path, options.window, options.frame)
        return Decoded(img, facts.photometric or "unknown", "DICOM", facts.frames, facts)
    img, mode, fmt = open_image(sample.path, frame=options.frame)
    return Decoded(normalize_mode(img), mode, fmt, getattr(img, "n_frames", 1) if fmt != "MPO" else 1)


def load_image(sample: Sample, options: DecodeOptions | None = None):
    """Decode one sample to a PIL image in ``L`` or ``RGB`` mode; return ``(image, original_mode, format)``.

    The one decode path of medcli: pass the dataset's options (``dataset.decode``). DICOM files (found by
    content) go through :func:`medcli.data.dicom.read_dicom`, npz rows through
    :func:`medcli.data.decode.array_to_image` (layout from :func:`medcli.data.layouts.npz_layout`), every other
    file through PIL with its EXIF orientation applied.

    Raises:
        DecodeError: unreadable file, or a multi-frame file without a valid ``options.frame``.
    """
    d = decode_sample(sample, options)
    return d.image, d.mode, d.format


_NPZ_CACHE: dict[tuple[str, str], object] = {}


def _npz_array(path: str, split: str):
    import numpy as np

    key = (path, split)
    if key not in _NPZ_CACHE:
        with np.load(path, allow_pickle=False) as data:
            images = np.asarray(data[f"{split}_images"])
        layout = npz_layout(images.shape)
        if layout == "NCHW":
            images = np.moveaxis(images, 1, -1)
        elif layout is None:  # load_dataset refuses these; a file replaced since then
            raise DecodeError(f"{split}_images has shape {images.shape}, not one of (N,H,W), (N,H,W,C), (N,C,H,W) with C 1 or 3")
        _NPZ_CACHE[key] = images
    return _NPZ_CACHE[key]


def scan_one(sample: Sample, options: DecodeOptions | None = None) -> ScanRecord:
    try:
        d = decode_sample(sample, options)
    except MultiFrameError as exc:
        return ScanRecord(sample.id, False, error=str(exc), frames=exc.frames)
    except DecodeError as exc:
        return ScanRecord(sample.id, False, error=str(exc))
    img = d.image
    phash, phash256 = perceptual_hashes(img)
    facts = d.dicom
    return ScanRecord(
        sample.id,
        True,
        format=d.format,
        mode=d.mode,
        width=img.size[0],
        height=img.size[1],
        ext_lies=sample.npz_index is None and extension_lies(sample.path, d.format),
        pixel_hash=pixel_hash(img),
        phash=phash,
        phash256=phash256,
        modality=facts.modality if facts else None,
        photometric=facts.photometric if facts else None,
        bits_stored=facts.bits_stored if facts else None,
        transfer_syntax=facts.transfer_syntax if facts else None,
        window=facts.window if facts else None,
        frames=d.frames,
    )


def _scan_chunk(args: tuple[Sequence[Sample], DecodeOptions]) -> list[ScanRecord]:
    samples, options = args
    return [scan_one(s, options) for s in samples]


def _cache_file(cache_dir: Path, dataset: Dataset) -> Path:
    # the decode options change pixels, so they pick another cache file (the defaults keep the old name)
    key = hashlib.sha256((str(dataset.root) + dataset.decode.key()).encode()).hexdigest()[:16]
    from ..paths import scan_cache_file

    return Path(scan_cache_file(cache_dir, key))


def scan_dataset(dataset: Dataset, cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> dict[str, ScanRecord]:
    """Scan every sample with ``dataset.decode`` (reusing cached records of unchanged files); return ``{id: ScanRecord}``.

    Cache: ``<cache>/scan/<hash of root and decode options>.json`` (records keyed by id, size and mtime).
    """
    from ..paths import default_cache_dir

    cache_path = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), dataset)
    cached = _read_cache(cache_path)
    records: dict[str, ScanRecord] = {}
    todo: list[Sample] = []
    for s in dataset.samples:
        entry = cached.get(s.id)
        if entry and entry["size"] == s.size and entry["mtime_ns"] == s.mtime_ns and s.size >= 0:
            records[s.id] = ScanRecord(**entry["record"])
        else:
            todo.append(s)
    if todo:
        n_workers = default_workers() if workers is None else workers
        if len(todo) < _IN_PROCESS_BELOW or any(s.npz_index is not None for s in todo):
            n_workers = 1
        chunks = [(c, dataset.decode) for c in chunked(todo, _CHUNK)]
        for batch in track_units(map_chunks(_scan_chunk, chunks, n_workers), len(todo), "decoding images", unit="images"):
            for rec in batch:
                records[rec.id] = rec
        _write_cache(cache_path, dataset, records)
    return {s.id: records[s.id] for s in dataset.samples}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("records", {}) if data.get("version") == SCAN_VERSION else {}


def _write_cache(path: Path, dataset: Dataset, records: dict[str, ScanRecord]) -> None:
    by_id = dataset.by_id()
    payload = {
        "version": SCAN_VERSION,
        "root": str(dataset.root),
        "records": {
            rid: {"size": by_id[rid].size, "mtime_ns": by_id[rid].mtime_ns, "record": asdict(rec)}
            for rid, rec in records.items()
            if rid in by_id
        },
    }
    try:
        write_text(path, json.dumps(payload))
    except OSError:
        pass  # a read-only cache only costs time


def bad_files(dataset: Dataset, records: dict[str, ScanRecord]) -> list[tuple[Sample, str]]:
    by_id = dataset.by_id()
    return [(by_id[r.id], r.error or "unreadable") for r in records.values() if not r.ok]


def require_readable(dataset: Dataset, records: dict[str, ScanRecord], skip_bad: bool) -> Dataset:
    """Stop with the full list of unreadable files, or (``skip_bad``) drop them and say how many.

    Raises:
        MedcliError: unreadable files without ``skip_bad``; with it, a class that would lose all its images
            (named, with its files' problems).
    """
    import logging
    from collections import Counter
    from dataclasses import replace

    bad = bad_files(dataset, records)
    if not bad:
        return dataset
    if not skip_bad:
        listing = "; ".join(f"{s.path} ({why})" for s, why in bad[:20])
        more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise MedcliError(
            f"{len(bad)} unreadable image file(s): {listing}{more}. Fix or remove them, or pass --skip-bad to leave them out"
        )
    bad_ids = {s.id for s, _ in bad}
    kept = [s for s in dataset.samples if s.id not in bad_ids]
    if not kept:
        raise MedcliError(
            f"{dataset.root}: no readable image left after --skip-bad: {len(bad)} unreadable file(s), e.g. "
            f"{bad[0][0].path} ({bad[0][1]}); check the files with `medcli data inspect`"
        )
    left = Counter(s.label for s in kept)
    for cls in dataset.classes:
        if not left[cls]:
            lost = [(s, why) for s, why in bad if s.label == cls]
            example = f", e.g. {lost[0][0].path} ({lost[0][1]})" if lost else ""
            raise MedcliError(
                f"{dataset.root}: class '{cls}' has no readable image left after --skip-bad (all {len(lost)} of its files are "
                f"unreadable{example}); fix or replace them (e.g. --frame N for multi-frame files; see `medcli data inspect`), "
                "or remove the class"
            )
    logging.getLogger("medcli").warning("--skip-bad: leaving out %d unreadable image file(s)", len(bad))
    return replace(dataset, classes=sorted({s.label for s in kept}), samples=kept)
