"""Every setting of one training run, in one typed object.

The CLI and the workflow fill a :class:`TrainConfig`; :func:`resolve` fills in what depends on other settings
(the backbone's image size, the default weights and augmentation of a strategy, the output folders); the resolved
config is written to ``config.json`` in the run folder together with versions and fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import MedcliError

OPTIMIZERS = ("adamw", "sgd")
MONITORS = {"balanced_accuracy": "max", "accuracy": "max", "macro_f1": "max", "loss": "min"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Settings that do not change what is computed; they are left out of the resume key. ``feature_cache`` changes
# only how the frozen trunk's outputs are obtained (equal up to floating-point rounding), and a checkpoint holds
# the whole model either way.
_NOT_IN_KEY = {"out", "work", "results", "cache_dir", "workers", "progress", "feature_cache", "checkpoint_every"}


@dataclass
class TrainConfig:
    # data
    data: str = ""
    dataset_name: str | None = None
    layout: str = "auto"
    aliases: dict[str, str] = field(default_factory=dict)
    splits: str | None = None
    fold: int = 0
    skip_bad: bool = False
    # model
    backbone: str = "resnet18"
    head: str = "linear"
    strategy: str = "full"
    weights: str | None = None  # "imagenet", "none" or a file; default depends on the strategy
    img_size: int | None = None
    channels: int = 3
    resize: str = "squash"
    dropout: float = 0.5
    hidden: int = 256
    # strategy parameters
    partial_stages: int = 1
    freeze_epochs: int = 1
    lr_mult: float = 100.0
    # optimisation
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    class_weights: bool = True
    label_smoothing: float = 0.0
    monitor: str = "balanced_accuracy"
    patience: int = 10
    # augmentation (None: off for strategy linear, whose frozen features are then computed once; on otherwise)
    augment: bool | None = None
    hflip: bool = True
    rotate: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    # reproducibility and hardware
    seed: int = 0
    precision: str = "auto"
    channels_last: bool | None = None  # None: on (CUDA and CPU convolutions are faster in channels_last)
    compile: bool = False
    checkpoint_every: float = 60.0  # seconds between resume checkpoints (0: after every epoch); a kill loses at most this much
    feature_cache: bool = True  # head-only training without augmentation reads cached trunk outputs (training.features)
    # where things go
    results: str = "results"
    work: str = "work"
    out: str | None = None
    cache_dir: str | None = None
    workers: int | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Hash of everything that changes the result: a checkpoint is resumed only under the same key."""
        relevant = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_KEY}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def from_dict(values: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise MedcliError(f"unknown training setting {unknown[0]!r}; known settings: {', '.join(sorted(names))}")
    return TrainConfig(**values)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill in derived settings and check the combination; raises :class:`MedcliError` when it cannot work."""
    from .. import paths
    from ..models import get_backbone, get_head
    from ..strategies import check_combination, get_strategy

    if not cfg.data:
        raise MedcliError("no dataset given: pass --data PATH")
    info = get_backbone(cfg.backbone)
    get_head(cfg.head)
    get_strategy(cfg.strategy)
    weights = cfg.weights
    if weights is None:
        weights = "none" if cfg.strategy == "scratch" or info.imagenet_weights is None else "imagenet"
    if weights not in ("none", "imagenet"):
        weights = str(Path(weights).expanduser().resolve())
        if not Path(weights).is_file():
            raise MedcliError(f"--weights {cfg.weights}: file not found (use imagenet, none or a weights file)")
    check_combination(cfg.backbone, cfg.strategy, None if weights == "none" else weights)
    if cfg.strategy == "full" and weights == "none":
        import logging

        logging.getLogger("medcli").warning("strategy 'full' with weights 'none' trains from random initialisation, exactly like 'scratch'")
    if cfg.optimizer not in OPTIMIZERS:
        raise MedcliError(f"--optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if cfg.monitor not in MONITORS:
        raise MedcliError(f"--monitor {cfg.monitor!r}: choose one of {', '.join(MONITORS)}")
    if cfg.precision not in PRECISIONS:
        raise MedcliError(f"--precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    for name, value, low in (("epochs", cfg.epochs, 1), ("batch-size", cfg.batch_size, 1), ("patience", cfg.patience, 1)):
        if value < low:
            raise MedcliError(f"--{name} {value}: must be at least {low}")
    if cfg.lr <= 0:
        raise MedcliError(f"--lr {cfg.lr}: must be positive")
    if not 0 <= cfg.label_smoothing < 1:
        raise MedcliError(f"--label-smoothing {cfg.label_smoothing}: must be in [0, 1)")
    name = cfg.dataset_name or _dataset_name(cfg.data)
    img_size = cfg.img_size or info.input_size
    out = cfg.out or paths.run_dir(cfg.results, name, cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)
    augment = default_augment(cfg.strategy) if cfg.augment is None else bool(cfg.augment)
    return replace(cfg, dataset_name=name, weights=weights, img_size=img_size, out=str(out), augment=augment)


def default_augment(strategy: str) -> bool:
    """Augmentation when ``--augment/--no-augment`` is not given: off for ``linear``, on for the others.

    A linear probe trains one layer on a frozen trunk's outputs; as in eva's and CLIP's linear evaluation it
    sees each image's features as they are, and without augmentation those features are computed once and
    cached (see :mod:`medcli.training.features`). The other strategies train the trunk, which augmentation
    regularizes. The resolved value is what ``config.json`` records.
    """
    return strategy != "linear"


def _dataset_name(data: str) -> str:
    p = Path(data)
    return (p.stem if p.is_file() else p.resolve().name) or "dataset"


def work_dir(cfg: TrainConfig) -> str:
    """Where the resume checkpoint lives: outside the run folder (never a declared workflow output).

    Runs with the same coordinates share the folder; the checkpoint carries :meth:`TrainConfig.key`, so only
    a run that would compute exactly the same thing resumes from it.
    """
    from .. import paths

    return paths.work_dir(cfg.work, cfg.dataset_name, cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)
