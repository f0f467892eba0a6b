"""Experiment tracking (--track): TensorBoard event files and MLflow runs, read back with their own packages."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medcli import paths
from medcli.errors import MedcliError
from medcli.training import TrainConfig, train
from medcli.training import tracking

from .conftest import synthetic_fold_data

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCH_TAGS = {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/balanced_accuracy", "val/macro_f1", "val/roc_auc", "lr",
              "train/images_per_second", "epoch_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_fold_data(tmp_path_factory.mktemp("track"), per_class=10, folds=2)


def _cfg(data, tmp_path, **kw) -> TrainConfig:
    d, splits = data
    base = dict(data=str(d), splits=str(splits), backbone="customcnn", strategy="scratch", epochs=3, batch_size=16, img_size=32, channels=1,
                results=str(tmp_path / "results"), work=str(tmp_path / "work"), cache_dir=str(tmp_path / "cache"), progress=False)
    return TrainConfig(**{**base, **kw})


def _history(run: Path) -> list[dict]:
    with open(paths.history_file(run)) as fh:
        return list(csv.DictReader(fh))


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_event_files_hold_every_epoch_as_history_csv_and_the_best_score(data, tmp_path):
    summary = train(_cfg(data, tmp_path, track="tensorboard", track_dir=str(tmp_path / "tb")))
    folder = tmp_path / "tb" / "d" / "customcnn__scratch" / "seed-0" / "fold-0"
    acc = _events(folder)
    assert EPOCH_TAGS <= set(acc.Tags()["scalars"])
    history = _history(Path(summary["out"]))
    for column, tag in (("val_loss", "val/loss"), ("val_balanced_accuracy", "val/balanced_accuracy"), ("lr", "lr")):
        logged = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx([float(r[column]) for r in history], rel=1e-5)
    assert all(e.value > 0 for e in acc.Scalars("train/images_per_second"))
    assert acc.Scalars("best/val_roc_auc")[-1].value == pytest.approx(summary["best_score"], rel=1e-6)
    assert acc.Scalars("best/epoch")[-1].value == summary["best_epoch"]
    # the HParams tab: the run's settings, in the run's own folder (no extra timestamped run)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["backbone"].string_value == "customcnn" and hparams["epochs"].number_value == 3
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []


def test_a_retrained_run_replaces_its_tensorboard_events(data, tmp_path):
    cfg = _cfg(data, tmp_path, track="tensorboard", track_dir=str(tmp_path / "tb"), epochs=3)
    train(cfg)
    train(_cfg(data, tmp_path, track="tensorboard", track_dir=str(tmp_path / "tb"), epochs=2))
    acc = _events(tmp_path / "tb" / "d" / "customcnn__scratch" / "seed-0" / "fold-0")
    assert [e.step for e in acc.Scalars("val/loss")] == [1, 2]  # the 3-epoch model's curve is gone


def test_no_tracking_writes_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(_cfg(data, tmp_path))
    assert not (tmp_path / "logs").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install 'medcli[mlflow]')")
def test_mlflow_makes_one_tagged_run_per_cell_with_every_epoch(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for fold in (0, 1):
        train(_cfg(data, tmp_path, track="mlflow", fold=fold, epochs=2))
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("medcli/d")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.backbone = 'customcnn' and tags.strategy = 'scratch'")
    assert sorted(r.info.run_name for r in runs) == ["d/customcnn__scratch/seed-0/fold-0", "d/customcnn__scratch/seed-0/fold-1"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {k: r.data.tags[k] for k in tracking.TAGS} == {"dataset": "d", "backbone": "customcnn", "strategy": "scratch", "seed": "0",
                                                              "fold": r.info.run_name[-1], "recipe": "default"}
        assert r.data.params["lr"] == "0.001" and r.data.params["epochs"] == "2"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/balanced_accuracy")] == [1, 2]
        assert "best/epoch" in r.data.metrics


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install 'medcli[mlflow]')")
def test_a_failing_run_is_marked_failed_in_mlflow(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    with pytest.raises(MedcliError, match="non-finite"):
        train(_cfg(data, tmp_path, track="mlflow", track_dir=str(store), lr=1e12, optimizer="sgd", ema_epochs=0.0))
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("medcli/d").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_missing_tracker_package_is_one_line_before_any_work(data, tmp_path):
    d, splits = data
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'mlflow' else real(n, *a); "
            "from medcli.cli import main; sys.argv = ['medcli'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--data", str(d), "--splits", str(splits), "-b", "customcnn", "-s", "scratch",
                           "-e", "1", "--img-size", "32", "--track", "mlflow", "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --track mlflow: the mlflow package is not installed; pip install 'medcli[mlflow]' "
                                                "(or --track none)"]
    assert not (tmp_path / "results").exists()


def test_track_is_not_part_of_what_a_run_computes(data, tmp_path):
    a = _cfg(data, tmp_path)
    b = _cfg(data, tmp_path, track="tensorboard", track_dir="elsewhere")
    assert a.key() == b.key()
    assert "track" not in tracking.settings_of(b) and tracking.settings_of(b)["backbone"] == "customcnn"


def test_settings_are_flat_scalars_for_tensorboard_and_mlflow(data, tmp_path):
    flat = tracking.settings_of(_cfg(data, tmp_path, aliases={"a": "b"}))
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())
    assert json.loads(flat["aliases"]) == {"a": "b"} and flat["layer_decay"] == "none"


def test_the_environment_sets_tracking_under_the_config_file_and_the_options():
    from medcli.training.config import settings_from_env

    assert settings_from_env({"MEDCLI_TRACK": "tensorboard", "MEDCLI_TRACK_DIR": "tb", "MEDCLI_CACHE": "x"}) == {"track": "tensorboard", "track_dir": "tb"}
    assert settings_from_env({"MEDCLI_TRACK": ""}) == {}
    with pytest.raises(MedcliError, match="MEDCLI_TRACK 'wandb': choose one of none, mlflow, tensorboard"):
        settings_from_env({"MEDCLI_TRACK": "wandb"})


def test_the_workflow_schema_offers_every_registered_tracker():
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["properties"]["track"]["enum"]) == set(tracking.tracker_names())


def test_the_workflow_refuses_a_tracker_whose_package_is_missing_before_any_job(monkeypatch):
    from medcli import workflow as wf

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MedcliError) as err:
        wf.tracking_env({"track": "mlflow"}, "logs")
    assert str(err.value) == "config: track: mlflow: the mlflow package is not installed; pip install 'medcli[mlflow]' (or track: none)"
    monkeypatch.delenv("MEDCLI_TRACK_DIR", raising=False)
    assert wf.tracking_env({}, "L") == {"MEDCLI_TRACK": "tensorboard", "MEDCLI_TRACK_DIR": "L/tensorboard"}


_KILLED_AFTER_EPOCH_2 = """
import os, signal, sys
from medcli.training import TrainConfig, train
from medcli.training import loop
real = loop.save_checkpoint
def save_then_die(path, cfg, epoch, *args, **kwargs):
    real(path, cfg, epoch, *args, **kwargs)
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
loop.save_checkpoint = save_then_die
train(TrainConfig(**eval(sys.argv[1])))
"""


@pytest.mark.slow
@pytest.mark.parametrize("track", ["tensorboard", pytest.param("mlflow", marks=pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                                                                                  reason="mlflow is not installed"))])
def test_a_run_killed_and_resumed_shows_each_epoch_once(data, tmp_path, monkeypatch, track):
    """kill -9 after epoch 2's checkpoint, then the same settings again: one tracked run, epochs 1-4 once each."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "track"
    cfg = _cfg(data, tmp_path, track=track, track_dir=str(store), epochs=4, checkpoint_every=0.0)
    settings = {k: v for k, v in cfg.to_dict().items() if v is not None}
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_EPOCH_2, repr(settings)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    train(cfg)
    if track == "tensorboard":  # the killed run's event file holds epochs 1-2 (and 3, unless it died first)
        steps = [e.step for e in _events(store / "d" / "customcnn__scratch" / "seed-0" / "fold-0").Scalars("val/loss")]
        assert steps == [1, 2, 3, 4]
        return
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("medcli/d").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # the killed run, left RUNNING, is gone
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val/loss")] == [1, 2, 3, 4]


