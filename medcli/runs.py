"""The run-folder library: open a trained run, read and write its predictions and metrics.

This is the only code that reads or writes ``predictions/<split>.csv`` (and its ``.calibrated.csv`` twin) and
``metrics/<split>.json``, for runs, ensembles and external evaluations alike. Training
(:mod:`medcli.training.outputs`), evaluation, Grad-CAM, ensembles and the report all go through it, so the
formats (docs/architecture.md) are written and parsed in one place:

* class names and image ids are text, always: a class called ``NA``, ``None``, ``null``, ``nan``, ``1`` or
  ``01`` reads back as exactly that string (pandas' default NA detection is off for these files);
* a metrics document is plain JSON: numpy values become Python numbers and every non-finite number (NaN,
  ±Infinity) becomes ``null`` (:func:`json_safe`), whoever writes it.

Everything below :func:`open_run` is pure file handling; torch is imported only to load a model or choose a
device.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, paths
from ._io import read_json, write_json, write_text
from .errors import MedcliError

RUN_FORMAT = "medcli.run/1"
METRICS_FORMAT = "medcli.metrics/1"
#: Columns of a predictions CSV that hold text (never parsed as numbers or as missing values).
TEXT_COLUMNS = ("id", "path", "label", "pred", "split")
#: The keys of ``config.json``'s ``config`` that identify a run (``run`` block of metrics and Grad-CAM indexes).
COORDINATES = ("dataset_name", "backbone", "strategy", "seed", "fold")


# --- opening a run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A trained run folder (``config.json`` + ``model.pt``, written by ``medcli train``), read once."""

    path: Path
    doc: dict  # config.json (format medcli.run/1)

    @property
    def config(self) -> dict:
        """The resolved training settings (``TrainConfig`` as a dict)."""
        return self.doc["config"]

    @property
    def classes(self) -> list[str]:
        """Class names in model-output order."""
        return list(self.doc["classes"])

    @property
    def preprocess(self) -> dict:
        """``img_size`` (px), ``channels`` (1 or 3), ``resize``, ``interpolation``, ``mean`` and ``std`` (per channel, 0..1 scale)."""
        return self.doc["preprocess"]

    def coordinates(self) -> dict:
        """``{dataset_name, backbone, strategy, seed, fold}`` of the run (the ``run`` block of its outputs)."""
        return {k: self.config.get(k) for k in COORDINATES}

    def store_settings(self):
        """The image-store settings the run was trained with (:class:`medcli.data.store.StoreSettings`)."""
        from .data.store import StoreSettings

        pre = self.preprocess
        return StoreSettings(img_size=pre["img_size"], channels=pre["channels"], resize=pre["resize"], interpolation=pre["interpolation"])

    def decode_options(self):
        """How the run's images were decoded (:func:`decode_options`)."""
        return decode_options(self.config)

    def load_dataset(self):
        """The run's own dataset, read exactly as training read it (:func:`load_run_dataset`)."""
        return load_run_dataset(self.config)

    def load_model(self, device=None):
        """The best-epoch :class:`~medcli.models.Classifier` from ``model.pt`` (on the CPU, or on ``device``)."""
        from .models import load_model

        model, _ = load_model(paths.model_file(self.path))
        return model if device is None else model.to(device)


def decode_options(config: dict):
    """How a run's images were decoded (:class:`medcli.data.decode.DecodeOptions`: DICOM window, frame), from its
    resolved settings; runs written before these settings existed decoded with the defaults."""
    from .data.decode import DecodeOptions

    return DecodeOptions(window=config.get("window"), frame=config.get("frame"))


def load_run_dataset(config: dict):
    """A run's own dataset, read exactly as training read it (layout, aliases, decoding, split groups)."""
    from .data import load_dataset

    return load_dataset(config["data"], config.get("layout", "auto"), config.get("aliases"), decode=decode_options(config),
                        group_by=config.get("group_by"), cache_dir=config.get("cache_dir"))


def open_run(run_dir: str | os.PathLike) -> Run:
    """Open a run folder written by ``medcli train``.

    Raises :class:`MedcliError` (one line, naming the folder) when ``config.json`` or ``model.pt`` is missing,
    when ``config.json`` is not valid JSON, or when it lacks ``config``/``classes``/``preprocess`` or has another
    format than ``medcli.run/1``; each says to train the run again.
    """
    run = Path(run_dir)
    if not Path(paths.config_file(run)).is_file() or not Path(paths.model_file(run)).is_file():
        raise MedcliError(f"{run}: not a run folder (needs config.json and model.pt from `medcli train`); train it with `medcli train --out {run}`")
    doc = read_config(run)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    missing = [k for k in ("config", "classes", "preprocess") if not isinstance(doc, dict) or k not in doc]
    if missing or fmt not in (None, RUN_FORMAT):
        what = f"lacks {', '.join(missing)}" if missing else f"has format {fmt!r}, not {RUN_FORMAT!r}"
        raise MedcliError(f"{paths.config_file(run)}: {what}; train the run again with this medcli (`medcli train --out {run}`)")
    return Run(run, doc)


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run folder, without the model (MedcliError when missing or not valid JSON)."""
    return read_json(paths.config_file(run_dir))


def inference_device():
    """The device evaluation and Grad-CAM run on: the first CUDA GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def history_column(monitor: str) -> str:
    """The ``history.csv`` column a training monitor is recorded in (``auc`` → ``val_roc_auc``, ``loss`` →
    ``val_loss``, ``balanced_accuracy`` → ``val_balanced_accuracy``; ``last`` → ``epoch``, whose maximum it keeps)."""
    return "epoch" if monitor == "last" else f"val_{'roc_auc' if monitor == 'auc' else monitor}"


