"""B5: training images/s on a GPU: bf16 + channels_last vs fp32, and medcli's data path vs the model-bound limit.

    python benchmarks/gpu.py                              # ResNet-50, 224 px, batch 256, on the first GPU
    python benchmarks/gpu.py --device cpu --backbone resnet18 --size 64 --batch 16 --steps 3   # smoke run

Three variants of the same training step (forward, cross-entropy, backward, fused AdamW step), timed over
``--steps`` steps after ``--warmup`` steps, with the device synchronised around the timed block:

* ``fp32``: float32, NCHW, inputs are random tensors already on the device (the model alone);
* ``bf16 + channels_last``: the same with bf16 autocast and channels_last (medcli's default on GPUs);
* ``bf16 + channels_last, medcli data``: inputs come from medcli's decoded-image store (chest-CT, or its
  synthetic stand-in), uint8 to the device, per-sample affine augmentation and normalization on the device,
  exactly as ``medcli train`` feeds the model.

The second row is the model-bound limit; the third row's fraction of it says how much the data path costs.
Goals (issue B5): >= 3,000 img/s for the medcli row on one H100, and >= 90 % of the model-bound limit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common as C


def store_images(root: Path, size: int, work: Path):
    """The training split of ``root`` as an :class:`ImageSet` of the decoded-image store (3 channels)."""
    import numpy as np

    from medcli.data import load_dataset
    from medcli.data.store import StoreSettings, materialize
    from medcli.training.batches import ImageSet

    dataset = load_dataset(str(root))
    store = materialize(dataset, StoreSettings(img_size=size, channels=3, resize="squash", interpolation="bilinear"), str(work / "cache"), None)
    ids = [s.id for s in dataset.samples if s.split == "train"] or [s.id for s in dataset.samples]
    classes = sorted({s.label for s in dataset.samples})
    labels = np.array([classes.index(s.label) for s in dataset.samples if s.id in set(ids)])
    return ImageSet(store.images, store.rows(ids), labels, ids), len(classes)


def time_steps(step, steps: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="A dataset (default: chest-CT, else synthetic).")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu (a smoke run only).")
    args = parser.parse_args()

    import torch
    from torch import nn

    from medcli.models import create_model
    from medcli.training.batches import AugmentSettings, to_model_input

    if args.device is None and not torch.cuda.is_available():
        raise SystemExit("B5 needs a GPU: no CUDA device here (pass --device cpu for a smoke run of the script itself)")
    device = torch.device(args.device or "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else C.machine()["cpu"]
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory() as tmp:
        root, source = C.dataset(args.data, Path(tmp))
        images, n_classes = store_images(root, args.size, Path(tmp))
        mean = torch.tensor(C.IMAGENET_MEAN, device=device)
        std = torch.tensor(C.IMAGENET_STD, device=device)
        generator = torch.Generator().manual_seed(0)
        augment = AugmentSettings()

        def variant(label: str, autocast: bool, channels_last: bool, medcli_data: bool) -> dict:
            torch.manual_seed(0)
            model = create_model(args.backbone, n_classes, in_channels=3).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
            loss_fn = nn.CrossEntropyLoss()
            fixed = torch.randn(args.batch, 3, args.size, args.size, device=device)
            if channels_last:
                fixed = fixed.contiguous(memory_format=torch.channels_last)
            fixed_y = torch.randint(0, n_classes, (args.batch,), device=device)

            def step() -> None:
                if medcli_data:
                    idx = torch.randint(0, len(images), (args.batch,), generator=generator)
                    pixels = images.pixels(idx).pin_memory() if device.type == "cuda" else images.pixels(idx)
                    x = to_model_input(pixels.to(device, non_blocking=True), mean, std, augment=augment, generator=generator,
                                       channels_last=channels_last)
                    y = images.labels[idx].to(device, non_blocking=True)
                else:
                    x, y = fixed, fixed_y
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_fn(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            model.train()
            seconds = time_steps(step, args.steps, args.warmup, sync)
            return {"variant": label, "images_per_s": args.steps * args.batch / seconds, "seconds": seconds}

        rows = [variant("fp32, synthetic tensors on the device", False, False, False),
                variant(f"{'bf16' if bf16 else 'fp32'} + channels_last, synthetic tensors on the device", bf16, True, False),
                variant(f"{'bf16' if bf16 else 'fp32'} + channels_last, medcli data path (store + augmentation)", bf16, True, True)]
    base, bound = rows[0]["images_per_s"], rows[1]["images_per_s"]
    print(f"B5: {args.backbone} training, {args.size} px, batch {args.batch}, {args.steps} steps after {args.warmup}; "
          f"device: {name}; data: {source}")
    print("| variant | images/s | vs fp32 | of model-bound |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['images_per_s']:,.0f} | {row['images_per_s'] / base:.2f}x | {row['images_per_s'] / bound:.0%} |")
    out = C.REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({"device": name, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
