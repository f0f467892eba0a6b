"""Shared helpers of the benchmark scripts: the dataset, timing, the printed table and the JSON record.

The benchmarks use the real chest-CT dataset (Kaggle chest CT-scan images) when given with ``--data PATH``, in
``$MEDCLI_CHEST_CT``, or found at ``../shared/data/chest-ct`` beside the repository, and otherwise a synthetic
stand-in of the same shape made by ``medcli data synth``:
1,000 images, 4 classes, train/val/test about 613/72/315, RGB, 384 px (the real images are 170-1,200 px,
median about 420 x 300, mostly RGBA PNGs).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHEST_CT = Path(os.environ.get("MEDCLI_CHEST_CT") or REPO.parent / "shared" / "data" / "chest-ct")
OUT = REPO / "benchmarks" / "out"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dataset(requested: Path | None, work: Path) -> tuple[Path, str]:
    """``(root, description)`` of a presplit dataset: ``requested``, the real chest-CT data or a synthetic one."""
    if requested is not None:
        return requested, f"{requested} (given)"
    if CHEST_CT.is_dir():
        return CHEST_CT, "chest-CT (real: 1,000 images, 613 train / 72 valid / 315 test)"
    from medcli.data.synth import make_synthetic
    from medcli.paths import synth_marker

    root = work / "synthetic-chest-ct"
    if not Path(synth_marker(root)).exists():
        t = time.perf_counter()
        make_synthetic(root, layout="presplit", n_classes=4, per_class=250, size=384, channels=3, noise=0.25,
                       val_fraction=0.072, test_fraction=0.315, seed=0, overwrite=True)
        print(f"chest-CT data not found at {CHEST_CT}: generated a synthetic stand-in in {time.perf_counter() - t:.0f} s")
    return root, "synthetic stand-in for chest-CT (1,000 images, 4 classes, 384 px RGB)"


def train_folder(root: Path) -> Path:
    return root / "train"


def median(values) -> float:
    return float(statistics.median(values))


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not Linux
        return []


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (DataLoader workers end with their epoch)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)``. On a machine shared with other busy processes, one thread per process avoids
    the stalls of a multi-threaded op whose threads wait for each other while one of them is descheduled."""
    if n:
        import torch

        torch.set_num_threads(n)


def machine() -> dict:
    """What the figures were measured on (another busy process on the machine shows in the load average)."""
    import torch

    from medcli.training.outputs import hardware

    cpu = hardware()["cpu"]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))) + " |"  # noqa: E731
    lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells[1:])]
    return (f"\n{title}\n" if title else "\n") + "\n".join(lines)


def write_json(name: str, record: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_revision": git_revision(), **record}
    record.setdefault("machine", {})["load_average_at_end"] = load_average()
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def start(args) -> tuple[dict, int, Path, str]:
    """Threads, machine, DataLoader workers and dataset of a run, printed as its header:
    ``(machine info, workers, dataset root, dataset description)``."""
    set_threads(args.threads)
    info = machine()
    workers = args.workers if args.workers is not None else info["cores"]
    root, described = dataset(args.data, args.work)
    print(f"data: {described}\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"CUDA {'yes' if info['cuda'] else 'no'}; load average {info['load_average_at_start']}", flush=True)
    return info, workers, root, described
