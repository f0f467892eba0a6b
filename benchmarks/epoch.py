"""B2: seconds per training epoch, medcli's ``train(cfg)`` vs a plain ImageFolder + DataLoader + Adam loop.

    python benchmarks/epoch.py                          # customcnn and resnet18, 64 px, batch 32
    python benchmarks/epoch.py --backbones customcnn --epochs 2

Same data (the training split of chest-CT, or its synthetic stand-in), same model (``create_model``, random
initialisation, 3 input channels), same image size, batch size and number of optimizer steps per epoch, on the
CPU. An epoch is the training steps plus a pass over the validation split, as ``model.fit`` does.

* baseline ("seed-style"): ImageFolder + PIL transforms (Resize, RandomHorizontalFlip, RandomAffine,
  ToTensor, Normalize) + DataLoader(shuffle=True, drop_last=True), Adam, cross-entropy; the validation
  folder is decoded again every epoch. Run with 0 workers and with one worker per core; the ratio is against
  the faster.
* medcli: ``medcli.training.train(TrainConfig(...))`` itself, unchanged: decoded-image store, batched
  augmentation, AdamW with warm-up + cosine, class-weighted loss, validation metrics, best-weights copy and
  the resume checkpoint (at most every 60 s). Its epoch is the wall time from the start of one epoch's training steps to
  the end of everything the loop does for that epoch.

The baselines' epochs run in turns with medcli's (inside the same process, between two medcli epochs and
outside their timing), so a change in background load hits every contender alike. The one-time set-up is
reported apart: the splits (``medcli split``: decode, check and hash every image once) and the store (decode
and resize once, in the first ``train()``). Epochs are timed after one warm-up epoch. ``--threads 1`` keeps
measurements sane on a machine shared with other jobs (and is what the workflow gives each training job by
default: ``resources: train: threads: 1``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import _common as C


def folder(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise SystemExit(f"{root}: none of {', '.join(names)} found")


class SeedLoop:
    """The plain loop a notebook would write, one epoch per call of :meth:`epoch`."""

    def __init__(self, root: Path, backbone: str, size: int, batch: int, workers: int, steps: int, lr: float) -> None:
        import torch
        from torch import nn
        from torchvision import datasets, transforms as T

        from medcli.models import create_model

        train_tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                              T.ToTensor(), T.Normalize(C.IMAGENET_MEAN, C.IMAGENET_STD)])
        val_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(C.IMAGENET_MEAN, C.IMAGENET_STD)])
        self.train_ds = datasets.ImageFolder(str(folder(root, ("train",))), transform=train_tf)
        self.val_ds = datasets.ImageFolder(str(folder(root, ("valid", "val", "validation"))), transform=val_tf)
        self.train_loader = torch.utils.data.DataLoader(self.train_ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
        self.val_loader = torch.utils.data.DataLoader(self.val_ds, batch_size=batch, num_workers=workers)
        torch.manual_seed(0)
        self.model = create_model(backbone, len(self.train_ds.classes), in_channels=3, weights=None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.steps = steps
        self.seconds: list[float] = []
        self.train_seconds: list[float] = []
        self.cpu: list[float] = []

    def epoch(self) -> None:
        import torch

        t, c = time.perf_counter(), C.cpu_seconds()
        self.model.train()
        for step, (x, y) in enumerate(self.train_loader):
            if step == self.steps:
                break
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        self.train_seconds.append(time.perf_counter() - t)
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in self.val_loader:
                correct += (self.model(x).argmax(1) == y).sum().item()
        self.seconds.append(time.perf_counter() - t)
        self.cpu.append(C.cpu_seconds() - c)

    def result(self, rounds: slice) -> dict:
        return {"epoch_s_all": self.seconds[rounds], "train_s_all": self.train_seconds[rounds], "cpu_s_all": self.cpu[rounds], "n_train": len(self.train_ds), "n_val": len(self.val_ds)}


def medcli_run(root: Path, splits: Path, backbone: str, size: int, batch: int, epochs: int, lr: float, work: Path, cache: Path, between=None) -> dict:
    """``train(cfg)``, with timing hooks around (not inside) the loop's own functions.

    ``between()`` runs before each of medcli's epochs, outside its timing: the baselines' epochs take turns
    with medcli's, so a change in background load hits both alike.
    """
    import torch

    from medcli.training import TrainConfig, train
    from medcli.training import loop

    entries, starts, train_ends, saves, cpu_entries, cpu_starts = [], [], [], [], [], []
    real_epoch, real_save = loop.train_one_epoch, loop._save_checkpoint

    def timed_epoch(*args, **kwargs):
        entries.append(time.perf_counter())
        cpu_entries.append(C.cpu_seconds())
        if between is not None:
            rng = torch.get_rng_state()  # leave medcli's seeded random state as train() set it
            between()
            torch.set_rng_state(rng)
        cpu_starts.append(C.cpu_seconds())
        starts.append(time.perf_counter())
        out = real_epoch(*args, **kwargs)
        train_ends.append(time.perf_counter())
        return out

    def timed_save(*args, **kwargs):
        t = time.perf_counter()
        real_save(*args, **kwargs)
        saves.append(time.perf_counter() - t)

    shutil.rmtree(work, ignore_errors=True)
    cfg = TrainConfig(data=str(root), splits=str(splits), backbone=backbone, strategy="scratch", weights="none", img_size=size, channels=3,
                      epochs=epochs, batch_size=batch, lr=lr, patience=10_000, precision="fp32", ema_epochs=0.0,  # the baseline averages nothing
                      results=str(work / "results"), work=str(work / "work"), cache_dir=str(cache), progress=False)
    loop.train_one_epoch, loop._save_checkpoint = timed_epoch, timed_save
    try:
        t = time.perf_counter()
        summary = train(cfg)
    finally:
        loop.train_one_epoch, loop._save_checkpoint = real_epoch, real_save
    return {
        # from the start of one epoch's training steps to the end of everything the loop does for that epoch
        # (validation, metrics, best-weights copy, checkpoint), i.e. up to the next epoch's turn
        "epoch_s_all": [b - a for a, b in zip(starts, entries[1:])],
        "train_s_all": [b - a for a, b in zip(starts, train_ends)],
        "cpu_s_all": [b - a for a, b in zip(cpu_starts, cpu_entries[1:])],
        "checkpoint_s_all": saves,
        "setup_s": entries[0] - t,  # resolve, load the fold (builds the store the first time), model, statistics
        "n_train": summary["n_train"],
        "n_val": summary["n_val"],
        "channels_last": summary["channels_last"],
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="A presplit dataset (default: chest-CT, else synthetic).")
    p.add_argument("--backbones", nargs="+", default=["customcnn", "resnet18"])
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="Timed epochs after one warm-up epoch.")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=None, help="Baseline workers besides 0 (default: one per core).")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's, one per core).")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medcli-bench")
    args = p.parse_args()

    from medcli.splits import split_data

    info, workers, root, described = C.start(args)
    cache = args.work / "epoch-cache"
    shutil.rmtree(cache, ignore_errors=True)
    splits = args.work / "epoch-splits.json"
    t = time.perf_counter()
    split_data(root, splits, folds=0, seed=0, cache_dir=cache)  # the dataset's own train/valid split, as the baseline
    setup = {"splits_s": time.perf_counter() - t}

    results, rows, detail_rows = [], [], []
    for backbone in args.backbones:
        if "first_train_setup_s" not in setup:  # build the store in a first, short train() call: its own one-time cost
            first = medcli_run(root, splits, backbone, args.img_size, args.batch_size, 1, args.lr, args.work / "epoch-first", cache)
            setup["first_train_setup_s"] = first["setup_s"]
        n_train = len(json.loads(splits.read_text())["folds"][0]["train"])
        steps = n_train // args.batch_size if n_train > args.batch_size else 1  # medcli drops a last partial batch
        seeds = {f"baseline {w}": SeedLoop(root, backbone, args.img_size, args.batch_size, w, steps, args.lr) for w in sorted({0, workers})}

        def baseline_epochs():
            for loop in seeds.values():
                loop.epoch()

        # 1 warm-up + E timed rounds, plus a last medcli epoch that closes the last timed interval
        med = medcli_run(root, splits, backbone, args.img_size, args.batch_size, args.epochs + 2, args.lr, args.work / f"epoch-{backbone}", cache,
                         between=baseline_epochs)
        setup[f"{backbone}_train_setup_s"] = med["setup_s"]
        rounds = slice(1, args.epochs + 1)
        timed = {"medcli": {**med, **{k: med[k][rounds] for k in ("epoch_s_all", "train_s_all", "cpu_s_all")}}}
        timed.update({name: loop.result(rounds) for name, loop in seeds.items()})
        summary = {}
        for name, r in timed.items():
            epoch_s = C.median(r["epoch_s_all"])
            train_s = C.median(r["train_s_all"])
            summary[name] = {"epoch_s": epoch_s, "train_steps_s": train_s, "cpu_s": C.median(r["cpu_s_all"]), **r}
            print(f"{backbone} {name}: {epoch_s:.2f} s/epoch ({train_s:.2f} s training steps)", flush=True)
        best = min((k for k in summary if k.startswith("baseline")), key=lambda k: summary[k]["epoch_s"])
        m = summary["medcli"]
        for name in [k for k in summary if k.startswith("baseline")]:
            b = summary[name]
            rows.append([backbone, name.split()[1], f"{b['epoch_s']:.2f}", f"{m['epoch_s']:.2f}", f"{b['epoch_s'] / m['epoch_s']:.2f}x",
                         f"{b['cpu_s']:.2f}", f"{m['cpu_s']:.2f}", f"{b['cpu_s'] / m['cpu_s']:.2f}x"])
        for name, r in summary.items():
            detail_rows.append([backbone, name, f"{r['epoch_s']:.2f}", f"{r['train_steps_s']:.2f}", f"{r['epoch_s'] - r['train_steps_s']:.2f}",
                                r["n_train"], steps, r["n_val"]])
        results.append({"backbone": backbone, "steps_per_epoch": steps, "runs": summary, "best_baseline": best,
                        "ratio_vs_best_baseline": summary[best]["epoch_s"] / m["epoch_s"],
                        "cpu_ratio_vs_same_workers": summary["baseline 0"]["cpu_s"] / m["cpu_s"],
                        "ratio_vs_same_workers": summary["baseline 0"]["epoch_s"] / m["epoch_s"]})
    print(C.table(["backbone", "baseline workers", "baseline s/epoch", "medcli s/epoch", "ratio", "baseline CPU s", "medcli CPU s", "CPU ratio"], rows,
                  f"B2 epoch: {args.img_size} px, batch {args.batch_size}, CPU ({torch_threads()} torch threads), random init; median of {args.epochs} epochs "
                  "after a warm-up (CPU s: this process + its DataLoader workers, less sensitive to other load)"))
    print(C.table(["backbone", "run", "epoch s", "train steps s", "val + rest s", "train images", "steps", "val images"], detail_rows, "where the epoch goes"))
    print(f"\none-time set-up: splits {setup['splits_s']:.1f} s (decode, check and hash every image), "
          f"first train() set-up {setup['first_train_setup_s']:.1f} s (store build included), later train() set-up "
          f"{min(v for k, v in setup.items() if k.endswith('_train_setup_s')):.1f} s")
    path = C.write_json("epoch", {"data": described, "machine": info, "img_size": args.img_size, "batch_size": args.batch_size,
                                  "timed_epochs": args.epochs, "setup": setup, "results": results})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