def test_a_tracking_server_that_does_not_answer_is_refused_at_once(monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(MedcliError, match=rf"--track mlflow: MLFLOW_TRACKING_URI http://127.0.0.1:{port} does not answer .*unset "
                                          "MLFLOW_TRACKING_URI for the local store ./mlruns, or --track none"):
        tracking.check_available("mlflow")


def test_the_workflow_keeps_a_tracking_folder_the_user_set(monkeypatch):
    from medcli import workflow as wf

    monkeypatch.setenv("MEDCLI_TRACK_DIR", "/scratch/tb")
    assert wf.tracking_env({"track": "tensorboard"}, "logs")["MEDCLI_TRACK_DIR"] == "/scratch/tb"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (pip install 'medcli[mlflow]')")
def test_cells_of_one_process_each_write_to_their_own_mlflow_store(data, tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI: a later cell must not take the first cell's store for
    the user's server."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k in (0, 1):
        train(_cfg(data, tmp_path, track="mlflow", track_dir=str(tmp_path / f"store{k}"), fold=k, epochs=1))
    for k in (0, 1):
        client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / f"store{k}").as_uri())
        runs = client.search_runs([client.get_experiment_by_name("medcli/d").experiment_id])
        assert [r.info.run_name for r in runs] == [f"d/customcnn__scratch/seed-0/fold-{k}"]
    assert tracking.local_dir(_cfg(data, tmp_path, track="mlflow", track_dir=str(tmp_path / "store2"))) == str(tmp_path / "store2")
