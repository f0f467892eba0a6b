"""The training loop: one code path for CPU, one GPU and several GPUs (Accelerate).

Reads top-down like torchvision's reference script: :func:`train` resolves the config, loads the fold
(:func:`load_fold`), builds the model and the strategy plan, then alternates :func:`train_one_epoch` and
:func:`predict`, keeping a real copy of the best epoch's weights, checkpointing to the work folder after an epoch
once ``checkpoint_every`` seconds have passed (so a killed run resumes), and finally writes the run folder (see
docs/architecture.md).

Both functions read batches through an ``inputs(positions, generator)`` function: images from the store
(:func:`image_inputs`), or, when the plan trains the head alone on a frozen trunk without augmentation, the
trunk's outputs computed once (:mod:`medcli.training.features`); then only the head runs, and the saved model
is still the whole model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from .. import paths
from ..errors import MedcliError
from .batches import AugmentSettings, ImageSet, index_loader, normalization, to_model_input
from .config import MONITORS, TrainConfig, resolve, work_dir

if TYPE_CHECKING:
    from ..data.store import ImageStore

log = logging.getLogger("medcli")

CHECKPOINT_FORMAT = "medcli.checkpoint/2"  # 2: head-only states and trunk_sha256 when the trunk stays frozen


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
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=not cuda)
    return accelerator, precision


def load_fold(cfg: TrainConfig, accelerator) -> Fold:
    """Index the dataset, read (or make) the splits, materialize the images once, return this fold's data."""
    from ..data import load_dataset
    from ..data.store import StoreSettings, materialize
    from ..models import get_backbone
    from ..splits import load_splits, split_data, splits_fingerprint

    dataset = load_dataset(cfg.data, cfg.layout, cfg.aliases)
    splits_path = cfg.splits or paths.splits_file(cfg.results, cfg.dataset_name)
    if not os.path.exists(splits_path):
        if cfg.splits:
            raise MedcliError(f"--splits {cfg.splits}: file not found; make it with `medcli split`")
        with accelerator.main_process_first():
            if accelerator.is_main_process and not os.path.exists(splits_path):
                log.info("no splits given: using the dataset's own train/val split (or a stratified holdout); written to %s", splits_path)
                split_data(cfg.data, splits_path, layout=cfg.layout, aliases=cfg.aliases, folds=0, seed=cfg.seed,
                           skip_bad=cfg.skip_bad, cache_dir=cfg.cache_dir, workers=cfg.workers)
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
    )


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from the training fold: ``n / (C * n_c)`` (a class with no images gets 0)."""
    counts = torch.bincount(labels, minlength=n_classes).double()
    weights = torch.where(counts > 0, labels.numel() / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up from 1% to 100%, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(cfg: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW or SGD, fused (one kernel over all parameters) wherever torch has a fused kernel for the device.

    On a CPU the default AdamW loops over parameters one by one: for a ResNet-18 its step takes ~6x as long as
    the fused one (torch >= 2.4 has fused CPU kernels; older versions simply keep the default).
    """
    groups = [g for g in param_groups if g["params"]]
    fused = {"fused": True} if _fused_supported(groups) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True, **fused)
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


def train_one_epoch(model, loader, inputs, labels: torch.Tensor, optimizer, scheduler, loss_fn, accelerator, epoch: int, cfg: TrainConfig, bar=None) -> dict:
    """One pass over ``loader`` (positions); ``inputs(positions, generator)`` gives the batch ``model`` reads."""
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
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.advance(1)
    totals = accelerator.reduce(torch.stack([total_loss, correct, seen]), "sum")
    n = max(float(totals[2]), 1.0)
    return {"train_loss": float(totals[0]) / n, "train_accuracy": float(totals[1]) / n}


