"""``medcli report`` on synthetic run folders with known values.

The fixture writes what ``medcli train`` / ``medcli eval`` / ``medcli split`` / ``medcli data inspect`` and the
workflow would: 2 backbones × 2 strategies × 2 seeds × 3 folds, 3 classes, with one run missing (a cell of
experiment.json without a folder), one run not evaluated on the test set, one run without metrics/val.json
(recomputed from predictions/val.csv), one skipped cell, and a ``_pretrain`` run that must be ignored.

Set ``MEDCLI_UPDATE_GOLDEN=1`` to rewrite ``tests/golden/summary_structure.md``.
"""

from __future__ import annotations

import csv
import json
import os

from medcli.errors import MedcliError
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.evaluation.bootstrap import bootstrap_ci, headline_metric_fns
from medcli.evaluation.metrics import compute_metrics
from medcli.report import write_report
from medcli.report.build import CSV_COLUMNS, build_summary
from medcli.report.markdown import render_markdown
from medcli.report.summary import seed_averaged_bootstrap
from medcli.splits import splits_fingerprint

CLASSES = ["benign", "malignant", "normal"]
# configuration -> images (of 10 per class) classified correctly on a validation fold, before per-run jitter
CONFIGS = {("customcnn", "scratch"): 5, ("customcnn", "full"): 7, ("resnet18", "scratch"): 6, ("resnet18", "full"): 8}
SEEDS, FOLDS, N_TRAIN, N_VAL = (0, 1), (0, 1, 2), 60, 30
MISSING = ("resnet18", "full", 1, 2)  # a cell of the experiment that never produced a folder
NOT_EVALUATED = ("customcnn", "full", 0, 1)  # trained, never passed through `medcli eval`
NO_VAL_METRICS = ("resnet18", "scratch", 1, 0)  # predictions/val.csv only
LONGER = ("customcnn", "scratch", 1, 1)  # trained for 5 epochs where its configuration's other runs had 4
SKIPPED = {"dataset": "ds", "backbone": "customcnn", "strategy": "linear", "reason": "a linear probe needs pretrained weights"}
GOLDEN = Path(__file__).parent / "golden" / "summary_structure.md"
TEST_Y = np.repeat(np.arange(3), 10)


def _write_predictions(path: Path, ids: list[str], y: np.ndarray, probs: np.ndarray, fold: int, seed: int, split: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "label", "pred", *(f"prob_{c}" for c in CLASSES), *(f"logit_{c}" for c in CLASSES), "fold", "seed", "split"])
        for i, label, p in zip(ids, y, probs):
            w.writerow([i, f"/data/{i}.png", CLASSES[label], CLASSES[int(np.argmax(p))], *(repr(float(v)) for v in p),
                        *(repr(float(v)) for v in np.log(p)), fold, seed, split])


