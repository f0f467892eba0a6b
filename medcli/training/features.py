"""Cached frozen-trunk features: a head-only strategy (``linear``) trains on vectors computed once.

When every phase of a plan trains the head alone, with the trunk frozen in eval mode (BatchNorm statistics
fixed, dropout off), and augmentation is off, the trunk maps an image to the same vector in every epoch. Those
vectors, the head's input, are computed once for every image of the dataset's folds (train and val of every
fold), stored, and reused by every epoch, fold and seed; training then runs the head alone, as eva trains on
embeddings computed offline. With augmentation on, the trunk sees a different image every epoch and nothing is
cached.

Files: ``<cache>/features/<key>/features.npy`` (N x F float32, rows in the order of ``meta.json``'s ``ids``)
and ``meta.json`` (the key, the ids, what the key was made of, how the features were computed, and the
BLAKE2b-128 checksum of the features' bytes). A cache is built in a private temporary folder and renamed into
place, like the image store, so concurrent jobs are safe; within one multi-process run the main process builds
it and the others wait, then read it. The file is read whole anyway, so the checksum is checked every time it is
opened (about 1 ms per MiB): a cache whose features changed after it was built, that lost its ``meta.json`` or
that an older medcli wrote without a checksum is rebuilt, never used. A full cache disk is a one-line error
naming the cache folder.

The key hashes everything that changes the numbers:

* the image-store key: every file's id, path and content hash; image size, channels, resize mode, interpolation;
* the ids whose features are stored (train + val of every fold of the splits file);
* the backbone name and a hash of the trunk's tensors as loaded: the weights' content wherever it came from
  (ImageNet or a file, whatever its name), after the 1-channel filter sum and ViT position-embedding resizing;
* the normalization mean and std, and the number of input channels;
* the autocast precision of the run (fp32, bf16 or fp16);
* the feature format (:data:`FEATURES_FORMAT`), bumped whenever the way features are computed changes.

Left out on purpose: the device, ``channels_last``, the batch size and library versions. They change features
only by floating-point rounding, and the cache stays shareable between, say, two GPU models of a cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import paths
from .._io import publish_dir, write_json
from ..data._cachedir import NO_SPACE, check_space, discard, no_space, private_dir
from ..errors import MedcliError, human_bytes
from ..preprocess import to_model_input

log = logging.getLogger("medcli")

FEATURES_FORMAT = "medcli.features/1"
DEVICE_LIMIT_BYTES = 1 << 30  # a fold's features up to this size live on the accelerator; larger ones stay in RAM
EXTRACT_PIXELS = 256 * 224 * 224  # images per extraction batch: 256 at 224 px and below, fewer for larger images


@dataclass
class FoldFeatures:
    """The cached trunk outputs of one fold, rows in the order of ``fold.train`` / ``fold.val``."""

    train: torch.Tensor
    val: torch.Tensor
    info: dict = field(default_factory=dict)  # recorded in the run's summary (config.json)


def trains_head_only(model, plan) -> bool:
    """True when every phase trains exactly the head and keeps the whole trunk in eval mode."""
    head = {id(p) for p in model.head.parameters()}
    return all({id(p) for p in phase.trainable} == head and any(m is model.trunk for m in phase.eval_modules) for phase in plan.phases)


def cache_problem(cfg, model, plan) -> str | None:
    """Why this run cannot train on cached features, or None when it can."""
    if not trains_head_only(model, plan):
        return f"strategy '{cfg.strategy}' trains trunk parameters, so the trunk's outputs change during training"
    if cfg.augment:
        return ("augmentation is on, so the frozen trunk sees a differently transformed image every epoch "
                "(pass --no-augment to train the head on cached features)")
    if not cfg.feature_cache:
        return "switched off (--no-feature-cache)"
    return None


def trunk_fingerprint(trunk: torch.nn.Module) -> str:
    """SHA-256 of the trunk's parameters and buffers: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def feature_key(parts: dict) -> str:
    """The cache key: a hash of ``parts`` (see the module docstring for what they must hold)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def key_parts(*, store_key: str, ids: list[str], backbone: str, trunk: str, mean, std, channels: int, precision: str) -> dict:
    """Everything that changes the cached numbers (``ids``: the images whose features are stored)."""
    parts = {
        "format": FEATURES_FORMAT,
        "store_key": store_key,
        "ids": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
        "backbone": backbone,
        "trunk_sha256": trunk,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channels": int(channels),
        "precision": precision,
    }
    parts.update(_forward_code(backbone))
    return parts


def _forward_code(backbone: str) -> dict:
    """For timm backbones, what changes the features without changing the weights: the constructor arguments
    (pooling, ...) and timm's version (its forward code). Empty for medcli's own backbones, so their keys stay."""
    from ..models import get_backbone

    info = get_backbone(backbone)
    if info.family != "timm":
        return {}
    import timm

    return {"timm": timm.__version__, "timm_kwargs": repr(tuple(info.timm_kwargs))}


def extract_features(model, images: np.ndarray, rows: np.ndarray, norm, accelerator, *, batch_size: int,
                     channels_last: bool = False, progress: bool = True) -> torch.Tensor:
    """``model.trunk`` outputs ``(len(rows), F)`` float32 (CPU) for store rows ``rows``, in eval mode.

    ``images`` is the store's N x H x W x C uint8 array, ``norm`` the ``(mean, std)`` tensors on the
    accelerator's device, ``batch_size`` in images. The input is made exactly as for training without
    augmentation (uint8 -> scaled -> normalized), under the run's autocast, by the shared inference loop
    (:func:`medcli.inference.infer`), so a head fed these vectors computes what the full model computes on the
    images. The trunk is returned to its device and train/eval mode afterwards.
    """
    from ..inference import infer, row_batches, store_pixels
    from ..progress import track_units

    trunk = model.trunk
    home = next(trunk.parameters()).device
    was_training = trunk.training
    trunk.to(accelerator.device)

    def inputs(positions: torch.Tensor) -> torch.Tensor:
        pixels = store_pixels(images, rows[positions.numpy()], accelerator.device)
        return to_model_input(pixels, *norm, channels_last=channels_last)

    batches = ((b, len(b)) for b in row_batches(rows, batch_size))
    batches = track_units(batches, len(rows), f"computing {model.backbone} features", unit="images", enabled=progress)
    try:
        out = infer(trunk, batches, inputs, len(rows), autocast=accelerator.autocast)
    finally:
        trunk.train(was_training).to(home)
    return out if len(rows) else torch.empty((0, model.feature_dim), dtype=torch.float32)


def extraction_batch(batch_size: int, img_size: int) -> int:
    """Images per batch when computing features: at least the training batch (which fits, with gradients), and
    up to :data:`EXTRACT_PIXELS` pixels, since inference without gradients needs far less memory and large batches
    run faster (about twice as fast at 256 as at 32 images on a CPU)."""
    return max(int(batch_size), min(256, EXTRACT_PIXELS // (int(img_size) ** 2)))


def feature_inputs(features: torch.Tensor, device):
    """``inputs(positions, generator)`` for the training loop: rows of ``features`` on ``device``."""

    def inputs(idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return features[idx.to(features.device)].to(device, non_blocking=True)

    return inputs


def fold_features(cfg, fold, model, mean, std, norm, accelerator, precision: str, trunk_sha: str | None = None) -> FoldFeatures:
    """This fold's cached features, computed first (on the main process) if no cache has the key yet.

    ``trunk_sha``: :func:`trunk_fingerprint` of ``model.trunk`` when the caller has it already.
    """
    ids = list(fold.pool_ids)
    parts = key_parts(store_key=fold.store.key, ids=ids, backbone=cfg.backbone, trunk=trunk_sha or trunk_fingerprint(model.trunk),
                      mean=mean, std=std, channels=cfg.channels, precision=precision)
    key = feature_key(parts)
    final = Path(paths.features_dir(cfg.cache_dir or paths.default_cache_dir(), key))
    built, seconds = False, 0.0
    with accelerator.main_process_first():
        loaded = _open_or_discard(final) if accelerator.is_main_process else None
        if loaded is None and accelerator.is_main_process:
            t0 = time.perf_counter()
            _build(final, parts, model, fold.store, ids, norm, accelerator, cfg)
            built, seconds = True, time.perf_counter() - t0
        meta, features = loaded or open_features(final)
    row = {sid: i for i, sid in enumerate(meta["ids"])}
    try:
        train_rows = torch.tensor([row[i] for i in fold.train.ids], dtype=torch.long)
        val_rows = torch.tensor([row[i] for i in fold.val.ids], dtype=torch.long)
    except KeyError as exc:
        raise MedcliError(f"{final}: image {exc.args[0]!r} has no cached features; delete the folder to rebuild it") from None
    train, val = features[train_rows], features[val_rows]
    if train.numel() * 4 + val.numel() * 4 <= DEVICE_LIMIT_BYTES:
        train, val = train.to(accelerator.device), val.to(accelerator.device)
    if built:
        log.info("feature cache: computed %d %s features in %.1f s, reused by every epoch, fold and seed (%s)",
                 len(ids), cfg.backbone, seconds, final)
    else:
        log.info("feature cache: reusing %s (%d images, %d features each)", final, len(meta["ids"]), features.shape[1])
    info = {"used": True, "key": key, "dir": str(final), "built": built, "build_seconds": round(seconds, 3),
            "n_images": len(meta["ids"]), "feature_dim": int(features.shape[1])}
    return FoldFeatures(train, val, info)


def open_features(path: str | os.PathLike) -> tuple[dict, torch.Tensor]:
    """``(meta, features)`` of a feature cache folder, after checking the features against their checksum.

    Raises:
        MedcliError: the folder is incomplete, unreadable, of another format, or its features changed since it
            was built (saying to delete it; :func:`fold_features` rebuilds it itself).
    """
    path = Path(path)
    problem, meta, features = _read(path)
    if problem is not None:
        raise MedcliError(f"{path}: feature cache unusable ({problem}); delete the folder to rebuild it")
    return meta, features


def _read(path: Path) -> tuple[str | None, dict, torch.Tensor | None]:
    """``(problem, meta, features)``: problem is None for a complete, unchanged cache."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        return ("does not exist" if not path.exists() else "incomplete: no meta.json"), {}, None
    except (OSError, ValueError) as exc:
        return f"unreadable meta.json ({exc})", {}, None
    if not isinstance(meta, dict) or meta.get("format") != FEATURES_FORMAT:
        return f"not a {FEATURES_FORMAT} feature cache", {}, None
    if not meta.get("checksum"):
        return "written by an older medcli without a checksum", meta, None
    try:
        array = np.load(path / "features.npy")
    except (OSError, ValueError) as exc:
        return f"features.npy unreadable ({exc})", meta, None
    if array.ndim != 2 or array.shape[0] != len(meta.get("ids", ())):
        return f"features.npy has shape {array.shape} for {len(meta.get('ids', ()))} images", meta, None
    if _checksum(array) != meta["checksum"]:
        return "features.npy changed after the cache was built (checksum differs)", meta, None
    return None, meta, torch.from_numpy(array)


