"""B6: grid throughput. The same grid run as one process (and one job) per cell, and as batches of cells per job.

    python benchmarks/grid.py                      # the demo grid (config.yaml): 36 cells, 64 px, 6 epochs
    python benchmarks/grid.py --grid small         # the demo grid with 5 folds of 1-epoch 32 px cells: start-up dominates
    python benchmarks/grid.py --grid chest-ct      # 4 configurations x 5 folds x 3 seeds on chest CT at 224 px (GPU)

Each setting runs in a fresh folder with the repository's Snakefile: first the data and pretraining steps (not
timed, the same for every setting), then, timed, the training and evaluation of every cell (the targets are the
cells' ``metrics/test.json``). Settings (``resources`` of the workflow config):

* ``one per cell``: ``cells_per_job: 1``, each cell trained by its own ``medcli train`` process and evaluated by
  its own ``medcli eval`` process, as the workflow did before batches;
* ``batched``: the default ``cells_per_job`` (one configuration's folds of one seed per job);
* with ``--at-once N`` also ``batched, N at once``: ``cells_per_gpu: N`` (N cells training side by side in a job).

Printed per setting: wall seconds, cells per hour, the ratio to one process per cell measured in the same run,
the jobs Snakemake ran, training seconds (the sum of ``train_seconds`` over the cells) and the per-cell
overhead: (the summed wall seconds of the training and evaluation jobs, from Snakemake's benchmark files, minus
the training seconds) / cells. Every cell's validation predictions and test metrics are compared between the
settings (identical bytes expected on a CPU). Goals: >= 3x cells per hour on the CPU grid of small cells; the
chest-CT grid in under 10 minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def grid_config(name: str, data: Path | None) -> dict:
    import yaml

    config = yaml.safe_load((C.REPO / "config.yaml").read_text())
    if name == "small":
        config["datasets"]["demo"]["folds"] = 5  # the usual protocol: 2 seeds x 5 folds per configuration
        config["train"].update(epochs=1, img_size=32)
        config["pretrain"].update(epochs=2)
        config["eval"]["bootstrap"] = 100
    elif name == "chest-ct":
        root = data or C.CHEST_CT
        if not root.is_dir():
            raise SystemExit(f"--grid chest-ct needs the chest-CT data: --data PATH (not found at {root})")
        config["datasets"] = {"chest-ct": {"path": str(root), "layout": "presplit", "folds": 5}}
        config["weights"] = "none"
        config.pop("pretrain", None)
        config["backbones"] = {"resnet50": {}, "efficientnet_b0": {}, "densenet121": {}, "resnet18": {}}
        config["strategies"] = {"scratch": {}}
        config["seeds"] = [0, 1, 2]
        config["train"] = {"img_size": 224, "channels": 3, "batch_size": 64, "epochs": 30, "patience": 10}
        config["ensembles"] = {}
        config.pop("gradcam", None)
        config["resources"]["gpus_per_job"] = 1
    return config


def cell_targets(config: dict, split: str = "test") -> list[str]:
    from medcli import paths
    from medcli import workflow as wf

    return [paths.metrics_file(paths.run_dir("results", c.dataset, c.backbone, c.strategy, c.seed, c.fold), split) for c in wf.expand_grid(config).cells]


def upstream_targets(config: dict) -> list[str]:
    """What every setting needs before training: the splits and, for the demo, the pretrained source models."""
    from medcli import paths
    from medcli import workflow as wf

    grid = wf.expand_grid(config)
    targets = [paths.splits_file("results", d) for d in config["datasets"]]
    targets += sorted({paths.model_file(paths.run_dir("results", wf.PRETRAIN_DATASET, c.backbone, "scratch", 0, 0)) for c in grid.cells if c.weights == "pretrained"})
    return targets


def snakemake(folder: Path, env: dict, cores: int, targets: list[str], extra: list[str] = ()) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(C.REPO / "Snakefile"), "--configfile", "config.yaml",
           "--cores", str(cores), *extra, *targets]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {folder}:\n{proc.stderr[-4000:]}")
    return dt, proc.stdout + proc.stderr


def job_seconds(folder: Path, stages=("train", "eval")) -> tuple[float, int]:
    """(summed wall seconds, number) of the jobs of ``stages``, from Snakemake's benchmark files."""
    total, n = 0.0, 0
    for stage in stages:
        for path in (folder / "logs" / stage).rglob("*.benchmark.tsv"):
            lines = path.read_text().splitlines()
            total += float(lines[1].split("\t")[0])
            n += 1
    return total, n


