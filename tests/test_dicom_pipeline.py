"""A DICOM dataset through the whole chain: inspect -> split -> train -> eval -> gradcam -> report (the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app

from .dicom_fixtures import make_dicom_dataset, patient_id

PATIENTS = 8


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_dicom_dataset_goes_through_every_stage_without_leaking_identifiers(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLI_ID_SALT", "test-salt")
    monkeypatch.setenv("MEDCLI_NO_PROGRESS", "1")
    data = make_dicom_dataset(tmp_path / "ct", patients=PATIENTS, per_patient=3)
    results, cache = tmp_path / "results", tmp_path / "cache"
    common = ["--cache-dir", str(cache), "--workers", "1"]

    _ok("data", "inspect", str(data), "--window", "mediastinum", "--json", str(tmp_path / "inspect.json"), *common)
    facts = json.loads((tmp_path / "inspect.json").read_text())["dicom"]
    assert facts["n_images"] == PATIENTS * 3 and facts["modality"] == {"CT": PATIENTS * 3} and facts["window"] == {"40,400": PATIENTS * 3}

    splits = Path(paths.splits_file(results, "ct"))
    _ok("split", str(data), "--folds", "2", "--test-fraction", "0.25", "--group-by", "patient", "--window", "mediastinum",
        "--out", str(splits), *common)
    doc = json.loads(splits.read_text())
    assert doc["settings"]["group_by"] == "patient"
    patient_of = {sid: sid.split("/")[-1][:3] for sid in doc["labels"]}  # p00_img0 -> p00 (file names, not identifiers)
    parts = [set(doc["test"])] + [set(f["val"]) for f in doc["folds"]]
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            assert not {patient_of[i] for i in parts[a]} & {patient_of[i] for i in parts[b]}, "a patient straddles two parts"

    run = Path(paths.run_dir(results, "ct", "customcnn", "scratch", 0, 1))
    _ok("train", "--data", str(data), "--window", "mediastinum", "--backbone", "customcnn", "--strategy", "scratch",
        "--img-size", "32", "--channels", "1", "--epochs", "2", "--batch-size", "8", "--fold", "1", "--results", str(results),
        "--work", str(tmp_path / "work"), "--no-progress", *common)
    config = json.loads(Path(paths.config_file(run)).read_text())["config"]
    assert config["window"] == "mediastinum" and config["group_by"] == "patient"  # read back from the splits file

    _ok("eval", str(run), "--split", "all", "--bootstrap", "20")
    test = json.loads(Path(paths.metrics_file(run, "test")).read_text())
    assert test["n"] == len(doc["test"]) and test["metrics"]["balanced_accuracy"] is not None
    _ok("gradcam", str(run), "--split", "test", "--n", "2")
    assert Path(paths.gradcam_index_file(run, "test")).is_file()
    _ok("report", str(results))
    summary = Path(paths.summary_file(results)).read_text()
    assert "customcnn" in summary

    secrets = [patient_id(k) for k in range(PATIENTS)] + ["Anonymous^Test"]
    for path in [*results.rglob("*"), tmp_path / "inspect.json"]:
        if path.is_file() and path.suffix in (".json", ".csv", ".md"):
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"an identifier in clear in {path}"
