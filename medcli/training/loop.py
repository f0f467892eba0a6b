"""The training loop: one code path for CPU, one GPU and several GPUs (Accelerate).

Reads top-down like torchvision's reference script: :func:`train` is a short sequence of named steps. It
resolves the config, loads the fold (:func:`load_fold`), builds the model and the strategy plan
(:func:`build_model`), the loss and the loaders (:func:`make_loaders`), resumes from a checkpoint if one is
there (:mod:`medcli.training.resume`), chooses what the network reads (:func:`choose_inputs`), then runs the
epochs (:func:`_fit`: :func:`train_one_epoch` and :func:`predict`, early stopping by
:class:`~medcli.training.early_stopping.EarlyStopping`, which keeps a real copy of the best epoch's weights,
checkpointing to the work folder after an epoch once ``checkpoint_every`` seconds have passed, so a killed
run resumes), and finally writes the run folder (see docs/architecture.md).

Both loops read batches through an ``inputs(positions, generator)`` function: images from the store
(:func:`image_inputs`), or, when the plan trains the head alone on a frozen trunk without augmentation, the
trunk's outputs computed once (:mod:`medcli.training.features`); then only the head runs, and the saved model
is still the whole model. Validation logits come from the inference loop shared with evaluation and the
feature cache (:func:`medcli.inference.infer`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from .. import paths
from ..errors import MedcliError
from ..inference import infer
from ..runs import history_column, load_run_dataset
from ..preprocess import AugmentSettings, to_model_input
from .batches import ImageSet, index_loader, keep_on_device, normalization
from .config import MONITORS, TrainConfig, resolve, resolve_budget, splits_file, work_dir
from .early_stopping import EarlyStopping
from .resume import resume_state, save_checkpoint

if TYPE_CHECKING:
    from ..data.store import ImageStore

log = logging.getLogger("medcli")


@dataclass
class Fold:
    """Everything a run needs to know about its data."""

    classes: list[str]
    train: ImageSet
    val: ImageSet
    paths_by_id: dict[str, str]
    splits_path: str
    splits_fingerprint: str
    data_fingerprint: str
    interpolation: str
    store: ImageStore  # every labelled image of the dataset, decoded
    pool_ids: list[str]  # train + val of every fold: the images a feature cache covers
    train_sizes: list[int]  # the training part's size in every fold of the splits (the default budget uses their mean)


def make_accelerator(cfg: TrainConfig):
    """An Accelerator for the available hardware; says plainly when a requested precision cannot be used."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        log.warning("fp16 needs a GPU; training in fp32 on the CPU")
        precision = "fp32"
    mixed = "no" if precision == "fp32" else precision
    from .tracking import make_trackers

    trackers = make_trackers(cfg) or None
    try:
        accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda, log_with=trackers)
    except ValueError as exc:  # an earlier cell of this process (medcli train --cells) used another precision
        if "already been initialized" not in str(exc):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)  # keeps the processes (PartialState) as they are
        accelerator = Accelerator(mixed_precision=mixed, cpu=not cuda, log_with=trackers)
    return accelerator, precision