def _open_or_discard(final: Path) -> tuple[dict, torch.Tensor] | None:
    """The cache at ``final`` when it is complete and unchanged; None when there is none or it was damaged
    (then it is moved out of the way, with a warning saying why, so it is rebuilt)."""
    problem, meta, features = _read(final)
    if problem is None:
        return meta, features
    if final.exists():
        log.warning("feature cache %s: %s; rebuilding it", final, problem)
        discard(final)
    return None


def _checksum(array: np.ndarray) -> str:
    return "blake2b-128:" + hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).hexdigest()


def _build(final: Path, parts: dict, model, store, ids: list[str], norm, accelerator, cfg) -> None:
    rows = store.rows(ids)
    order = np.argsort(rows, kind="stable")  # read the memory-mapped store front to back
    rows, ids = rows[order], [ids[i] for i in order]
    t0 = time.perf_counter()
    features = extract_features(model, store.images, rows, norm, accelerator, batch_size=extraction_batch(cfg.batch_size, cfg.img_size),
                                channels_last=bool(cfg.channels_last), progress=cfg.progress)
    seconds = time.perf_counter() - t0
    array = features.numpy()
    tmp = private_dir(final)
    cache_root = final.parent.parent
    what = f"the {human_bytes(array.nbytes)} feature cache"
    try:
        check_space(cache_root, array.nbytes, what)
        np.save(tmp / "features.npy", array)
        meta = {
            "format": FEATURES_FORMAT, "key": final.name, "key_parts": parts, "weights": cfg.weights,
            "img_size": cfg.img_size, "feature_dim": int(features.shape[1]), "device": str(accelerator.device),
            "channels_last": bool(cfg.channels_last), "seconds": round(seconds, 3), "torch": torch.__version__,
            "checksum": _checksum(array), "ids": ids,
        }
        write_json(tmp / "meta.json", meta)  # written last: its presence means the folder is complete
        publish_dir(tmp, final, "meta.json")  # a concurrent builder that won the race keeps its folder
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise no_space(cache_root, what, exc, need=array.nbytes) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
