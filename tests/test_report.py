"""The summary: exact means/sds/n, the corrected t-test by hand, Holm, missing/skipped cells, figures, formats."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.report.build import write_report

CLASSES = ["a", "b", "c"]
CONFIGS = {("customcnn", "scratch"): 0.60, ("customcnn", "full"): 0.65, ("resnet18", "linear"): 0.70, ("resnet18", "full"): 0.80}
GOLDEN = Path(__file__).parent / "golden" / "summary_structure.md"


def _score(base, seed, fold):
    return round(base + 0.02 * fold + 0.01 * seed - 0.005 * fold * seed, 6)


@pytest.fixture()
def results(tmp_path) -> Path:
    res = tmp_path / "results"
    rng = np.random.default_rng(0)
    y_test = np.repeat([0, 1, 2], 10)
    for (backbone, strategy), base in CONFIGS.items():
        for seed in (0, 1):
            for fold in range(3):
                if (backbone, strategy, seed, fold) == ("resnet18", "linear", 1, 2):
                    continue  # a failed job
                run = Path(paths.run_dir(res, "ds", backbone, strategy, seed, fold))
                (run / "metrics").mkdir(parents=True)
                (run / "predictions").mkdir()
                (run / "config.json").write_text(json.dumps({
                    "classes": CLASSES, "config": {"backbone": backbone, "strategy": strategy},
                    "summary": {"n_train": 80, "n_val": 40, "train_seconds": 10.0}, "versions": {"torch": "x"},
                    "git_revision": "abc", "hardware": {"cpu": "test cpu", "gpus": []}}))
                (run / "metrics" / "val.json").write_text(json.dumps({"metrics": {
                    "balanced_accuracy": _score(base, seed, fold), "macro_f1": _score(base, seed, fold) - 0.1, "roc_auc": 0.9, "ece": 0.05, "accuracy": 0.7}}))
                probs = np.clip(np.eye(3)[y_test] * base + rng.random((30, 3)) * 0.5, 0.01, None)
                probs /= probs.sum(1, keepdims=True)
                with open(run / "predictions" / "test.csv", "w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(["id", "label", *(f"prob_{c}" for c in CLASSES)])
                    for k in range(30):
                        w.writerow([f"img{k}", CLASSES[y_test[k]], *probs[k]])
                (run / "history.csv").write_text("epoch,val_balanced_accuracy,val_loss\n1,0.5,1.0\n2,0.6,0.9\n")
    cells = [{"dataset": "ds", "backbone": b, "strategy": s, "seed": seed, "fold": f, "weights": "none"}
             for (b, s) in CONFIGS for seed in (0, 1) for f in range(3)]
    Path(paths.experiment_file(res)).write_text(json.dumps({
        "config": {"report": {"primary_metric": "balanced_accuracy", "reference": "customcnn__scratch"}}, "config_hash": "sha256:x",
        "cells": cells, "skipped": [{"dataset": "ds", "backbone": "customcnn", "strategy": "linear", "reason": "trains a head on random features"}]}))
    return res


def _summary(res):
    return json.loads(Path(paths.summary_file(res, "json")).read_text())["datasets"]["ds"]


def test_table_values_are_exact(results):
    write_report(results, n_bootstrap=100)
    rows = {r["config"]: r for r in _summary(results)["rows"]}
    for (backbone, strategy), base in CONFIGS.items():
        keys = [(s, f) for s in (0, 1) for f in range(3) if (backbone, strategy, s, f) != ("resnet18", "linear", 1, 2)]
        values = [_score(base, s, f) for s, f in keys]
        cv = rows[f"{backbone}__{strategy}"]["cv"]["balanced_accuracy"]
        assert cv["n"] == len(values)
        assert cv["mean"] == pytest.approx(np.mean(values)) and cv["sd"] == pytest.approx(np.std(values, ddof=1))
    order = [r["config"] for r in _summary(results)["rows"]]
    assert order == ["resnet18__full", "resnet18__linear", "customcnn__full", "customcnn__scratch"]
    md = Path(paths.summary_file(results)).read_text()
    best = np.mean([_score(0.80, s, f) for s in (0, 1) for f in range(3)])
    assert f"**{best:.3f} ± " in md  # best CV value in bold
    for config in rows:
        assert f"`{config}`" in md
    test = rows["resnet18__full"]["test"]
    assert test["low"] <= test["estimate"] <= test["high"]


def test_corrected_ttest_and_holm_match_a_hand_computation(results):
    write_report(results, n_bootstrap=50)
    rows = {r["config"]: r for r in _summary(results)["rows"]}
    # customcnn__full is the reference shifted by a constant: identical differences, no test possible
    assert rows["customcnn__full"]["comparison"]["p"] is None and "identical" in rows["customcnn__full"]["comparison"]["note"]
    # resnet18__linear: 5 matched pairs (one job failed)
    keys = [(s, f) for s in (0, 1) for f in range(3) if (s, f) != (1, 2)]
    d = np.array([_score(0.70, s, f) - _score(0.60, s, f) for s, f in keys])
    comp = rows["resnet18__linear"]["comparison"]
    assert comp["n"] == 5
    if np.var(d, ddof=1) > 0:
        var = np.var(d, ddof=1) * (1 / 5 + 40 / 80)
        t = d.mean() / np.sqrt(var)
        assert comp["t"] == pytest.approx(t) and comp["p"] == pytest.approx(2 * stats.t.sf(abs(t), 4))
    ps = [r["comparison"]["p"] for r in _summary(results)["rows"] if r["comparison"]]
    holm = [r["comparison"]["p_holm"] for r in _summary(results)["rows"] if r["comparison"]]
    defined = sorted((p, h) for p, h in zip(ps, holm) if p is not None)
    m = len(defined)
    running = 0.0
    for k, (p, h) in enumerate(defined):
        running = max(running, min(1.0, (m - k) * p))
        assert h == pytest.approx(running)


def test_missing_and_skipped_cells_listed(results):
    md = Path(write_report(results, n_bootstrap=50)).read_text()
    assert "ds/runs/resnet18__linear/seed-1/fold-2" in md
    assert "trains a head on random features" in md


def test_figures_csv_and_json(results):
    md = Path(write_report(results, n_bootstrap=50)).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) >= 3
    for link in links:
        assert not os.path.isabs(link) and (results / link).stat().st_size > 1000
    with open(paths.summary_file(results, "csv")) as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["dataset", "backbone", "strategy", "seed", "fold", "split", "metric", "value"]
        assert sum(1 for _ in reader) > 20
    assert _summary(results)["primary"] == "balanced_accuracy"


def _structure(md: str) -> str:
    keep = [line for line in md.splitlines() if line.startswith("#") or line.startswith("|---") or (line.startswith("| ") and "configuration" in line)]
    return "\n".join(re.sub(r"\d", "9", line) for line in keep) + "\n"


def test_markdown_structure_matches_golden(results):
    structure = _structure(Path(write_report(results, n_bootstrap=50)).read_text())
    if os.environ.get("MEDCLI_UPDATE_GOLDEN") or not GOLDEN.exists():
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(structure)
    assert structure == GOLDEN.read_text()


def test_cli(results, tmp_path):
    res = CliRunner().invoke(app, ["report", str(results), "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "no run folders" in res.output
