"""The shipped SLURM profile against a real SLURM cluster (single node), end to end.

Runs where SLURM answers (`sinfo`, `sacct`), or where it can be started: as root with
MEDCLI_START_SLURM=1 (CI does this) the test starts one with tests/slurm/start-slurm.sh. Skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "tests" / "slurm" / "start-slurm.sh"


def _slurm_up() -> bool:
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
        acct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return info.returncode == 0 and "idle" in info.stdout and acct.returncode == 0


@pytest.fixture(scope="module")
def slurm():
    if _slurm_up():
        return
    if os.environ.get("MEDCLI_START_SLURM") == "1" and hasattr(os, "geteuid") and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 and _slurm_up():
            return
        pytest.skip(f"SLURM could not be started: {proc.stderr.strip().splitlines()[-1:] or proc.stdout[-200:]}")
    pytest.skip("no SLURM cluster answers here (start one as root with MEDCLI_START_SLURM=1, see tests/slurm/start-slurm.sh)")


@pytest.mark.slow
def test_workflow_runs_through_slurm_with_the_shipped_profile(slurm, tmp_path):
    shutil.copy(REPO / "tests" / "slurm" / "config.yaml", tmp_path / "config.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MEDCLI_NO_PROGRESS": "1"}
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(REPO / "slurm"), "--snakefile", str(REPO / "Snakefile"),
           "--configfile", "config.yaml", "--default-resources", "runtime=10", "mem_mb=1000", "slurm_account=root", "--slurm-keep-successful-logs"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "results" / "summary.md").stat().st_size > 0
    acct = subprocess.run(["sacct", "-n", "-X", "-S", start, "-o", "JobID,State%20"], capture_output=True, text=True, check=True)
    states = [line.split()[1] for line in acct.stdout.splitlines() if line.strip()]
    # synth, inspect, split, one training and one evaluation job for both cells, and Grad-CAM went through SLURM;
    # the report ran on the "login node"
    assert states.count("COMPLETED") >= 6, acct.stdout
    sbatch_logs = {rule: list((tmp_path / "logs" / "slurm").glob(f"rule_{rule}/**/*.log")) for rule in ("train__tiny__customcnn__scratch__s0__0", "eval__tiny__customcnn__scratch__s0__0")}
    assert {rule: len(found) for rule, found in sbatch_logs.items()} == {rule: 1 for rule in sbatch_logs}, list((tmp_path / "logs" / "slurm").rglob("*"))
    for fold in (0, 1):  # each cell has its own log, written by the one training process
        assert "best epoch" in (tmp_path / "logs" / "train" / "tiny" / "customcnn__scratch" / "seed-0" / f"fold-{fold}.log").read_text()
