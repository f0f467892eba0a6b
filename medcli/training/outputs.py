"""Write a finished run's folder: config.json, history.csv, model.pt and the validation predictions.

Formats are documented in docs/architecture.md; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, paths
from .._io import write_json, write_text

RUN_FORMAT = "medcli.run/1"
HISTORY_COLUMNS = ["epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "lr", "seconds"]


def write_outputs(cfg, fold, model, history: list[dict], val_logits: np.ndarray, summary: dict) -> None:
    from ..models import save_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
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
        "config": cfg.to_dict(),
        "classes": fold.classes,
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


def write_predictions(path, ids, image_paths, y: np.ndarray, logits: np.ndarray, classes: list[str], *, fold: int, seed: int, split: str, probs: np.ndarray | None = None) -> None:
    """One row per image: ``id, path, label, pred, prob_<class>…, logit_<class>…, fold, seed, split``."""
    import torch

    if probs is None:
        probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), 1).numpy()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "label", "pred", *(f"prob_{c}" for c in classes), *(f"logit_{c}" for c in classes), "fold", "seed", "split"])
    pred = probs.argmax(1)
    for k, sid in enumerate(ids):
        writer.writerow([sid, image_paths[k], classes[int(y[k])], classes[int(pred[k])],
                         *(f"{p:.8g}" for p in probs[k]), *(f"{v:.8g}" for v in logits[k]), fold, seed, split])
    write_text(path, buf.getvalue())


def write_history(path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def versions() -> dict:
    import importlib.metadata as md

    out = {"medcli": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "accelerate", "numpy", "scikit-learn", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """The git commit of the medcli source (with ``-dirty`` for local changes), or None outside a checkout."""
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
