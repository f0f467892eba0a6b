"""A run folder is one consistent model, read as input and never obeyed: re-training swaps the folder in whole,
outputs of another model are refused, paths work from any folder, a run's recorded cache is never written to,
tampered fields are one-line errors, unsafe model files are refused plainly, and leftovers of killed writes go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medcli import paths, runs
from medcli.errors import MedcliError

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(backbone="customcnn", strategy="scratch", epochs=2, batch_size=16, img_size=32, channels=1, progress=False)


def _train(out: Path | str, **kw) -> Path:
    from medcli.training import TrainConfig, train

    return Path(train(TrainConfig(out=str(out), **{**SETTINGS, **kw}))["out"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(root, run)``: a tiny run trained from ``root`` with relative --data, --splits, --cache-dir and --out."""
    from medcli.data.synth import make_synthetic
    from medcli.splits import split_data

    root = tmp_path_factory.mktemp("integrity")
    make_synthetic(root / "d", layout="presplit", n_classes=2, per_class=12, size=32, noise=0.1)
    split_data(root / "d", root / "splits.json", folds=2, seed=0)
    here = os.getcwd()
    os.chdir(root)
    try:
        _train("runs/r", data="d", splits="splits.json", cache_dir="cache", results="results", work="work")
    finally:
        os.chdir(here)
    return root, root / "runs" / "r"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy" / run.name
    shutil.copytree(run, dst)
    return dst


def _edit_config(run: Path, change) -> None:
    doc = json.loads((run / "config.json").read_text())
    change(doc)
    (run / "config.json").write_text(json.dumps(doc))


def _absolute(root: Path) -> dict:
    return dict(data=str(root / "d"), splits=str(root / "splits.json"), cache_dir=str(root / "cache"), work=str(root / "work"))


# --- one model per run folder ----------------------------------------------------------------------------------


