"""Scale check for the data stage: index, decode/check, duplicate search, split and materialize N images.

    python benchmarks/data_scale.py --n 100000 --dir /tmp/medcli-scale

Prints images/s per step and the peak resident memory of this process and its workers (``/usr/bin/time -v``
gives the same figure from outside).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dir", type=Path, default=Path("/tmp/medcli-scale"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=64)
    args = p.parse_args()

    from medcli.data import load_dataset, scan_dataset
    from medcli.data.inspect import duplicates_of
    from medcli.data.store import StoreSettings, materialize
    from medcli.data.synth import make_synthetic
    from medcli.splits import make_splits

    data = args.dir / "data"
    cache = args.dir / "cache"
    per_class = args.n // 5
    if not (data / "train").exists():
        t = time.perf_counter()
        make_synthetic(data, layout="presplit", n_classes=5, per_class=per_class, size=args.size, noise=0.25, overwrite=True)
        print(f"generated {5 * per_class} images in {time.perf_counter() - t:.0f} s")
    rows = []

    def step(name, fn):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        rows.append((name, dt))
        print(f"{name:<28} {dt:8.1f} s  {5 * per_class / dt:10.0f} images/s", flush=True)
        return out

    ds = step("index", lambda: load_dataset(data))
    records = step("decode + check + hash", lambda: scan_dataset(ds, cache))
    step("scan again (cached)", lambda: scan_dataset(ds, cache))
    dups = step("duplicate search", lambda: duplicates_of(ds, records))
    step("split (5 folds)", lambda: make_splits(ds, dups, folds=5, seed=0))
    step(f"materialize {args.img_size}px", lambda: materialize(ds, StoreSettings(img_size=args.img_size, channels=1), cache))
    biggest = max((len(g.ids) for g in dups.exact + dups.near), default=0)
    print(f"duplicate groups: {len(dups.exact)} exact, {len(dups.near)} near, largest {biggest} images")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {kids:.0f} MiB")


if __name__ == "__main__":
    main()