def _val_probs(correct: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """10 images per class; the first ``correct[k]`` of class k are predicted right, the others as class k+1."""
    y, rows = [], []
    for k in range(3):
        for j in range(10):
            p = np.full(3, 0.1)
            right = j < correct[k]
            p[k if right else (k + 1) % 3] = 0.8 - 0.02 * j
            p[(k + 2) % 3] = 1.0 - p.max() - 0.1
            y.append(k)
            rows.append(p)
    return np.array(y), np.array(rows)


def _metrics_doc(run: tuple, split: str, y: np.ndarray, probs: np.ndarray) -> dict:
    backbone, strategy, seed, fold = run
    return {"format": "medcli.metrics/1", "run": {"dataset_name": "ds", "backbone": backbone, "strategy": strategy, "seed": seed, "fold": fold},
            "split": split, "n": len(y), "classes": CLASSES, "tta": False, "metrics": compute_metrics(y, probs, CLASSES)}


def _splits_doc() -> dict:
    dev = [f"dev-{i:03d}" for i in range(90)]
    test = [f"test-{i:03d}" for i in range(30)]
    labels = {i: CLASSES[k % 3] for k, i in enumerate(dev)} | {i: CLASSES[TEST_Y[k]] for k, i in enumerate(test)}
    folds = [{"fold": f, "train": [i for k, i in enumerate(dev) if k // 30 != f], "val": dev[30 * f: 30 * f + 30]} for f in FOLDS]
    return {"format": "medcli.splits/1", "settings": {"folds": 3, "seed": 0, "near_duplicate_threshold": 40, "drop_test_duplicates": False},
            "classes": CLASSES, "class_mapping": {"benign": "benign", "Malignant_cases": "malignant", "normal": "normal"},
            "labels": labels, "groups": {"dev-000": "g1", "dev-003": "g1", "dev-010": "g2", "dev-013": "g2"},
            "test_source": "dataset", "test": test, "folds": folds, "excluded": [{"id": "bad.png", "reason": "unreadable"}],
            "leakage": {"test_duplicating_dev": ["test-004"], "test_duplicates_dropped": False, "val_duplicating_train": [],
                        "n_label_conflicts": 1, "largest_group": 2}}


def _write_run(res: Path, dataset: str, run: tuple, cfg_index: int, truth: dict, split_fp: str) -> None:
    backbone, strategy, seed, fold = run
    folder = Path(paths.run_dir(res, dataset, backbone, strategy, seed, fold))
    rng = np.random.default_rng(1000 * cfg_index + 10 * seed + fold)
    correct = [int(np.clip(CONFIGS[(backbone, strategy)] + rng.integers(-2, 3), 0, 10)) for _ in range(3)]
    y, probs = _val_probs(correct)
    _write_predictions(folder / "predictions" / "val.csv", [f"dev-{30 * fold + i:03d}" for i in range(30)], y, probs, fold, seed, "val")
    val = _metrics_doc(run, "val", y, probs)
    (folder / "metrics").mkdir()
    if run != NO_VAL_METRICS:
        Path(paths.metrics_file(folder, "val")).write_text(json.dumps(val))
    logits = np.eye(3)[TEST_Y] * (0.5 + 0.3 * cfg_index) + rng.normal(0, 1.0, (30, 3))
    test_probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if run != NOT_EVALUATED:
        _write_predictions(folder / "predictions" / "test.csv", [f"test-{i:03d}" for i in range(30)], TEST_Y, test_probs, fold, seed, "test")
        Path(paths.metrics_file(folder, "test")).write_text(json.dumps(_metrics_doc(run, "test", TEST_Y, test_probs)))
    (folder / "config.json").write_text(json.dumps({
        "format": "medcli.run/1", "classes": CLASSES,
        "config": {"backbone": backbone, "strategy": strategy, "seed": seed, "fold": fold, "epochs": 5 if run == LONGER else 4,
                   "img_size": 64, "batch_size": 32, "augment": strategy != "full", "recipe": "default"},
        "summary": {"best_epoch": 3, "n_train": N_TRAIN, "n_val": N_VAL, "train_seconds": 10.0 + fold + 2 * seed, "device": "cpu",
                    "precision": "fp32", "num_processes": 1},
        "data_fingerprint": "sha256:data", "splits_fingerprint": split_fp,
        "versions": {"medcli": "0.1.0", "torch": "2.3.0"}, "git_revision": "0123abc", "hardware": {"cpu": "Test CPU", "gpus": []}}))
    history = ["epoch,phase,train_loss,train_accuracy,val_loss,val_accuracy,val_balanced_accuracy,val_macro_f1,lr,seconds"]
    history += [f"{e},all,{1.2 - 0.1 * e},{0.4 + 0.05 * e},{1.1 - 0.08 * e},{0.4 + 0.05 * e},{0.35 + 0.06 * e},{0.3 + 0.06 * e},0.001,1.0"
                for e in range(1, 5)]
    (folder / "history.csv").write_text("\n".join(history) + "\n")
    truth[run] = {"val": {k: val["metrics"][k] for k in ("balanced_accuracy", "macro_f1", "roc_auc", "ece")},
                  "ba_exact": sum(correct) / 30, "test_probs": None if run == NOT_EVALUATED else test_probs}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, dict]:
    res = tmp_path_factory.mktemp("report") / "results"
    splits = _splits_doc()
    truth: dict = {}
    for index, (backbone, strategy) in enumerate(CONFIGS):
        for seed in SEEDS:
            for fold in FOLDS:
                if (backbone, strategy, seed, fold) != MISSING:
                    _write_run(res, "ds", (backbone, strategy, seed, fold), index, truth, splits_fingerprint(splits))
    _write_run(res, "_pretrain", ("resnet18", "scratch", 0, 0), 9, {}, "sha256:other")
    Path(paths.splits_file(res, "ds")).write_text(json.dumps(splits))
    Path(paths.inspect_file(res, "ds")).write_text(json.dumps({
        "format": "medcli.inspect/1", "classes": CLASSES, "class_mapping": splits["class_mapping"],
        "counts": {"train": {"benign": 25, "malignant": 25, "normal": 25}, "val": {"benign": 5, "malignant": 5, "normal": 5},
                   "test": {"benign": 10, "malignant": 10, "normal": 10}},
        "bad_files": [{"id": "bad.png", "path": "/data/bad.png", "error": "truncated"}],
        "duplicates": {"near_threshold": 40, "n_exact_groups": 1, "n_near_groups": 1, "n_images_in_groups": 4,
                       "n_cross_split_groups": 1, "n_label_conflicts": 1, "groups": []}}))
    cells = [{"dataset": "ds", "backbone": b, "strategy": s, "seed": seed, "fold": f, "weights": "none"}
             for (b, s) in CONFIGS for seed in SEEDS for f in FOLDS]
    Path(paths.experiment_file(res)).write_text(json.dumps({
        "format": "medcli.experiment/1", "medcli_version": "0.1.0", "config_hash": "sha256:cafe",
        "config": {"report": {"primary_metric": "balanced_accuracy", "reference": "customcnn__scratch"}},
        "cells": cells, "skipped": [SKIPPED], "pretraining": {"epochs": 15, "synth": {"classes": 8, "signal": "shape"}}}))
    cam_dir = Path(paths.gradcam_dir(paths.run_dir(res, "ds", "resnet18", "full", 0, 0), "test"))
    cam_dir.mkdir(parents=True)
    (cam_dir / "gallery_benign.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    Path(paths.gradcam_index_file(cam_dir.parent.parent, "test")).write_text(json.dumps({
        "format": "medcli.gradcam/1", "method": "gradcam++", "target": "pred", "normalization": "per-image min-max",
        "galleries": {"benign": "gallery_benign.png", "malignant": "gallery_malignant.png"},  # second one not written
        "faithfulness": {"fraction": 0.2, "n": 4, "mean_score": 0.25, "mean_drop_keep_top20": 0.05, "mean_drop_remove_top20": 0.3}}))
    # External results: one with overlap, one written before the overlap check (no `overlap` key).
    external = {"format": "medcli.metrics/1", "split": "external", "n": 40, "metrics": {"balanced_accuracy": 0.75},
                "ci": {"balanced_accuracy": {"estimate": 0.75, "low": 0.6, "high": 0.875}}, "external": {"data": "/data/site-b"},
                "overlap": {"exact_dev": 8, "near_dev": 4, "exact_test": 1, "near_test": 0, "n_external": 40, "n_dev": 60,
                            "n_test": 30, "threshold_bits": 40, "ids": {}}}
    for run, name, doc in ((("resnet18", "full", 0, 0), "site-b", external),
                           (("customcnn", "scratch", 0, 0), "site-old", {k: v for k, v in external.items() if k != "overlap"})):
        target = Path(paths.external_metrics_file(paths.run_dir(res, "ds", *run), name))
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(doc))
    # A newer index with empty maps (medcli gradcam flags constant maps and leaves them out of the means).
    cam_val = Path(paths.gradcam_dir(paths.run_dir(res, "ds", "resnet18", "full", 0, 0), "val"))
    cam_val.mkdir(parents=True)
    (cam_val / "gallery_benign.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    Path(paths.gradcam_index_file(cam_val.parent.parent, "val")).write_text(json.dumps({
        "format": "medcli.gradcam/1", "method": "scorecam", "target": "pred", "normalization": "per-image min-max",
        "galleries": {"benign": "gallery_benign.png"},
        "faithfulness": {"fraction": 0.2, "n": 3, "n_empty": 2, "mean_score": 0.125, "mean_drop_keep_top20": 0.0,
                         "mean_drop_remove_top20": 0.125}}))
    return res, truth