def test_retraining_replaces_the_whole_run_folder_and_drops_the_old_models_outputs(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "r"
    _train(out, **_absolute(root))
    first = json.loads((out / "config.json").read_text())["run_id"]
    derived = [paths.metrics_file(out, "test"), paths.predictions_file(out, "test"), paths.gradcam_index_file(out, "test"),
               paths.external_metrics_file(out, "site-b"), paths.model_card_file(out), paths.learning_curves_file(out)]
    for file in derived:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_text("{}")
    _train(out, lr=0.05, **_absolute(root))
    doc = json.loads((out / "config.json").read_text())
    assert [f for f in derived if os.path.exists(f)] == []
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "history.csv", "model.pt", "predictions"]
    assert doc["run_id"] != first and doc["config"]["lr"] == 0.05
    assert torch.load(out / "model.pt", weights_only=True)["run_id"] == doc["run_id"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # nothing left beside it (staging or old folder)


def test_a_folder_holding_other_files_is_not_replaced(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MedcliError, match=r"--out .*mine: holds files that are not part of a run folder \(notes.txt\)"):
        _train(out, **_absolute(root))
    assert (out / "notes.txt").read_text() == "mine"


def test_a_model_of_another_training_next_to_config_json_is_refused(trained, tmp_path):
    root, run = trained
    other = _train(tmp_path / "other", fold=1, **_absolute(root))
    mixed = _copy(run, tmp_path)
    shutil.copy(other / "model.pt", mixed / "model.pt")  # a re-train killed between writing model.pt and config.json
    with pytest.raises(MedcliError, match=r"model.pt: not the model config.json describes \(run_id .*train the run again"):
        runs.open_run(mixed).load_model()
    from medcli.evaluation.runner import evaluate_run

    with pytest.raises(MedcliError, match="not the model config.json describes"):
        evaluate_run(mixed, split="val", n_bootstrap=0, figures=False)


def test_outputs_of_another_model_are_refused_by_report_gradcam_and_model_card(trained, tmp_path):
    from medcli.gradcam import explain_run
    from medcli.model_card import render_model_card
    from medcli.report.collect import collect_runs

    _, run = trained
    results = tmp_path / "results"
    mine = Path(paths.run_dir(results, "d", "customcnn", "scratch", 0, 0))
    shutil.copytree(run, mine)
    stale = {"format": runs.METRICS_FORMAT, "run_id": "0" * 32, "split": "test", "metrics": {"accuracy": 0.99}}
    runs.write_metrics(paths.metrics_file(mine, "test"), stale)
    shutil.copy(paths.predictions_file(mine, "val"), paths.predictions_file(mine, "test"))
    usable, unusable = collect_runs(results)
    assert usable == [] and len(unusable) == 1
    assert "metrics/test.json: written for another model" in unusable[0]["reason"] and "re-run `medcli eval" in unusable[0]["reason"]
    with pytest.raises(MedcliError, match=r"test.json: written for another model .*re-run `medcli eval .* --split test`"):
        explain_run(mine, split="test", n=1)
    with pytest.raises(MedcliError, match="test.json: written for another model"):
        render_model_card(runs.open_run(mine))
    runs.write_metrics(paths.metrics_file(mine, "test"), {**stale, "run_id": runs.open_run(mine).run_id})
    usable, _ = collect_runs(results)
    assert len(usable) == 1 and usable[0].test_metrics["accuracy"] == 0.99
    # a config.json whose run_id was removed does not make another model's outputs acceptable
    runs.write_metrics(paths.metrics_file(mine, "test"), stale)
    doc = json.loads((mine / "config.json").read_text())
    del doc["run_id"]
    (mine / "config.json").write_text(json.dumps(doc))
    with pytest.raises(MedcliError, match="test.json: written for another model"):
        runs.check_derived(doc, stale, paths.metrics_file(mine, "test"), "re-run `medcli eval`")


# --- paths and caches ------------------------------------------------------------------------------------------


def test_a_run_trained_with_relative_paths_is_evaluated_and_retrained_from_another_folder(trained, tmp_path, monkeypatch):
    from medcli.evaluation.runner import evaluate_run
    from medcli.training.config import from_dict, read_settings, resolve

    root, run = trained
    doc = json.loads((run / "config.json").read_text())
    assert doc["splits_file"] == str(root / "splits.json")
    assert {k: doc["config"][k] for k in ("data", "splits", "cache_dir")} == {
        "data": str(root / "d"), "splits": str(root / "splits.json"), "cache_dir": str(root / "cache")}
    monkeypatch.chdir(tmp_path)
    result = evaluate_run(run, split="test", n_bootstrap=0, figures=False, cache_dir=tmp_path / "c")
    assert result["test"]["n"] > 0 and result["test"]["run_id"] == doc["run_id"]
    again = resolve(from_dict(read_settings(run / "config.json")))  # `medcli train --config RUN/config.json` from here
    assert Path(again.data).is_dir() and Path(again.splits).is_file()


def test_eval_never_writes_to_the_cache_a_run_folder_names(trained, tmp_path):
    from medcli.evaluation.runner import evaluate_run

    _, run = trained
    foreign = _copy(run, tmp_path)
    _edit_config(foreign, lambda d: d["config"].update(cache_dir=str(tmp_path / "elsewhere")))
    evaluate_run(foreign, split="test", n_bootstrap=0, figures=False, cache_dir=tmp_path / "mine")
    assert not (tmp_path / "elsewhere").exists() and list((tmp_path / "mine" / "store").iterdir())


# --- fields validated ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(classes=list(reversed(d["classes"]))), r"model.pt: its classes .* differ from config.json's"),
    (lambda d: d.update(classes=[d["classes"][0]] * 2), "classes must be a list of at least two distinct"),
    (lambda d: d.update(classes="ab"), "classes must be a list"),
    (lambda d: d.update(classes=[*d["classes"], "extra"]), r"model.pt: its classes .* differ"),
    (lambda d: d["preprocess"].update(channels=2), "preprocess.channels 2 must be 1 or 3"),
    (lambda d: d["preprocess"].update(mean=[0.5, 0.5]), "preprocess.mean must list 1 finite"),
    (lambda d: d["preprocess"].update(img_size=-3), "preprocess.img_size -3 must be a whole number"),
    (lambda d: d["config"].update(fold="0"), "config.fold '0' must be a whole number"),
    (lambda d: d["config"].update(layout="zip"), "config.layout 'zip': choose one of"),
    (lambda d: d.update(run_id="../x"), "run_id must be 32 hexadecimal digits"),
])
def test_a_tampered_run_folder_is_a_one_line_error(trained, tmp_path, change, message):
    _, run = trained
    bad = _copy(run, tmp_path)
    _edit_config(bad, change)
    with pytest.raises(MedcliError, match=message) as err:
        runs.open_run(bad).load_model()
    assert "\n" not in str(err.value)


