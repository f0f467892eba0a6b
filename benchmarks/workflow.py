"""B4: ``snakemake -n`` on a 600-training grid, and how fast ``medcli --help`` starts compared with ``import torch``.

    python benchmarks/workflow.py
    python benchmarks/workflow.py --runs 3 --help-runs 7

1. Dry run: 2 datasets × 4 backbones × 5 strategies × 3 seeds × 5 folds = 600 trainings (in 40 training and 40
   evaluation jobs of 15 cells each, plus data, weights and report jobs), written to a temporary folder with two small synthetic datasets and
   run with the repository's Snakefile (``--snakefile``, ``--configfile``). The job counts printed by Snakemake
   are checked against the grid, so the DAG is really resolved. Goal: under 15 s.

   snakemake-executor-plugin-slurm runs ``scontrol show config`` whenever Snakemake starts (even for a local
   run). Where SLURM's client is installed but its controller is unreachable, that call waits about 9 s before
   giving up. The benchmark times that call on its own and, when it is slow, also times the dry run with an
   ``scontrol`` that fails at once (a laptop without SLURM, or a cluster whose controller answers, sees that).

2. Start-up: median wall time of ``python -m medcli --help`` against ``python -c "import torch"`` (and a bare
   ``python -c pass``), each in a fresh process, plus whether importing ``medcli.cli`` pulls in torch.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

BACKBONES = ["resnet18", "resnet50", "densenet121", "efficientnet_b0"]
STRATEGIES = ["scratch", "linear", "partial", "full", "two-phase"]


def grid_config(tmp: Path) -> dict:
    """The 600-training experiment over two small synthetic datasets made in ``tmp``."""
    from medcli.data.synth import make_synthetic

    datasets = {}
    for k, name in enumerate(("alpha", "beta")):
        root = make_synthetic(tmp / "data" / name, layout="presplit", n_classes=3, per_class=12, size=32, seed=k, overwrite=True)
        datasets[name] = {"path": str(root), "folds": 5}
    return {
        "results": "results", "work": "work", "logs": "logs", "cache": "work/cache",
        "datasets": datasets,
        "weights": "imagenet",
        "backbones": {b: {} for b in BACKBONES},
        "strategies": {s: {} for s in STRATEGIES},
        "seeds": [0, 1, 2],
        "train": {"img_size": 64, "channels": 1, "epochs": 2, "batch_size": 16},
        "eval": {"bootstrap": 100},
        "resources": {"default": {"threads": 1, "mem_mb": 1000, "runtime": 10}},
        "retries": 0,
    }


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table Snakemake prints: {rule: count}."""
    part = output.split("Job stats:")[-1]
    counts = {}
    for line in part.splitlines():
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run(tmp: Path, env: dict) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(C.REPO / "Snakefile"), "--configfile", "config.yaml", "-n", "--cores", "1"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stderr[-3000:]}")
    return dt, proc.stdout + proc.stderr


