"""Learnable synthetic datasets, in any layout medcli reads.

Each class is a bright object on a noisy, unevenly lit background. What tells classes apart is chosen with
``signal``:

* ``shape``: the object's shape (disk, square, triangle, cross, ...) at a random place;
* ``location``: one shape, in a region of the image that belongs to the class (see :func:`class_region`:
  used to check that Grad-CAM looks where the signal is);
* ``texture``: a square patch whose stripe frequency belongs to the class;
* ``mixed`` (default): shape, texture and a preferred location together (the easiest to learn).

Images can come in "patients" (``per_group`` similar images sharing a group id), to exercise grouped splits.
Everything is drawn from one seeded generator: the same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import MedcliError

SIGNALS = ("mixed", "shape", "location", "texture")
SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond", "hbar", "vbar")


def class_names(n_classes: int, signal: str = "mixed") -> list[str]:
    if signal == "location":
        return [f"region{k}" for k in range(n_classes)]
    if signal == "texture":
        return [f"stripes{k + 1}" for k in range(n_classes)]
    return list(SHAPES[:n_classes])


def class_region(k: int, n_classes: int, size: int) -> tuple[int, int, int, int]:
    """The box ``(top, left, bottom, right)`` where class ``k``'s object sits under ``signal='location'``.

    Regions are the cells of a grid (2x2 up to 4 classes, 3x3 up to 9), in row-major order.
    """
    cols = 2 if n_classes <= 4 else 3
    cell = size // cols
    r, c = divmod(k, cols)
    return r * cell, c * cell, (r + 1) * cell, (c + 1) * cell


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, rad: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "disk":
        return dy**2 + dx**2 <= rad**2
    if shape == "square":
        return (abs(dy) <= rad * 0.85) & (abs(dx) <= rad * 0.85)
    if shape == "triangle":
        return (dy <= rad * 0.8) & (dy >= -rad) & (abs(dx) <= (dy + rad) * 0.6)
    if shape == "cross":
        w = rad * 0.3
        return ((abs(dy) <= w) & (abs(dx) <= rad)) | ((abs(dx) <= w) & (abs(dy) <= rad))
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= rad**2) & (d2 >= (rad * 0.55) ** 2)
    if shape == "diamond":
        return abs(dy) + abs(dx) <= rad
    if shape == "hbar":
        return (abs(dy) <= rad * 0.3) & (abs(dx) <= rad)
    if shape == "vbar":
        return (abs(dx) <= rad * 0.3) & (abs(dy) <= rad)
    raise ValueError(shape)


def draw(k: int, n_classes: int, size: int, rng: np.random.Generator, *, signal: str = "mixed", noise: float = 0.15, channels: int = 1) -> np.ndarray:
    """One image of class ``k`` as a uint8 array (``size`` x ``size`` [x 3])."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Uneven illumination and sensor noise make the task non-trivial.
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    img = 0.25 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5)
    rad = size * rng.uniform(0.12, 0.18)
    if signal == "location":
        top, left, bottom, right = class_region(k, n_classes, size)
        margin = rad * 1.05
        cy = rng.uniform(top + margin, max(top + margin, bottom - margin))
        cx = rng.uniform(left + margin, max(left + margin, right - margin))
        mask = _shape_mask("disk", yy, xx, cy, cx, rad)
    elif signal == "texture":
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        patch = (abs(yy - cy) <= rad * 1.2) & (abs(xx - cx) <= rad * 1.2)
        freq = (k + 1) * 2 * np.pi / (size * 0.25)
        mask = patch & (np.sin(xx * freq + rng.uniform(0, 2 * np.pi)) > 0)
    elif signal in ("shape", "mixed"):
        if signal == "mixed":
            angle = 2 * np.pi * k / n_classes
            cy = size * (0.5 + 0.22 * np.sin(angle)) + rng.normal(0, size * 0.05)
            cx = size * (0.5 + 0.22 * np.cos(angle)) + rng.normal(0, size * 0.05)
        else:
            cy, cx = rng.uniform(0.25, 0.75, 2) * size
        mask = _shape_mask(SHAPES[k % len(SHAPES)], yy, xx, cy, cx, rad)
    else:
        raise MedcliError(f"--signal {signal!r}: choose one of {', '.join(SIGNALS)}")
    img = img + mask * rng.uniform(0.45, 0.65)
    img = img + rng.normal(0, noise, img.shape)
    arr = np.clip(img * 255, 0, 255).astype(np.uint8)
    if channels == 3:
        tint = rng.uniform(0.85, 1.0, 3)
        arr = np.clip(arr[..., None] * tint, 0, 255).astype(np.uint8)
    return arr


