"""``medcli predict``: new images get exactly eval's predictions, labelled input exactly eval --data's metrics, fold
ensembles exactly the report's test column; odd and broken files are flagged or listed, never silently dropped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import save_image, tiny_runs
from medcli import paths, runs
from medcli.cli import app
from medcli.errors import MedcliError
from medcli.evaluation.runner import evaluate_run
from medcli.prediction import predict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two tiny binary runs (folds 0 and 1, 32 px grayscale PNGs), both evaluated with `medcli eval --split all`."""
    root = tmp_path_factory.mktemp("predict")
    data, out = tiny_runs(root)
    for run in out:
        evaluate_run(run, split="all", n_bootstrap=0, figures=False)
    return {"root": root, "data": data, "runs": out, "results": root / "results"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {r["path"]: r for r in rows}


def _probs(row: dict, classes: list[str], prefix: str) -> np.ndarray:
    return np.array([float(row[f"{prefix}{c}"]) for c in classes])


def test_predicting_the_test_images_reproduces_evals_test_predictions(trained, tmp_path):
    run = trained["runs"][0]
    classes = runs.open_run(run).classes
    out = tmp_path / "p.csv"
    result = predict(run, [trained["data"] / "test"], out, labels=False)
    mine = _by_path(_rows(out))
    raw = _by_path(_rows(paths.predictions_file(run, "test")))
    calibrated = _by_path(_rows(paths.calibrated_file(paths.predictions_file(run, "test"))))
    assert set(mine) == set(raw) and result.n == len(raw) and result.n_errors == 0 and result.calibrated
    threshold = json.loads(Path(paths.metrics_file(run, "test")).read_text())["threshold"]["value"]
    for p, row in mine.items():
        assert [row[f"raw_prob_{c}"] for c in classes] == [raw[p][f"prob_{c}"] for c in classes], p  # same code, same digits
        assert [row[f"prob_{c}"] for c in classes] == [calibrated[p][f"prob_{c}"] for c in classes], p
        assert row["pred"] == raw[p]["pred"]
        assert row["decision"] == classes[int(float(row[f"raw_prob_{classes[1]}"]) >= threshold)]
        assert row["flags"] == "" and row["error"] == ""  # the dataset's own images are like the training images
    assert "label" not in next(iter(mine.values()))  # --no-labels: no scoring
    assert not Path(paths.predict_metrics_file(out)).exists()


def test_tta_reproduces_eval_tta(trained, tmp_path):
    copy = tmp_path / "run"  # eval --tta rewrites the run's test predictions: work on a copy of the run folder
    shutil.copytree(trained["runs"][0], copy)
    evaluate_run(copy, split="test", tta=True, n_bootstrap=0, figures=False)
    classes = runs.open_run(copy).classes
    predict(copy, [trained["data"] / "test"], tmp_path / "p.csv", tta=True, labels=False)
    mine = _by_path(_rows(tmp_path / "p.csv"))
    raw = _by_path(_rows(paths.predictions_file(copy, "test")))
    calibrated = _by_path(_rows(paths.calibrated_file(paths.predictions_file(copy, "test"))))
    assert set(mine) == set(raw)
    for p, row in mine.items():
        assert [row[f"raw_prob_{c}"] for c in classes] == [raw[p][f"prob_{c}"] for c in classes], p
        assert [row[f"prob_{c}"] for c in classes] == [calibrated[p][f"prob_{c}"] for c in classes], p


def test_labelled_folder_metrics_equal_eval_external(trained, tmp_path):
    run = trained["runs"][0]
    folder = tmp_path / "site-b"
    shutil.copytree(trained["data"] / "test", folder)
    expected = evaluate_run(run, data=folder, n_bootstrap=50, figures=False)["site-b"]
    out = tmp_path / "b.csv"
    result = predict(run, [folder], out, n_bootstrap=50)
    written = json.loads(Path(tmp_path / "b.metrics.json").read_text())
    assert result.metrics_file == tmp_path / "b.metrics.json"
    for doc in (written, expected):
        doc.pop("versions")
    assert written == expected
    rows = _rows(out)
    assert {r["label"] for r in rows} == set(runs.open_run(run).classes)
    ext = _by_path(_rows(paths.external_predictions_file(run, "site-b")))
    for r in rows:
        assert r["raw_prob_" + r["pred"]] == ext[r["path"]]["prob_" + r["pred"]]


def test_new_files_in_every_format_get_rows_and_unlike_ones_are_flagged(trained, tmp_path):
    from tests.dicom_fixtures import shipped

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    new = tmp_path / "new"
    files = {
        "gray.png": save_image(new / "gray.png", gray),
        "gray.jpg": save_image(new / "gray.jpg", gray),
        "rgb.jpg": save_image(new / "rgb.jpg", rgb),
        "rgb.tif": save_image(new / "rgb.tif", rgb),
        "gray16.tif": save_image(new / "sub" / "gray16.tif", (gray.astype(np.uint16) * 200), mode="I;16"),
        "wide.png": save_image(new / "wide.png", rng.integers(0, 256, (40, 300, 3), dtype=np.uint8)),
    }
    ct = shutil.copy(shipped("CT_small.dcm"), new / "ct.dcm")
    (new / "notes.txt").write_text("not an image")  # skipped, like `medcli data inspect` does
    out = tmp_path / "new.csv"
    result = predict(trained["runs"][0], [new], out)
    rows = {r["id"]: r for r in _rows(out)}
    assert set(rows) == {"gray.png", "gray.jpg", "rgb.jpg", "rgb.tif", "sub/gray16.tif", "wide.png", "ct.dcm"}
    assert result.n == 7 and result.n_errors == 0 and "label" not in rows["gray.png"]
    assert all(r["error"] == "" and r["pred"] in ("a", "b", *runs.open_run(trained["runs"][0]).classes) for r in rows.values())
    assert rows["gray.png"]["flags"] == ""
    assert "size 300x40" in rows["wide.png"]["flags"] and "mode RGB" in rows["wide.png"]["flags"]
    assert "mode RGB" in rows["rgb.jpg"]["flags"] and "size" not in rows["rgb.jpg"]["flags"]
    assert "mode I;16" in rows["sub/gray16.tif"]["flags"]
    assert "modality CT" in rows["ct.dcm"]["flags"] and rows["ct.dcm"]["format"] == "DICOM"
    assert result.n_flagged == sum(bool(r["flags"]) for r in rows.values())
    assert str(ct) == rows["ct.dcm"]["path"] and str(files["gray.png"].resolve()) == rows["gray.png"]["path"]


def test_unreadable_files_get_error_rows_and_all_unreadable_is_one_line_exit_1(trained, tmp_path):
    good = save_image(tmp_path / "in" / "good.png", np.full((32, 32), 90, np.uint8))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "p.csv"
    result = predict(trained["runs"][0], [tmp_path / "in"], out)
    rows = {r["id"]: r for r in _rows(out)}
    assert result.n == 1 and result.n_errors == 2
    assert rows["good.png"]["error"] == "" and rows["good.png"]["pred"]
    assert rows["broken.png"]["error"] and rows["broken.png"]["pred"] == "" and rows["empty.jpg"]["error"].startswith("empty file")
    assert str(good.resolve()) == rows["good.png"]["path"]

    res = CliRunner().invoke(app, ["predict", str(trained["runs"][0]), str(tmp_path / "in" / "broken.png"),
                                   str(tmp_path / "in" / "empty.jpg"), "--out", str(tmp_path / "none.csv")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "none of the 2 input file(s) is readable" in errors[0] and "Traceback" not in res.output
    assert not (tmp_path / "none.csv").exists()


def test_csv_manifest_and_cli_end_to_end(trained, tmp_path):
    test_dir = trained["data"] / "test"
    images = sorted(test_dir.rglob("*.png"))[:3]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in images))
    res = CliRunner().invoke(app, ["predict", str(trained["runs"][0]), str(manifest), "-o", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    assert f"predictions written to {tmp_path / 'm.csv'}" in res.output
    assert [r["path"] for r in _rows(tmp_path / "m.csv")] == [str(p.resolve()) for p in images]
    assert not (tmp_path / "m.metrics.json").exists()

    labelled = tmp_path / "labelled.csv"  # a manifest with labels is scored
    labelled.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    result = predict(trained["runs"][0], [labelled], tmp_path / "l.csv", n_bootstrap=0)
    assert result.metrics["n"] == 3 and (tmp_path / "l.metrics.json").is_file()
    assert [r["label"] for r in _rows(tmp_path / "l.csv")] == [p.parent.name for p in images]


def test_a_run_without_validation_predictions_gives_raw_probabilities_and_says_so(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.pt"):
        shutil.copy(Path(trained["runs"][0]) / name, copy / name)
    result = predict(copy, [trained["data"] / "test"], tmp_path / "p.csv", labels=False)
    header = _rows(tmp_path / "p.csv")[0].keys()
    assert not result.calibrated and not any(k.startswith("prob_") for k in header) and "decision" not in header
    assert any("raw probabilities only" in w for w in result.warnings)


def test_fold_ensemble_equals_the_reports_test_column(trained, tmp_path):
    from medcli.report.collect import read_probabilities
    from medcli.report.summary import average_frames

    seed_dir = trained["runs"][0].parent
    classes = runs.open_run(trained["runs"][0]).classes
    out = tmp_path / "ens.csv"
    result = predict(seed_dir, [trained["data"] / "test"], out, labels=False)
    assert result.model.startswith("fold ensemble of 2 run(s)") and not result.calibrated
    report = average_frames([read_probabilities(paths.predictions_file(r, "test"), classes) for r in trained["runs"]], classes)
    path_of = {r["id"]: r["path"] for r in _rows(paths.predictions_file(trained["runs"][0], "test"))}
    mine = _by_path(_rows(out))
    assert len(mine) == len(report)
    for sid, row in report.iterrows():
        got = _probs(mine[path_of[sid]], classes, "raw_prob_")
        assert np.abs(got - row[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)).max() <= 1e-6, sid

    res = CliRunner().invoke(app, ["predict", str(seed_dir), str(trained["data"] / "test"), "-o", str(tmp_path / "l.csv"),
                                   "--bootstrap", "0"])  # labelled: scored without calibration or threshold
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "l.metrics.json").read_text())
    assert doc["n"] == len(report) and doc["calibration"] is None and doc["threshold"] is None
    assert doc["model"]["kind"] == "fold-ensemble" and doc["model"]["folds"] == [0, 1]
    assert "evaluation" in res.output and "│ input" in res.output  # eval's metrics table


def test_medcli_ensemble_outputs_are_applied_or_refused_in_one_line(trained, tmp_path):
    from medcli.ensemble import build_ensemble

    key = paths.parse_run_dir(trained["runs"][0])
    config = paths.run_name(key.backbone, key.strategy)
    shutil.copy(trained["root"] / "splits.json", paths.splits_file(trained["results"], key.dataset))  # where medcli ensemble reads it
    classes = runs.open_run(trained["runs"][0]).classes
    for method in ("mean", "vote", "weighted", "greedy", "stacking"):
        build_ensemble(trained["results"], key.dataset, [config], method, key.seed, name="solo", n_bootstrap=0)
        ens = Path(paths.ensemble_dir(trained["results"], key.dataset, "solo", method, key.seed))
        predict(ens, [trained["data"] / "test"], tmp_path / "e.csv", labels=False)
        mine = _by_path(_rows(tmp_path / "e.csv"))
        theirs = _rows(paths.predictions_file(ens, "test"))
        assert len(mine) == len(theirs)
        for row in theirs:
            assert np.abs(_probs(mine[row["path"]], classes, "raw_prob_") - _probs(row, classes, "prob_")).max() <= 1e-6, method

    # a stacking ensemble written before medcli recorded its fitted stacker cannot be applied: one line, the fix
    doc = json.loads(Path(paths.ensemble_file(ens)).read_text())  # the stacking's
    old = Path(paths.ensemble_dir(trained["results"], key.dataset, "old", "stacking", key.seed))
    old.mkdir(parents=True)
    details = {k: v for k, v in doc["details"].items() if k not in ("coef", "intercept", "stacker_classes")}
    (old / "ensemble.json").write_text(json.dumps({**doc, "details": details}))
    with pytest.raises(MedcliError, match=r"ensemble.json: this stacking ensemble was built before .* run `medcli ensemble` again"):
        predict(old, [trained["data"] / "test"], tmp_path / "s.csv")
    other = Path(paths.ensemble_dir(trained["results"], key.dataset, "odd", "magic", key.seed))
    other.mkdir(parents=True)
    (other / "ensemble.json").write_text(json.dumps({**doc, "method": "magic"}))
    with pytest.raises(MedcliError, match=r"method 'magic' cannot be applied.*supports ensembles of method mean, weighted, greedy, vote, stacking"):
        predict(other, [trained["data"] / "test"], tmp_path / "s.csv")


def test_a_folder_that_is_no_model_is_one_line_error(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(MedcliError, match="not a model"):
        predict(tmp_path, [tmp_path / "img.png"], tmp_path / "p.csv")


def test_cli_hands_predict_the_options_typed(monkeypatch, tmp_path):
    import medcli.prediction as prediction

    calls = []
    monkeypatch.setattr(prediction, "predict", lambda *a, **k: calls.append((a, k)) or "RESULT")
    monkeypatch.setattr(prediction, "render", lambda result, console: calls.append(result))
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), str(tmp_path / "dir"), "-o",
                                   str(tmp_path / "o.csv"), "--tta", "--no-labels", "--alias", "A=a", "--batch-size", "8",
                                   "--bootstrap", "0", "--seed", "3", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert calls[0] == ((tmp_path / "run", [tmp_path / "a.png", tmp_path / "dir"], tmp_path / "o.csv"),
                        {"tta": True, "labels": False, "aliases": {"A": "a"}, "batch_size": 8, "n_bootstrap": 0, "seed": 3,
                         "cache_dir": tmp_path / "c"})
    assert calls[1] == "RESULT"
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert calls[2] == ((tmp_path / "run", [tmp_path / "a.png"], Path("predictions.csv")),
                        {"tta": False, "labels": None, "aliases": {}, "batch_size": 64, "n_bootstrap": 1000, "seed": 0,
                         "cache_dir": None})


def test_without_the_training_images_flags_come_from_inspect_json_or_a_warning(trained, tmp_path):
    from medcli.data import inspect_data

    run = tmp_path / "results" / "d" / "runs" / "customcnn__scratch" / "seed-0" / "fold-0"
    shutil.copytree(trained["runs"][0], run)
    doc = json.loads((run / "config.json").read_text())
    doc["config"]["data"] = str(tmp_path / "moved-away")
    (run / "config.json").write_text(json.dumps(doc))
    new = tmp_path / "new"
    save_image(new / "gray.png", np.full((32, 32), 80, np.uint8))
    save_image(new / "wide.png", np.full((40, 300, 3), 80, np.uint8))

    result = predict(run, [new], tmp_path / "p.csv")
    assert result.n_flagged == 0 and any("no 'unlike training' flags" in w for w in result.warnings)
    assert {r["flags"] for r in _rows(tmp_path / "p.csv")} == {""}

    (tmp_path / "results" / "d" / "inspect.json").write_text(json.dumps(inspect_data(trained["data"])))
    result = predict(run, [new], tmp_path / "p.csv")
    flags = {r["id"]: r["flags"] for r in _rows(tmp_path / "p.csv")}
    assert flags["gray.png"] == "" and "size 300x40" in flags["wide.png"] and "mode RGB" in flags["wide.png"]
    assert result.n_flagged == 1
