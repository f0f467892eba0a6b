"""Training behaves as promised: it learns, it is reproducible, it resumes, strategies freeze what they say."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.models import create_model, load_model
from medcli.splits import split_data
from medcli.training import TrainConfig, train
from medcli.training import loop as loop_mod


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    data = make_synthetic(root / "d", layout="presplit", n_classes=3, per_class=40, size=32, noise=0.1)
    splits = split_data(data, root / "splits.json", folds=3, seed=0) and root / "splits.json"
    return data, splits


def _cfg(dataset, tmp_path, **kw) -> TrainConfig:
    data, splits = dataset
    base = dict(data=str(data), splits=str(splits), backbone="customcnn", strategy="scratch", epochs=2, batch_size=16, img_size=32,
                channels=1, results=str(tmp_path / "results"), work=str(tmp_path / "work"), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _history(run: str) -> list[dict]:
    with open(paths.history_file(run)) as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _trunk_weights_file(tmp_path: Path, backbone: str, channels: int = 1) -> Path:
    torch.manual_seed(123)
    model = create_model(backbone, 3, in_channels=channels)
    path = tmp_path / f"{backbone}-pretrained.pt"
    torch.save(model.trunk.state_dict(), path)
    return path


def test_learns_a_synthetic_task_well_above_chance(dataset, tmp_path):
    summary = train(_cfg(dataset, tmp_path, epochs=12, lr=3e-3))
    assert summary["best_score"] > 0.8  # chance is 1/3
    run = summary["out"]
    for f in (paths.config_file(run), paths.history_file(run), paths.model_file(run), paths.predictions_file(run, "val")):
        assert Path(f).stat().st_size > 0
    model, meta = load_model(paths.model_file(run))
    assert meta["classes"] == ["disk", "square", "triangle"]
    assert torch.load(paths.model_file(run), weights_only=True)["preprocess"]["img_size"] == 32


def test_same_seed_identical_history_and_weights(dataset, tmp_path):
    a = train(_cfg(dataset, tmp_path / "a", seed=3))
    b = train(_cfg(dataset, tmp_path / "b", seed=3))
    assert _history(a["out"]) == _history(b["out"])
    wa = torch.load(paths.model_file(a["out"]), weights_only=True)["state_dict"]
    wb = torch.load(paths.model_file(b["out"]), weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_cfg(dataset, tmp_path / "c", seed=4))
    assert _history(c["out"]) != _history(a["out"])


def test_killed_run_resumes_to_the_same_result(dataset, tmp_path, monkeypatch):
    full = train(_cfg(dataset, tmp_path / "full", epochs=4))

    real_save = loop_mod._save_checkpoint

    def save_then_die(path, cfg, epoch, *args, **kwargs):
        real_save(path, cfg, epoch, *args, **kwargs)
        if epoch == 2:
            raise KeyboardInterrupt  # the job is killed right after epoch 2's checkpoint

    cfg = _cfg(dataset, tmp_path / "killed", epochs=4, checkpoint_every=0)
    monkeypatch.setattr(loop_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert not Path(paths.model_file(cfg.out or paths.run_dir(cfg.results, "d", "customcnn", "scratch", 0, 0))).exists()
    monkeypatch.setattr(loop_mod, "_save_checkpoint", real_save)
    resumed = train(cfg)
    assert _history(resumed["out"]) == _history(full["out"])
    assert not Path(paths.checkpoint_file(paths.work_dir(cfg.work, "d", "customcnn", "scratch", 0, 0))).exists()


def test_linear_strategy_keeps_trunk_and_bn_statistics_bit_identical(dataset, tmp_path):
    weights = _trunk_weights_file(tmp_path, "resnet18")
    summary = train(_cfg(dataset, tmp_path, backbone="resnet18", strategy="linear", weights=str(weights), epochs=2))
    trained = torch.load(paths.model_file(summary["out"]), weights_only=True)["state_dict"]
    original = torch.load(weights, weights_only=True)
    for key, value in original.items():  # weights and BatchNorm running statistics
        assert torch.equal(trained[f"trunk.{key}"], value), key
    fresh = create_model("resnet18", 3, in_channels=1)
    assert not torch.equal(trained["head.weight"], fresh.head.weight.detach()) or not torch.equal(trained["head.bias"], fresh.head.bias.detach())


@pytest.mark.parametrize("backbone", ["customcnn", "resnet18"])
@pytest.mark.parametrize("strategy", ["scratch", "linear", "partial", "full", "two-phase"])
def test_every_strategy_runs(dataset, tmp_path, backbone, strategy):
    weights = None if strategy == "scratch" else str(_trunk_weights_file(tmp_path, backbone))
    summary = train(_cfg(dataset, tmp_path, backbone=backbone, strategy=strategy, weights=weights, epochs=2, freeze_epochs=1))
    history = _history(summary["out"])
    assert len(history) == 2
    if strategy == "two-phase":
        assert history[0]["phase"] != history[1]["phase"]


def test_weights_from_a_medcli_checkpoint(dataset, tmp_path):
    first = train(_cfg(dataset, tmp_path / "a", epochs=1))
    second = train(_cfg(dataset, tmp_path / "b", strategy="linear", weights=paths.model_file(first["out"]), epochs=1))
    a = torch.load(paths.model_file(first["out"]), weights_only=True)["state_dict"]
    b = torch.load(paths.model_file(second["out"]), weights_only=True)["state_dict"]
    trunk = [k for k in a if k.startswith("trunk.")]
    assert trunk and all(torch.equal(a[k], b[k]) for k in trunk)
    assert json.loads(Path(paths.config_file(second["out"])).read_text())["config"]["weights"].endswith("model.pt")


def test_invalid_combinations_are_refused(dataset, tmp_path):
    with pytest.raises(MedcliError, match="linear"):
        train(_cfg(dataset, tmp_path, strategy="linear", weights="none"))
    with pytest.raises(MedcliError, match="fold"):
        train(_cfg(dataset, tmp_path, fold=7))


def test_non_finite_loss_stops_with_epoch_and_step(dataset, tmp_path):
    with pytest.raises(MedcliError, match=r"non-finite at epoch 1, step \d+; lower --lr"):
        train(_cfg(dataset, tmp_path, lr=float("1e30"), optimizer="sgd", epochs=2))


def test_cli_train_by_hand_and_offline_imagenet_error(dataset, tmp_path, monkeypatch):
    data, _ = dataset
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(data), "--backbone", "customcnn", "--strategy", "scratch", "--epochs", "1", "--img-size", "32"])
    assert res.exit_code == 0, res.output
    run = Path(paths.run_dir("results", "d", "customcnn", "scratch", 0, 0))
    assert (run / "model.pt").exists() and "run folder" in res.output
    assert Path("results/d/splits.json").exists()  # made from the dataset's own train/val split

    import urllib.request

    def no_network(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    res = runner.invoke(app, ["train", "--data", str(data), "--backbone", "resnet18", "--strategy", "linear", "--epochs", "1", "--img-size", "32"])
    assert res.exit_code == 1
    assert "medcli weights download resnet18" in res.output


def test_two_processes_with_torchrun_write_one_set_of_outputs(dataset, tmp_path):
    """Data-parallel training on the CPU (gloo): the same code path as several GPUs."""
    import os
    import socket
    import subprocess
    import sys

    data, splits = dataset
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "medcli", "train", "--data", str(data), "--splits", str(splits), "--backbone", "customcnn", "--strategy", "scratch",
           "--epochs", "2", "--img-size", "32", "--channels", "1", "--batch-size", "16", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(paths.run_dir(tmp_path / "results", "d", "customcnn", "scratch", 0, 0))
    config = json.loads((run / "config.json").read_text())
    assert config["summary"]["num_processes"] == 2
    assert len(_history(str(run))) == 2
    assert proc.stdout.count("run folder:") == 1  # rank 1 prints nothing
    assert proc.stderr.count("epoch 2/2") == 1
    with open(run / "predictions" / "val.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == config["summary"]["n_val"] and len({r["id"] for r in rows}) == len(rows)


def test_compile_trains_the_same_model(dataset, tmp_path, monkeypatch):
    """--compile runs the model through torch.compile; the numbers are those of the eager run."""
    eager = train(_cfg(dataset, tmp_path / "eager", epochs=1))
    real, compiled_modules = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled_modules.append(module) or real(module, **kw))
    compiled = train(_cfg(dataset, tmp_path / "compiled", epochs=1, compile=True))
    assert compiled_modules, "--compile did not reach torch.compile"
    for a, b in zip(_history(eager["out"]), _history(compiled["out"])):
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-4)
        assert a["val_balanced_accuracy"] == b["val_balanced_accuracy"]
    assert json.loads(Path(paths.config_file(compiled["out"])).read_text())["config"]["compile"] is True
    model, _ = load_model(paths.model_file(compiled["out"]))  # saved without torch.compile's wrapper
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_checkpoints_are_written_at_most_every_checkpoint_every_seconds(dataset, tmp_path, monkeypatch):
    saved = []
    real_save = loop_mod._save_checkpoint
    monkeypatch.setattr(loop_mod, "_save_checkpoint", lambda path, cfg, epoch, *a, **kw: saved.append(epoch) or real_save(path, cfg, epoch, *a, **kw))
    train(_cfg(dataset, tmp_path / "every", epochs=3, checkpoint_every=0))
    assert saved == [1, 2]  # never after the last epoch: the run folder is written instead
    saved.clear()
    summary = train(_cfg(dataset, tmp_path / "rarely", epochs=3, checkpoint_every=3600))
    assert saved == [] and Path(paths.model_file(summary["out"])).exists()