def load_fold(cfg: TrainConfig, accelerator) -> Fold:
    """Index the dataset, read (or make) the splits, materialize the images once, return this fold's data."""
    from ..data.store import StoreSettings, materialize
    from ..models import get_backbone
    from ..splits import Advice, load_splits, split_data, splits_fingerprint

    dataset = load_run_dataset(cfg.to_dict())
    splits_path = splits_file(cfg)
    if not os.path.exists(splits_path):
        if cfg.splits:
            raise MedcliError(f"--splits {cfg.splits}: file not found; make it with `medcli split`")
        with accelerator.main_process_first():
            if accelerator.is_main_process and not os.path.exists(splits_path):
                # exclusive: when runs started together (other seeds, folds, backbones) each make the splits, the
                # first file published is the one every run trains on; later ones are not written
                log.info("no splits given: making them as `medcli split --folds 0` would (the dataset's own train/val split, or a stratified holdout)")
                split_data(cfg.data, splits_path, layout=cfg.layout, aliases=cfg.aliases, folds=0, seed=cfg.seed,
                           skip_bad=cfg.skip_bad, cache_dir=cfg.cache_dir, workers=cfg.workers,
                           allow_missing_classes=cfg.allow_missing_classes, decode=dataset.decode, group_by=cfg.group_by,
                           advice=Advice(train=True, data=str(cfg.data), out=str(splits_path)), exclusive=True)
    doc = load_splits(splits_path, dataset)
    if not 0 <= cfg.fold < len(doc["folds"]):
        raise MedcliError(f"--fold {cfg.fold}: {splits_path} has folds 0..{len(doc['folds']) - 1}")
    fold = doc["folds"][cfg.fold]
    classes = doc["classes"]
    index = {c: k for k, c in enumerate(classes)}
    labelled = set(doc["labels"])
    samples = [s for s in dataset.samples if s.id in labelled]
    dataset.samples = samples
    info = get_backbone(cfg.backbone)
    settings = StoreSettings(img_size=cfg.img_size, channels=cfg.channels, resize=cfg.resize, interpolation=info.interpolation)
    with accelerator.main_process_first():
        store = materialize(dataset, settings, cfg.cache_dir, cfg.workers)

    def part(ids: list[str]) -> ImageSet:
        return ImageSet(store.images, store.rows(ids), np.array([index[doc["labels"][i]] for i in ids]), ids)

    return Fold(
        classes=classes,
        train=part(fold["train"]),
        val=part(fold["val"]),
        paths_by_id={s.id: s.path for s in samples},
        splits_path=str(splits_path),
        splits_fingerprint=splits_fingerprint(doc),
        data_fingerprint=doc["dataset"]["fingerprint"],
        interpolation=info.interpolation,
        store=store,
        pool_ids=sorted({i for f in doc["folds"] for i in (*f["train"], *f["val"])}),
        train_sizes=[len(f["train"]) for f in doc["folds"]],
    )


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training fold: ``n / (C * n_c)`` (a class with no images gets 0)."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    weights = torch.where(counts > 0, labels.numel() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


STEP_MILESTONES, STEP_GAMMA = (0.5, 0.75), 0.1  # MedMNIST v2 (MultiStepLR at 50 and 75 of 100 epochs), ResNet (He et al.)


