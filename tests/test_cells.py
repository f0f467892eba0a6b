"""``medcli train --cells``: several grid cells in one process write exactly the run folders of single runs, a
failing cell loses nothing of the others, and a rerun after a failure or a kill trains only what was missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import synthetic_fold_data
from medcli import paths
from medcli.cli import app
from medcli.errors import MedcliError
from medcli.training import train
from medcli.training.cells import cell_log_file, train_cells
from medcli.training.config import from_dict, read_cells

pytestmark = pytest.mark.usefixtures("one_thread")

# Differ between two trainings of the same cell however deterministic it is: times and where it ran.
VOLATILE_RUN = ("finished", "hardware", "run_id")  # run_id: a new identity per trained (or restored) model
VOLATILE_SUMMARY = ("train_seconds",)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cells")
    return synthetic_fold_data(root, per_class=12, folds=3, n_classes=3)


def _cells(data: tuple[Path, Path], root: Path) -> list[dict]:
    """Three cells that differ in every way a grid's cells do: backbone, seed, fold and precision (bf16 on the
    CPU after fp32, which Accelerate's process-wide state refuses unless medcli resets it)."""
    images, splits = data
    common = dict(data=str(images), splits=str(splits), strategy="scratch", epochs=2, batch_size=16, img_size=32, channels=1,
                  results=str(root / "results"), work=str(root / "work"), cache_dir=str(root.parent / "cache"), progress=False)
    return [
        {**common, "backbone": "customcnn", "seed": 0, "fold": 0},
        {**common, "backbone": "resnet18_small", "seed": 1, "fold": 1},
        {**common, "backbone": "customcnn", "seed": 2, "fold": 2, "precision": "bf16"},
    ]


def _comparable(run: Path) -> dict:
    """Everything a run folder holds, minus wall-clock times and the host."""
    doc = json.loads((run / "config.json").read_text())
    for key in VOLATILE_RUN:
        doc.pop(key)
    for key in VOLATILE_SUMMARY:
        doc["summary"].pop(key)
    history = [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]  # last column: seconds
    assert history[0].endswith("lr")
    model = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    assert model.pop("run_id") == json.loads((run / "config.json").read_text())["run_id"]  # one model: the same identity
    return {"config": doc, "history": history, "val": (run / "predictions" / "val.csv").read_bytes(),
            "metrics": (run / "metrics" / "val.json").read_bytes() if (run / "metrics" / "val.json").exists() else None,
            "files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()), "model": model}


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:300]]


