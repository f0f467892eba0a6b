"""B7: the defaults study. Each setting of the study table trained with several seeds, scored on the test split.

    python benchmarks/recipes.py                               # RetinaMNIST, every setting, seeds 0 1 2
    python benchmarks/recipes.py --study chest-ct --settings old default
    python benchmarks/recipes.py --settings default medmnist-v2 --seeds 0 1 2 3 4 --jobs 2

Each run is ``medcli train`` (a subprocess, exactly as a user runs it, with the setting's options and nothing
else) followed by ``medcli eval --split test``; the test split is read only by that evaluation, after training
and model selection are over. Printed: per setting, the mean ± sd (n = seeds) of test accuracy, ROC-AUC (macro
one-vs-rest, as MedMNIST's evaluator) and balanced accuracy, the best epoch, the epochs run and the training
seconds, next to the published figures of the dataset. Written: ``benchmarks/out/recipes-<study>.json`` (every
run's figures, the options, the git revision and the machine).

Datasets (``--data`` overrides the path):

* ``retinamnist``: MedMNIST v2 RetinaMNIST (28 px RGB, 5 grades, 1,080/120/400 official split), from
  ``$MEDCLI_RETINAMNIST`` or ``../shared/data/retinamnist.npz`` beside the repository; ResNet-18 from scratch
  at 28 px, the setting of the MedMNIST v2 benchmark table.
* ``chest-ct``: the Kaggle chest CT-scan images (613/72/315, 4 classes), from ``$MEDCLI_CHEST_CT`` or
  ``../shared/data/chest-ct``, the dataset's own split with the test images that duplicate a training image
  left out (``medcli split --drop-test-duplicates``); ResNet-18 from scratch at ``--img-size`` (64 px by
  default, so that the study runs on a CPU; pass 224 on a GPU).

With a GPU, the RetinaMNIST study also trains ``resnet18_small`` (MedMNIST's own 28 px network, about 20x the
compute of torchvision's ResNet-18 at 28 px: about 100 minutes per 100-epoch run on one CPU core).

Runs are cached under ``--work`` by (study, setting, seed): a second call prints the table again and trains only
what is missing (``--fresh`` retrains). ``--jobs N`` trains N runs at once, each with ``cores / N`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C

RETINAMNIST = Path(os.environ.get("MEDCLI_RETINAMNIST") or C.REPO.parent / "shared" / "data" / "retinamnist.npz")

# Published test figures (MedMNIST v2, Yang et al., Scientific Data 2023, Table 3): (ACC, AUC).
PUBLISHED = {
    "retinamnist": {
        "ResNet-18 (28)": (0.524, 0.717), "ResNet-18 (224)": (0.493, 0.710), "ResNet-50 (28)": (0.528, 0.726),
        "ResNet-50 (224)": (0.511, 0.716), "auto-sklearn": (0.515, 0.690), "AutoKeras": (0.503, 0.719),
        "Google AutoML Vision": (0.531, 0.750),
    },
    "chest-ct": {},
}

# The study: setting name -> (what it tests, medcli train options on top of the study's base options).
# "old" is medcli's defaults before the study, spelled out so that it keeps meaning the same thing.
OLD = ["--epochs", "30", "--patience", "10", "--monitor", "balanced_accuracy", "--ema-epochs", "0"]
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "old": ("defaults before the study: 30 epochs, patience 10, best epoch by balanced accuracy, no EMA", OLD),
    "default": ("the defaults now (no option at all)", []),
    "medmnist-v2": ("--recipe medmnist-v2: Adam 1e-3, batch 128, 100 epochs, lr x0.1 at 50 and 75, no augmentation, AUC", ["--recipe", "medmnist-v2"]),
    "default-no-ema": ("defaults without the EMA of weights", ["--ema-epochs", "0"]),
    "default-monitor-bacc": ("defaults, best epoch by balanced accuracy", ["--monitor", "balanced_accuracy"]),
    "default-monitor-loss": ("defaults, best epoch by validation loss", ["--monitor", "loss"]),
    "default-no-class-weights": ("defaults, plain cross-entropy (the switch for plain accuracy)", ["--no-class-weights"]),
    "default-smoothing": ("defaults + label smoothing 0.1", ["--label-smoothing", "0.1"]),
    "medmnist-v2-last": ("--recipe medmnist-v2 --monitor last: the weights after epoch 100, what the published code kept", ["--recipe", "medmnist-v2", "--monitor", "last"]),
    "medmnist-v2-small": ("--recipe medmnist-v2 with resnet18_small, MedMNIST's own ResNet-18 (28) network (CIFAR-style stem; "
                          "about 20x the compute of resnet18 at 28 px: run on a GPU)", ["--recipe", "medmnist-v2", "--backbone", "resnet18_small"]),
    "default-small": ("defaults with resnet18_small (GPU)", ["--backbone", "resnet18_small"]),
    "default-last": ("defaults, the weights after the last epoch (no selection, no early stopping)", ["--monitor", "last"]),
    "default-no-early-stop": ("defaults without early stopping (patience 100): the whole budget, best epoch by AUC", ["--patience", "100"]),
    "default-30-epochs": ("defaults with the old budget: 30 epochs, patience 10", ["--epochs", "30", "--patience", "10"]),
    "default-step": ("defaults with lr x0.1 at 50% and 75% of the epochs instead of cosine", ["--schedule", "step"]),
    "default-1-channel": ("defaults, grayscale as 1 channel", ["--channels", "1"]),
}
STUDIES = {
    "retinamnist": {"base": ["--backbone", "resnet18", "--strategy", "scratch", "--img-size", "28"],
                    "settings": ["old", "default", "medmnist-v2", "medmnist-v2-last", "default-no-ema", "default-no-early-stop",
                                 "default-last", "default-monitor-bacc", "default-monitor-loss", "default-no-class-weights",
                                 "default-smoothing", "default-step", "default-30-epochs"],
                    "gpu_settings": ["medmnist-v2-small", "default-small"]},
    # the dataset's own split, with the test images that duplicate a training image left out (medcli split finds 11
    # validation and some test images repeated from train; a test image seen in training would flatter every setting)
    "chest-ct": {"base": ["--backbone", "resnet18", "--strategy", "scratch"], "split": ["--drop-test-duplicates"],
                 "settings": ["old", "default", "default-1-channel"]},
}
METRICS = ("accuracy", "roc_auc", "balanced_accuracy")


def data_path(study: str, given: Path | None) -> Path:
    if given is not None:
        return given
    path = RETINAMNIST if study == "retinamnist" else C.CHEST_CT
    if not path.exists():
        raise SystemExit(f"{path}: not found; pass --data PATH (the {study} dataset)")
    return path


def medcli(*args: str, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(C.REPO)}
    return subprocess.run([sys.executable, "-m", "medcli", *args], env=env, capture_output=True, text=True)


def run_one(study: str, setting: str, seed: int, data: Path, splits: Path, base: list[str], root: Path, threads: int, fresh: bool) -> dict:
    """Train and test one (setting, seed); the record, cached in ``<run>/bench.json``."""
    run = root / setting / f"seed-{seed}"
    record_file = run / "bench.json"
    options = [*base, *SETTINGS[setting][1]]
    if record_file.exists() and not fresh:
        record = json.loads(record_file.read_text())
        if record["options"] != options:
            print(f"  note: {setting} seed {seed} is cached with options {' '.join(record['options'])} (now {' '.join(options)}); "
                  "--fresh retrains it", flush=True)
        return record
    if run.exists():
        shutil.rmtree(run)
    # each setting resumes from its own work folder: runs of two settings with one seed never share a checkpoint path
    args = ["train", "--data", str(data), "--splits", str(splits), "--seed", str(seed), "--out", str(run),
            "--work", str(root / "work" / setting), "--results", str(root / "results"), "--workers", "1", "--no-progress", *options]
    t0 = time.perf_counter()
    trained = medcli(*args, threads=threads)
    if trained.returncode:
        raise SystemExit(f"{setting} seed {seed}: medcli train failed:\n{trained.stderr[-3000:]}")
    tested = medcli("eval", str(run), "--split", "test", "--bootstrap", "0", "--no-figures", threads=threads)
    if tested.returncode:
        raise SystemExit(f"{setting} seed {seed}: medcli eval failed:\n{tested.stderr[-3000:]}")
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics" / "test.json").read_text())["metrics"]
    summary = config["summary"]
    record = {
        "study": study, "setting": setting, "seed": seed, "options": options, "git_revision": C.git_revision(),
        **{m: metrics[m] for m in METRICS},
        "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"], "epochs": config["config"]["epochs"],
        "monitor": summary["monitor"], "train_seconds": summary["train_seconds"], "wall_seconds": time.perf_counter() - t0,
        "resolved": config.get("resolved"), "recipe": config["config"].get("recipe"),
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"  {setting} seed {seed}: test acc {record['accuracy']:.3f} auc {record['roc_auc']:.3f} bal-acc "
          f"{record['balanced_accuracy']:.3f}, best epoch {record['best_epoch']}/{record['epochs_run']} ({record['wall_seconds']:.0f} s)", flush=True)
    return record


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarise(records: list[dict], settings: list[str]) -> tuple[list[list], dict]:
    rows, means = [], {}
    for setting in settings:
        rs = [r for r in records if r["setting"] == setting]
        if not rs:
            continue
        means[setting] = {m: {"mean": statistics.mean(r[m] for r in rs), "sd": statistics.stdev(r[m] for r in rs) if len(rs) > 1 else None,
                              "n": len(rs)} for m in METRICS}
        rows.append([setting, len(rs), *(mean_sd([r[m] for r in rs]) for m in METRICS),
                     " ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in rs), f"{statistics.mean(r['train_seconds'] for r in rs):.0f}"])
    return rows, means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=tuple(STUDIES), default="retinamnist")
    p.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), help="default: the study's list")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data", type=Path)
    p.add_argument("--img-size", type=int, default=64, help="chest-ct: input size in pixels")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--work", type=Path, default=C.OUT / "recipes-work")
    p.add_argument("--fresh", action="store_true", help="retrain runs that are cached")
    args = p.parse_args()

    study = STUDIES[args.study]
    settings = args.settings or study["settings"]
    if args.settings is None and study.get("gpu_settings"):
        import torch

        if torch.cuda.is_available():
            settings = settings + study["gpu_settings"]
        else:
            print(f"no GPU: leaving out {', '.join(study['gpu_settings'])} (name them with --settings to run them on the CPU)")
    base = list(study["base"]) + (["--img-size", str(args.img_size)] if args.study == "chest-ct" else [])
    data = data_path(args.study, args.data)
    root = args.work / args.study
    root.mkdir(parents=True, exist_ok=True)
    splits = root / "splits.json"
    split_args = ["--folds", "0", *study.get("split", [])]
    made_with = root / "splits.args.json"
    if not splits.exists():  # one splits file for every run: the dataset's own train/val/test split
        made = medcli("split", str(data), *split_args, "--out", str(splits), threads=1)
        if made.returncode:
            raise SystemExit(f"medcli split failed:\n{made.stderr[-3000:]}")
        made_with.write_text(json.dumps(split_args))
    elif made_with.exists() and json.loads(made_with.read_text()) != split_args:
        raise SystemExit(f"{splits} was made with {made_with.read_text()}, not {split_args}: use another --work (or delete {root})")
    info = C.machine()
    threads = max(1, info["cores"] // args.jobs)
    print(f"study {args.study}: {data}; {len(settings)} settings x {len(args.seeds)} seeds, {args.jobs} at once with {threads} thread(s) each; "
          f"{info['cpu']}, CUDA {'yes' if info['cuda'] else 'no'}", flush=True)
    jobs = [(s, seed) for s in settings for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda j: run_one(args.study, j[0], j[1], data, splits, base, root, threads, args.fresh), jobs))
    rows, means = summarise(records, settings)
    print(C.table(["setting", "n", "test ACC", "test AUC", "test bal. acc.", "best/run epochs", "train s"], rows,
                  f"{args.study}: mean ± sd over seeds {args.seeds} (test split)"))
    published = PUBLISHED.get(args.study) or {}
    if published:
        print(C.table(["published (MedMNIST v2)", "test ACC", "test AUC"], [[k, f"{a:.3f}", f"{u:.3f}"] for k, (a, u) in published.items()]))
    for setting in settings:
        print(f"  {setting}: {SETTINGS[setting][0]}")
    path = C.write_json(f"recipes-{args.study}", {"machine": info, "data": str(data), "base_options": base, "seeds": args.seeds,
                                                   "settings": {s: SETTINGS[s] for s in settings}, "means": means, "runs": records,
                                                   "published": published})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