@torch.no_grad()
def predict(model, loader, inputs, accelerator) -> np.ndarray:
    """Logits ``(N, C)`` for every position of ``loader``, in order, gathered from all processes."""
    model.eval()
    device = accelerator.device
    chunks, positions = [], []
    for (idx,) in loader:
        x = inputs(idx)
        with accelerator.autocast():
            logits = model(x)
        idx, logits = accelerator.gather_for_metrics((idx.to(device), logits.float()))
        positions.append(idx.cpu())
        chunks.append(logits.cpu())
    order = torch.cat(positions).argsort()
    return torch.cat(chunks)[order].numpy()


def val_metrics(logits: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    logp = torch.log_softmax(torch.from_numpy(logits).double(), 1).numpy()
    pred = logits.argmax(1)
    return {
        "val_loss": float(-logp[np.arange(len(y)), y].mean()),
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "val_macro_f1": float(f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)),
    }


def _is_better(score: float, best: float | None, mode: str) -> bool:
    return best is None or (score > best if mode == "max" else score < best)


def train(cfg: TrainConfig) -> dict:
    """Train one model (one dataset × backbone × strategy × seed × fold) and write its run folder.

    Returns the summary that is also stored in ``config.json``.
    """
    from accelerate.utils import set_seed

    from ..models import create_model
    from ..strategies import build_plan, set_train_mode
    from .features import cache_problem, feature_inputs, fold_features, trains_head_only, trunk_fingerprint
    from .outputs import write_outputs

    cfg = resolve(cfg)
    accelerator, precision = make_accelerator(cfg)
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)
    if cfg.channels_last is None:
        cfg.channels_last = accelerator.device.type in ("cuda", "cpu")  # faster convolutions on CUDA and, with oneDNN, on CPUs
    fold = load_fold(cfg, accelerator)
    n_classes = len(fold.classes)
    set_seed(cfg.seed)
    model = create_model(cfg.backbone, n_classes, in_channels=cfg.channels, head=cfg.head,
                         weights=None if cfg.weights == "none" else cfg.weights, dropout=cfg.dropout, hidden=cfg.hidden, img_size=cfg.img_size)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = build_plan(model, cfg.strategy, epochs=cfg.epochs, lr=cfg.lr, partial_stages=cfg.partial_stages, freeze_epochs=cfg.freeze_epochs, lr_mult=cfg.lr_mult)
    mean, std = normalization(cfg.weights != "none", model.info.mean, model.info.std, cfg.channels, fold.train)
    norm = (torch.tensor(mean, device=accelerator.device), torch.tensor(std, device=accelerator.device))
    weights = class_weights(fold.train.labels, n_classes) if cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(accelerator.device), label_smoothing=cfg.label_smoothing)
    augment = AugmentSettings(cfg.augment, cfg.hflip, cfg.rotate, cfg.zoom, cfg.shift)

    # --batch-size is the global batch: N processes each take 1/N of it, so results do not depend on N.
    per_process = max(1, min(cfg.batch_size, len(fold.train)) // accelerator.num_processes)
    drop_last = len(fold.train) > per_process * accelerator.num_processes  # a last batch of 1 breaks BatchNorm
    train_loader = accelerator.prepare_data_loader(index_loader(len(fold.train), per_process, seed=cfg.seed, shuffle=True, drop_last=drop_last))
    val_loader = accelerator.prepare_data_loader(index_loader(len(fold.val), max(1, cfg.batch_size // accelerator.num_processes), seed=cfg.seed, shuffle=False, drop_last=False))
    if len(train_loader) == 0:
        raise MedcliError(f"fold {cfg.fold} has {len(fold.train)} training images, too few for {accelerator.num_processes} process(es)")
    mode = MONITORS[cfg.monitor]
    ckpt_path = paths.checkpoint_file(work_dir(cfg))
    # A plan that never trains the trunk keeps it exactly as loaded from the weights: checkpoints then hold the head
    # alone and the trunk's hash, which a resumed run checks against the trunk it has just rebuilt.
    frozen_trunk = trunk_fingerprint(model.trunk) if trains_head_only(model, plan) else None
    state = _load_checkpoint(ckpt_path, cfg, frozen_trunk) if os.path.exists(ckpt_path) else None
    if state and frozen_trunk:
        state["model"], state["best_state"] = _with_trunk(state["model"], model), _with_trunk(state["best_state"], model)
    start = state["epoch"] if state else 0
    history: list[dict] = state["history"] if state else []
    best_state, best_score, best_epoch, bad_epochs = (state["best_state"], state["best_score"], state["best_epoch"], state["bad_epochs"]) if state else (None, None, -1, 0)
    if state:
        model.load_state_dict(state["model"])
        log.info("resuming from %s after epoch %d", ckpt_path, start)
    problem = cache_problem(cfg, model, plan)
    if problem is None:  # head-only training on the frozen trunk's outputs, computed once (training/features.py)
        features = fold_features(cfg, fold, model, mean, std, norm, accelerator, precision, frozen_trunk)
        net, cache_info = model.head, features.info
        train_inputs = feature_inputs(features.train, accelerator.device)
        val_inputs = feature_inputs(features.val, accelerator.device)
    else:
        if trains_head_only(model, plan):
            log.info("feature cache not used: %s", problem)
        net, cache_info = model, {"used": False, "reason": problem}
        train_inputs = image_inputs(fold.train, norm, accelerator.device, augment=augment, channels_last=cfg.channels_last)
        val_inputs = image_inputs(fold.val, norm, accelerator.device, channels_last=cfg.channels_last)
    log.info("training %s/%s on %s fold %d: %d train, %d val images, %d classes, %s, %d process(es), %s%s",
             cfg.backbone, cfg.strategy, cfg.dataset_name, cfg.fold, len(fold.train), len(fold.val), n_classes,
             accelerator.device, accelerator.num_processes, precision, ", torch.compile" if cfg.compile else "")

    prepared = optimizer = scheduler = None
    stopped_early = False
    t_start = last_checkpoint = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        phase = plan.phase(epoch)
        if prepared is None or plan.phase_changes_at(epoch):
            plan.apply(model, epoch)
            prepared = accelerator.prepare_model(net)  # `model` itself, or its head alone on cached features
            if cfg.compile:  # weights stay shared with `model`: checkpoints and the best copy read `model` directly
                prepared = torch.compile(prepared)
            optimizer = accelerator.prepare_optimizer(build_optimizer(cfg, phase.param_groups))
            steps = len(train_loader) * (phase.stop - phase.start)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, int(cfg.warmup_epochs * len(train_loader)), cfg.min_lr_ratio))
            if state and epoch == start and not plan.phase_changes_at(epoch):
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
        train_loader.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout draws depend on (seed, epoch) only: resumable
        t0 = time.perf_counter()
        set_train_mode(model, phase)
        with _epoch_bar(cfg, accelerator, epoch, len(train_loader)) as bar:
            stats = train_one_epoch(prepared, train_loader, train_inputs, fold.train.labels, optimizer, scheduler, loss_fn, accelerator, epoch, cfg, bar)
        logits = predict(prepared, val_loader, val_inputs, accelerator)
        stats.update(val_metrics(logits, fold.val.labels.numpy()))
        score = stats["val_loss"] if cfg.monitor == "loss" else stats[f"val_{cfg.monitor}"]
        improved = _is_better(score, best_score, mode)
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        row = {"epoch": epoch + 1, "phase": phase.name, **stats, "lr": optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        _log_epoch(row, cfg, improved)
        last_phase_started = epoch >= plan.phases[-1].start  # two-phase: never stop before unfreezing
        if last_phase_started and bad_epochs >= cfg.patience and epoch + 1 < cfg.epochs:
            stopped_early = True
            log.info("early stopping: no %s improvement for %d epochs", cfg.monitor, bad_epochs)
        due = time.perf_counter() - last_checkpoint >= cfg.checkpoint_every  # saving a big model every short epoch costs more than a kill
        if accelerator.is_main_process and due and not stopped_early and epoch + 1 < cfg.epochs:
            last_checkpoint = time.perf_counter()
            _save_checkpoint(ckpt_path, cfg, epoch + 1, model, optimizer, scheduler, best_state, best_score, best_epoch, bad_epochs, history,
                             frozen_trunk=frozen_trunk)
        accelerator.wait_for_everyone()
        if stopped_early:
            break

    if best_state is None:  # resumed after the last epoch's checkpoint: nothing left to train
        raise MedcliError(f"{ckpt_path}: checkpoint has no best weights; delete it and train again")
    model.load_state_dict(best_state)
    val_logits = predict(accelerator.prepare_model(net), val_loader, val_inputs, accelerator)
    summary = {
        "best_epoch": best_epoch + 1,
        "best_score": best_score,
        "monitor": cfg.monitor,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "train_seconds": time.perf_counter() - t_start + sum(r["seconds"] for r in history[:start]),
        "precision": precision,
        "channels_last": cfg.channels_last,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mean": mean,
        "std": std,
        "class_weights": None if weights is None else [float(w) for w in weights],
        "n_train": len(fold.train),
        "n_val": len(fold.val),
        "feature_cache": cache_info,
        "out": cfg.out,
        "main_process": accelerator.is_main_process,
    }
    if accelerator.is_main_process:
        write_outputs(cfg, fold, model, history, val_logits, summary)
        if os.path.exists(ckpt_path):
            os.remove(ckpt_path)
    accelerator.wait_for_everyone()
    log.info("best epoch %d (%s %.4f); outputs in %s", best_epoch + 1, cfg.monitor, best_score, cfg.out)
    return summary


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
        "epoch %d/%d [%s] train loss %.4f acc %.3f | val loss %.4f acc %.3f bal-acc %.3f f1 %.3f%s | lr %.2e | %.1f s",
        row["epoch"], cfg.epochs, row["phase"], row["train_loss"], row["train_accuracy"], row["val_loss"], row["val_accuracy"],
        row["val_balanced_accuracy"], row["val_macro_f1"], " *best*" if improved else "", row["lr"], row["seconds"],
    )


def _save_checkpoint(path: str, cfg: TrainConfig, epoch: int, model, optimizer, scheduler, best_state, best_score, best_epoch, bad_epochs, history,
                     *, frozen_trunk: str | None = None) -> None:
    """Write the resume state; with ``frozen_trunk`` (the trunk's hash) the trunk's tensors are left out."""
    from .._io import atomic_path

    model_state = model.state_dict()
    if frozen_trunk:  # a frozen trunk equals the loaded weights: rewriting it every epoch would only cost time
        model_state, best_state = _head_part(model_state), _head_part(best_state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "key": cfg.key(),
        "epoch": epoch,
        "model": model_state,
        "trunk_sha256": frozen_trunk,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best_state": best_state,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: str, cfg: TrainConfig, frozen_trunk: str | None = None) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged checkpoint only costs the time to redo it
        log.warning("ignoring unreadable checkpoint %s (%s); starting over", path, exc)
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != cfg.key():
        log.info("checkpoint %s belongs to different settings; starting over", path)
        return None
    if state.get("trunk_sha256") != frozen_trunk:
        log.info("checkpoint %s was saved with other trunk weights; starting over", path)
        return None
    return state


def _head_part(state: dict | None) -> dict | None:
    return None if state is None else {k: v for k, v in state.items() if not k.startswith("trunk.")}


def _with_trunk(head_state: dict | None, model) -> dict | None:
    """A head-only state completed with ``model``'s trunk tensors (copies, on the CPU)."""
    if head_state is None:
        return None
    full = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k.startswith("trunk.")}
    full.update(head_state)
    return full
