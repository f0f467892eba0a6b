"""B3: strategy linear with cached trunk features vs forwarding every batch through the frozen trunk.

    python benchmarks/linear_cache.py [--sizes 64,224] [--repeats 3] [--threads 1]

Runs the real training path (``medcli.training.train``) for 10 epochs, augmentation off, on the real chest-CT
images (``$MEDCLI_CHEST_CT``, else ``../shared/data/chest-ct`` beside the repository) when present, else on a synthetic dataset of the same size, fold 0 of a
5-fold split of the development pool. The backbone starts from a weights file written here (torchvision
resnet18, random initialisation, seeded), so nothing is downloaded. Variants:

* ``no cache``: ``--no-feature-cache``, the trunk runs on every batch of every epoch (the baseline);
* ``cache, first run``: the features are computed (once per dataset x backbone x weights x preprocessing), then
  the head trains on them;
* ``cache, reused``: a run that finds the cache (any other fold or seed of the same grid).

The decoded-image store is built and one untimed epoch of each variant is run before timing; every time is the
whole ``train()`` call (model building, feature computation, 10 epochs, outputs). The table also shows each
variant's validation balanced accuracy and loss at its best epoch, and the largest difference between its
validation logits and the baseline's. On a machine shared with other jobs, ``--threads 1`` gives steadier
numbers: two OpenMP threads on two busy cores wait for each other at every operation.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import resource
import shutil
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHEST_CT = Path(os.environ.get("MEDCLI_CHEST_CT") or REPO.parent / "shared" / "data" / "chest-ct")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _dataset(root: Path, synthetic: bool) -> tuple[Path, str]:
    if CHEST_CT.is_dir() and not synthetic:
        return CHEST_CT, "chest-CT, real images"
    from medcli.data.synth import make_synthetic

    data = root / "synthetic-chest-ct"
    if not (data / "synth.json").exists():
        # chest-CT's size: 1,000 images in 4 classes, a dataset test split, 512 px grey-scale slices.
        make_synthetic(data, layout="presplit", n_classes=4, per_class=250, size=512, channels=1, noise=0.25,
                       val_fraction=0.07, test_fraction=0.315, overwrite=True)
    return data, "synthetic, the size of chest-CT"


def _weights(root: Path, backbone: str) -> Path:
    import torch
    import torchvision

    path = root / f"{backbone}-random-init.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(backbone, weights=None).state_dict(), path)
    return path


def _val_logits(run: str):
    import numpy as np

    from medcli import paths

    with open(paths.predictions_file(run, "val")) as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("logit_")]
    return np.array([[float(r[c]) for c in cols] for r in rows])


def _best_val_loss(run: str, best_epoch: int) -> float:
    from medcli import paths

    with open(paths.history_file(run)) as fh:
        return float(next(r for r in csv.DictReader(fh) if int(r["epoch"]) == best_epoch)["val_loss"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64", help="image sizes, comma-separated (224 takes minutes on a CPU)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--repeats", type=int, default=1, help="runs per variant (interleaved); the table shows medians")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); use 1 on a shared machine")
    p.add_argument("--dir", type=Path, default=Path("/tmp/medcli-linear-cache"))
    p.add_argument("--synthetic", action="store_true", help="use the synthetic dataset even where chest-CT is present")
    p.add_argument("--verbose", action="store_true", help="show medcli's training log")
    args = p.parse_args()

    import torch

    from medcli.progress import setup_logging
    from medcli.splits import split_data
    from medcli.training import TrainConfig, resolve, train
    from medcli.training.loop import load_fold, make_accelerator

    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("medcli").setLevel(logging.INFO if args.verbose else logging.WARNING)
    root = args.dir
    cache = root / "cache"
    os.environ["MEDCLI_NO_PROGRESS"] = "1"
    data, source = _dataset(root, args.synthetic)
    splits = root / f"splits-{data.name}.json"
    if not splits.exists():
        split_data(data, splits, folds=5, seed=0, cache_dir=cache)
    weights = _weights(root, args.backbone)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} torch thread(s) of {os.cpu_count()} CPUs"
    print(f"data: {data} ({source}); {args.backbone} from {weights.name}; {args.epochs} epochs, augmentation off, "
          f"fold 0 of 5; {device}; load average {os.getloadavg()[0]:.1f} at start; medians of {args.repeats} run(s)")

    for size in (int(s) for s in args.sizes.split(",")):
        base = dict(data=str(data), splits=str(splits), backbone=args.backbone, strategy="linear", weights=str(weights),
                    img_size=size, epochs=args.epochs, patience=args.epochs, augment=False, ema_epochs=0.0, cache_dir=str(cache),
                    progress=False)
        cfg = resolve(TrainConfig(**base, results=str(root / "warmup")))
        fold = load_fold(cfg, make_accelerator(cfg)[0])  # decode the images before anything is timed
        print(f"\n{size} px: {len(fold.train)} train, {len(fold.val)} val images")
        # Untimed: one epoch of each variant, so that no timed run pays for building the CPU (oneDNN) or GPU
        # kernels of its batch shapes; the first forward pass of a shape can take seconds.
        for extra in ({"feature_cache": False}, {}):
            shutil.rmtree(cache / "features", ignore_errors=True)
            warm = root / "runs" / "warmup"
            shutil.rmtree(warm, ignore_errors=True)
            train(TrainConfig(**{**base, "epochs": 1}, **extra, results=str(warm / "results"), work=str(warm / "work")))
        variants = [("no cache (trunk every epoch)", {"feature_cache": False}, False),
                    ("cache, first run (computes)", {}, True),
                    ("cache, reused (other fold/seed)", {}, False)]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
        results: dict[str, dict] = {}
        for rep in range(args.repeats):
            for name, extra, cold in variants:
                if cold:
                    shutil.rmtree(cache / "features", ignore_errors=True)
                run = root / "runs" / f"{size}-{len(results)}-{rep}"
                shutil.rmtree(run, ignore_errors=True)
                t, c = time.perf_counter(), _cpu_seconds()
                summary = train(TrainConfig(**base, **extra, results=str(run / "results"), work=str(run / "work")))
                times[name].append((time.perf_counter() - t, _cpu_seconds() - c))
                results[name] = summary
        ref = _val_logits(results[variants[0][0]]["out"])
        base_wall = statistics.median(w for w, _ in times[variants[0][0]])
        print("| variant | wall s | CPU s | speed-up vs no cache | val bal. acc. | val loss | max abs logit diff |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, _, _ in variants:
            s = results[name]
            wall = statistics.median(w for w, _ in times[name])
            cpu = statistics.median(c for _, c in times[name])
            diff = abs(_val_logits(s["out"]) - ref).max()
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {base_wall / wall:.1f}x | {s['best_score']:.4f} | "
                  f"{_best_val_loss(s['out'], s['best_epoch']):.4f} | {diff:.1e} |")
        cold = statistics.median(w for w, _ in times[variants[1][0]])
        warm = statistics.median(w for w, _ in times[variants[2][0]])
        for runs in (5, 15):
            per_run = (cold + (runs - 1) * warm) / runs
            print(f"a grid of {runs} runs sharing one cache ({runs // 5} seed(s) x 5 folds): "
                  f"{per_run:.2f} s per run, {base_wall / per_run:.1f}x faster than without the cache")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other jobs on this machine slow every variant)")


if __name__ == "__main__":
    main()