def test_cli_eval_of_a_tampered_class_list_is_one_error_line(trained, tmp_path):
    from typer.testing import CliRunner

    from medcli.cli import app

    _, run = trained
    bad = _copy(run, tmp_path)
    _edit_config(bad, lambda d: d.update(classes=list(reversed(d["classes"]))))
    # swapped names would score every image against the other class's label: a silent wrong result before
    result = CliRunner().invoke(app, ["eval", str(bad), "--split", "val", "--bootstrap", "0", "--no-figures"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "differ from config.json's" in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [result.output.strip().splitlines()[-1]]


def test_an_unsafe_model_file_is_refused_without_advice_to_load_it(trained, tmp_path):
    _, run = trained
    bad = _copy(run, tmp_path)
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = torch.load(bad / "model.pt", weights_only=True)
    torch.save({**state, "extra": Payload()}, bad / "model.pt")
    with pytest.raises(MedcliError) as err:
        runs.open_run(bad).load_model()
    text = str(err.value)
    assert text.startswith(f"{bad / 'model.pt'}: not a safe medcli model file") and "\n" not in text
    assert "weights_only" not in text and "can still be loaded" not in text and "trust" not in text
    assert not marker.exists()


# --- leftovers -------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writes_are_removed_when_training_starts(tmp_path):
    from medcli.training.config import TrainConfig
    from medcli.training.resume import prepare_folders

    dead, alive = _dead_pid(), os.getppid()
    work, out = tmp_path / "work" / "fold-0", tmp_path / "runs" / "fold-0"
    (out / "metrics").mkdir(parents=True)
    work.mkdir(parents=True)
    leftovers = [work / f".checkpoint.pt.tmp-{dead}", out / f".model.pt.tmp-{dead}", out / "metrics" / ".test.json.k2j4h5g6.tmp",
                 tmp_path / "runs" / f".fold-0.tmp-{dead}", tmp_path / "runs" / f".fold-0.old-{dead}"]
    kept = [work / f".checkpoint.pt.tmp-{alive}", out / "metrics" / ".val.json.a1b2c3d4.tmp", out / "config.json"]
    for path in leftovers[:3] + kept:
        path.write_bytes(b"x" * 1000)
    for folder in leftovers[3:]:
        (folder / "predictions").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(leftovers[2], (old, old))  # no process id in the name: removed once clearly abandoned
    prepare_folders(TrainConfig(data="d", out=str(out)), str(work / "checkpoint.pt"))
    assert [p for p in leftovers if p.exists()] == [] and all(p.exists() for p in kept)


def test_a_checkpoint_is_written_under_a_name_of_its_process(tmp_path, monkeypatch):
    from medcli._cleanup import is_stale
    from medcli._io import save_torch

    seen = []
    real_save = torch.save

    def save(obj, fh):
        seen.append(Path(fh.name))
        assert not is_stale(Path(fh.name))  # this process is alive
        real_save(obj, fh)

    monkeypatch.setattr(torch, "save", save)
    save_torch({"a": 1}, tmp_path / "checkpoint.pt")
    assert seen[0].name.startswith(f".checkpoint.pt.tmp-{os.getpid()}.") and (tmp_path / "checkpoint.pt").exists()
    assert not seen[0].exists()
    assert is_stale(tmp_path / f".checkpoint.pt.tmp-{_dead_pid()}.x1y2")
