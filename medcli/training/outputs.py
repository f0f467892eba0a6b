"""Write a finished run's folder: config.json, history.csv, model.pt and the validation predictions.

Formats are documented in docs/architecture.md; the folder is built aside and swapped in whole. The predictions file is
written by :func:`medcli.runs.write_predictions`, the one writer of that format.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import paths
from .._io import publish_dir, staging_dir, write_json, write_text
from ..runs import RUN_FORMAT, check_replaceable, new_run_id, versions, write_predictions  # noqa: F401  (the formats live in medcli.runs)
HISTORY_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                   "val_roc_auc", "lr", "seconds"]


def write_outputs(cfg, fold, model, history: list[dict], val_logits: np.ndarray, summary: dict, resolved: dict | None = None) -> str:
    """Write the run folder ``cfg.out`` whole: ``config.json``, ``history.csv``, ``model.pt`` and
    ``predictions/val.csv`` are written into a private sibling folder (``.<name>.tmp-<pid>``) and swapped in at the
    end (:func:`medcli._io.publish_dir`; the old folder is renamed aside, then removed). So the run folder is
    always one model: a kill leaves the old run as it was, and outputs derived from an older model (metrics,
    test and external predictions, figures, Grad-CAM, model card) go with it. Returns the ``run_id`` recorded in
    ``config.json`` and ``model.pt``.

    ``resolved``: ``{setting: {"value", "reason"}}`` for the settings set by the recipe or derived from the data
    (:func:`medcli.training.config.resolve_budget`), recorded as ``config.json``'s ``resolved``. Paths are
    recorded absolute (``data``, ``splits``, ``cache_dir``, ``splits_file``), so the run is read the same from any
    folder.

    Raises :class:`MedcliError` when ``cfg.out`` holds files that are not part of a run folder
    (:func:`medcli.runs.check_replaceable`)."""
    from ..models import save_model

    out = Path(cfg.out)
    check_replaceable(out)
    run_id = new_run_id()
    stage = staging_dir(out)
    try:
        write_predictions(
            paths.predictions_file(stage, "val"), fold.val.ids, [fold.paths_by_id[i] for i in fold.val.ids],
            fold.val.labels.numpy(), val_logits, fold.classes, fold=cfg.fold, seed=cfg.seed, split="val",
        )
        write_history(paths.history_file(stage), history)
        preprocess = {
            "img_size": cfg.img_size, "channels": cfg.channels, "resize": cfg.resize,
            "interpolation": fold.interpolation, "mean": summary["mean"], "std": summary["std"],
        }
        save_model(paths.model_file(stage), model, classes=fold.classes, extra={
            "preprocess": preprocess, "strategy": cfg.strategy, "weights": cfg.weights, "best_epoch": summary["best_epoch"],
            "data_fingerprint": fold.data_fingerprint, "splits_fingerprint": fold.splits_fingerprint, "run_id": run_id,
        })
        write_json(paths.config_file(stage), {
            "format": RUN_FORMAT,
            "run_id": run_id,
            # paths as absolute paths: `medcli eval`/`gradcam` and `medcli train --config config.json` work from any folder
            # and read the same images and folds (a relative --data or a default splits file would not)
            "config": recorded_settings(cfg, fold.splits_path),
            "resolved": resolved or {},
            "classes": fold.classes,
            "backbone": backbone_record(cfg.backbone, cfg.weights),
            "preprocess": preprocess,
            "summary": summary,
            "data_fingerprint": fold.data_fingerprint,
            "splits_file": os.path.abspath(fold.splits_path),
            "splits_fingerprint": fold.splits_fingerprint,
            "store_key": fold.store.key,
            "versions": versions(),
            "git_revision": git_revision(),
            "hardware": hardware(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        publish_dir(stage, out, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run_id


def recorded_settings(cfg, splits_path: str) -> dict:
    """``cfg`` as ``config.json``'s ``config`` records it: the dataset, the splits actually read and the cache
    as absolute paths (the weights file is made absolute by :func:`medcli.training.config.resolve`)."""
    return {**cfg.to_dict(), "data": os.path.abspath(cfg.data), "splits": os.path.abspath(splits_path),
            "cache_dir": None if cfg.cache_dir is None else os.path.abspath(os.path.expanduser(str(cfg.cache_dir)))}


def backbone_record(backbone: str, weights: str) -> dict:
    """What the report names a backbone by: ``name``, ``family`` (custom, torchvision, timm), timm's ``arch`` and
    pretrained ``tag``, ``weights_source`` (where the starting weights came from: ``none``, the torchvision
    weights enum or timm/Hub source for ``imagenet``, or the weights file), the weights' reference ``crop_pct``
    (informative: medcli resizes the whole image, ``--resize``, rather than centre-cropping away image borders)
    and their ``license`` as timm records it."""
    from ..models import get_backbone

    info = get_backbone(backbone)
    source = {"none": "none", "imagenet": info.imagenet_weights}.get(weights, weights)
    return {"name": backbone, "family": info.family, "arch": info.timm_name, "tag": info.pretrained_tag, "weights_source": source,
            "crop_pct": info.crop_pct, "license": info.license}


def write_history(path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the medcli source (with ``-dirty`` for local changes), or None outside a checkout; read
    once per process, so every cell trained by one process records the same revision."""
    src = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu, "gpus": gpus, "hostname": platform.node()}
