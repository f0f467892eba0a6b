"""The data and split commands, as a user runs them: output, files, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from medcli.cli import app
from medcli.data.synth import make_synthetic

runner = CliRunner()


def test_synth_inspect_split_roundtrip(tmp_path):
    res = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), "--layout", "presplit", "--per-class", "12", "--size", "32"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "d"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "images per class and split" in res.output and "duplicates:" in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "medcli.inspect/1" and report["dataset"]["n_images"] == 36
    res = runner.invoke(app, ["split", str(tmp_path / "d"), "--folds", "3", "--seed", "7", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "fold 2: train" in res.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["settings"]["seed"] == 7 and len(doc["folds"]) == 3


def test_alias_option_renames_a_class(tmp_path):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=10, size=32)
    (root / "test" / "disk").rename(root / "test" / "circle")
    res = runner.invoke(app, ["split", str(root), "--folds", "2", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 1 and "circle" in res.output and "--alias" in res.output
    res = runner.invoke(app, ["split", str(root), "--folds", "2", "--alias", "circle=disk", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "class 'circle' -> 'disk'" in res.output


def test_bad_input_is_one_line_without_traceback(tmp_path):
    # a real process, as a user (or SLURM) sees it
    root = make_synthetic(tmp_path / "d", per_class=6, size=32)
    (root / "disk" / "broken.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "-m", "medcli", "split", str(root), "--folds", "2", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "broken.png" in lines[0] and "--skip-bad" in lines[0]
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-m", "medcli", "data", "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_skip_bad_says_how_many(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=6, size=32)
    (root / "disk" / "zero.png").write_bytes(b"")
    res = runner.invoke(app, ["split", str(root), "--folds", "2", "--skip-bad", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "excluded: 1 image" in res.output


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).output.startswith("medcli ")
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "split" in res.output and "data" in res.output


def test_split_writes_where_train_reads_by_default(tmp_path, monkeypatch):
    from medcli import paths

    root = make_synthetic(tmp_path / "my data #1", layout="presplit", per_class=10, size=32)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["split", str(root), "--folds", "2", "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    expected = tmp_path / paths.splits_file(paths.DEFAULT_RESULTS, "my data #1")
    assert json.loads(expected.read_text())["format"] == "medcli.splits/1"
    assert not (tmp_path / "splits.json").exists()
