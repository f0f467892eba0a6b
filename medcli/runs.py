"""The run-folder library: open a trained run, read and write its predictions and metrics.

This is the only code that reads or writes ``predictions/<split>.csv`` (and its ``.calibrated.csv`` twin) and
``metrics/<split>.json``, for runs, ensembles and external evaluations alike. Training
(:mod:`medcli.training.outputs`), evaluation, Grad-CAM, ensembles and the report all go through it, so the
formats (docs/architecture.md) are written and parsed in one place:

* class names and image ids are text, always: a class called ``NA``, ``None``, ``null``, ``nan``, ``1`` or
  ``01`` reads back as exactly that string (pandas' default NA detection is off for these files);
* a metrics document is plain JSON: numpy values become Python numbers and every non-finite number (NaN,
  ±Infinity) becomes ``null`` (:func:`json_safe`), whoever writes it.

A run folder is one model: ``medcli train`` builds it aside and swaps it in whole (:func:`check_replaceable`
guards what it replaces), and ``config.json`` and ``model.pt`` carry the same ``run_id``. Every output derived from
the model (metrics, Grad-CAM indexes, external results) records that ``run_id``; :func:`check_derived` refuses
one of another model. A run folder is input, not instructions: :func:`open_run` validates every field readers use,
and caches come from the reader's own settings, never from the run's record.

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
import re
import uuid
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
#: What a run folder may hold (``medcli train``, ``eval``, ``gradcam``, ``export``): retraining replaces the whole
#: folder, so a folder holding anything else is not replaced (:func:`check_replaceable`).
RUN_ENTRIES = frozenset({paths.CONFIG_FILE, paths.HISTORY_FILE, paths.MODEL_FILE, paths.MODEL_CARD_FILE, "predictions", "metrics",
                         "figures", "external", "gradcam"})
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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

    @property
    def run_id(self) -> str | None:
        """The model's identity (``config.json``'s ``run_id``, also in ``model.pt``); None for runs written before it."""
        return self.doc.get("run_id")

    def load_dataset(self, cache_dir: str | os.PathLike | None = None):
        """The run's own dataset, read exactly as training read it (:func:`load_run_dataset`), with the reader's
        ``cache_dir`` (None: the default cache), never the one the run recorded."""
        return load_run_dataset({**self.config, "cache_dir": None if cache_dir is None else str(cache_dir)})

    def load_model(self, device=None):
        """The best-epoch :class:`~medcli.models.Classifier` from ``model.pt`` (on the CPU, or on ``device``).

        Raises :class:`MedcliError` when ``model.pt`` is not a safe, readable medcli model or is not the model
        ``config.json`` describes (another ``run_id``, other classes, another number of outputs: e.g. a re-train
        killed between writing the two files)."""
        from .models import load_model

        model, meta = load_model(paths.model_file(self.path))
        check_model_matches(self, meta)
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
    validate_run_doc(doc, paths.config_file(run))
    return Run(run, doc)


def validate_run_doc(doc: dict, where: str | os.PathLike) -> None:
    """Check the fields of a run's ``config.json`` that readers use; :class:`MedcliError` naming ``where`` and the
    key otherwise: ``classes`` (at least two distinct, non-empty strings), ``preprocess`` (``img_size`` a positive
    integer, ``channels`` 1 or 3, known ``resize`` and ``interpolation``, ``mean``/``std`` one finite number per
    channel, ``std`` > 0), ``config`` (the coordinates and the dataset-reading settings, by the settings schema),
    ``splits_file`` (a path), the fingerprints and ``run_id`` (32 hex digits) when present."""
    from .data.decode import INTERPOLATIONS, RESIZE_MODES
    from .training.config import check_value

    fix = "train the run again (`medcli train`) or restore the file"

    def bad(key: str, what: str) -> MedcliError:
        return MedcliError(f"{where}: {key} {what}; {fix}")

    classes = doc.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise bad("classes", "must be a list of at least two distinct, non-empty class names")
    pre = doc.get("preprocess")
    if not isinstance(pre, dict):
        raise bad("preprocess", "must be a mapping")
    size, channels = pre.get("img_size"), pre.get("channels")
    if not _is_int(size) or not 0 < size <= 8192:
        raise bad("preprocess.img_size", f"{size!r} must be a whole number of pixels (1..8192)")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad("preprocess.channels", f"{channels!r} must be 1 or 3")
    if pre.get("resize") not in RESIZE_MODES:
        raise bad("preprocess.resize", f"{pre.get('resize')!r} must be one of {', '.join(RESIZE_MODES)}")
    if pre.get("interpolation") not in INTERPOLATIONS:
        raise bad("preprocess.interpolation", f"{pre.get('interpolation')!r} must be one of {', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        values = pre.get(key)
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            raise bad(f"preprocess.{key}", f"must list {channels} finite number(s){' above 0' if key == 'std' else ''}")
    cfg = doc.get("config")
    if not isinstance(cfg, dict):
        raise bad("config", "must be a mapping")
    if not isinstance(cfg.get("data"), str) or not cfg["data"]:
        raise bad("config.data", "must be the dataset's path")
    for key in ("dataset_name", "backbone", "strategy"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise bad(f"config.{key}", "must be a non-empty text")
    for key in ("seed", "fold"):
        if not _is_int(cfg.get(key)):
            raise bad(f"config.{key}", f"{cfg.get(key)!r} must be a whole number")
    for key in ("seed", "fold", "layout", "aliases", "window", "frame", "group_by"):
        if key in cfg:
            try:
                check_value(key, cfg[key], f"config.{key}")
            except MedcliError as exc:
                raise MedcliError(f"{where}: {exc}; {fix}") from None
    if not isinstance(doc.get("splits_file", ""), str):
        raise bad("splits_file", "must be a path")
    for key in ("splits_fingerprint", "data_fingerprint"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise bad(key, "must be a text")
    if "run_id" in doc and not (isinstance(doc["run_id"], str) and _RUN_ID.match(doc["run_id"])):
        raise bad("run_id", "must be 32 hexadecimal digits")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def new_run_id() -> str:
    """A new model identity (32 hex digits): recorded in ``model.pt``, ``config.json`` and every derived output."""
    return uuid.uuid4().hex


def check_model_matches(run: Run, meta: dict) -> None:
    """Refuse a ``model.pt`` (``meta``: its metadata) that is not the model the run's ``config.json`` describes.

    Runs written with a ``run_id`` must carry the same one in both files; older runs are compared by what both
    record (best epoch, preprocessing). Both must name the same classes in the same order. MedcliError naming
    the file and the fix."""
    model_file = paths.model_file(run.path)
    fix = f"train the run again (`medcli train --out {run.path}`)"
    if meta.get("classes") is not None and [str(c) for c in meta["classes"]] != run.classes:
        raise MedcliError(f"{model_file}: its classes {list(meta['classes'])} differ from config.json's {run.classes} "
                          f"(order matters: logit i is class i); {fix}")
    if meta.get("num_classes") is not None and meta["num_classes"] != len(run.classes):
        raise MedcliError(f"{model_file}: the model has {meta['num_classes']} outputs for {len(run.classes)} classes in config.json; {fix}")
    if run.run_id is not None or meta.get("run_id") is not None:
        if meta.get("run_id") != run.run_id:
            raise MedcliError(f"{model_file}: not the model config.json describes (run_id {meta.get('run_id')} vs {run.run_id}: "
                              f"a re-train was interrupted or files were mixed); {fix}")
        return
    recorded = (run.doc.get("summary") or {}).get("best_epoch")
    if meta.get("best_epoch") is not None and recorded is not None and meta["best_epoch"] != recorded:
        raise MedcliError(f"{model_file}: not the model config.json describes (best epoch {meta['best_epoch']} vs {recorded}: "
                          f"a re-train was interrupted or files were mixed); {fix}")
    pre = meta.get("preprocess")
    if isinstance(pre, dict) and any(pre.get(k) != run.preprocess.get(k) for k in ("img_size", "channels", "mean", "std")):
        raise MedcliError(f"{model_file}: not the model config.json describes (other preprocessing); {fix}")


class StaleOutputError(MedcliError):
    """An output derived from another model than the run folder's own (:func:`check_derived`)."""


