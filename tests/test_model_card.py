"""The model card reads the run's files as they are: class counts from the splits file, duplicates from
``inspect.json``, metrics with intervals, the cross-validated column from the other folds, external validation
as the limitation it answers, and says what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medcli import paths, runs
from medcli.evaluation.bootstrap import bootstrap_ci, headline_metric_fns
from medcli.evaluation.metrics import compute_metrics
from medcli.model_card import NO_EXTERNAL, render_model_card

CLASSES = ["benign", "malignant"]


def _metrics_doc(seed: int, n: int, split: str, threshold: float | None = 0.4, external: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    p1 = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.25, n), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    doc = {"format": runs.METRICS_FORMAT, "split": split, "n": n, "classes": CLASSES, "tta": False,
           "metrics": compute_metrics(y, probs, CLASSES),
           "threshold": {"value": threshold, "source": "val (Youden's J)", "positive_class": "malignant",
                         "metrics": compute_metrics(y, probs, CLASSES, threshold=threshold)},
           "calibration": {"temperature": 1.25, "fitted_on": "val", "nll_before": 0.61, "nll_after": 0.58, "ece_before": 0.12,
                           "ece_after": 0.05},
           "ci": bootstrap_ci(y, probs, headline_metric_fns(CLASSES), n_resamples=200, seed=0), "external": external}
    return runs.json_safe(doc)


def _run(results: Path, fold: int, *, splits: Path, test: bool = True) -> Path:
    run = Path(paths.run_dir(results, "lesions", "resnet18", "full", 0, fold))
    run.mkdir(parents=True)
    doc = {"format": runs.RUN_FORMAT, "classes": CLASSES,
           "config": {"dataset_name": "lesions", "backbone": "resnet18", "strategy": "full", "seed": 0, "fold": fold,
                      "data": "/data/lesions", "layout": "imagefolder", "head": "linear", "recipe": "default", "optimizer": "adamw",
                      "lr": 1e-3, "batch_size": 32, "schedule": "cosine", "epochs": 30, "augment": True, "class_weights": True,
                      "label_smoothing": 0.0, "weights": "imagenet", "window": None, "frame": None},
           "backbone": {"name": "resnet18", "family": "torchvision", "weights_source": "torchvision IMAGENET1K_V1"},
           "preprocess": {"img_size": 224, "channels": 3, "resize": "squash", "interpolation": "bilinear",
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
           "summary": {"best_epoch": 12, "epochs_run": 22, "monitor": "auc", "precision": "bf16", "device": "cuda",
                       "num_processes": 1, "train_seconds": 321.0},
           "data_fingerprint": "sha256:abc", "splits_file": str(splits), "splits_fingerprint": "sha256:def",
           "versions": {"medcli": "0.1.0", "torch": "2.14.1"}, "git_revision": "0123abc", "finished": "2026-11-30T00:00:00+00:00",
           "hardware": {"cpu": "EPYC", "gpus": ["NVIDIA H200"], "hostname": "node1"}}
    (run / "config.json").write_text(json.dumps(doc))
    (run / "model.pt").write_bytes(b"")
    runs.write_metrics(paths.metrics_file(run, "val"), _metrics_doc(fold, 40, "val"))
    if test:
        runs.write_metrics(paths.metrics_file(run, "test"), _metrics_doc(10, 60, "test"))
    return run


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    folder = results / "lesions"
    folder.mkdir(parents=True)
    labels = {f"img{i:03d}.png": CLASSES[i % 3 == 0] for i in range(30)}  # 10 malignant, 20 benign
    ids = sorted(labels)
    splits = {"format": "medcli.splits/1", "settings": {"folds": 2, "seed": 0, "near_duplicate_threshold": 40},
              "labels": labels, "groups": {"img000.png": "g1", "img001.png": "g1"}, "test_source": "holdout",
              "test": ids[:6], "folds": [{"fold": 0, "train": ids[6:18], "val": ids[18:]}, {"fold": 1, "train": ids[18:], "val": ids[6:18]}],
              "excluded": [{"id": "bad.png", "reason": "unreadable"}],
              "leakage": {"test_duplicating_dev": ["img002.png"], "test_duplicates_dropped": False, "val_duplicating_train": [],
                          "n_label_conflicts": 0, "largest_group": 2}}
    (folder / "splits.json").write_text(json.dumps(splits))
    (folder / "inspect.json").write_text(json.dumps({"duplicates": {"n_exact_groups": 1, "n_near_groups": 2, "n_images_in_groups": 5,
                                                                    "n_cross_split_groups": 1, "n_label_conflicts": 0},
                                                     "bad_files": [{"id": "bad.png"}]}))
    return results, folder / "splits.json"


def _counts(labels: dict, ids: list[str]) -> tuple[int, int]:
    return sum(labels[i] == "benign" for i in ids), sum(labels[i] == "malignant" for i in ids)


def test_card_reads_every_section_from_the_run_files(tmp_path):
    results, splits = _dataset(tmp_path)
    run = _run(results, 0, splits=splits)
    _run(results, 1, splits=splits)
    card = render_model_card(runs.open_run(run))
    test = runs.read_metrics(paths.metrics_file(run, "test"))
    ci = test["ci"]["balanced_accuracy"]
    assert f"{test['metrics']['balanced_accuracy']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] |" in card
    assert "`benign`" in card and "`malignant`" in card
    # class counts of this fold's parts and the test set, from splits.json
    doc = json.loads(splits.read_text())
    benign = [str(_counts(doc["labels"], part)[0]) for part in (doc["folds"][0]["train"], doc["folds"][0]["val"], doc["test"])]
    assert f"| `benign` | {' | '.join(benign)} |" in card
    assert "1 exact and 2 near-duplicate groups (5 images)" in card and "unreadable files: 1" in card
    assert "test images duplicating development images: 1, kept in the test set" in card
    assert "1 test images duplicate development images and were kept" in card
    # the cross-validated column covers both folds of the configuration
    vals = [runs.read_metrics(paths.metrics_file(Path(paths.run_dir(results, "lesions", "resnet18", "full", 0, k)), "val"))
            for k in (0, 1)]
    mean = np.mean([v["metrics"]["balanced_accuracy"] for v in vals])
    assert "Cross-validated (mean ± sd over 2 fold runs)" in card and f"{mean:.3f} ± " in card
    assert "Binary decision threshold 0.4 on the probability of `malignant`" in card
    assert "ECE 0.120 before → 0.050 after" in card
    assert NO_EXTERNAL in card and "not a medical device" in card
    assert "GPUs: NVIDIA H200" in card and "node1" not in card  # hardware, but no host name
    assert "Small test set (60 images)" in card


def test_external_validation_replaces_the_missing_external_line(tmp_path):
    results, splits = _dataset(tmp_path)
    run = _run(results, 0, splits=splits)
    ext = _metrics_doc(3, 50, "external", external={"data": "/data/site-b", "fingerprint": "sha256:0", "class_mapping": {}})
    ext["overlap"] = {"exact_dev": 2, "near_dev": 1, "exact_test": 0, "near_test": 0, "n_external": 50}
    runs.write_metrics(paths.external_metrics_file(run, "site-b"), ext)
    card = render_model_card(runs.open_run(run))
    assert NO_EXTERNAL not in card
    assert "External validation on `/data/site-b` (50 images)" in card
    assert "3 of its images duplicate this run's development images" in card


def test_missing_files_are_said_not_guessed(tmp_path):
    results, splits = _dataset(tmp_path)
    run = _run(results, 0, splits=splits, test=False)
    splits.unlink()
    card = render_model_card(runs.open_run(run))
    assert "Test (n=–)" in card
    assert "not evaluated" in card and f"Not evaluated on the test set: run `medcli eval {run} --split all`" in card
    assert "The splits file is missing" in card
    assert "Cross-validated" not in card  # only this fold has metrics