def _same(a: dict, b: dict) -> None:
    ma, mb = a.pop("model"), b.pop("model")
    assert _differences(a, b) == []
    sa, sb = ma["state_dict"], mb["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert {k: v for k, v in ma.items() if k != "state_dict"} == {k: v for k, v in mb.items() if k != "state_dict"}


def test_cells_in_one_process_write_the_run_folders_of_single_runs(data, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    for settings in _cells(data, single):
        train(from_dict(settings))
    results = train_cells([from_dict(s) for s in _cells(data, multi)], logs=tmp_path / "logs")
    assert [r.status for r in results] == ["trained"] * 3
    runs = sorted(p.relative_to(single / "results") for p in (single / "results").rglob("config.json"))
    assert len(runs) == 3 and runs == sorted(p.relative_to(multi / "results") for p in (multi / "results").rglob("config.json"))
    for run in runs:
        a, b = _comparable(single / "results" / run.parent), _comparable(multi / "results" / run.parent)
        for doc, root in ((a, single), (b, multi)):  # the only difference allowed: where each tree lives
            doc["config"] = json.loads(json.dumps(doc["config"]).replace(str(root), "ROOT"))
        _same(a, b)
    # each cell's own log holds its lines, and only its lines
    logs = [Path(cell_log_file(tmp_path / "logs", r)) for r in (from_dict(s) for s in _cells(data, multi))]
    texts = [p.read_text() for p in logs]
    assert all("training" in t and "best epoch" in t for t in texts)
    assert "resnet18_small" in texts[1] and "resnet18_small" not in texts[0] + texts[2]
    # everything finished: nothing kept in the work folder for a rerun to restore
    assert not list((multi / "work").rglob("finished"))


def _broken(cell: dict, tmp_path: Path) -> dict:
    """The cell, starting from a weights file that exists but is not one: it fails when its turn comes."""
    (tmp_path / "broken.safetensors").write_bytes(b"not a weights file")
    return {**cell, "strategy": "full", "weights": str(tmp_path / "broken.safetensors")}


def test_a_fold_the_splits_do_not_have_is_refused_before_any_cell_trains(data, tmp_path):
    cells = _cells(data, tmp_path)[:2]
    with pytest.raises(MedcliError, match=r"cell 2 \(.*\): fold 7: .*splits.json has folds 0..2"):
        train_cells([from_dict(cells[0]), from_dict({**cells[1], "fold": 7})])
    assert not (tmp_path / "results").exists()


def test_a_failing_cell_does_not_stop_the_others_and_the_rerun_trains_only_it(data, tmp_path):
    cells = _cells(data, tmp_path)[:2]
    bad = _broken(cells[1], tmp_path)
    file = tmp_path / "cells.yaml"
    file.write_text(yaml.safe_dump([cells[0], bad]))
    result = CliRunner().invoke(app, ["train", "--cells", str(file)])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert "1 of 2 cells failed" in last and "broken.safetensors" in last and "Traceback" not in result.output
    good = Path(paths.run_dir(tmp_path / "results", "d", "customcnn", "scratch", 0, 0))
    model = good / "model.pt"
    assert model.is_file()
    finished = Path(paths.finished_copy_dir(paths.work_dir(tmp_path / "work", "d", "customcnn", "scratch", 0, 0)))
    assert (finished / "model.pt").samefile(model)  # kept, as a hard link, because not every cell finished

    # a workflow rerun starts with the job's outputs removed; the finished cell comes back, the fixed one trains
    inode = model.stat().st_ino
    shutil.rmtree(good)
    file.write_text(yaml.safe_dump([cells[0], cells[1]]))
    result = CliRunner().invoke(app, ["train", "--cells", str(file)])
    assert result.exit_code == 0, result.output
    statuses = [line.split()[0] for line in result.output.strip().splitlines()[-2:]]
    assert statuses == ["restored", "trained"]
    assert model.stat().st_ino == inode and (good / "config.json").is_file()  # the very file trained before
    assert not finished.exists()  # all finished: the copies are gone, so a forced rerun trains again


def test_a_finished_copy_of_other_settings_is_not_restored(data, tmp_path):
    cell = _cells(data, tmp_path)[0]
    failing = _broken(_cells(data, tmp_path)[1], tmp_path)
    train_cells([from_dict(cell), from_dict(failing)])
    run = Path(paths.run_dir(tmp_path / "results", "d", "customcnn", "scratch", 0, 0))
    before = json.loads((run / "config.json").read_text())
    shutil.rmtree(run)
    results = train_cells([from_dict({**cell, "epochs": 3})])  # another number of epochs: another model
    assert results[0].status == "trained"
    after = json.loads((run / "config.json").read_text())
    assert (before["summary"]["epochs_run"], after["summary"]["epochs_run"]) == (2, 3)


def test_the_rerun_of_a_killed_process_completes_only_what_was_missing(data, tmp_path):
    """kill -9 while the second of three cells trains; the rerun restores the first, trains the rest, and every
    run folder is then what an uninterrupted call writes."""
    root, reference = tmp_path / "killed", tmp_path / "reference"
    cells = [{**c, "epochs": 6} for c in _cells(data, root)]
    root.mkdir()
    file = root / "cells.json"
    file.write_text(json.dumps(cells))
    env = {**os.environ, "MEDCLI_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medcli", "train", "--cells", str(file)]
    first = Path(paths.run_dir(root / "results", "d", "customcnn", "scratch", 0, 0))
    kept = Path(paths.finished_copy_dir(paths.work_dir(root / "work", "d", "customcnn", "scratch", 0, 0))) / "cell.json"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not kept.exists() and proc.poll() is None and time.time() < deadline:  # the first cell has finished
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (first / "config.json").exists(), "the first cell should have finished before the kill"
    killed_finished = json.loads((first / "config.json").read_text())["finished"]
    assert not (Path(paths.run_dir(root / "results", "d", "customcnn", "scratch", 2, 2)) / "config.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = [line.split()[0] for line in rerun.stdout.strip().splitlines()[-3:]]
    assert statuses == ["restored", "trained", "trained"]
    assert json.loads((first / "config.json").read_text())["finished"] == killed_finished  # not trained again

    train_cells([from_dict({**c, "epochs": 6}) for c in _cells(data, reference)])
    runs = sorted(p.parent.relative_to(root / "results") for p in (root / "results").rglob("config.json"))
    assert len(runs) == 3
    for rel in runs:
        a, b = _comparable(root / "results" / rel), _comparable(reference / "results" / rel)
        for doc, top in ((a, root), (b, reference)):
            doc["config"] = json.loads(json.dumps(doc["config"]).replace(str(top), "ROOT"))
        _same(a, b)


@pytest.mark.slow
def test_cells_at_once_in_worker_processes_give_the_same_runs(data, tmp_path):
    cells = _cells(data, tmp_path / "seq")
    train_cells([from_dict(s) for s in cells])
    parallel = _cells(data, tmp_path / "par")
    results = train_cells([from_dict(s) for s in parallel], at_once=2, logs=tmp_path / "logs")
    assert [r.status for r in results] == ["trained"] * 3
    for run in (tmp_path / "seq" / "results").rglob("config.json"):
        rel = run.parent.relative_to(tmp_path / "seq" / "results")
        assert (run.parent / "predictions" / "val.csv").read_bytes() == (tmp_path / "par" / "results" / rel / "predictions" / "val.csv").read_bytes()
    assert all(Path(cell_log_file(tmp_path / "logs", from_dict(s))).read_text().count("best epoch") == 1 for s in parallel)


def test_two_cells_writing_one_run_folder_are_refused_before_training(data, tmp_path):
    cell = _cells(data, tmp_path)[0]
    with pytest.raises(MedcliError, match="cells 1 and 2 would both write the run folder"):
        train_cells([from_dict(cell), from_dict({**cell, "lr": 0.01})])
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("{backbone: customcnn}", "expected a non-empty list of cells"),
    ("[]", "got an empty list"),
    ("[{backbone: customcnn}, [1, 2]]", "cell 2: expected a mapping"),
    ("[{backbone: customcnn}, {epoks: 3}]", "cell 2: unknown training setting 'epoks'; did you mean epochs"),
    ("[{lr: fast}]", "cell 1: lr"),
])
def test_a_bad_cells_file_is_one_line_naming_file_and_cell(tmp_path, text, message):
    file = tmp_path / "cells.yaml"
    file.write_text(text)
    with pytest.raises(MedcliError, match=message) as err:
        read_cells(file)
    assert str(err.value).startswith(f"{file}: ")
    result = CliRunner().invoke(app, ["train", "--cells", str(file)])
    assert result.exit_code == 1 and message.split(";")[0] in result.output and "Traceback" not in result.output


def test_cells_sit_on_top_of_the_config_file_and_under_the_options(tmp_path, monkeypatch):
    """The workflow's split: shared settings in --config, what differs in --cells; options given override both."""
    seen: list = []

    def fake(cells, *, at_once, logs):
        seen.append((cells, at_once, logs))
        return []

    monkeypatch.setattr("medcli.training.cells.train_cells", fake)
    common, cells = tmp_path / "common.json", tmp_path / "cells.json"
    common.write_text(json.dumps({"data": "d", "backbone": "customcnn", "lr": 0.01, "epochs": 5}))
    cells.write_text(json.dumps([{"fold": 0, "out": "a"}, {"fold": 1, "out": "b", "epochs": 9}]))
    result = CliRunner().invoke(app, ["train", "--config", str(common), "--cells", str(cells), "--epochs", "3",
                                      "--cells-at-once", "2", "--cell-logs", str(tmp_path / "logs")])
    assert result.exit_code == 0, result.output
    (got, at_once, logs), = seen
    assert [(c.fold, c.out, c.epochs, c.lr, c.backbone) for c in got] == [(0, "a", 3, 0.01, "customcnn"), (1, "b", 3, 0.01, "customcnn")]
    assert (at_once, logs) == (2, tmp_path / "logs")
    assert [c.given >= {"fold", "out", "epochs", "lr", "data"} for c in got] == [True, True]  # recipes see what was given


def test_training_into_a_run_folder_removes_the_model_card_of_the_model_it_replaces(data, tmp_path):
    cell = _cells(data, tmp_path)[0]
    run = Path(paths.run_dir(tmp_path / "results", "d", "customcnn", "scratch", 0, 0))
    run.mkdir(parents=True)
    Path(paths.model_card_file(run)).write_text("# Model card of an older model\n")
    train(from_dict(cell))
    assert (run / "model.pt").is_file() and not Path(paths.model_card_file(run)).exists()
