"""The results layout: every template parses back, whatever the dataset is called."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medcli import paths
from medcli.errors import MedcliError

DATASETS = ["chest-ct", "my data", "ct#2", "Röntgen-χ²", "a__b", "__lead", "trail__", "x_y"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("results", ["results", "/abs/res ults", "deep/er#/root"])
def test_run_dir_parses_back(results, dataset):
    for backbone, strategy, seed, fold in (("resnet50", "two-phase", 0, 4), ("customcnn", "scratch", -3, 0), ("vit_b_16", "a__b", 12, 1)):
        folder = paths.run_dir(results, dataset, backbone, strategy, seed, fold)
        assert paths.parse_run_dir(folder) == paths.RunKey(dataset, backbone, strategy, seed, fold)
        assert paths.parse_run_dir(folder + "/") == paths.RunKey(dataset, backbone, strategy, seed, fold)
        assert paths.parse_run_dir(Path(folder)) == paths.RunKey(dataset, backbone, strategy, seed, fold)


def test_double_underscore_rule_for_configurations():
    # the configuration is split at its first "__": a strategy may hold "__", a backbone may not
    assert paths.parse_run_name(paths.run_name("resnet18", "a__b")) == ("resnet18", "a__b")
    with pytest.raises(MedcliError, match="may not contain '__'"):
        paths.run_name("res__net", "full")
    for bad in ("resnet18", "__full", "resnet18__"):
        with pytest.raises(ValueError):
            paths.parse_run_name(bad)


def test_non_run_folders_are_refused():
    for bad in ("results/ds/runs/resnet18/seed-0/fold-0", "results/ds/runs/a__b/seed-x/fold-0", "results/ds/ensembles/a__b/seed-0",
                "results/ds/runs/a__b/seed-0/fold-0/predictions"):
        with pytest.raises(ValueError, match="not a run directory"):
            paths.parse_run_dir(bad)


@pytest.mark.parametrize("dataset", DATASETS)
def test_ensemble_dir_parses_back(dataset):
    for name, method, seed in (("all", "greedy", 0), ("pair__of two", "mean", 7), ("ens#1 ü", "stacking", -1)):
        folder = paths.ensemble_dir("res", dataset, name, method, seed)
        assert paths.parse_ensemble_dir(folder) == paths.EnsembleKey(dataset, name, method, seed)
        assert folder.endswith(os.path.join("ensembles", paths.ensemble_key(name, method, seed)))
    with pytest.raises(MedcliError, match="may not contain '__'"):
        paths.ensemble_name("all", "my__method")
    with pytest.raises(ValueError, match="not an ensemble directory"):
        paths.parse_ensemble_dir(paths.run_dir("res", dataset, "a", "b", 0, 0))


def test_snakemake_patterns_keep_their_wildcards():
    assert paths.run_dir("R", "{dataset}", "{backbone}", "{strategy}", "{seed}", "{fold}") == os.path.join(
        "R", "{dataset}", "runs", "{backbone}__{strategy}", "seed-{seed}", "fold-{fold}")
    assert paths.ensemble_dir("R", "{dataset}", "{name}", "{method}", "{seed}") == os.path.join(
        "R", "{dataset}", "ensembles", "{name}__{method}", "seed-{seed}")
    assert paths.synth_data_dir("W", "{dataset}") == os.path.join("W", "data", "{dataset}")


@pytest.mark.parametrize("dataset", DATASETS)
def test_files_of_a_run(dataset):
    run = paths.run_dir("res", dataset, "resnet18", "full", 0, 1)
    pred = paths.predictions_file(run, "test")
    assert pred == os.path.join(run, "predictions", "test.csv")
    assert paths.calibrated_file(pred) == os.path.join(run, "predictions", "test.calibrated.csv")
    assert paths.metrics_file(run, "val") == os.path.join(run, "metrics", "val.json")
    assert paths.eval_figure_file(paths.figures_dir(run), "roc", "test") == os.path.join(run, "figures", "roc_test.png")
    assert paths.learning_curves_file(run) == os.path.join(run, "figures", "learning_curves.png")
    ext = paths.external_dir(run, "site b#2")
    assert ext == os.path.join(run, "external", "site b#2")
    assert paths.external_predictions_file(run, "site b#2") == os.path.join(ext, "predictions.csv")
    assert paths.calibrated_file(paths.external_predictions_file(run, "site b#2")) == os.path.join(ext, "predictions.calibrated.csv")
    assert paths.external_metrics_file(run, "site b#2") == os.path.join(ext, "metrics.json")
    assert paths.summary_figure_file("res", dataset, "strategies") == os.path.join("res", "figures", f"{dataset}_strategies.png")
    # every file of a run still parses back to the run
    assert paths.parse_run_dir(os.path.dirname(os.path.dirname(pred))).dataset == dataset


def test_gradcam_names_are_portable_and_distinct():
    classes = ["NA", "None", "large.cell carcinoma", "large_cell_carcinoma", "größe/..", "#1", "a b", ""]
    galleries = [paths.gradcam_gallery_name(c) for c in classes]
    assert len(set(galleries)) == len(classes)
    assert all(re.fullmatch(r"gallery_[A-Za-z0-9._-]+\.png", g) for g in galleries)
    assert paths.gradcam_gallery_name("normal") == "gallery_normal.png"
    ids = ["train/a b/img 1.png", "train/a b/img_1.png", "test/ü#2.jpg", "test/3", "TEST/3"]
    overlays = [paths.gradcam_overlay_name("a b", k % 2 == 0, i) for k, i in enumerate(ids)]
    assert len(set(o.lower() for o in overlays)) == len(ids)
    for overlay in overlays:
        cls, verdict, name = overlay.split("/")
        assert cls == paths.safe_name("a b") and verdict in ("correct", "wrong") and re.fullmatch(r"[A-Za-z0-9._-]+\.png", name)


def test_dataset_name_and_default_splits_file(tmp_path):
    folder = tmp_path / "my data #1"
    folder.mkdir()
    manifest = tmp_path / "Röntgen__v2.csv"
    manifest.write_text("path,label\n")
    assert paths.dataset_name(folder) == "my data #1"
    assert paths.dataset_name(manifest) == "Röntgen__v2"
    assert paths.dataset_name(str(folder) + "/") == "my data #1"
    assert paths.splits_file(paths.DEFAULT_RESULTS, paths.dataset_name(folder)) == os.path.join("results", "my data #1", "splits.json")


def test_cache_folders(tmp_path):
    assert paths.scan_cache_file(tmp_path, "abc") == os.path.join(str(tmp_path), "scan", "abc.json")
    assert paths.store_dir(tmp_path, "k1") == os.path.join(str(tmp_path), "store", "k1")
    assert paths.features_dir(tmp_path, "k2") == os.path.join(str(tmp_path), "features", "k2")


def test_summary_figure_names_parse_back_to_dataset_and_kind():
    for dataset in ("demo", "chest_ct", "a_b_strategies"):
        for kind in paths.SUMMARY_FIGURES:
            stem = Path(paths.summary_figure_file("results", dataset, kind)).stem
            assert paths.parse_summary_figure(stem) == (dataset, kind)
    assert paths.parse_summary_figure("notes") == ("notes", None)