@pytest.fixture(scope="module")
def report(experiment) -> dict:
    res, _ = experiment
    md_path = write_report(res)
    return {"md": md_path.read_text(), "md_path": md_path,
            "json": json.loads(Path(paths.summary_file(res, "json")).read_text()),
            "ds": json.loads(Path(paths.summary_file(res, "json")).read_text())["datasets"]["ds"]}


def _runs(config: tuple, truth: dict) -> list[tuple]:
    return [r for r in truth if r[:2] == config]


def _row(report, config: str) -> dict:
    return next(r for r in report["ds"]["rows"] if r["config"] == config)


def test_cv_columns_are_exact(experiment, report):
    _, truth = experiment
    for config in CONFIGS:
        row = _row(report, "__".join(config))
        runs = _runs(config, truth)
        assert row["cv"]["balanced_accuracy"]["n"] == len(runs) == (5 if config == ("resnet18", "full") else 6)
        exact = [truth[r]["ba_exact"] for r in runs]
        assert row["cv"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(exact), abs=1e-12)
        assert row["cv"]["balanced_accuracy"]["sd"] == pytest.approx(np.std(exact, ddof=1), abs=1e-12)
        for metric in ("macro_f1", "roc_auc", "ece"):
            values = [truth[r]["val"][metric] for r in runs]
            assert row["cv"][metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert row["cv"][metric]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert _row(report, "resnet18__scratch")["val_recomputed"] == ["ds/runs/resnet18__scratch/seed-1/fold-0"]


def test_rows_sorted_by_primary_and_best_in_bold(experiment, report):
    _, truth = experiment
    means = {"__".join(c): np.mean([truth[r]["ba_exact"] for r in _runs(c, truth)]) for c in CONFIGS}
    order = [r["config"] for r in report["ds"]["rows"]]
    assert order == sorted(means, key=lambda c: -means[c])
    lines = {c: next(line for line in report["md"].splitlines() if line.startswith(f"| `{c}` |")) for c in means}
    best = order[0]
    assert lines[best].split(" | ")[1] == f"**{_fmt(report, best, 'balanced_accuracy')}**"
    assert all(not lines[c].split(" | ")[1].startswith("**") for c in order[1:])
    eces = {c: _row(report, c)["cv"]["ece"]["mean"] for c in order}
    lowest = min(eces, key=eces.get)
    assert lines[lowest].split(" | ")[4].startswith("**")  # ECE: lower is better
    assert f"**Best by CV balanced accuracy: `{best}`**" in report["md"]


def _fmt(report, config, metric) -> str:
    s = _row(report, config)["cv"][metric]
    return f"{s['mean']:.3f} ± {s['sd']:.3f} ({s['n']})"


def test_test_column_is_the_seed_averaged_fold_ensemble(experiment, report):
    _, truth = experiment
    for config in CONFIGS:
        per_seed = []
        for seed in SEEDS:
            probs = [truth[r]["test_probs"] for r in _runs(config, truth) if r[2] == seed and truth[r]["test_probs"] is not None]
            pred = np.mean(probs, axis=0).argmax(axis=1)
            per_seed.append(np.mean([np.mean(pred[TEST_Y == k] == k) for k in range(3)]))
        test = _row(report, "__".join(config))["test"]
        assert test["estimate"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert [s["value"] for s in test["seeds"]] == pytest.approx(per_seed, abs=1e-12)
        assert test["n_images"] == 30 and test["n_resamples"] == 1000
        assert test["low"] <= test["estimate"] <= test["high"]
    partial = _row(report, "customcnn__full")["test"]
    assert partial["n_models"] == 5 and partial["incomplete_seeds"] == [0]
    assert _row(report, "resnet18__full")["test"]["incomplete_seeds"] == [1]


def test_seed_averaged_bootstrap_reduces_to_bootstrap_ci_for_one_seed():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    p = rng.dirichlet(np.ones(3), size=60) * 0.5 + np.eye(3)[y] * 0.5
    fn = headline_metric_fns(CLASSES)["balanced_accuracy"]
    ours = seed_averaged_bootstrap(y, [p], fn, n_resamples=300, seed=5)
    ref = bootstrap_ci(y, p, {"b": fn}, n_resamples=300, seed=5)["b"]
    assert (ours["low"], ours["high"], ours["n_valid"]) == (ref["low"], ref["high"], ref["n_valid"])


def test_corrected_ttest_and_holm_match_a_hand_computation(experiment, report):
    _, truth = experiment
    ref = {(r[2], r[3]): truth[r]["ba_exact"] for r in _runs(("customcnn", "scratch"), truth)}
    raw = {}
    for config in [c for c in CONFIGS if c != ("customcnn", "scratch")]:
        scores = {(r[2], r[3]): truth[r]["ba_exact"] for r in _runs(config, truth)}
        keys = sorted(scores.keys() & ref.keys())
        d = np.array([scores[k] - ref[k] for k in keys])
        n = len(d)
        se = np.sqrt(np.var(d, ddof=1) * (1 / n + N_VAL / N_TRAIN))
        t = d.mean() / se
        comp = _row(report, "__".join(config))["comparison"]
        assert comp["n"] == n == (5 if config == ("resnet18", "full") else 6)
        assert comp["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert comp["t"] == pytest.approx(t) and comp["df"] == n - 1
        assert comp["p"] == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
        half = stats.t.ppf(0.975, n - 1) * se
        assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
        raw["__".join(config)] = comp["p"]
    ordered = sorted(raw, key=raw.get)
    running = 0.0
    for rank, config in enumerate(ordered):
        running = max(running, min(1.0, (len(raw) - rank) * raw[config]))
        assert _row(report, config)["comparison"]["p_holm"] == pytest.approx(running)
    assert _row(report, "customcnn__scratch")["comparison"] is None
    assert "Holm-adjusted over the 3 tests" in report["md"]


def test_missing_skipped_and_not_evaluated_runs_are_listed(report):
    md = report["md"]
    assert "| ds | `resnet18__full` | 1 | 2 | no run folder |" in md
    assert f"| ds | `customcnn__linear` | {SKIPPED['reason']} |" in md
    assert "`ds/runs/customcnn__full/seed-0/fold-1`" in md.split("### Not evaluated")[1]
    for config in CONFIGS:
        assert f"| `{'__'.join(config)}` |" in md
    assert "_pretrain" not in md and report["json"]["provenance"]["n_runs"] == 23
    assert "pretrained on a synthetic source task" in md


def test_data_section_shows_how_leakage_was_controlled(report):
    md = report["md"]
    assert "| Class | dataset train | dataset val | dataset test | development (CV folds) | test (held out) |" in md
    assert "| malignant | 25 | 5 | 10 | 30 | 10 |" in md
    assert "`Malignant_cases` → `malignant`" in md
    assert "1 exact and 1 near-duplicate groups (4 images)" in md
    assert "(4 images in 2 groups; the largest has 2 images) are kept within one cross-validation fold" in md
    assert "test images duplicating development images: 1, kept in the test set" in md
    assert "Excluded files: 1 (unreadable: 1)" in md
    assert "share one split assignment" in md  # the runs' splits fingerprint matches splits.json


def test_reference_without_runs_falls_back_with_a_note(experiment):
    res, _ = experiment
    summary, _ = build_summary(res, reference="vit_b_16__full", n_bootstrap=20, figures=False)
    ds = summary["datasets"]["ds"]
    assert ds["reference"] == "resnet18__scratch"  # the first scratch row of the sorted table
    assert "`vit_b_16__full` has no runs" in ds["reference_note"]


def test_small_experiment_without_experiment_json(tmp_path):
    res = tmp_path / "results"
    for index, config in enumerate([("customcnn", "scratch"), ("resnet18", "full")]):
        for fold in (0, 1):
            _write_run(res, "ds", (*config, 0, fold), index, {}, "sha256:splits")
    broken = Path(paths.run_dir(res, "ds", "resnet18", "full", 0, 2))
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"classes": CLASSES}))
    summary, _ = build_summary(res, n_bootstrap=20, figures=False)
    comparison = next(r for r in summary["datasets"]["ds"]["rows"] if r["config"] == "resnet18__full")["comparison"]
    assert comparison["n"] == 2 and comparison["p"] is None and comparison["note"].startswith("n too small for a test")
    assert summary["missing"] == [{"dataset": "ds", "backbone": "resnet18", "strategy": "full", "seed": 0, "fold": 2,
                                   "run": "ds/runs/resnet18__full/seed-0/fold-2",
                                   "reason": "neither metrics/val.json nor predictions/val.csv"}]
    md = render_markdown(summary)
    assert "n too small for a test" in md and "No `experiment.json`" in md and "class counts and leakage checks are not available" in md


