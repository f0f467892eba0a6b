"""``medcli train``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _options as opt
from ._app import app

_D = "Data"
_M = "Model"
_O = "Optimisation"
_A = "Augmentation"
_R = "Run"


@app.command("train")
def train_cli(
    data: Path = typer.Option(..., "--data", help="Dataset folder, .csv manifest or .npz file.", rich_help_panel=_D),
    splits: Optional[Path] = typer.Option(None, "--splits", help="splits.json from `medcli split` (default: results/<dataset>/splits.json, made from the dataset's own train/val split if missing).", rich_help_panel=_D),
    fold: int = typer.Option(0, "--fold", help="Which fold of the splits to train.", rich_help_panel=_D),
    dataset_name: Optional[str] = typer.Option(None, "--name", help="Dataset name in the results layout (default: the data folder's name).", rich_help_panel=_D),
    layout: str = typer.Option("auto", "--layout", help="auto, imagefolder, presplit, csv or npz.", rich_help_panel=_D),
    alias: Optional[list[str]] = typer.Option(None, "--alias", help="Rename a class: RAW=CLASS (repeatable).", rich_help_panel=_D),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="When splits are made here: leave unreadable files out.", rich_help_panel=_D),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input size in pixels (default: the backbone's).", rich_help_panel=_D),
    channels: int = typer.Option(3, "--channels", help="1 (grayscale) or 3 (RGB).", rich_help_panel=_D),
    resize: str = typer.Option("squash", "--resize", help="squash, pad or crop.", rich_help_panel=_D),
    backbone: str = typer.Option("resnet18", "--backbone", "-b", help="customcnn or a torchvision model name (see `medcli models`).", rich_help_panel=_M),
    head: str = typer.Option("linear", "--head", help="linear or mlp.", rich_help_panel=_M),
    strategy: str = typer.Option("full", "--strategy", "-s", help="scratch, linear, partial, full or two-phase.", rich_help_panel=_M),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="imagenet, none or a weights file (default: imagenet; none for scratch and customcnn).", rich_help_panel=_M),
    dropout: float = typer.Option(0.5, "--dropout", help="Dropout of the mlp head.", rich_help_panel=_M),
    partial_stages: int = typer.Option(1, "--partial-stages", help="partial: how many of the last backbone stages train.", rich_help_panel=_M),
    freeze_epochs: int = typer.Option(1, "--freeze-epochs", help="two-phase: epochs of head-only training.", rich_help_panel=_M),
    lr_mult: float = typer.Option(100.0, "--lr-mult", help="two-phase: head lr / first stage lr.", rich_help_panel=_M),
    epochs: int = typer.Option(30, "--epochs", "-e", rich_help_panel=_O),
    batch_size: int = typer.Option(32, "--batch-size", rich_help_panel=_O),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd.", rich_help_panel=_O),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate.", rich_help_panel=_O),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", rich_help_panel=_O),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", rich_help_panel=_O),
    class_weights: bool = typer.Option(True, "--class-weights/--no-class-weights", help="Class-weighted cross-entropy (weights from the training fold).", rich_help_panel=_O),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing", rich_help_panel=_O),
    monitor: str = typer.Option("balanced_accuracy", "--monitor", help="Early-stopping metric: balanced_accuracy, accuracy, macro_f1 or loss.", rich_help_panel=_O),
    patience: int = typer.Option(10, "--patience", help="Epochs without improvement before stopping.", rich_help_panel=_O),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random flips, rotations, zooms and shifts (default: on; off for strategy linear, which then trains its head on frozen-trunk features computed once).", show_default=False, rich_help_panel=_A),
    hflip: bool = typer.Option(True, "--hflip/--no-hflip", help="Random horizontal flips (switch off where laterality matters).", rich_help_panel=_A),
    rotate: float = typer.Option(10.0, "--rotate", help="Max rotation in degrees.", rich_help_panel=_A),
    zoom: float = typer.Option(0.1, "--zoom", help="Max zoom in/out (fraction).", rich_help_panel=_A),
    shift: float = typer.Option(0.1, "--shift", help="Max shift (fraction of the side).", rich_help_panel=_A),
    seed: int = typer.Option(0, "--seed", rich_help_panel=_R),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPUs that support it, else fp32), fp32, bf16 or fp16.", rich_help_panel=_R),
    compile_model: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model (worth it for long GPU runs; the first steps compile).", rich_help_panel=_R),
    checkpoint_every: float = typer.Option(60.0, "--checkpoint-every", help="Seconds between resume checkpoints in the work folder (0: after every epoch).", rich_help_panel=_R),
    feature_cache: bool = typer.Option(True, "--feature-cache/--no-feature-cache", help="linear without augmentation: compute the frozen trunk's features once, cache them and train the head on them (off: forward every batch through the trunk).", rich_help_panel=_R),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: results/<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>).", rich_help_panel=_R),
    results: Path = typer.Option(Path("results"), "--results", help="Results root.", rich_help_panel=_R),
    work: Path = typer.Option(Path("work"), "--work", help="Where resume checkpoints live.", rich_help_panel=_R),
    cache_dir: Optional[Path] = opt.CacheDir,
    workers: Optional[int] = opt.Workers,
) -> None:
    """Train one model: a backbone with a transfer-learning strategy on one fold and seed."""
    from ..training import TrainConfig, train

    opt.setup()
    cfg = TrainConfig(
        data=str(data), splits=str(splits) if splits else None, fold=fold, dataset_name=dataset_name, layout=layout,
        aliases=opt.aliases(alias), skip_bad=skip_bad, img_size=img_size, channels=channels, resize=resize,
        backbone=backbone, head=head, strategy=strategy, weights=weights, dropout=dropout, partial_stages=partial_stages,
        freeze_epochs=freeze_epochs, lr_mult=lr_mult, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, warmup_epochs=warmup_epochs, class_weights=class_weights, label_smoothing=label_smoothing,
        monitor=monitor, patience=patience, augment=augment, hflip=hflip, rotate=rotate, zoom=zoom, shift=shift, seed=seed,
        precision=precision, compile=compile_model, feature_cache=feature_cache, checkpoint_every=checkpoint_every, out=str(out) if out else None, results=str(results), work=str(work),
        cache_dir=str(cache_dir) if cache_dir else None, workers=workers,
    )
    summary = train(cfg)
    if summary["main_process"]:
        typer.echo(f"best epoch {summary['best_epoch']} ({summary['monitor']} {summary['best_score']:.4f}); run folder: {summary['out']}")