def cell_runs(folder: Path, config: dict) -> list[Path]:
    """The run folders of the grid's cells (not the demo's pretraining runs)."""
    return [run for d in config["datasets"] for run in sorted((folder / "results" / d).glob("runs/*/seed-*/fold-*"))]


def training_seconds(folder: Path, config: dict) -> float:
    return sum(json.loads((run / "config.json").read_text())["summary"]["train_seconds"] for run in cell_runs(folder, config))


def fingerprint(folder: Path, config: dict) -> dict[str, bytes]:
    """Per cell: validation predictions and test metrics (with their bootstrap CIs), the bytes."""
    out = {}
    for run in cell_runs(folder, config):
        rel = str(run.relative_to(folder / "results"))
        text = (run / "predictions" / "val.csv").read_bytes() + (run / "metrics" / "test.json").read_bytes()
        out[rel] = text.replace(str(folder.resolve()).encode(), b"FOLDER")  # image paths name each setting's own folder
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", choices=["demo", "small", "chest-ct"], default="demo")
    p.add_argument("--data", type=Path, default=None, help="The chest-CT folder for --grid chest-ct.")
    p.add_argument("--cores", type=int, default=None, help="snakemake --cores (default: the cores available).")
    p.add_argument("--at-once", type=int, default=0, help="Also run cells_per_gpu N (N cells side by side per job).")
    p.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a new temporary one, deleted after).")
    args = p.parse_args()

    import yaml

    from medcli import workflow as wf

    info = C.machine()
    cores = args.cores or info["cores"]
    print(f"machine: {info['cpu']}, {info['cores']} cores, CUDA {'yes' if info['cuda'] else 'no'}; load average {info['load_average_at_start']}", flush=True)
    config = grid_config(args.grid, args.data)
    n_cells = len(wf.expand_grid(config).cells)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(C.REPO), os.environ.get("PYTHONPATH")])),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "MEDCLI_NO_PROGRESS": "1"}
    extra = ["--resources", "gpu=1"] if config["resources"].get("gpus_per_job") else []
    tmp = args.work or Path(tempfile.mkdtemp(prefix="medcli-bench-grid-"))
    settings = {"one per cell": {"cells_per_job": 1}, "batched": {}}
    if args.at_once > 1:
        settings[f"batched, {args.at_once} at once"] = {"cells_per_gpu": args.at_once}

    results, prints = {}, {}
    for label, resources in settings.items():
        folder = tmp / label.replace(" ", "-").replace(",", "")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cfg = json.loads(json.dumps(config))
        cfg["resources"].update(resources)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        snakemake(folder, env, cores, upstream_targets(cfg), extra)
        wall, out = snakemake(folder, env, cores, cell_targets(cfg), extra)
        jobs_s, jobs = job_seconds(folder)
        train_s = training_seconds(folder, cfg)
        results[label] = {"resources": resources, "wall_s": wall, "cells": n_cells, "cells_per_hour": n_cells / wall * 3600,
                          "jobs": jobs, "job_seconds": jobs_s, "training_seconds": train_s, "overhead_per_cell_s": (jobs_s - train_s) / n_cells}
        prints[label] = fingerprint(folder, cfg)
        print(f"{label}: {wall:.0f} s for {n_cells} cells in {jobs} jobs", flush=True)

    base = results["one per cell"]
    reference = prints["one per cell"]
    rows = []
    for label, r in results.items():
        same = sum(prints[label].get(k) == v for k, v in reference.items())
        r["identical_cells"] = same
        rows.append([label, f"{r['wall_s']:.0f}", f"{r['cells_per_hour']:.0f}", f"{r['cells_per_hour'] / base['cells_per_hour']:.2f}",
                     r["jobs"], f"{r['training_seconds']:.0f}", f"{r['overhead_per_cell_s']:.1f}", f"{same}/{len(reference)}"])
    print(C.table(["setting", "wall s", "cells/hour", "vs one per cell", "train+eval jobs", "training s", "overhead s/cell", "identical runs"],
                  rows, f"B6 grid throughput: {args.grid} grid, {n_cells} cells, snakemake --cores {cores}"))
    path = C.write_json(f"grid-{args.grid}", {"machine": info, "grid": args.grid, "cores": cores, "settings": results})
    print(f"results written to {path}")
    if args.work is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