def test_figures_exist_and_every_link_is_relative(experiment, report):
    res, _ = experiment
    kinds = {f["kind"] for f in report["ds"]["figures"]}
    assert kinds == {"strategies", "learning_curves", "confusion_best"}
    for name in ("ds_strategies.png", "ds_learning_curves.png", "ds_confusion_best.png"):
        assert (Path(paths.summary_figures_dir(res)) / name).stat().st_size > 5000
    links = re.findall(r"\]\(([^)]+)\)", report["md"])
    assert len([x for x in links if x.startswith("figures/")]) == 3
    assert any(x.endswith("gradcam/test/gallery_benign.png") for x in links)
    assert not any("gallery_malignant" in x for x in links)  # listed in index.json but absent: no dead link
    for link in links:
        assert not os.path.isabs(link) and (report["md_path"].parent / link).is_file(), link


def test_setting_differences_within_a_configuration_are_flagged_between_configurations_noted(report):
    checks = report["ds"]["checks"]
    (within,) = [c for c in checks if c["ok"] is False and "runs of one configuration" in c["text"]]
    assert "epochs in `customcnn__scratch` (4, 5)" in within["text"]
    (between,) = [c for c in checks if c["ok"] is None]
    assert "augment: False for `customcnn__full`, `resnet18__full`; True for `customcnn__scratch`, `resnet18__scratch`" in between["text"]
    assert "epochs" not in between["text"]
    assert "- **Check**: runs of one configuration" in report["md"] and "- Note: configurations differ" in report["md"]
    assert "recipe" not in within["text"] + between["text"]  # one recipe everywhere: nothing to flag
    assert "- Training recipe (docs/recipes.md;" in report["md"] and "`resolved`): `default`." in report["md"]