def read_history(run_dir: str | os.PathLike):
    """``history.csv`` of a run as a DataFrame (one row per epoch; columns in docs/architecture.md)."""
    import pandas as pd

    path = paths.history_file(run_dir)
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise MedcliError(f"{path}: not found; train the run again with `medcli train`") from None


# --- predictions ------------------------------------------------------------------------------------------


def write_predictions(path, ids, image_paths, y: np.ndarray, logits: np.ndarray, classes: list[str], *, fold: int | None,
                      seed: int, split: str, probs: np.ndarray | None = None) -> None:
    """Write a predictions CSV atomically: one row per image.

    Columns ``id, path, label, pred, prob_<class>…, logit_<class>…, fold, seed, split`` (classes in ``classes``
    order). ``y``: ``(N,)`` true class indices; ``logits``: ``(N, C)``; ``probs``: ``(N, C)``, the softmax of
    ``logits`` when not given. ``pred`` is the arg-max of ``probs``; numbers are written with 8 significant digits.
    """
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


def _missing_hint(path: Path) -> str:
    run = path.parent.parent
    if path.name == "val.csv":
        return "re-run `medcli train` for this run"
    return f"run `medcli eval {run}` first"


def read_predictions(path: str | os.PathLike, classes: list[str], *, need_logits: bool = False):
    """A predictions CSV as a DataFrame, checked against ``classes``.

    Text columns (``id``, ``path``, ``label``, ``pred``, ``split``) are strings exactly as written (no value is
    read as missing); ``prob_<class>`` and ``logit_<class>`` are float64. Files without ``prob_`` columns (older
    runs) get them as the softmax of their ``logit_`` columns. Rows are in file order.

    Raises :class:`MedcliError` naming the file when it is missing or unreadable, lacks ``id``/``label`` (or the
    ``logit_`` columns with ``need_logits``), has non-numeric scores, repeats an id, or holds a label or
    prediction that is not one of ``classes``.
    """
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
    except FileNotFoundError:
        raise MedcliError(f"{path}: not found; {_missing_hint(path)}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise MedcliError(f"{path}: cannot read predictions ({exc}); {_missing_hint(path)} to write it again") from None
    if "id" not in frame or "label" not in frame:
        raise MedcliError(f"{path}: predictions need 'id' and 'label' columns")
    probs, logits = [f"prob_{c}" for c in classes], [f"logit_{c}" for c in classes]
    has_logits = set(logits) <= set(frame.columns)
    if need_logits and not has_logits:
        raise MedcliError(f"{path}: no logit_<class> columns for classes {classes}; {_missing_hint(path)} to write it again")
    try:
        if has_logits:
            frame[logits] = frame[logits].astype(np.float64)
        if not set(probs) <= set(frame.columns):
            if not has_logits:
                raise MedcliError(f"{path}: no prob_<class> or logit_<class> columns for classes {classes}")
            from .evaluation.calibration import softmax

            frame[probs] = softmax(frame[logits].to_numpy(dtype=np.float64))
        frame[probs] = frame[probs].astype(np.float64)
    except ValueError:
        raise MedcliError(f"{path}: non-numeric probabilities or logits") from None
    unknown = sorted(set(frame["label"]).union(frame["pred"] if "pred" in frame else []) - set(classes))
    if unknown:
        raise MedcliError(f"{path}: class(es) {', '.join(map(repr, unknown))} are not among the run's classes {classes}")
    if frame["id"].duplicated().any():
        raise MedcliError(f"{path}: image ids repeat")
    return frame


def label_indices(frame, classes: list[str]) -> np.ndarray:
    """``(N,)`` int class indices of a predictions frame's ``label`` column (positions in ``classes``)."""
    index = {c: k for k, c in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype=np.intp)


def probabilities(frame, classes: list[str]) -> np.ndarray:
    """``(N, C)`` float64 probabilities of a predictions frame, columns in ``classes`` order."""
    return frame[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)


def logits(frame, classes: list[str]) -> np.ndarray:
    """``(N, C)`` float64 logits of a predictions frame (read with ``need_logits=True``), in ``classes`` order."""
    return frame[[f"logit_{c}" for c in classes]].to_numpy(dtype=np.float64)


# --- metrics ----------------------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars and arrays become Python numbers and lists, tuples become
    lists, and every non-finite float (NaN, ±Infinity) becomes None. Used for every metrics document."""
    return _finite(json.loads(json.dumps(value, default=_plain)))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_metrics(path: str | os.PathLike, document: dict) -> dict:
    """Write a metrics document (``medcli.metrics/1``) atomically after :func:`json_safe`; returns what was written."""
    document = json_safe(document)
    write_json(path, document)
    return document


def read_metrics(path: str | os.PathLike) -> dict:
    """A metrics JSON document (MedcliError naming the file when it is missing or not valid JSON)."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise MedcliError(f"{path}: not a metrics document; run `medcli eval` again")
    return doc


def versions() -> dict:
    """Versions of medcli, Python and the libraries that change the numbers (None for one not installed)."""
    import importlib.metadata as md

    out = {"medcli": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "accelerate", "numpy", "scikit-learn", "pillow", "timm", "huggingface-hub", "safetensors",
                "pydicom"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
