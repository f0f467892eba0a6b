"""Write a finished run's folder: config.json, history.csv, model.pt and the validation predictions.

Formats are documented in docs/architecture.md; every file is written atomically. The predictions file is
written by :func:`medcli.runs.write_predictions`, the one writer of that format.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import paths
from .._io import write_json, write_text
from ..runs import RUN_FORMAT, versions, write_predictions  # noqa: F401  (the run-folder formats live in medcli.runs)
HISTORY_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                   "val_roc_auc", "lr", "seconds"]


def write_outputs(cfg, fold, model, history: list[dict], val_logits: np.ndarray, summary: dict, resolved: dict | None = None) -> None:
    """``resolved``: ``{setting: {"value", "reason"}}`` for the settings set by the recipe or derived from the data
    (:func:`medcli.training.config.resolve_budget`), recorded as ``config.json``'s ``resolved``."""
    from ..models import save_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # a model card describes the model it was written for: one left from a model trained here before would lie
    Path(paths.model_card_file(out)).unlink(missing_ok=True)
    write_predictions(
        paths.predictions_file(out, "val"), fold.val.ids, [fold.paths_by_id[i] for i in fold.val.ids],
        fold.val.labels.numpy(), val_logits, fold.classes, fold=cfg.fold, seed=cfg.seed, split="val",
    )
    write_history(paths.history_file(out), history)
    preprocess = {
        "img_size": cfg.img_size, "channels": cfg.channels, "resize": cfg.resize,
        "interpolation": fold.interpolation, "mean": summary["mean"], "std": summary["std"],
    }
    save_model(paths.model_file(out), model, classes=fold.classes, extra={
        "preprocess": preprocess, "strategy": cfg.strategy, "weights": cfg.weights, "best_epoch": summary["best_epoch"],
        "data_fingerprint": fold.data_fingerprint, "splits_fingerprint": fold.splits_fingerprint,
    })
    write_json(paths.config_file(out), {
        "format": RUN_FORMAT,
        # the data and splits actually used, as absolute paths: `medcli train --config config.json` from any folder
        # trains on the same images and folds (a relative --data or a default splits file would not)
        "config": {**cfg.to_dict(), "data": os.path.abspath(cfg.data), "splits": os.path.abspath(fold.splits_path)},
        "resolved": resolved or {},
        "classes": fold.classes,
        "backbone": backbone_record(cfg.backbone, cfg.weights),
        "preprocess": preprocess,
        "summary": summary,
        "data_fingerprint": fold.data_fingerprint,
        "splits_file": fold.splits_path,
        "splits_fingerprint": fold.splits_fingerprint,
        "store_key": fold.store.key,
        "versions": versions(),
        "git_revision": git_revision(),
        "hardware": hardware(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


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