def test_gradcam_section_compares_faithfulness(report):
    entries = {e["split"]: e for e in report["ds"]["gradcam"]}
    assert set(entries) == {"test", "val"}
    entry = entries["test"]  # an index.json from before empty maps were detected: read, count unknown
    assert (entry["config"], entry["seed"], entry["fold"], entry["method"], entry["n"]) == ("resnet18__full", 0, 0, "gradcam++", 4)
    assert entry["score"] == pytest.approx(0.25) and entry["n_empty"] is None
    section = report["md"].split("### Grad-CAM", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `resnet18__full`")]
    (row,) = [r for r in rows if "| test |" in r]
    assert "+0.250" in row and "+0.050" in row and "+0.300" in row and "[benign](" in row and "| not checked |" in row
    assert "normalised per image" in section


def test_gradcam_section_shows_empty_maps_beside_the_mean(report):
    entry = next(e for e in report["ds"]["gradcam"] if e["split"] == "val")
    assert (entry["method"], entry["n"], entry["n_empty"], entry["score"]) == ("scorecam", 3, 2, 0.125)
    section = report["md"].split("### Grad-CAM", 1)[1].split("\n### ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| Configuration"))
    (row,) = [line for line in section.splitlines() if line.startswith("| `resnet18__full`") and "| val |" in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert cells[columns.index("Faithfulness score")] == "+0.125" and cells[columns.index("Empty maps (left out)")] == "2"
    assert cells[columns.index("Images")] == "3" and "left out of the mean" in section


def test_external_validation_section_shows_overlap(report):
    entries = {e["name"]: e for e in report["ds"]["external"]}
    assert set(entries) == {"site-b", "site-old"}
    site = entries["site-b"]
    assert (site["config"], site["n"], site["estimate"], site["low"], site["high"]) == ("resnet18__full", 40, 0.75, 0.6, 0.875)
    assert site["overlap"]["exact_dev"] == 8 and entries["site-old"]["overlap"] is None
    section = report["md"].split("### External validation", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in section.splitlines() if "`site-b`" in line and line.startswith("|"))
    assert "0.750 [0.600, 0.875]" in row and "| 40 |" in row
    assert "12 of 40 duplicate development images** (8 exact, 4 near); 1 duplicate test images (1 exact, 0 near)" in row
    old = next(line for line in section.splitlines() if "`site-old`" in line and line.startswith("|"))
    assert "not checked" in old
    assert "- **Check**: `resnet18__full` seed 0 fold 0 on `site-b`: 12 of 40 external images duplicate development images" in section
    assert "within 40 of 256 bits" in section


def test_summary_csv_is_tidy(experiment, report):
    res, truth = experiment
    with open(paths.summary_file(res, "csv"), newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert {r["split"] for r in body} == {"val", "test"}
    assert len({(r["backbone"], r["strategy"], r["seed"], r["fold"], r["split"], r["metric"]) for r in body}) == len(body)
    run = ("resnet18", "scratch", 1, 0)  # recomputed from predictions/val.csv
    value = next(r["value"] for r in body if (r["backbone"], r["strategy"], int(r["seed"]), int(r["fold"])) == run
                 and r["split"] == "val" and r["metric"] == "balanced_accuracy")
    assert float(value) == pytest.approx(truth[run]["ba_exact"], abs=1e-12)
    not_evaluated = ("customcnn", "full", 0, 1)
    assert not any(r["split"] == "test" and (r["backbone"], r["strategy"], int(r["seed"]), int(r["fold"])) == not_evaluated for r in body)


def test_summary_json_round_trips_to_the_markdown(report):
    assert render_markdown(report["json"]) == report["md"]
    assert json.loads(json.dumps(report["json"])) == report["json"]
    assert report["json"]["format"] == "medcli.summary/1" and report["json"]["primary"] == "balanced_accuracy"


def _structure(md: str) -> str:
    lines = md.splitlines()
    keep = [line for k, line in enumerate(lines)
            if line.startswith("#") or line.startswith("|---") or (k + 1 < len(lines) and lines[k + 1].startswith("|---"))]
    return "\n".join(re.sub(r"\d", "9", line) for line in keep) + "\n"


def test_markdown_structure_matches_golden(report):
    structure = _structure(report["md"])
    if os.environ.get("MEDCLI_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(structure)
    assert GOLDEN.exists(), f"{GOLDEN} is missing; run the tests with MEDCLI_UPDATE_GOLDEN=1 to create it"
    assert structure == GOLDEN.read_text()


def test_cli(experiment, tmp_path):
    res, _ = experiment
    out = tmp_path / "elsewhere" / "summary.md"
    result = CliRunner().invoke(app, ["report", str(res), "--out", str(out), "--bootstrap", "50", "--primary", "macro_f1"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "Primary metric: **macro-F1**" in out.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text()):
        assert (out.parent / link).is_file()
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "absent"):
        result = CliRunner().invoke(app, ["report", str(folder)])
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error:")
    result = CliRunner().invoke(app, ["report", str(res), "--primary", "speed"])
    assert result.exit_code == 1 and "unknown primary metric" in result.output


def test_the_summary_is_also_one_self_contained_page(report):
    page = Path(paths.summary_file(report["md_path"].parent, "html")).read_text()
    assert "<table>" in page and "data:image/png;base64," in page and 'src="figures/' not in page


def test_an_html_out_is_refused_rather_than_overwritten_by_the_page(experiment, tmp_path):
    res, _ = experiment
    with pytest.raises(MedcliError, match=r"--out .*report.html: give the Markdown file \(e.g. .*report.md\)"):
        write_report(res, out=tmp_path / "report.html")
