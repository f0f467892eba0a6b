"""The decoded-image store: every image decoded and resized once into a memory-mapped uint8 array.

Training and evaluation read images from here and never touch the image files again. A store is keyed by the
exact list of files (id, path and content hash: :func:`medcli.data.scan.content_hashes`), the dataset's decode
options (DICOM window, frame; :meth:`~medcli.data.decode.DecodeOptions.key`) and the store settings (size,
channels, resize mode, interpolation); re-running with the same inputs reuses it, any change builds a new one.
Concurrent builders (parallel jobs on one node) are safe: each builds in a private temporary folder and the
first to finish renames it into place.

Files: ``<cache>/store/<key>/images.npy`` (N x H x W x C, uint8, C in {1, 3}) and ``meta.json`` (written last;
it records the size and modification time of ``images.npy``). A store is checked when opened: one whose
``images.npy`` no longer has those (written to since it was built), whose ``meta.json`` is missing or unreadable,
or that an older medcli built, is rebuilt in place, never used. The check costs a ``stat``, not a read of the
images; it does not see a change that leaves size and both times alone (bit rot below the file system).

A full cache disk is an error naming the cache folder before anything is written (free space checked, the
array file preallocated), never a crash while the memory map is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .._io import publish_dir, write_json
from ..errors import MedcliError, human_bytes
from ..progress import track_units
from ._cachedir import NO_SPACE, check_space, discard, no_space, private_dir, reserve, stamp, stamp_problem
from ._parallel import chunked, default_workers, map_chunks
from .decode import RESIZE_MODES, INTERPOLATIONS, DecodeError, DecodeOptions, resize, to_channels
from .layouts import Dataset, Sample
from .scan import content_hashes, load_image

log = logging.getLogger("medcli")

# 2: EXIF orientation applied, multi-frame files refused, npz float/wide-integer arrays scaled (a store built by
# version 1 may hold sideways or black images of such inputs, so none is reused); 3: keyed by content hashes,
# images.npy stamped in meta.json
STORE_VERSION = 3
_CHUNK = 32
_IN_PROCESS_BELOW = 200


@dataclass(frozen=True)
class StoreSettings:
    img_size: int = 224
    channels: int = 3
    resize: str = "squash"
    interpolation: str = "bilinear"

    def validate(self) -> None:
        if self.channels not in (1, 3):
            raise MedcliError(f"--channels {self.channels}: must be 1 or 3")
        if not 8 <= self.img_size <= 4096:
            raise MedcliError(f"--img-size {self.img_size}: must be between 8 and 4096")
        if self.resize not in RESIZE_MODES:
            raise MedcliError(f"--resize {self.resize!r}: choose one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise MedcliError(f"--interpolation {self.interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")


@dataclass
class ImageStore:
    path: Path
    key: str
    ids: list[str]
    images: np.ndarray  # memory-mapped, N x H x W x C uint8
    settings: StoreSettings

    def __post_init__(self) -> None:
        self._row = {sid: i for i, sid in enumerate(self.ids)}

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids`` in :attr:`images`."""
        try:
            return np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise MedcliError(f"image {exc.args[0]!r} is not in the image store {self.path}; re-run with the same dataset") from None


def store_key(samples: Sequence[Sample], settings: StoreSettings, decode: DecodeOptions | None = None,
              content: dict[str, str | None] | None = None) -> str:
    """24 hex digits of a SHA-256 over the store version, ``settings``, the decode options (only when they are not
    the defaults) and every sample's id, path, content hash (``content``: ``{id: hash}``,
    :func:`medcli.data.scan.content_hashes`) and npz index."""
    content = content or {}
    h = hashlib.sha256()
    h.update(json.dumps({"version": STORE_VERSION, **settings.__dict__}, sort_keys=True).encode())
    options = (decode or DecodeOptions()).key()
    if options:
        h.update(f"decode\0{options}\n".encode())
    for s in samples:
        h.update(f"{s.id}\0{s.path}\0{content.get(s.id)}\0{s.npz_index}\n".encode())
    return h.hexdigest()[:24]


def _decode_chunk(args: tuple[Sequence[Sample], StoreSettings, DecodeOptions]) -> np.ndarray:
    samples, st, options = args
    out = np.empty((len(samples), st.img_size, st.img_size, st.channels), np.uint8)
    for k, s in enumerate(samples):
        try:
            img, _, _ = load_image(s, options)
        except DecodeError as exc:
            raise MedcliError(f"{s.path}: {exc}; run `medcli data inspect` and fix the file or pass --skip-bad") from None
        img = resize(to_channels(img, st.channels), st.img_size, st.resize, st.interpolation)
        arr = np.asarray(img, dtype=np.uint8)
        out[k] = arr[..., None] if arr.ndim == 2 else arr
    return out


