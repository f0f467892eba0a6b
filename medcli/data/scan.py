"""Decode every image once to learn what it is: readable?, format, mode, size, pixel hash, perceptual hash.

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
from .decode import DecodeError, extension_lies, normalize_mode, open_image, perceptual_hashes, pixel_hash
from .layouts import Dataset, Sample

SCAN_VERSION = 2
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


def load_image(sample: Sample):
    """Decode one sample to a PIL image in ``L`` or ``RGB`` mode; return ``(image, original_mode, format)``."""
    if sample.npz_index is not None:
        from PIL import Image

        arr = _npz_array(sample.path, sample.split or "train")[sample.npz_index]
        mode = "L" if arr.ndim == 2 else "RGB"
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr, mode = arr[..., 0], "L"
        return Image.fromarray(arr.astype("uint8"), mode), mode, "NPZ"
    img, mode, fmt = open_image(sample.path)
    return normalize_mode(img), mode, fmt


_NPZ_CACHE: dict[tuple[str, str], object] = {}


def _npz_array(path: str, split: str):
    import numpy as np

    key = (path, split)
    if key not in _NPZ_CACHE:
        with np.load(path, allow_pickle=False) as data:
            _NPZ_CACHE[key] = np.asarray(data[f"{split}_images"])
    return _NPZ_CACHE[key]


def scan_one(sample: Sample) -> ScanRecord:
    try:
        img, mode, fmt = load_image(sample)
    except DecodeError as exc:
        return ScanRecord(sample.id, False, error=str(exc))
    phash, phash256 = perceptual_hashes(img)
    return ScanRecord(
        sample.id,
        True,
        format=fmt,
        mode=mode,
        width=img.size[0],
        height=img.size[1],
        ext_lies=sample.npz_index is None and extension_lies(sample.path, fmt),
        pixel_hash=pixel_hash(img),
        phash=phash,
        phash256=phash256,
    )


def _scan_chunk(samples: Sequence[Sample]) -> list[ScanRecord]:
    return [scan_one(s) for s in samples]


def _cache_file(cache_dir: Path, dataset: Dataset) -> Path:
    key = hashlib.sha256(str(dataset.root).encode()).hexdigest()[:16]
    from ..paths import scan_cache_file

    return Path(scan_cache_file(cache_dir, key))


def scan_dataset(dataset: Dataset, cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> dict[str, ScanRecord]:
    """Scan every sample (reusing cached records of unchanged files); return ``{id: ScanRecord}``."""
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
        chunks = chunked(todo, _CHUNK)
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
    """Stop with the full list of unreadable files, or (``skip_bad``) drop them and say how many."""
    import logging

    bad = bad_files(dataset, records)
    if not bad:
        return dataset
    if not skip_bad:
        listing = "; ".join(f"{s.path} ({why})" for s, why in bad[:20])
        more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise MedcliError(
            f"{len(bad)} unreadable image file(s): {listing}{more}. Fix or remove them, or pass --skip-bad to leave them out"
        )
    logging.getLogger("medcli").warning("--skip-bad: leaving out %d unreadable image file(s)", len(bad))
    bad_ids = {s.id for s, _ in bad}
    kept = [s for s in dataset.samples if s.id not in bad_ids]
    return Dataset(dataset.root, dataset.layout, sorted({s.label for s in kept}), dataset.class_mapping, kept, dataset.notes)
