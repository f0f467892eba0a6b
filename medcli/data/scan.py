"""Decode every image once to learn what it is: readable?, format, mode, size, pixel hash, perceptual hash,
and for DICOM files modality, photometric interpretation, bits stored, transfer syntax, window and frames.

:func:`load_image` is the one function that turns a sample into pixels (scan, image store and Grad-CAM all call
it, with the dataset's :class:`~medcli.data.decode.DecodeOptions`).

Decoding runs in worker processes with a progress bar. Results are cached per file (keyed by its size,
modification time and change time) under the cache directory, so ``inspect`` followed by ``split`` decodes each
image once, and editing one file re-scans only that file.

Every record also holds the file's content hash (:func:`content_hashes`: BLAKE2b-128 of its bytes; of its row
for an npz sample), from which the dataset fingerprint (:func:`fingerprint`) is made: an image whose pixels
change changes the fingerprint even when its byte size does not. Commands that do not scan (``train``,
``eval``, ``gradcam``) hash only the files that the scan cache does not hold with their current size and times.
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

SCAN_VERSION = 4  # 3: EXIF orientation, multi-frame refusal, npz scaling, DICOM facts; 4: content hashes
FINGERPRINT_PREFIX = "content-sha256:"  # "sha256:" fingerprints (ids, labels, sizes; no content) came before
_HASH_CHUNK = 1 << 20
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
    content: str | None = None  # BLAKE2b-128 (hex) of the file's bytes (npz: of the row); None when missing


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


_NPZ_CACHE: dict[tuple, object] = {}


def _npz_array(path: str, split: str):
    import numpy as np

    st = os.stat(path)
    key = (path, split, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # a rewritten archive is read again
    if key not in _NPZ_CACHE:
        for old in [k for k in _NPZ_CACHE if k[:2] == (path, split)]:
            del _NPZ_CACHE[old]
        with np.load(path, allow_pickle=False) as data:
            images = np.asarray(data[f"{split}_images"])
        layout = npz_layout(images.shape)
        if layout == "NCHW":
            images = np.moveaxis(images, 1, -1)
        elif layout is None:  # load_dataset refuses these; a file replaced since then
            raise DecodeError(f"{split}_images has shape {images.shape}, not one of (N,H,W), (N,H,W,C), (N,C,H,W) with C 1 or 3")
        _NPZ_CACHE[key] = images
    return _NPZ_CACHE[key]


def sample_digest(sample: Sample) -> str | None:
    """BLAKE2b-128 (32 hex digits) of what the sample's pixels come from: the file's bytes, or for an npz row
    its dtype, shape and bytes. None when the file is gone."""
    h = hashlib.blake2b(digest_size=16)
    try:
        if sample.npz_index is not None:
            arr = _npz_array(sample.path, sample.split or "train")[sample.npz_index]
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        else:
            with open(sample.path, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
    except (FileNotFoundError, NotADirectoryError, KeyError, DecodeError):
        return None
    return h.hexdigest()


def scan_one(sample: Sample, options: DecodeOptions | None = None) -> ScanRecord:
    content = sample_digest(sample)
    try:
        d = decode_sample(sample, options)
    except MultiFrameError as exc:
        return ScanRecord(sample.id, False, error=str(exc), frames=exc.frames, content=content)
    except DecodeError as exc:
        return ScanRecord(sample.id, False, error=str(exc), content=content)
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
        content=content,
    )


def _scan_chunk(args: tuple[Sequence[Sample], DecodeOptions]) -> list[ScanRecord]:
    samples, options = args
    return [scan_one(s, options) for s in samples]


def _cache_file(cache_dir: Path | None, dataset: Dataset) -> Path:
    # the decode options change pixels, so they pick another cache file (the defaults keep the old name)
    from ..paths import default_cache_dir, scan_cache_file

    key = hashlib.sha256((str(dataset.root) + dataset.decode.key()).encode()).hexdigest()[:16]
    return Path(scan_cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), key))


def _file_stamp(sample: Sample) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns]`` of the sample's file (the npz archive for npz rows), None when it is gone.
    The change time cannot be set back, so a file edited and given its old modification time is still seen."""
    try:
        st = os.stat(sample.path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _entry_stamp(entry: dict) -> list | None:
    return [entry.get("size"), entry.get("mtime_ns"), entry.get("ctime_ns")]


# content hashes already known in this process: (path, id) -> (stamp, digest)
_DIGESTS: dict[tuple[str, str], tuple[list[int], str | None]] = {}


def scan_dataset(dataset: Dataset, cache_dir: str | os.PathLike | None = None, workers: int | None = None) -> dict[str, ScanRecord]:
    """Scan every sample with ``dataset.decode`` (reusing cached records of unchanged files); return ``{id: ScanRecord}``.

    Cache: ``<cache>/scan/<hash of root and decode options>.json`` (records keyed by id, size, mtime and ctime;
    each record holds the file's content hash, which :func:`content_hashes` reuses).
    """
    cache_path = _cache_file(cache_dir or dataset.cache_dir, dataset)
    cached = _read_cache(cache_path)
    records: dict[str, ScanRecord] = {}
    stamps: dict[str, list[int] | None] = {}
    todo: list[Sample] = []
    for s in dataset.samples:
        stamps[s.id] = stamp = _file_stamp(s)
        entry = cached.get(s.id)
        if entry and entry.get("record") and stamp is not None and _entry_stamp(entry) == stamp:
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
        for s in todo:
            cached[s.id] = _entry(stamps[s.id], records[s.id].content, asdict(records[s.id]))
        _write_cache(cache_path, dataset, cached)
    for s in dataset.samples:
        if stamps[s.id] is not None:
            _DIGESTS[(s.path, s.id)] = (stamps[s.id], records[s.id].content)
    return {s.id: records[s.id] for s in dataset.samples}


def content_hashes(dataset: Dataset, cache_dir: str | os.PathLike | None = None) -> dict[str, str | None]:
    """``{id: content hash}`` for every sample (BLAKE2b-128 hex of the file's bytes, of the row for npz samples;
    None for a file that is gone).

    Hashes come from this process's earlier calls, else from the scan cache (``cache_dir``, default
    ``dataset.cache_dir``) when the file still has the size, modification time and change time they were made
    at; the other files are read and hashed (threads; hashing releases the GIL), and the scan cache is updated.
    """
    out: dict[str, str | None] = {}
    todo: list[tuple[Sample, list[int]]] = []
    cached: dict | None = None
    cache_path = _cache_file(cache_dir or dataset.cache_dir, dataset)
    for s in dataset.samples:
        stamp = _file_stamp(s)
        if stamp is None:
            out[s.id] = None
            continue
        known = _DIGESTS.get((s.path, s.id))
        if known and known[0] == stamp:
            out[s.id] = known[1]
            continue
        if cached is None:
            cached = _read_cache(cache_path)
        entry = cached.get(s.id)
        if entry and entry.get("content") and _entry_stamp(entry) == stamp:
            out[s.id] = entry["content"]
            _DIGESTS[(s.path, s.id)] = (stamp, out[s.id])
        else:
            todo.append((s, stamp))
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        files = [s for s, _ in todo]
        threads = 1 if len(files) < 64 or any(s.npz_index is not None for s in files) else min(8, default_workers())
        with ThreadPoolExecutor(max_workers=threads) as pool:
            digests = list(track_units(((d, 1) for d in pool.map(sample_digest, files)), len(files), "hashing images", unit="images",
                                      enabled=len(files) >= _IN_PROCESS_BELOW))
        assert cached is not None
        for (s, stamp), digest in zip(todo, digests):
            out[s.id] = digest
            _DIGESTS[(s.path, s.id)] = (stamp, digest)
            entry = cached.get(s.id)
            record = entry.get("record") if entry and _entry_stamp(entry) == stamp else None
            cached[s.id] = _entry(stamp, digest, record)
        _write_cache(cache_path, dataset, cached)
    return out


def fingerprint(dataset: Dataset) -> str:
    """``content-sha256:<hex>``: SHA-256 over every sample's id, label, split, group and content hash
    (:func:`content_hashes`), sorted by id. Modification times and the dataset's location are left out, so a
    copied dataset keeps its fingerprint; so are groups read from DICOM headers (``group_by``: salted per
    machine)."""
    hashes = content_hashes(dataset)
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: s.id):
        group = None if dataset.group_by else s.group
        h.update(f"{s.id}\t{s.label}\t{s.split}\t{group}\t{hashes[s.id]}\n".encode())
    return FINGERPRINT_PREFIX + h.hexdigest()


def index_fingerprint(dataset: Dataset) -> str:
    """``sha256:<hex>``, the fingerprint of medcli before content hashes: ids, labels, splits, groups and byte
    sizes only. Kept to check splits files and runs that recorded it."""
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: s.id):
        group = None if dataset.group_by else s.group
        h.update(f"{s.id}\t{s.label}\t{s.split}\t{group}\t{s.size}\n".encode())
    return "sha256:" + h.hexdigest()


def _entry(stamp: list[int] | None, content: str | None, record: dict | None) -> dict:
    size, mtime_ns, ctime_ns = stamp if stamp is not None else (None, None, None)
    return {"size": size, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns, "content": content, "record": record}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("records", {}) if isinstance(data, dict) and data.get("version") == SCAN_VERSION else {}


def _write_cache(path: Path, dataset: Dataset, entries: dict[str, dict]) -> None:
    payload = {"version": SCAN_VERSION, "root": str(dataset.root), "records": entries}
    try:
        write_text(path, json.dumps(payload))
    except OSError:
        pass  # a read-only or full cache only costs time


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
