"""medcli starts fast: importing the CLI and printing any command's help never imports torch or the other heavy
libraries (each command imports them when it runs). Checked in a fresh interpreter, where ``sys.modules`` is
not shared with the rest of the test session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "accelerate", "sklearn", "pandas", "matplotlib")
COMMANDS = {
    ("data",), ("data", "inspect"), ("data", "synth"), ("split",), ("train",), ("eval",), ("gradcam",),
    ("ensemble",), ("report",), ("weights",), ("weights", "download"), ("models",), ("recipes",),
}

_PROBE = """
import json, sys
import typer
from typer.testing import CliRunner
from medcli.cli import app

after_import = sorted(m for m in {heavy!r} if m in sys.modules)

def walk(command, path=()):
    found = [path]
    for name, sub in getattr(command, "commands", {{}}).items():
        found += walk(sub, path + (name,))
    return found

paths = walk(typer.main.get_command(app))
failed = []
for path in paths:
    result = CliRunner().invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        failed.append([list(path), result.output[-500:]])
print(json.dumps({{
    "after_import": after_import,
    "after_help": sorted(m for m in {heavy!r} if m in sys.modules),
    "commands": [list(p) for p in paths if p],
    "failed": failed,
}}))
"""


def _probe() -> dict:
    # cwd = the repository root, so `python -c` imports this checkout's medcli (sys.path[0] is the cwd).
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_import_and_every_help_skip_torch_and_register_every_command():
    result = _probe()
    assert result["after_import"] == [], f"`import medcli.cli` imports {result['after_import']}: import them inside the command bodies"
    assert {tuple(c) for c in result["commands"]} == COMMANDS
    assert result["failed"] == []
    assert result["after_help"] == [], f"`--help` imports {result['after_help']}"


def test_python_m_medcli_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "medcli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("data", "split", "train", "eval", "gradcam", "ensemble", "report", "weights", "models", "recipes"):
        assert name in proc.stdout
