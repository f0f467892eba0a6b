"""Trained-model files (format ``medcli.model/1``).

A model file is a ``torch.save``-d dict of primitives, lists, dicts and tensors only, so it loads with
``torch.load(path, weights_only=True)`` and loading one never executes code:

``format``        ``"medcli.model/1"``
``backbone``      registry name of the backbone
``head``          registry name of the head
``num_classes``, ``in_channels``, ``img_size``, ``hidden``, ``dropout``
                  the remaining :func:`~medcli.models.create_model` arguments
``classes``       class names, index i = logit i
``state_dict``    the whole model (``trunk.*`` and ``head.*`` keys), on the CPU
...               whatever the caller passes as ``extra`` (fold, metrics, versions, ...)

Files are written atomically (temporary file ``.model.pt.tmp-<pid>`` in the same folder, then ``os.replace``), so
an interrupted run never leaves a truncated model where a complete one is expected, and its leftover temporary
file is recognised and removed by the next training (:mod:`medcli._cleanup`). A file that ``weights_only``
loading refuses is reported as not a safe medcli model, without torch's advice to load it unsafely.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import save_torch
from ..errors import MedcliError
from .classifier import Classifier, create_model
from .weights import _first_line

MODEL_FORMAT = "medcli.model/1"
_CONFIG_KEYS = ("backbone", "head", "num_classes", "in_channels", "img_size", "hidden", "dropout")
_RESERVED = {"format", "classes", "state_dict", *_CONFIG_KEYS}


def _unwrap(model: nn.Module) -> Classifier:
    # torch.compile wraps in `_orig_mod`, DistributedDataParallel in `module`.
    while not isinstance(model, Classifier):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise TypeError(f"save_model needs a medcli Classifier, got {type(model).__name__}")
        model = inner
    return model


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` that ``torch.load(weights_only=True)`` accepts, or TypeError naming the culprit.

    NumPy scalars (e.g. ``np.float64`` metrics) and subclasses of the builtins (enums, named tuples) become
    plain Python values: saved as they are, they would make the whole file unloadable with ``weights_only``.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    for kind in (bool, int, float, str):  # bool first: it is an int subclass
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, np.integer)):
                raise TypeError(f"{where}: key {key!r} must be a str or int")
            plain[_plain(key, where)] = _plain(item, f"{where}[{key!r}]")
        return plain
    raise TypeError(f"{where} is a {type(value).__name__}; model files hold only primitives, containers and tensors")


def save_model(path: str | os.PathLike, model: nn.Module, *, classes: list[str], extra: dict | None = None) -> Path:
    """Write ``model`` with its class names (and ``extra`` metadata) to ``path`` atomically; returns the path."""
    model = _unwrap(model)
    extra = dict(extra or {})
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise ValueError(f"extra must not override the model file keys {', '.join(clash)}")
    extra = _plain(extra, "extra")
    classes = [str(c) for c in classes]
    if len(classes) != model.config["num_classes"]:
        raise ValueError(f"{len(classes)} class names for a model with {model.config['num_classes']} outputs")
    payload = {
        "format": MODEL_FORMAT,
        **model.config,
        "classes": classes,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **extra,
    }
    return save_torch(payload, path)  # a full disk or read-only folder: a WriteError naming the path; a kill leaves a temp the next training removes


def read_model_file(path: str | os.PathLike) -> dict:
    """The validated contents of a model file (the state dict included)."""
    path = Path(path)
    if not path.is_file():
        raise MedcliError(f"model file {path} not found: train a model first or check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message here advises loading with weights_only=False, which would run whatever code the file holds
        raise MedcliError(f"{path}: not a safe medcli model file (it holds objects other than tensors and plain values), so it "
                          "is not loaded; use a model.pt written by `medcli train`") from None
    except Exception as exc:
        raise MedcliError(f"{path} is not a readable medcli model file ({_first_line(exc)})") from None
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != MODEL_FORMAT:
        found = f"format {fmt!r}" if fmt else "no medcli format marker"
        raise MedcliError(
            f"{path} is not a {MODEL_FORMAT} model file ({found}); it may come from another medcli version"
        )
    missing = [k for k in (*_CONFIG_KEYS, "classes", "state_dict") if k not in obj]
    if missing:
        raise MedcliError(f"{path}: the model file lacks {', '.join(missing)}; the file is damaged")
    return obj


def load_model(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """Rebuild a saved model (in eval mode) and return it with the file's metadata (all keys but the state dict)."""
    obj = read_model_file(path)
    config = {k: obj[k] for k in _CONFIG_KEYS}
    model = create_model(
        config.pop("backbone"),
        config.pop("num_classes"),
        weights=None,
        **config,
    )
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise MedcliError(
            f"{path}: the weights do not fit the model described in the file ({_first_line(exc)})"
        ) from None
    model.eval()
    return model, {k: v for k, v in obj.items() if k != "state_dict"}
