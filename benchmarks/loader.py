"""B1: images/s delivered to the model by medcli's data path vs a torchvision ImageFolder + PIL loader.

    python benchmarks/loader.py                 # chest-CT if present, else a synthetic stand-in
    python benchmarks/loader.py --sizes 64 --epochs 2

Both sides deliver the same thing for every image of the training split: a float tensor (B, 3, S, S),
randomly flipped, rotated (±10°), zoomed (±10 %) and shifted (±10 %), scaled to 0..1 and normalized with the
ImageNet mean/std, with its label, in shuffled batches of 32.

* baseline ("seed-style"): ``ImageFolder`` + ``Resize((S, S))``, ``RandomHorizontalFlip``, ``RandomAffine``,
  ``ToTensor``, ``Normalize`` + ``DataLoader(shuffle=True)``: every epoch decodes every file again.
* medcli: the decoded-image store (decoded and resized once, uint8, memory-mapped; the training split is copied
  to RAM), positions from ``index_loader`` prepared by Accelerate, ``ImageSet.pixels`` and ``to_model_input``
  (batched per-sample affine augmentation with ``affine_grid``/``grid_sample``, then normalization): exactly
  what ``medcli.training.loop.train_one_epoch`` consumes.

medcli has no DataLoader workers (the batch is a tensor gather plus a few batched ops), so the baseline is run
with 0 workers (the same) and with one worker per core (the usual notebook setting); the headline ratio is
against the faster of the two. Contenders take turns epoch by epoch, so background load hits them alike. The
one-time cost of building the store (index the folder, decode and resize all 1,000 images with one process
per core, from a cold cache) is reported on its own, with the number of epochs that pay it back.

Extra rows: does moving medcli's uint8 gather into a DataLoader with workers (persistent: their best case)
and/or ``pin_memory`` change its throughput? Pinned memory only exists with an accelerator; without one the
DataLoader ignores the flag. ``--threads 1`` keeps measurements sane on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import _common as C


def seed_loader(train_dir: Path, size: int, batch: int, workers: int):
    import torch
    from torchvision import datasets, transforms as T

    tf = T.Compose([
        T.Resize((size, size)),
        T.RandomHorizontalFlip(),
        T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        T.ToTensor(),
        T.Normalize(C.IMAGENET_MEAN, C.IMAGENET_STD),
    ])
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)


def interleaved(contenders: dict, epochs: int) -> dict:
    """Warm every contender up with one turn, then time ``epochs`` rounds of one turn each.

    ``contenders`` maps a name to ``(run_epoch, epochs_per_turn)``: fast contenders run several epochs per turn
    so that their timings are not lost in timer noise. Taking turns makes every contender see the same
    background load (the machine may be shared); figures are medians over rounds. CPU seconds (this process
    plus its finished workers) are less sensitive to other load than wall time and are reported too.
    """
    def turn(run, k):
        return sum(run() for _ in range(k))

    for run, k in contenders.values():
        turn(run, k)
    wall = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    images = {name: 0 for name in contenders}
    for _ in range(epochs):
        for name, (run, k) in contenders.items():
            c, t = C.cpu_seconds(), time.perf_counter()
            images[name] += turn(run, k)
            wall[name].append((time.perf_counter() - t) / k)
            cpu[name].append((C.cpu_seconds() - c) / k)
    out = {}
    for name, (_, k) in contenders.items():
        per_epoch = images[name] / (epochs * k)
        out[name] = {"epoch_s": C.median(wall[name]), "epoch_s_all": [round(s, 4) for s in wall[name]], "epochs_per_turn": k,
                     "cpu_s": C.median(cpu[name]), "images_per_s": per_epoch / C.median(wall[name])}
    return out


def seed_epoch(loader):
    def run() -> int:
        n = 0
        for x, y in loader:
            n += len(y)
        return n

    return run


def medcli_setup(root: Path, size: int, cache: Path) -> dict:
    """Index the dataset and build its store (timed: the one-time cost), then the training split in RAM."""
    import numpy as np

    from medcli.data import load_dataset
    from medcli.data.store import StoreSettings, materialize
    from medcli.training.batches import ImageSet

    t0 = time.perf_counter()
    ds = load_dataset(root)
    t1 = time.perf_counter()
    store = materialize(ds, StoreSettings(img_size=size, channels=3), cache)
    t2 = time.perf_counter()
    train = [s for s in ds.samples if s.split == "train"]
    index = {c: k for k, c in enumerate(ds.classes)}
    images = ImageSet(store.images, store.rows([s.id for s in train]), np.array([index[s.label] for s in train]), [s.id for s in train])
    t3 = time.perf_counter()
    return {"images": images, "n_store": len(ds.samples), "index_s": t1 - t0, "materialize_s": t2 - t1, "load_split_s": t3 - t2}


def medcli_epoch(images, batch: int, *, gather_in_loader: bool = False, workers: int = 0, pin_memory: bool = False):
    """medcli's data path as training runs it, or (experiment) with the uint8 gather moved into a plain DataLoader
    that can have ``workers`` and ``pin_memory``; augmentation stays in the main process either way."""
    import torch

    from medcli.training.batches import AugmentSettings, index_loader, to_model_input
    from medcli.training.loop import make_accelerator
    from medcli.training.config import TrainConfig

    accelerator, _ = make_accelerator(TrainConfig(precision="fp32"))
    device = accelerator.device
    mean = torch.tensor(C.IMAGENET_MEAN, device=device)
    std = torch.tensor(C.IMAGENET_STD, device=device)
    augment = AugmentSettings()
    state = {"epoch": 0}
    if not gather_in_loader:
        loader = accelerator.prepare_data_loader(index_loader(len(images), batch, seed=0, shuffle=True, drop_last=False))

        def batches():
            for (idx,) in loader:
                yield images.pixels(idx), images.labels[idx.cpu()]
    else:
        from medcli.training.batches import EpochSampler

        sampler = EpochSampler(len(images), 0, True)
        gather = lambda idx: (images.pixels(torch.as_tensor(idx)), images.labels[torch.as_tensor(idx)])  # noqa: E731
        loader = torch.utils.data.DataLoader(range(len(images)), batch_size=batch, sampler=sampler, num_workers=workers,
                                             pin_memory=pin_memory, collate_fn=gather,
                                             persistent_workers=workers > 0)  # the best case for workers: started once

        def batches():
            sampler.set_epoch(state["epoch"])
            yield from loader

    def run() -> int:
        generator = torch.Generator().manual_seed(state["epoch"])
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state["epoch"])
        n = 0
        for pixels, y in batches():
            x = to_model_input(pixels.to(device, non_blocking=True), mean, std, augment=augment, generator=generator)
            y = y.to(device, non_blocking=True)
            n += len(y)
        state["epoch"] += 1
        return n

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="A presplit dataset (default: chest-CT, else synthetic).")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5, help="Timed epochs after one warm-up epoch.")
    p.add_argument("--workers", type=int, default=None, help="Baseline workers besides 0 (default: one per core).")
    p.add_argument("--medcli-repeat", type=int, default=8, help="medcli epochs per timed turn (its epochs are short).")
    p.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's, one per core).")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medcli-bench")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")

    import torch

    info, workers, root, described = C.start(args)
    results, rows, store_rows, extra_rows = [], [], [], []
    for size in args.sizes:
        cache = args.work / f"loader-cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)  # a cold store: the one-time cost is measured, not reused
        setup = medcli_setup(root, size, cache)
        images = setup["images"]
        contenders = {f"baseline {w}": (seed_epoch(seed_loader(C.train_folder(root), size, args.batch_size, w)), 1) for w in sorted({0, workers})}
        contenders["medcli"] = (medcli_epoch(images, args.batch_size), args.medcli_repeat)
        variant_kw = {"gather in DataLoader, 0 workers": dict(workers=0), "gather in DataLoader, 0 workers + pin_memory": dict(workers=0, pin_memory=True),
                      f"gather in DataLoader, {workers} workers": dict(workers=workers),
                      f"gather in DataLoader, {workers} workers + pin_memory": dict(workers=workers, pin_memory=True)}
        for label, kw in variant_kw.items():
            contenders[f"medcli {label}"] = (medcli_epoch(images, args.batch_size, gather_in_loader=True, **kw), max(1, args.medcli_repeat // (4 if kw["workers"] else 1)))
        timed = interleaved(contenders, args.epochs)
        base = {w: timed[f"baseline {w}"] for w in sorted({0, workers})}
        med = timed["medcli"]
        variants = {label: timed[f"medcli {label}"] for label in variant_kw}
        for name, v in timed.items():
            print(f"{size}px {name}: {v['images_per_s']:.0f} images/s", flush=True)
        best_w = max(base, key=lambda w: base[w]["images_per_s"])
        one_time = setup["index_s"] + setup["materialize_s"]
        saved = base[best_w]["epoch_s"] - med["epoch_s"]
        amortize = one_time / saved if saved > 0 else float("inf")
        for w in sorted(base):
            rows.append([f"{size} px", f"{w}", f"{base[w]['images_per_s']:.0f}", f"{med['images_per_s']:.0f}", f"{med['images_per_s'] / base[w]['images_per_s']:.1f}x",
                         f"{base[w]['epoch_s']:.2f}", f"{med['epoch_s']:.3f}", f"{base[w]['cpu_s']:.2f}", f"{med['cpu_s']:.3f}"])
        store_rows.append([f"{size} px", setup["n_store"], f"{setup['index_s']:.2f}", f"{setup['materialize_s']:.2f}", f"{setup['n_store'] / setup['materialize_s']:.0f}",
                           f"{setup['load_split_s']:.3f}", f"{amortize:.2f}"])
        extra_rows.append([f"{size} px", "as trained (index_loader + Accelerate)", f"{med['images_per_s']:.0f}", "1.00", f"{med['cpu_s']:.3f}"])
        for label, v in variants.items():
            cpu = f"{v['cpu_s']:.3f}" if variant_kw[label]["workers"] == 0 else f"{v['cpu_s']:.3f} + workers"
            extra_rows.append([f"{size} px", label, f"{v['images_per_s']:.0f}", f"{v['images_per_s'] / med['images_per_s']:.2f}", cpu])
        results.append({
            "img_size": size, "n_train": len(images), "baseline": {str(w): v for w, v in base.items()}, "medcli": med,
            "ratio_vs_same_workers": med["images_per_s"] / base[0]["images_per_s"],
            "ratio_vs_best_baseline": med["images_per_s"] / base[best_w]["images_per_s"], "best_baseline_workers": best_w,
            "store": {k: setup[k] for k in ("n_store", "index_s", "materialize_s", "load_split_s")},
            "one_time_s": one_time, "epochs_to_amortize": amortize if amortize != float("inf") else None, "medcli_variants": variants,
            "pinned_memory_effective": torch.cuda.is_available(),
        })
    n_train = results[0]["n_train"]
    print(C.table(["size", "baseline workers", "baseline images/s", "medcli images/s", "ratio", "baseline epoch s", "medcli epoch s", "baseline CPU s", "medcli CPU s"], rows,
                  f"B1 loader: {n_train} training images per epoch, batch {args.batch_size}; medians of {args.epochs} epochs (taken in turns) after a warm-up"))
    print(C.table(["size", "images", "index s", "materialize s", "images/s", "train split to RAM s", "epochs to amortize"], store_rows,
                  "one-time store build (cold cache; every job of the dataset reuses it), amortized against the faster baseline"))
    print(C.table(["size", "medcli variant", "images/s", "vs as trained", "CPU s/epoch"], extra_rows,
                  "do DataLoader workers / pinned memory help medcli's path here?" + ("" if torch.cuda.is_available() else
                  " (no CUDA: DataLoader ignores pin_memory, tensors stay unpinned)")))
    path = C.write_json("loader", {"data": described, "machine": info, "batch_size": args.batch_size, "timed_epochs": args.epochs, "results": results})
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