def lr_schedule(kind: str, total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier of optimizer step ``step`` (0-based) of a phase of ``total_steps``: a linear warm-up from 1%
    to 100% over ``warmup_steps``, then ``cosine`` decay to ``min_ratio`` at the end, ``step`` decay (x0.1 once
    50% and again once 75% of the phase's steps are done, as ``MultiStepLR(milestones=[0.5 E, 0.75 E])`` of the
    MedMNIST v2 protocol), or ``constant``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "step":
            return STEP_GAMMA ** sum(step >= round(m * total_steps) for m in STEP_MILESTONES)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(cfg: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, Adam (L2 weight decay) or SGD (Nesterov), fused (one kernel over all parameters) wherever torch has a
    fused kernel for the device.

    On a CPU the default AdamW loops over parameters one by one: for a ResNet-18 its step takes ~6x as long as
    the fused one (torch >= 2.4 has fused CPU kernels; older versions simply keep the default).
    """
    groups = [g for g in param_groups if g["params"]]
    fused = {"fused": True} if _fused_supported(groups) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def _fused_supported(groups: list[dict]) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper keeps the default implementation
        return False
    devices = set(_get_fused_kernels_supported_devices())
    return all(p.device.type in devices and torch.is_floating_point(p) for g in groups for p in g["params"])


def image_inputs(images: ImageSet, norm, device, *, augment: AugmentSettings | None = None, channels_last: bool = False):
    """``inputs(positions, generator) -> model input``: uint8 pixels from the store, [augmented,] normalized."""

    def inputs(idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pixels = images.pixels(idx).to(device, non_blocking=True)
        return to_model_input(pixels, *norm, augment=augment, generator=generator, channels_last=channels_last)

    return inputs


def train_one_epoch(model, loader, inputs, labels: torch.Tensor, optimizer, scheduler, loss_fn, accelerator, epoch: int, cfg: TrainConfig, bar=None,
                    average=None) -> dict:
    """One pass over ``loader`` (positions); ``inputs(positions, generator)`` gives the batch ``model`` reads;
    ``average`` (a :class:`~medcli.training.averaging.WeightAverage`) folds in the weights after each step."""
    device = accelerator.device
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + accelerator.process_index)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    seen = torch.zeros((), device=device, dtype=torch.float64)
    for step, (idx,) in enumerate(loader):
        x = inputs(idx, generator)
        y = labels[idx.cpu()].to(device, non_blocking=True)
        with accelerator.autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if not torch.isfinite(accelerator.reduce(loss.detach(), "mean")):
            raise MedcliError(f"the training loss became non-finite at epoch {epoch + 1}, step {step + 1}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(epoch * len(loader) + step + 1)
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.advance(1)
    totals = accelerator.reduce(torch.stack([total_loss, correct, seen]), "sum")
    n = max(float(totals[2]), 1.0)
    return {"train_loss": float(totals[0]) / n, "train_accuracy": float(totals[1]) / n, "train_images": n}


def predict(model, loader, inputs, accelerator) -> np.ndarray:
    """Logits ``(N, C)`` float32 for every position of ``loader`` (N: its dataset's length), in order, gathered
    from all processes; eval mode, under the run's autocast (:func:`medcli.inference.infer`)."""
    return infer(model, loader, inputs, len(loader.dataset), autocast=accelerator.autocast, gather=accelerator.gather_for_metrics).numpy()


def val_metrics(logits: np.ndarray, y: np.ndarray) -> dict:
    """Validation loss (unweighted cross-entropy), accuracy, balanced accuracy, macro F1 and ROC AUC (binary: of the
    positive class; multiclass: macro one-vs-rest over the classes present, the MedMNIST evaluator's AUC; NaN
    when undefined). The numpy versions of sklearn's balanced_accuracy_score and f1_score (equal to them, see
    tests/test_startup.py): importing sklearn.metrics would cost every training process ~1 s."""
    from ..evaluation.bootstrap import balanced_accuracy, macro_f1_present, roc_auc_ovr

    logp = torch.log_softmax(torch.from_numpy(logits).double(), 1).numpy()
    pred = logits.argmax(1)
    try:
        auc = roc_auc_ovr(y, np.exp(logp))
    except ValueError:  # fewer than two classes in the validation part
        auc = float("nan")
    return {
        "val_loss": float(-logp[np.arange(len(y)), y].mean()),
        "val_roc_auc": float(auc),
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": balanced_accuracy(y, pred, logits.shape[1]),
        "val_macro_f1": macro_f1_present(y, pred, logits.shape[1]),
    }


@dataclass
class Run:
    """What the epoch loop reads about one run, built once by :func:`train`."""

    cfg: TrainConfig
    accelerator: object
    model: nn.Module
    plan: object  # strategies.Plan
    train_loader: object
    val_loader: object
    train_labels: torch.Tensor
    val_labels: np.ndarray
    loss_fn: nn.Module
    checkpoint: str  # the resume checkpoint's path
    frozen_trunk: str | None  # the trunk's hash when the plan never trains it, else None
    average: object | None = None  # averaging.WeightAverage of the weights (--ema-epochs), or None
    tracking: object | None = None  # tracking.Tracking of the run (--track), or None


@dataclass
class Feed:
    """What runs on a batch and what it reads: ``net`` is the model itself on images, or its head alone on
    cached trunk features (the head shares its tensors with the model, so the model always holds the trained
    weights). ``train``/``val`` are ``inputs(positions, generator)`` functions."""

    net: nn.Module
    train: Callable
    val: Callable
    cache_info: dict  # recorded in the summary as ``feature_cache``


def train(cfg: TrainConfig) -> dict:
    """Train one model (one dataset x backbone x strategy x seed x fold) and write its run folder.

    ``cfg`` is resolved first (:func:`medcli.training.config.resolve`: image size, weights and output folder
    from the other settings). The dataset ``cfg.data`` is indexed, the splits file is read (or, when none is
    given and none exists at the default place, a holdout split is made and written there) and fold
    ``cfg.fold`` is decoded through the image store (``<cache>/store/<key>/``). Then, with the model and the
    strategy plan built: an epoch loop of :func:`train_one_epoch` and :func:`predict` on the fold's validation
    part, with early stopping on ``cfg.monitor`` (:class:`EarlyStopping`), on the images or, for head-only plans
    without augmentation, on trunk features cached once in ``<cache>/features/<key>/``.

    Written: the run folder ``cfg.out`` (``config.json``, ``history.csv``, ``model.pt`` with the best epoch's
    weights, ``predictions/val.csv``, ``metrics/val.json``; see :mod:`medcli.training.outputs`) by the main
    process. During training, after an epoch that is not the last, once ``cfg.checkpoint_every`` seconds have
    passed since the previous one, the resume checkpoint ``<work>/…/checkpoint.pt``
    (:mod:`medcli.training.resume`); a run started again with the same settings continues from it and retraces
    the uninterrupted run exactly (CPU). It is deleted once the run folder is written.

    Returns the summary also stored in ``config.json``: ``best_epoch`` (1-based), ``best_score``, ``monitor``,
    ``epochs_run``, ``stopped_early``, ``train_seconds`` (including the epochs before a resume), precision and
    device facts, normalization ``mean``/``std`` (one value per channel), ``class_weights``, ``n_train``,
    ``n_val``, ``feature_cache``, ``param_groups`` (per phase of the plan, each optimizer parameter group's name,
    peak learning rate and size, and the frozen rest: :meth:`medcli.strategies.Plan.param_groups_summary`),
    ``weight_average`` (``{method, epochs, decay, head_only}`` or None) and ``out``. ``config.json`` also records
    ``resolved``: each value a recipe set or the data decided (``epochs``, ``patience``, a ``monitor`` that falls
    back to ``loss``), with the reason.

    Raises :class:`MedcliError` for a missing ``--splits`` file, a fold number the splits do not have, a fold too
    small for the number of processes, a non-finite training loss (naming epoch and step), a checkpoint without
    best weights, and the errors of loading the dataset, the weights and the strategy plan.
    """
    cfg = resolve(cfg)
    accelerator, precision = make_accelerator(cfg)
    _configure_process(cfg, accelerator)
    fold = load_fold(cfg, accelerator)
    cfg, resolved = resolve_budget(cfg, round(sum(fold.train_sizes) / len(fold.train_sizes)))  # one budget for every fold
    cfg = _check_monitor(cfg, fold, resolved)
    model, plan = build_model(cfg, len(fold.classes))
    mean, std = normalization(cfg.weights != "none", model.info.mean, model.info.std, cfg.channels, fold.train)
    weights = class_weights(fold.train.labels, len(fold.classes)) if cfg.class_weights else None
    run = _prepare_run(cfg, accelerator, fold, model, plan, weights)
    stopper = EarlyStopping(MONITORS[cfg.monitor], cfg.patience)
    state = _resume(run, stopper)
    history: list[dict] = state["history"] if state else []
    start = state["epoch"] if state else 0
    feed = choose_inputs(cfg, fold, model, plan, mean, std, accelerator, precision, run.frozen_trunk)
    _log_start(cfg, fold, accelerator, precision)

    from .tracking import start as start_tracking

    try:
        run.tracking = start_tracking(accelerator, cfg, history[:start])
        t_start = time.perf_counter()
        stopped_early = _fit(run, feed, stopper, history, start, state)
        val_logits = _best_predictions(run, feed, stopper)
        seconds = time.perf_counter() - t_start + sum(r["seconds"] for r in history[:start])  # with the epochs before a resume
        summary = _summary(cfg, accelerator, precision, fold, stopper, history, stopped_early, seconds, mean, std, weights, feed,
                           plan.param_groups_summary(model), run.average)
        _write_run_folder(run, fold, history, val_logits, summary, resolved)
    except BaseException as exc:
        if run.tracking is not None:
            run.tracking.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if run.tracking is not None:
        best = history[stopper.best_epoch]
        run.tracking.finish({history_column(cfg.monitor): best[history_column(cfg.monitor)], "epoch": best["epoch"]}, len(history))
    log.info("best epoch %d (%s %.4f); outputs in %s", stopper.best_epoch + 1, cfg.monitor, stopper.best_score, cfg.out)
    return summary


def _summary(cfg: TrainConfig, accelerator, precision: str, fold: Fold, stopper: EarlyStopping, history: list[dict], stopped_early: bool,
             seconds: float, mean, std, weights, feed: Feed, param_groups: list[dict], average=None) -> dict:
    """The run's summary (returned by :func:`train`, stored in ``config.json``)."""
    return {
        "best_epoch": stopper.best_epoch + 1,
        "best_score": stopper.best_score,
        "monitor": cfg.monitor,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "train_seconds": seconds,
        "precision": precision,
        "channels_last": cfg.channels_last,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mean": mean,
        "std": std,
        "class_weights": None if weights is None else [float(w) for w in weights],
        "n_train": len(fold.train),
        "n_val": len(fold.val),
        "feature_cache": feed.cache_info,
        "param_groups": param_groups,
        "weight_average": None if average is None else {"method": "ema", "epochs": cfg.ema_epochs, "decay": average.decay,
                                                        "head_only": average.head_only},
        "out": cfg.out,
        "main_process": accelerator.is_main_process,
    }


def _check_monitor(cfg: TrainConfig, fold: Fold, resolved: dict) -> TrainConfig:
    """``cfg``, with the monitor ``loss`` when the default (or a recipe's) ``auc`` is undefined on this fold's
    validation part (a single class); recorded in ``resolved``. An explicit ``--monitor auc`` there is an error."""
    from dataclasses import replace

    if cfg.monitor != "auc" or len(np.unique(fold.val.labels.numpy())) >= 2:
        return cfg
    why = f"fold {cfg.fold}'s validation part has a single class, so its ROC AUC is undefined"
    if cfg.given is not None and "monitor" in cfg.given:
        raise MedcliError(f"--monitor auc: {why}; choose --monitor loss (or make splits whose validation parts hold every class)")
    log.warning("%s: selecting the best epoch by validation loss instead", why)
    resolved["monitor"] = {"value": "loss", "reason": why}
    return replace(cfg, monitor="loss")


def _configure_process(cfg: TrainConfig, accelerator) -> None:
    """Quiet logging on all but the main process; ``channels_last`` defaults to on for CUDA and CPU."""
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)
    if cfg.channels_last is None:
        cfg.channels_last = accelerator.device.type in ("cuda", "cpu")  # faster convolutions on CUDA and, with oneDNN, on CPUs


def build_model(cfg: TrainConfig, n_classes: int):
    """``(model, plan)``: the classifier, seeded with ``cfg.seed`` before its random initialisation, and the
    strategy's plan (phases, parameter groups, frozen modules)."""
    from accelerate.utils import set_seed

    from ..models import create_model
    from ..strategies import build_plan

    set_seed(cfg.seed)
    model = create_model(cfg.backbone, n_classes, in_channels=cfg.channels, head=cfg.head,
                         weights=None if cfg.weights == "none" else cfg.weights, dropout=cfg.dropout, hidden=cfg.hidden, img_size=cfg.img_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = build_plan(model, cfg.strategy, epochs=cfg.epochs, lr=cfg.lr, partial_stages=cfg.partial_stages, freeze_epochs=cfg.freeze_epochs, lr_mult=cfg.lr_mult,
                      layer_decay=cfg.layer_decay)
    return model, plan


def make_loaders(cfg: TrainConfig, fold: Fold, accelerator):
    """``(train, val)`` loaders of positions, prepared for Accelerate.

    ``--batch-size`` is the global batch: N processes each take 1/N of it, so results do not depend on N. The
    training loader shuffles per (seed, epoch) and drops a last incomplete batch (a batch of 1 breaks
    BatchNorm); the validation loader keeps the order and every image.
    """
    per_process = max(1, min(cfg.batch_size, len(fold.train)) // accelerator.num_processes)
    drop_last = len(fold.train) > per_process * accelerator.num_processes
    train_loader = accelerator.prepare_data_loader(index_loader(len(fold.train), per_process, seed=cfg.seed, shuffle=True, drop_last=drop_last))
    val_loader = accelerator.prepare_data_loader(index_loader(len(fold.val), max(1, cfg.batch_size // accelerator.num_processes), seed=cfg.seed, shuffle=False, drop_last=False))
    if len(train_loader) == 0:
        raise MedcliError(f"fold {cfg.fold} has {len(fold.train)} training images, too few for {accelerator.num_processes} process(es)")
    return train_loader, val_loader


def _prepare_run(cfg: TrainConfig, accelerator, fold: Fold, model, plan, weights) -> Run:
    """The loss (class-weighted with ``weights``), the loaders and the checkpoint path of this run."""
    from .features import trains_head_only, trunk_fingerprint

    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(accelerator.device), label_smoothing=cfg.label_smoothing)
    train_loader, val_loader = make_loaders(cfg, fold, accelerator)
    # A plan that never trains the trunk keeps it exactly as loaded from the weights: checkpoints then hold the head
    # alone and the trunk's hash, which a resumed run checks against the trunk it has just rebuilt.
    head_only = trains_head_only(model, plan)
    frozen_trunk = trunk_fingerprint(model.trunk) if head_only else None
    average = None
    if cfg.ema_epochs > 0:
        from .averaging import WeightAverage, ema_decay

        model.to(accelerator.device)  # the average is a copy of the model, made where the model trains
        average = WeightAverage(model, ema_decay(cfg.ema_epochs, len(train_loader)), head_only=head_only)
    return Run(cfg=cfg, accelerator=accelerator, model=model, plan=plan, train_loader=train_loader, val_loader=val_loader,
               train_labels=fold.train.labels, val_labels=fold.val.labels.numpy(), loss_fn=loss_fn,
               checkpoint=paths.checkpoint_file(work_dir(cfg)), frozen_trunk=frozen_trunk, average=average)


def _resume(run: Run, stopper: EarlyStopping) -> dict | None:
    """Load the run's checkpoint into ``run.model`` and ``stopper``; the checkpoint, or None to start afresh."""
    state = resume_state(run.checkpoint, run.cfg, run.model, run.frozen_trunk)
    if state:
        stopper.load_state_dict(state)
        run.model.load_state_dict(state["model"])
        if run.average is not None:
            run.average.load_state_dict(state["ema"])
        log.info("resuming from %s after epoch %d", run.checkpoint, state["epoch"])
    return state


def choose_inputs(cfg: TrainConfig, fold: Fold, model, plan, mean, std, accelerator, precision: str, frozen_trunk: str | None) -> Feed:
    """Cached trunk features when the plan trains the head alone without augmentation (computed once, see
    :mod:`medcli.training.features`), else the images of the store (training ones augmented per ``cfg``)."""
    from .features import cache_problem, feature_inputs, fold_features, trains_head_only

    device = accelerator.device
    norm = (torch.tensor(mean, device=device), torch.tensor(std, device=device))
    problem = cache_problem(cfg, model, plan)
    if problem is None:
        features = fold_features(cfg, fold, model, mean, std, norm, accelerator, precision, frozen_trunk)
        return Feed(model.head, feature_inputs(features.train, device), feature_inputs(features.val, device), features.info)
    if trains_head_only(model, plan):
        log.info("feature cache not used: %s", problem)
    augment = AugmentSettings(cfg.augment, cfg.hflip, cfg.rotate, cfg.zoom, cfg.shift)
    if keep_on_device(fold.train, device) and keep_on_device(fold.val, device):
        log.info("the fold's images are kept on %s", device)
    return Feed(model, image_inputs(fold.train, norm, device, augment=augment, channels_last=cfg.channels_last),
                image_inputs(fold.val, norm, device, channels_last=cfg.channels_last), {"used": False, "reason": problem})


def _log_start(cfg: TrainConfig, fold: Fold, accelerator, precision: str) -> None:
    log.info("training %s/%s on %s fold %d: %d train, %d val images, %d classes, %s, %d process(es), %s%s",
             cfg.backbone, cfg.strategy, cfg.dataset_name, cfg.fold, len(fold.train), len(fold.val), len(fold.classes),
             accelerator.device, accelerator.num_processes, precision, ", torch.compile" if cfg.compile else "")


def _fit(run: Run, feed: Feed, stopper: EarlyStopping, history: list[dict], start: int, state: dict | None) -> bool:
    """Epochs ``start .. cfg.epochs - 1`` (fewer when stopping early), appending to ``history``; a new optimizer
    and scheduler at each phase of the plan (restored from ``state`` when resuming inside a phase), a checkpoint
    when due. Returns whether it stopped early."""
    cfg, accelerator, plan = run.cfg, run.accelerator, run.plan
    prepared = optimizer = scheduler = None
    last_checkpoint = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        phase = plan.phase(epoch)
        if prepared is None or plan.phase_changes_at(epoch):
            prepared, optimizer, scheduler = _start_phase(run, feed.net, epoch)
            if state and epoch == start and not plan.phase_changes_at(epoch):
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
        row, improved = _one_epoch(run, feed, prepared, optimizer, scheduler, stopper, epoch)
        history.append(row)
        _log_epoch(row, cfg, improved)
        if run.tracking is not None:
            run.tracking.epoch(row)
        stop = stopper.should_stop(epoch, last_phase_start=plan.phases[-1].start, epochs=cfg.epochs)
        if stop:
            log.info("early stopping: no %s improvement for %d epochs", cfg.monitor, stopper.bad_epochs)
        due = time.perf_counter() - last_checkpoint >= cfg.checkpoint_every  # saving a big model every short epoch costs more than a kill
        if accelerator.is_main_process and due and not stop and epoch + 1 < cfg.epochs:
            last_checkpoint = time.perf_counter()
            save_checkpoint(run.checkpoint, cfg, epoch + 1, run.model, optimizer, scheduler, stopper, history, frozen_trunk=run.frozen_trunk,
                            average=None if run.average is None else run.average.state_dict())
        accelerator.wait_for_everyone()
        if stop:
            return True
    return False


def _start_phase(run: Run, net: nn.Module, epoch: int):
    """``(prepared net, optimizer, scheduler)`` for the plan's phase starting at (or containing) ``epoch``:
    trainable parameters set, warm-up then ``cfg.schedule`` over the phase's steps (:func:`lr_schedule`)."""
    cfg, accelerator = run.cfg, run.accelerator
    phase = run.plan.phase(epoch)
    run.plan.apply(run.model, epoch)
    prepared = accelerator.prepare_model(net)  # `model` itself, or its head alone on cached features
    if cfg.compile:  # weights stay shared with `model`: checkpoints and the best copy read `model` directly
        prepared = torch.compile(prepared)
    optimizer = accelerator.prepare_optimizer(build_optimizer(cfg, phase.param_groups))
    steps_per_epoch = len(run.train_loader)
    factor = lr_schedule(cfg.schedule, steps_per_epoch * (phase.stop - phase.start), int(cfg.warmup_epochs * steps_per_epoch), cfg.min_lr_ratio)
    return prepared, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _one_epoch(run: Run, feed: Feed, prepared, optimizer, scheduler, stopper: EarlyStopping, epoch: int) -> tuple[dict, bool]:
    """Train one epoch, score the validation part, update ``stopper``; ``(history row, improved)``."""
    from ..strategies import set_train_mode

    cfg, accelerator = run.cfg, run.accelerator
    phase = run.plan.phase(epoch)
    run.train_loader.set_epoch(epoch)
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout draws depend on (seed, epoch) only: resumable
    t0 = time.perf_counter()
    set_train_mode(run.model, phase)
    with _epoch_bar(cfg, accelerator, epoch, len(run.train_loader)) as bar:
        stats = train_one_epoch(prepared, run.train_loader, feed.train, run.train_labels, optimizer, scheduler, run.loss_fn, accelerator, epoch, cfg, bar,
                                run.average)
    stats["train_images_per_second"] = stats.pop("train_images") / max(time.perf_counter() - t0, 1e-9)
    validated = prepared if run.average is None else run.average.counterpart(feed.net)  # the weights that are selected and saved
    stats.update(val_metrics(predict(validated, run.val_loader, feed.val, accelerator), run.val_labels))
    row = {"epoch": epoch + 1, "phase": phase.name, **stats, "lr": optimizer.param_groups[-1]["lr"]}
    # the monitored column of the row (monitor last: the epoch itself, so every epoch is the newest best)
    improved = stopper.update(float(row[history_column(cfg.monitor)]), epoch, run.model if run.average is None else run.average.averaged())
    row["seconds"] = time.perf_counter() - t0
    return row, improved


def _best_predictions(run: Run, feed: Feed, stopper: EarlyStopping) -> np.ndarray:
    """Load the best epoch's weights into the model; its validation logits ``(n_val, C)``."""
    if stopper.best_state is None:  # resumed after the last epoch's checkpoint: nothing left to train
        raise MedcliError(f"{run.checkpoint}: checkpoint has no best weights; delete it and train again")
    run.model.load_state_dict(stopper.best_state)
    return predict(run.accelerator.prepare_model(feed.net), run.val_loader, feed.val, run.accelerator)


def _write_run_folder(run: Run, fold: Fold, history: list[dict], val_logits: np.ndarray, summary: dict, resolved: dict) -> None:
    """The main process writes the run folder, then deletes the resume checkpoint."""
    from .outputs import write_outputs

    if run.accelerator.is_main_process:
        write_outputs(run.cfg, fold, run.model, history, val_logits, summary, resolved)
        if os.path.exists(run.checkpoint):
            os.remove(run.checkpoint)
    run.accelerator.wait_for_everyone()


def _epoch_bar(cfg: TrainConfig, accelerator, epoch: int, steps: int):
    from contextlib import nullcontext

    from ..progress import is_interactive

    if not (cfg.progress and accelerator.is_main_process and is_interactive()):
        return nullcontext(None)
    return _RichBar(f"epoch {epoch + 1}/{cfg.epochs}", steps)


class _RichBar:
    def __init__(self, description: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def advance(self, n: int) -> None:
        self.progress.update(self.task, advance=n)


def _log_epoch(row: dict, cfg: TrainConfig, improved: bool) -> None:
    log.info(
        "epoch %d/%d [%s] train loss %.4f acc %.3f | val%s loss %.4f acc %.3f bal-acc %.3f f1 %.3f auc %.3f%s | lr %.2e | %.1f s",
        row["epoch"], cfg.epochs, row["phase"], row["train_loss"], row["train_accuracy"], " (EMA)" if cfg.ema_epochs > 0 else "",
        row["val_loss"], row["val_accuracy"], row["val_balanced_accuracy"], row["val_macro_f1"], row["val_roc_auc"],
        " *best*" if improved else "", row["lr"], row["seconds"],
    )


