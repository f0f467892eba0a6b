"""The run-folder library: class names survive every round trip, metrics JSON is plain, run folders are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medcli import paths, runs
from medcli._io import publish_dir, staging_dir
from medcli.errors import MedcliError

#: Names pandas reads as missing (or as numbers) by default.
TRICKY = ["NA", "None", "null", "nan", "1", "01"]


def _write(path, classes, ids=None, seed=0, fold=0, split="val"):
    rng = np.random.default_rng(len(classes))
    n = 2 * len(classes)
    ids = ids or [f"{c}/img {k}.png" for k, c in enumerate(TRICKY * 2)][:n]
    y = np.arange(n) % len(classes)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 5  # predicted = true, so `pred` holds every class too
    runs.write_predictions(path, ids, [f"/data/{i}" for i in ids], y, logits, classes, fold=fold, seed=seed, split=split)
    return ids, y, logits


def test_na_like_class_names_and_ids_survive_the_predictions_round_trip(tmp_path):
    from medcli.evaluation.runner import read_predictions as eval_read
    from medcli.gradcam.run import read_predictions as gradcam_read
    from medcli.report.collect import read_probabilities

    path = tmp_path / "predictions" / "val.csv"
    ids, y, logits = _write(path, TRICKY, ids=["NA", "None", "null", "nan", "1", "01", "", "N/A", "#N/A", "NULL", "-nan", "1.0"])
    frame = runs.read_predictions(path, TRICKY)
    assert list(frame["id"]) == ids
    assert list(frame["label"]) == [TRICKY[k] for k in y] and list(frame["pred"]) == list(frame["label"])
    assert np.array_equal(runs.label_indices(frame, TRICKY), y)
    assert np.allclose(runs.probabilities(frame, TRICKY).sum(1), 1)
    _, y2, logits2 = eval_read(path, TRICKY)
    assert np.array_equal(y2, y) and np.allclose(logits2, logits, atol=1e-6)
    assert list(gradcam_read(path, TRICKY)["label"]) == [TRICKY[k] for k in y]
    probs = read_probabilities(path, TRICKY)
    assert list(probs.index) == ids and list(probs["label"]) == [TRICKY[k] for k in y]


def test_ensembles_read_na_like_classes(tmp_path):
    from medcli.ensemble import build_ensemble

    classes = ["NA", "None", "01"]
    dev = [f"d{i}" for i in range(12)]
    test = [f"t{i}" for i in range(6)]
    (tmp_path / "ds").mkdir()
    Path(paths.splits_file(tmp_path, "ds")).write_text(json.dumps({"classes": classes, "folds": [{"fold": 0}, {"fold": 1}]}))
    for config in ("a__full", "b__linear"):
        backbone, strategy = paths.parse_run_name(config)
        for fold in (0, 1):
            run = paths.run_dir(tmp_path, "ds", backbone, strategy, 0, fold)
            _write(paths.predictions_file(run, "val"), classes, ids=dev[fold::2], fold=fold)
            _write(paths.predictions_file(run, "test"), classes, ids=test, fold=fold, split="test")
    summary = build_ensemble(tmp_path, "ds", ["a__full", "b__linear"], "mean", 0, n_bootstrap=0)
    assert summary["n_oof"] == 12 and summary["n_test"] == 6
    out = paths.ensemble_dir(tmp_path, "ds", "ensemble", "mean", 0)
    frame = runs.read_predictions(paths.predictions_file(out, "test"), classes)
    assert set(frame["label"]) == set(classes)
    assert runs.read_metrics(paths.metrics_file(out, "test"))["metrics"]["accuracy"] == 1.0


def test_unknown_classes_and_repeated_ids_are_one_line_errors(tmp_path):
    path = tmp_path / "predictions" / "test.csv"
    _write(path, ["a", "b"])
    good = path.read_text()
    path.write_text(good.replace("/data/NA/img 0.png,a,a", "/data/NA/img 0.png,NA,a"))
    with pytest.raises(MedcliError, match=r"test\.csv: class\(es\) 'NA' are not among"):
        runs.read_predictions(path, ["a", "b"])
    path.write_text(good)
    with pytest.raises(MedcliError, match="no prob_<class> or logit_<class> columns"):
        runs.read_predictions(path, ["x", "y"])
    with pytest.raises(MedcliError, match=r"not found; run `medcli eval .*` first"):
        runs.read_predictions(tmp_path / "predictions" / "nope.csv", ["a", "b"])
    with pytest.raises(MedcliError, match="re-run `medcli train`"):
        runs.read_predictions(tmp_path / "predictions" / "val.csv", ["a", "b"])
    text = path.read_text().splitlines()
    path.write_text("\n".join([*text, text[1]]) + "\n")
    with pytest.raises(MedcliError, match="image ids repeat"):
        runs.read_predictions(path, ["a", "b"])


def test_old_predictions_without_probabilities_fall_back_to_the_softmax_of_the_logits(tmp_path):
    path = tmp_path / "val.csv"
    path.write_text("id,label,logit_NA,logit_b\nx,NA,2.0,0.0\ny,b,0.0,1.0\n")
    frame = runs.read_predictions(path, ["NA", "b"])
    assert np.allclose(frame["prob_NA"], [np.exp(2) / (np.exp(2) + 1), 1 / (1 + np.e)])
    with pytest.raises(MedcliError, match="no logit_<class> columns"):
        runs.read_predictions(tmp_path / "val.csv", ["NA", "c"], need_logits=True)


def test_metrics_json_is_plain_and_non_finite_values_become_null(tmp_path):
    doc = {"a": float("nan"), "b": [np.float32(0.5), np.inf, -np.inf], "c": np.int64(3), "d": (1, np.float64("nan")),
           "note": "NaN and Infinity in a sentence stay", "e": np.array([[1.0, np.nan]]), "f": np.bool_(True)}
    written = runs.write_metrics(tmp_path / "metrics" / "x.json", doc)
    text = (tmp_path / "metrics" / "x.json").read_text()
    assert json.loads(text) == written == {"a": None, "b": [0.5, None, None], "c": 3, "d": [1, None],
                                           "note": "NaN and Infinity in a sentence stay", "e": [[1.0, None]], "f": True}
    assert "Infinity" not in text.replace("NaN and Infinity in a sentence", "")


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(MedcliError, match="not a run folder .*medcli train"):
        runs.open_run(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"format": "medcli.run/9", "config": {}, "classes": [], "preprocess": {}}))
    with pytest.raises(MedcliError, match="medcli.run/9.*train the run again"):
        runs.open_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "medcli.run/1", "config": {"fold": 2}, "classes": ["NA", "b"]}))
    with pytest.raises(MedcliError, match="lacks preprocess"):
        runs.open_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({
        "format": "medcli.run/1", "classes": ["NA", "b"],
        "config": {"fold": 2, "seed": 1, "data": "/d", "dataset_name": "d", "backbone": "customcnn", "strategy": "scratch"},
        "preprocess": {"img_size": 32, "channels": 1, "resize": "squash", "interpolation": "bilinear", "mean": [0.5], "std": [0.25]}}))
    run = runs.open_run(tmp_path)
    assert run.classes == ["NA", "b"] and run.coordinates()["fold"] == 2 and run.store_settings().img_size == 32


def test_publish_dir_replaces_an_existing_folder_whole(tmp_path):
    final = tmp_path / "gradcam" / "test"
    final.mkdir(parents=True)
    (final / "old.png").write_text("old")
    tmp = staging_dir(final)
    tmp.mkdir()
    (tmp / "index.json").write_text("{}")
    publish_dir(tmp, final, replace=True)
    assert sorted(p.name for p in final.iterdir()) == ["index.json"] and not tmp.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["test"]  # the old folder is gone too


def test_publish_dir_keeps_a_cache_folder_published_first(tmp_path):
    final = tmp_path / "store" / "k"
    final.mkdir(parents=True)
    (final / "meta.json").write_text("theirs")
    (final / "images.npy").write_text("x")  # a non-empty folder: the rename fails
    tmp = staging_dir(final)
    tmp.mkdir()
    (tmp / "meta.json").write_text("ours")
    publish_dir(tmp, final, "meta.json")
    assert (final / "meta.json").read_text() == "theirs" and tmp.exists()
    (final / "meta.json").unlink()
    with pytest.raises(OSError):
        publish_dir(tmp, final, "meta.json")