def materialize(
    dataset: Dataset,
    settings: StoreSettings,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> ImageStore:
    """The decoded-image store of ``dataset``'s samples under ``settings``, built first if no store has its key.

    Args:
        dataset: the samples to decode (every one is stored, in ``dataset.samples`` order).
        settings: side ``img_size`` in pixels (square output), ``channels`` (1 or 3), ``resize`` mode (``squash``,
            ``pad``, ``crop``) and ``interpolation``.
        cache_dir: cache root; default ``$MEDCLI_CACHE``, else ``$XDG_CACHE_HOME/medcli`` (``~/.cache/medcli``).
        workers: decoding processes (default: the CPUs available; small or npz datasets decode in-process).

    Returns:
        An :class:`ImageStore`: ``images`` memory-mapped, ``(N, img_size, img_size, channels)`` uint8, rows in
        sample order; ``ids``; ``key``.

    Writes ``<cache>/store/<key>/images.npy`` and ``meta.json`` (``key``, ``settings``, ``ids``, ``files``: the
    stamp of ``images.npy``) when the store is new, or when the folder of that key is incomplete, was changed
    after it was built or was built by an older medcli (it is replaced; a warning says why). The key
    (:func:`store_key`) hashes every sample's id, path, content hash and npz index plus the settings and
    ``dataset.decode`` (every image is decoded with it). The folder is built privately and renamed into place, so
    concurrent jobs are safe and a reader never sees a half-written store; private folders left by builders that
    died are removed first.

    Raises:
        MedcliError: invalid settings (:meth:`StoreSettings.validate`), an image that cannot be decoded (naming
            the file), a cache disk without room for the store (naming the cache folder; nothing is left behind).
    """
    from ..paths import default_cache_dir, store_dir

    settings.validate()
    samples = dataset.samples
    key = store_key(samples, settings, dataset.decode, content_hashes(dataset, cache_dir))
    final = Path(store_dir(Path(cache_dir) if cache_dir else default_cache_dir(), key))
    problem = store_problem(final)
    if problem is not None and final.exists():
        log.warning("image store %s %s; rebuilding it", final, problem)
        discard(final)
    if problem is not None:
        _build(final, samples, settings, workers, dataset.decode)
    return open_store(final)


def store_problem(path: str | os.PathLike) -> str | None:
    """Why the store folder ``path`` cannot be used (missing, incomplete, changed since it was built, built by an
    older medcli), or None when it can. Costs a ``stat`` of ``images.npy``, not a read."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return "is incomplete (no meta.json)"
    except (OSError, ValueError) as exc:
        return f"has an unreadable meta.json ({exc})"
    if not isinstance(meta, dict) or meta.get("version") != STORE_VERSION:
        return "was built by another medcli version"
    return stamp_problem(path, meta.get("files"))


def open_store(path: str | os.PathLike) -> ImageStore:
    """The store in folder ``path``, its images memory-mapped, after checking it (:func:`store_problem`).

    Raises:
        MedcliError: the folder is missing, incomplete, damaged or changed since it was built (saying to
            delete it; :func:`materialize` rebuilds it itself).
    """
    path = Path(path)
    problem = store_problem(path)
    try:
        if problem is not None:
            raise ValueError(problem)
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="r")
        if images.ndim != 4 or images.shape[0] != len(meta["ids"]):
            raise ValueError(f"images.npy has shape {images.shape} for {len(meta['ids'])} ids")
    except (OSError, ValueError, KeyError) as exc:
        raise MedcliError(f"{path}: image store unusable ({exc}); delete the folder to rebuild it") from None
    return ImageStore(path, meta["key"], meta["ids"], images, StoreSettings(**meta["settings"]))


def _build(final: Path, samples: Sequence[Sample], settings: StoreSettings, workers: int | None, decode: DecodeOptions | None = None) -> None:
    cache_root = final.parent.parent
    shape = (len(samples), settings.img_size, settings.img_size, settings.channels)
    nbytes = int(np.prod(shape))
    tmp = private_dir(final)
    try:
        check_space(cache_root, nbytes, f"a {human_bytes(nbytes)} image store")
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        reserve(tmp / "images.npy", os.path.getsize(tmp / "images.npy"))  # ENOSPC now, not SIGBUS while writing
        n_workers = default_workers() if workers is None else workers
        if len(samples) < _IN_PROCESS_BELOW or any(s.npz_index is not None for s in samples):
            n_workers = 1
        chunks = [(c, settings, decode or DecodeOptions()) for c in chunked(list(samples), _CHUNK)]
        row = 0
        desc = f"materializing {settings.img_size}px images"
        for block in track_units(map_chunks(_decode_chunk, chunks, n_workers), len(samples), desc, unit="images"):
            images[row : row + len(block)] = block
            row += len(block)
        images.flush()
        del images
        meta = {"key": final.name, "version": STORE_VERSION, "settings": settings.__dict__,
                "decode": (decode or DecodeOptions()).__dict__, "files": {"images.npy": stamp(tmp / "images.npy")},
                "ids": [s.id for s in samples]}
        write_json(tmp / "meta.json", meta)
        publish_dir(tmp, final, "meta.json")  # a concurrent builder that won the race keeps its folder
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(cache_root, f"a {human_bytes(nbytes)} image store", exc, need=nbytes) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

