"""Integration on the real Kaggle chest-CT images (skipped where the data is not available)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medcli.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_inspect_and_split_real_chest_ct(chest_ct, tmp_path):
    res = runner.invoke(app, ["data", "inspect", str(chest_ct), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"]["n_images"] == 1000
    assert report["classes"] == ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"]
    assert report["class_mapping"]["adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib"] == "adenocarcinoma"
    assert report["extension_mismatch"]  # JPEGs named .png
    assert report["duplicates"]["n_cross_split_groups"] > 0  # the published splits leak

    res = runner.invoke(app, ["split", str(chest_ct), "--folds", "5", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert len(doc["test"]) == 315 and doc["test_source"] == "dataset"
    assert doc["leakage"]["test_duplicating_dev"]
    where = {i: f["fold"] for f in doc["folds"] for i in f["val"]}
    for group in report["duplicates"]["groups"]:
        dev = [i for i in group["ids"] if i in where]
        assert len({where[i] for i in dev}) <= 1