def make_synthetic(
    out: str | os.PathLike,
    *,
    layout: str = "imagefolder",
    n_classes: int = 3,
    per_class: int = 40,
    size: int = 64,
    channels: int = 1,
    signal: str = "mixed",
    noise: float = 0.15,
    seed: int = 0,
    per_group: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset to ``out`` and return the path to give to medcli (folder, CSV or NPZ).

    ``presplit``, ``csv`` and ``npz`` layouts get train/val/test splits of the given fractions; splits never
    separate the images of one group.
    """
    from .layouts import LAYOUTS

    if layout not in LAYOUTS:
        raise MedcliError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if not 2 <= n_classes <= len(SHAPES):
        raise MedcliError(f"--classes {n_classes}: must be between 2 and {len(SHAPES)}")
    if signal == "location" and n_classes > 9:
        raise MedcliError("--signal location supports at most 9 classes")
    if per_class < 1 or size < 16 or channels not in (1, 3) or per_group < 1:
        raise MedcliError("--per-class >= 1, --size >= 16, --channels 1|3 and --per-group >= 1 are required")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise MedcliError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    names = class_names(n_classes, signal)
    settings = {"layout": layout, "n_classes": n_classes, "per_class": per_class, "size": size, "channels": channels,
                "signal": signal, "noise": noise, "seed": seed, "per_group": per_group,
                "val_fraction": val_fraction, "test_fraction": test_fraction}
    records = []  # (class index, group, split, image)
    for k in range(n_classes):
        n_groups = -(-per_class // per_group)
        splits = _class_splits(rng, n_groups, val_fraction, test_fraction)
        for g in range(n_groups):
            split = splits[g]
            group_seed = int(rng.integers(2**31))
            for i in range(min(per_group, per_class - g * per_group)):
                # Images of one group share their generator state apart from a small per-image jitter.
                sub = np.random.default_rng([group_seed, i if per_group > 1 else 0])
                records.append((k, f"p{k}-{g:04d}", split, draw(k, n_classes, size, sub, signal=signal, noise=noise, channels=channels)))

    if layout == "npz":
        arrays = {}
        for split in ("train", "val", "test"):
            rows = [r for r in records if r[2] == split]
            if rows:
                arrays[f"{split}_images"] = np.stack([r[3] for r in rows])
                arrays[f"{split}_labels"] = np.array([[r[0]] for r in rows], dtype=np.int64)
        path = out / "dataset.npz"
        np.savez_compressed(path, **arrays)
        return _finish(out, path, settings)

    from PIL import Image

    manifest = []
    for n, (k, group, split, arr) in enumerate(records):
        if layout == "imagefolder":
            rel = Path(names[k]) / f"img{n:05d}.png"
        elif layout == "presplit":
            rel = Path(split) / names[k] / f"img{n:05d}.png"
        else:
            rel = Path("images") / f"img{n:05d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(out / rel)
        manifest.append((rel.as_posix(), names[k], group, split))
    if layout == "csv":
        path = out / "manifest.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "group", "split"])
            writer.writerows(manifest)
        return _finish(out, path, settings)
    return _finish(out, out, settings)


def _finish(out: Path, dataset: Path, settings: dict) -> Path:
    """Record how the dataset was made; the file appears last, so its presence means the dataset is complete."""
    from .._io import write_json
    from ..paths import synth_marker

    write_json(synth_marker(out), {"format": "medcli.synth/1", "dataset": dataset.name, **settings})
    return dataset


def _class_splits(rng: np.random.Generator, n_groups: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Stratified split assignment: each class gets its share of test and val groups (at least one when possible)."""
    n_test = max(1, round(n_groups * test_fraction)) if test_fraction > 0 and n_groups >= 3 else 0
    n_val = max(1, round(n_groups * val_fraction)) if val_fraction > 0 and n_groups >= 3 else 0
    labels = ["test"] * n_test + ["val"] * n_val + ["train"] * (n_groups - n_test - n_val)
    return [labels[i] for i in rng.permutation(n_groups)]
