"""medcli eval: what a reviewer checks: same preprocessing, nothing fitted on test, intervals, figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.data import load_dataset
from medcli.data.store import StoreSettings, materialize
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.evaluation.calibration import softmax
from medcli.evaluation.metrics import youden_threshold
from medcli.evaluation import runner
from medcli.evaluation.runner import evaluate_run, predict_logits, read_predictions
from medcli.models import load_model
from medcli.splits import split_data
from medcli.training import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = make_synthetic(root / "d", layout="presplit", n_classes=2, per_class=30, size=32, noise=0.2)
    split_data(data, root / "splits.json", folds=2)
    cfg = TrainConfig(data=str(data), splits=str(root / "splits.json"), backbone="customcnn", strategy="scratch", epochs=3, batch_size=16,
                      img_size=32, channels=1, results=str(root / "results"), work=str(root / "work"), cache_dir=str(root / "cache"), progress=False)
    return Path(train(cfg)["out"])


def test_eval_writes_predictions_metrics_with_cis_and_figures(run):
    results = evaluate_run(run, split="all", n_bootstrap=200)
    splits = json.loads(Path(json.loads((run / "config.json").read_text())["splits_file"]).read_text())
    test = pd.read_csv(paths.predictions_file(run, "test"), dtype={"id": str})
    assert sorted(test["id"]) == sorted(splits["test"])
    assert np.allclose(test[["prob_disk", "prob_square"]].sum(axis=1), 1, atol=1e-6)
    doc = json.loads(Path(paths.metrics_file(run, "test")).read_text())
    assert doc["format"] == "medcli.metrics/1" and doc["n"] == len(test)
    assert doc["ci"]["balanced_accuracy"]["low"] is not None and doc["ci"]["balanced_accuracy"]["n_valid"] > 0
    for name, ci in doc["ci"].items():
        if ci["low"] is not None:
            assert ci["low"] - 1e-9 <= ci["estimate"] <= ci["high"] + 1e-9, name
    assert results["test"]["calibration"]["fitted_on"] == "val"
    for name in ("confusion_test", "roc_test", "pr_test", "reliability_test", "learning_curves", "confusion_val"):
        assert (Path(paths.figures_dir(run)) / f"{name}.png").stat().st_size > 1000
    calibrated = pd.read_csv(paths.predictions_file(run, "test.calibrated"), dtype={"id": str})
    assert list(calibrated.columns) == list(test.columns) and list(calibrated["id"]) == list(test["id"])


def test_recomputed_val_logits_equal_the_training_ones(run):
    doc = json.loads((run / "config.json").read_text())
    frame, _, logits = read_predictions(paths.predictions_file(run, "val"), doc["classes"])
    dataset = load_dataset(doc["config"]["data"])
    labelled = set(json.loads(Path(doc["splits_file"]).read_text())["labels"])
    dataset.samples = [s for s in dataset.samples if s.id in labelled]
    pre = doc["preprocess"]
    store = materialize(dataset, StoreSettings(pre["img_size"], pre["channels"], pre["resize"], pre["interpolation"]), doc["config"]["cache_dir"])
    model, _ = load_model(paths.model_file(run))
    again = predict_logits(model, store.images, store.rows(list(frame["id"])), pre["mean"], pre["std"])
    assert np.allclose(again, logits, atol=1e-5)


def test_temperature_and_threshold_never_see_test_labels(run, monkeypatch):
    first = evaluate_run(run, split="test", n_bootstrap=0, figures=False)["test"]
    doc = json.loads((run / "config.json").read_text())
    _, y_val, val_logits = read_predictions(paths.predictions_file(run, "val"), doc["classes"])
    assert first["threshold"]["value"] == pytest.approx(youden_threshold(y_val, softmax(val_logits)[:, 1]))
    original = runner._run_splits

    def poisoned(*args):
        splits = json.loads(json.dumps(original(*args)))
        for i in splits["test"]:  # flip every test label
            splits["labels"][i] = "disk" if splits["labels"][i] == "square" else "square"
        return splits

    monkeypatch.setattr(runner, "_run_splits", poisoned)
    second = evaluate_run(run, split="test", n_bootstrap=0, figures=False)["test"]
    assert second["calibration"]["temperature"] == first["calibration"]["temperature"]
    assert second["threshold"]["value"] == first["threshold"]["value"]
    assert second["metrics"]["accuracy"] == pytest.approx(1 - first["metrics"]["accuracy"])


def test_a_splits_file_changed_after_training_is_refused(run, tmp_path):
    splits_path = Path(json.loads((run / "config.json").read_text())["splits_file"])
    backup = tmp_path / "splits.json"
    shutil.copy(splits_path, backup)
    changed = json.loads(splits_path.read_text())
    changed["folds"][0]["train"], changed["folds"][1]["train"] = changed["folds"][1]["train"], changed["folds"][0]["train"]
    changed["folds"][0]["val"], changed["folds"][1]["val"] = changed["folds"][1]["val"], changed["folds"][0]["val"]
    splits_path.write_text(json.dumps(changed))
    try:
        with pytest.raises(MedcliError, match="splits changed since this run was trained"):
            evaluate_run(run, split="test", n_bootstrap=0, figures=False)
    finally:
        shutil.copy(backup, splits_path)


def test_tta_of_a_saturated_softmax_stays_finite():
    class Confident(torch.nn.Module):
        config = {"num_classes": 2}

        def forward(self, x):
            return torch.stack([x.mean(dim=(1, 2, 3)) * 0 + 200.0, x.mean(dim=(1, 2, 3)) * 0], 1)

    logits = predict_logits(Confident(), np.zeros((3, 32, 32, 1), np.uint8), np.arange(3), [0.5], [0.2], tta=True)
    assert np.isfinite(logits).all() and np.allclose(softmax(logits)[:, 0], 1.0)


def test_tta_changes_probabilities_not_the_format(run):
    evaluate_run(run, split="test", n_bootstrap=0, figures=False)
    plain = pd.read_csv(paths.predictions_file(run, "test"))
    results = evaluate_run(run, split="test", tta=True, n_bootstrap=0, figures=False)
    tta = pd.read_csv(paths.predictions_file(run, "test"))
    assert list(tta.columns) == list(plain.columns) and results["test"]["tta"] is True
    assert not np.allclose(tta["prob_disk"], plain["prob_disk"])


def test_external_validation_maps_classes_and_keeps_results_apart(run, tmp_path):
    other = make_synthetic(tmp_path / "other", n_classes=2, per_class=8, size=32, seed=5)
    (other / "disk").rename(other / "disk_external.site")
    own_test = Path(paths.metrics_file(run, "test"))
    before = own_test.read_bytes() if own_test.exists() else None
    results = evaluate_run(run, data=other, name="site-b", n_bootstrap=50)
    doc = results["site-b"]
    assert doc["external"]["class_mapping"]["disk_external.site"] == "disk" and doc["n"] == 16
    written = json.loads(Path(paths.external_metrics_file(run, "site-b")).read_text())
    assert written["n"] == 16 and written["external"]["class_mapping"]["disk_external.site"] == "disk"
    external = pd.read_csv(paths.external_predictions_file(run, "site-b"), dtype={"id": str})
    assert len(external) == 16 and set(external["label"]) == {"disk", "square"}
    assert (own_test.read_bytes() if own_test.exists() else None) == before  # the run's own test results are kept apart
    (other / "square").rename(other / "box")
    aliased = evaluate_run(run, data=other, name="site-c", aliases={"box": "square"}, n_bootstrap=0, figures=False)["site-c"]
    assert aliased["external"]["class_mapping"] == {"box": "square", "disk_external.site": "disk"}
    with pytest.raises(MedcliError, match="plain folder name"):
        evaluate_run(run, data=other, name="../escape", aliases={"box": "square"}, n_bootstrap=0, figures=False)
    bad = make_synthetic(tmp_path / "bad", n_classes=3, per_class=4, size=32)
    with pytest.raises(MedcliError, match="triangle"):
        evaluate_run(run, data=bad, n_bootstrap=0)


def test_cli(run, tmp_path):
    res = CliRunner().invoke(app, ["eval", str(run), "--split", "val", "--bootstrap", "50", "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "balanced" in res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert res.exit_code == 1 and "not a run folder" in res.output