def startup(cmd: list[str], runs: int, env: dict) -> dict:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return {"median_s": C.median(times), "all_s": [round(x, 4) for x in times]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="Dry runs per setting (median).")
    p.add_argument("--help-runs", type=int, default=7, help="Start-up measurements per command (median).")
    p.add_argument("--work", type=Path, default=None, help="Folder for the config and data (default: a new temporary one).")
    args = p.parse_args()

    import yaml

    from medcli import workflow as wf

    info = C.machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; load average {info['load_average_at_start']}", flush=True)
    tmp = args.work or Path(tempfile.mkdtemp(prefix="medcli-bench-workflow-"))
    tmp.mkdir(parents=True, exist_ok=True)
    config = grid_config(tmp)
    grid = wf.expand_grid(config)
    assert len(grid.cells) == 600 and not grid.skipped, (len(grid.cells), grid.skipped)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    # The repository's medcli (this checkout) for Snakemake's process and for the `medcli` the rules would call.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(C.REPO), os.environ.get("PYTHONPATH")])),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "MEDCLI_NO_PROGRESS": "1"}

    batches = len(wf.plan_batches(grid, wf.cells_per_job(config)))  # one training and one evaluation job per batch of cells
    expected = {"train__": batches, "eval__": batches}
    settings = {"as is": env}
    probe = None
    scontrol = shutil.which("scontrol", path=env["PATH"])
    if scontrol:
        t = time.perf_counter()
        try:
            subprocess.run([scontrol, "show", "config"], capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            pass
        probe = time.perf_counter() - t
        print(f"`scontrol show config` (run by the SLURM executor plugin at every Snakemake start): {probe:.1f} s", flush=True)
        if probe > 1:
            shim = tmp / "no-slurm-controller"
            shim.mkdir(exist_ok=True)
            (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
            (shim / "scontrol").chmod(0o755)
            settings["scontrol fails at once"] = {**env, "PATH": f"{shim}{os.pathsep}{env['PATH']}"}

    dry = {}
    for label, e in settings.items():
        times = []
        for _ in range(args.runs):
            shutil.rmtree(tmp / ".snakemake", ignore_errors=True)
            dt, out = dry_run(tmp, e)
            counts = job_counts(out)
            for prefix, n in expected.items():
                got = sum(c for rule, c in counts.items() if rule.startswith(prefix))
                assert got == n, f"dry run resolved {got} {prefix}* jobs, expected {n}:\n{out[-2000:]}"
            times.append(dt)
        dry[label] = {"median_s": C.median(times), "all_s": [round(x, 2) for x in times], "jobs": counts}
        print(f"snakemake -n ({label}): {dry[label]['median_s']:.1f} s, {counts.get('total')} jobs", flush=True)

    py = sys.executable
    start = {
        "python -c pass": startup([py, "-c", "pass"], args.help_runs, env),
        'python -c "import torch"': startup([py, "-c", "import torch"], args.help_runs, env),
        "medcli --help": startup([py, "-m", "medcli", "--help"], args.help_runs, env),
        "medcli data synth --help": startup([py, "-m", "medcli", "data", "synth", "--help"], args.help_runs, env),
    }
    check = subprocess.run([py, "-c", "import sys, medcli.cli; print('torch' in sys.modules)"], env=env, capture_output=True, text=True, check=True)
    cli_imports_torch = check.stdout.strip() == "True"
    grid_t = subprocess.run([py, "-c", "import sys, time, yaml; t = time.perf_counter(); from medcli import workflow as wf; "
                             f"wf.expand_grid(yaml.safe_load(open({str(tmp / 'config.yaml')!r}))); print(time.perf_counter() - t, 'torch' in sys.modules)"],
                            env=env, capture_output=True, text=True, check=True).stdout.split()

    torch_s = start['python -c "import torch"']["median_s"]
    rows = [[f"snakemake -n, 600 trainings ({label})", f"{d['median_s']:.1f}", "< 15", "yes" if d["median_s"] < 15 else "no", d["jobs"].get("total")] for label, d in dry.items()]
    print(C.table(["what", "seconds", "goal", "met", "jobs resolved"], rows, f"B4 workflow: median of {args.runs} dry runs"))
    srows = [[name, f"{v['median_s']:.3f}", f"{v['median_s'] / torch_s:.2f}"] for name, v in start.items()]
    print(C.table(["command (fresh process)", "median s", "vs import torch"], srows, f"start-up: median of {args.help_runs} runs"))
    print(f"\nimport medcli.cli imports torch: {cli_imports_torch}")
    print(f"expanding the grid inside the Snakefile (imports the backbone registry): {float(grid_t[0]):.2f} s, torch imported: {grid_t[1]}")
    path = C.write_json("workflow", {
        "machine": info, "grid": {"datasets": 2, "backbones": BACKBONES, "strategies": STRATEGIES, "seeds": 3, "folds": 5, "trainings": 600},
        "scontrol_probe_s": probe, "dry_run": dry, "startup": start, "cli_imports_torch": cli_imports_torch,
        "expand_grid_s": float(grid_t[0]), "expand_grid_imports_torch": grid_t[1] == "True",
    })
    print(f"results written to {path}")
    if args.work is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