def check_derived(run_doc: dict, derived: dict, path: str | os.PathLike, fix: str) -> None:
    """Refuse an output derived from a run's model (``derived``: a metrics document, a Grad-CAM index) that
    another model of the run folder wrote: its ``run_id`` must be the run's (``run_doc``: ``config.json``).
    Runs written before ``run_id`` existed (neither file has one) are not checked; one without the other is refused. ``fix``: the command that writes it again.
    Raises :class:`StaleOutputError` (a :class:`MedcliError`) naming ``path`` and ``fix``."""
    mine = run_doc.get("run_id")
    if (mine is not None or derived.get("run_id") is not None) and derived.get("run_id") != mine:
        raise StaleOutputError(f"{path}: written for another model than the run's model.pt (run_id {derived.get('run_id')} vs "
                          f"{mine}); {fix}")


def check_replaceable(out: str | os.PathLike) -> None:
    """Refuse to replace ``out`` by a new run folder when it holds anything a run folder does not
    (:data:`RUN_ENTRIES`, and medcli's temporary names): retraining swaps in a whole new folder, and files of
    the user's would be lost. A missing or empty folder, or a run folder, is fine."""
    from ._cleanup import is_temp_name

    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise MedcliError(f"--out {out}: is a file; give a folder for the run")
    foreign = sorted(e.name for e in out.iterdir()
                     if e.name not in RUN_ENTRIES and not is_temp_name(e.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise MedcliError(f"--out {out}: holds files that are not part of a run folder ({shown}); training replaces the whole "
                          f"folder, so give a new or empty folder, or move them away")


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
