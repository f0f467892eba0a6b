"""Recipes, the resolved defaults (budget, patience), selection by AUC, the lr schedules and weight averaging."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.errors import MedcliError
from medcli.models import create_model
from medcli.runs import read_predictions
from medcli.training import TrainConfig, train
from medcli.training import config as schema_lib
from medcli.training.averaging import WeightAverage, ema_decay
from medcli.training.loop import build_optimizer, lr_schedule, val_metrics
from medcli.training.recipes import Recipe, get_recipe, list_recipes, register_recipe
from tests.conftest import synthetic_fold_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic_fold_data(tmp_path_factory.mktemp("data"), per_class=30, folds=2)


def _settings(dataset, tmp_path, **kw) -> dict:
    data, splits = dataset
    return {"data": str(data), "splits": str(splits), "backbone": "customcnn", "strategy": "scratch", "batch_size": 16, "img_size": 32,
            "channels": 1, "results": str(tmp_path / "results"), "work": str(tmp_path / "work"), "progress": False, **kw}


def _history(run: str) -> list[dict]:
    with open(paths.history_file(run)) as fh:
        return list(csv.DictReader(fh))


# --- recipes ------------------------------------------------------------------------------------------------------


def test_a_recipe_sets_its_settings_and_options_given_explicitly_win():
    cfg = schema_lib.from_dict({"recipe": "medmnist-v2", "epochs": 7})
    assert (cfg.optimizer, cfg.batch_size, cfg.schedule, cfg.monitor, cfg.augment, cfg.class_weights) == ("adam", 128, "step", "auc", False, False)
    assert cfg.weight_decay == 0 and cfg.ema_epochs == 0 and cfg.warmup_epochs == 0
    assert cfg.epochs == 7  # explicit beats the recipe's 100
    assert schema_lib.from_dict({}).recipe == "default" and schema_lib.from_dict({}) == TrainConfig()  # default: the schema defaults


def test_the_command_line_applies_the_recipe_under_its_options(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("medcli.training.loop.train", lambda cfg: seen.append(cfg) or {"main_process": False})
    cell = tmp_path / "cell.yaml"
    cell.write_text("recipe: medmnist-v2\nbatch_size: 64\n")
    result = CliRunner().invoke(app, ["train", "--data", "d", "--config", str(cell), "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.recipe, cfg.batch_size, cfg.lr, cfg.optimizer, cfg.epochs) == ("medmnist-v2", 64, 0.01, "adam", 100)
    result = CliRunner().invoke(app, ["train", "--data", "d", "--recipe", "fastest"])
    assert result.exit_code == 1 and "recipe: unknown recipe 'fastest': choose one of default, medmnist-v2, quick" in result.output
    listed = CliRunner().invoke(app, ["recipes"], terminal_width=200)
    assert listed.exit_code == 0 and all(name in listed.output for name in list_recipes()) and "--no-augment" in listed.output


def test_a_recipe_named_in_python_but_never_applied_is_refused(dataset, tmp_path):
    with pytest.raises(MedcliError, match="recipe 'medmnist-v2' was named in a TrainConfig built directly, so it was not applied"):
        schema_lib.resolve(TrainConfig(**_settings(dataset, tmp_path), recipe="medmnist-v2"))


def test_registering_a_recipe_checks_its_settings():
    with pytest.raises(MedcliError, match="recipe broken: unknown training setting 'epoch'"):
        register_recipe("broken", Recipe("x", {"epoch": 3}))
    with pytest.raises(MedcliError, match="recipe broken: monitor 'f2'"):
        register_recipe("broken", Recipe("x", {"monitor": "f2"}))
    assert "broken" not in list_recipes() and get_recipe("quick").settings["epochs"] == 2


# --- resolved defaults --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_train, batch, epochs, patience", [
    (1080, 32, 61, 16),    # RetinaMNIST: 33 steps per epoch -> ~2,000 steps
    (613, 32, 100, 25),    # chest CT: 19 steps per epoch -> 106, clipped to 100
    (100_000, 32, 30, 10), # a large dataset keeps at least 30 epochs
    (20, 32, 100, 25),     # fewer images than a batch: one step per epoch
])
def test_the_default_budget_follows_the_dataset_size(n_train, batch, epochs, patience):
    cfg, resolved = schema_lib.resolve_budget(TrainConfig(batch_size=batch), n_train)
    assert (cfg.epochs, cfg.patience) == (epochs, patience)
    assert resolved["epochs"]["value"] == epochs and f"{n_train} training images" in resolved["epochs"]["reason"]
    assert resolved["patience"]["value"] == patience


def test_given_epochs_and_patience_are_kept_and_the_recipe_is_given_as_the_reason():
    cfg, resolved = schema_lib.resolve_budget(schema_lib.from_dict({"recipe": "medmnist-v2", "patience": 5}), 1080)
    assert (cfg.epochs, cfg.patience) == (100, 5)
    assert resolved["epochs"] == {"value": 100, "reason": "recipe medmnist-v2"} and "patience" not in resolved
    assert resolved["optimizer"] == {"value": "adam", "reason": "recipe medmnist-v2"}


# --- schedules, optimizer, AUC ----------------------------------------------------------------------------------------


def test_step_schedule_divides_by_ten_at_half_and_three_quarters_of_the_phase():
    factor = lr_schedule("step", 100, 0, 0.01)
    assert [factor(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_schedule("constant", 100, 10, 0.01)(5) == pytest.approx(0.01 + 0.99 * 0.5) and lr_schedule("constant", 100, 10, 0.01)(90) == 1
    cosine = lr_schedule("cosine", 100, 0, 0.01)
    assert cosine(0) == pytest.approx(1) and cosine(100) == pytest.approx(0.01)


def test_adam_is_adam_with_l2_weight_decay():
    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(optimizer="adam", weight_decay=0.1)
    opt = build_optimizer(cfg, [{"params": list(model.parameters())}])
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 0.1


def test_validation_auc_is_sklearns_macro_one_vs_rest():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    logits = rng.normal(size=(40, 4)) + np.eye(4)[y]
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert val_metrics(logits, y)["val_roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    binary = logits[:, :2]
    assert val_metrics(binary, y % 2)["val_roc_auc"] == pytest.approx(roc_auc_score(y % 2, binary[:, 1] - binary[:, 0]))
    assert math.isnan(val_metrics(logits, np.zeros(40, dtype=int))["val_roc_auc"])


# --- weight averaging -------------------------------------------------------------------------------------------------


def test_the_average_is_timms_warmed_up_ema_and_the_head_only_average_shares_the_trunk():
    torch.manual_seed(0)
    model = create_model("customcnn", 3, in_channels=1)
    decay = ema_decay(2, 10)
    assert decay == pytest.approx(0.95) and ema_decay(0.5, 1) == 0
    average = WeightAverage(model, decay)
    expected = {k: v.clone().float() for k, v in model.state_dict().items()}
    for step in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        average.update(step)
        t = step - 1  # timm counts the first update as step 0: a plain copy
        d = 0.0 if t <= 0 else min(decay, 1 - (1 + t) ** -0.75)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
    got = average.averaged().state_dict()
    assert all(torch.allclose(got[k].float(), expected[k], atol=1e-5) for k in expected if model.state_dict()[k].is_floating_point())
    assert not torch.equal(got["head.weight"], model.state_dict()["head.weight"])

    head_only = WeightAverage(model, decay, head_only=True)
    view = head_only.averaged()
    assert view.trunk is model.trunk and view.head is not model.head and head_only.counterpart(model.head) is view.head
    assert set(view.state_dict()) == set(model.state_dict()) and set(head_only.state_dict()) == set(model.head.state_dict())


def test_training_records_recipe_resolution_and_selects_the_saved_averaged_weights_by_auc(dataset, tmp_path):
    summary = train(schema_lib.from_dict(_settings(dataset, tmp_path / "ema", epochs=4, ema_epochs=1.0)))
    run = summary["out"]
    doc = json.loads(Path(paths.config_file(run)).read_text())
    assert doc["config"]["recipe"] == "default" and doc["config"]["monitor"] == "auc"
    assert doc["resolved"]["patience"]["value"] == 10 and "epochs" not in doc["resolved"]
    steps = doc["summary"]["n_train"] // 16  # batch 16, the last incomplete batch dropped
    assert doc["summary"]["weight_average"] == {"method": "ema", "epochs": 1.0, "decay": pytest.approx(1 - 1 / steps), "head_only": False}
    history = _history(run)
    aucs = [float(r["val_roc_auc"]) for r in history]
    assert summary["best_epoch"] == int(np.argmax(aucs)) + 1 and summary["best_score"] == pytest.approx(max(aucs), abs=1e-5)
    # the saved model is the one that was scored: its validation predictions give the recorded best AUC
    pred = read_predictions(paths.predictions_file(run, "val"), doc["classes"])
    y = pred["label"].map({c: k for k, c in enumerate(doc["classes"])}).to_numpy()
    probs = pred[[f"prob_{c}" for c in doc["classes"]]].to_numpy()
    assert roc_auc_score(y, probs, multi_class="ovr") == pytest.approx(summary["best_score"], abs=1e-5)

    raw = train(schema_lib.from_dict(_settings(dataset, tmp_path / "raw", epochs=4, ema_epochs=0.0)))
    a = torch.load(paths.model_file(run), weights_only=True)["state_dict"]
    b = torch.load(paths.model_file(raw["out"]), weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)  # same seed, same steps: the average is not the raw weights
    assert json.loads(Path(paths.config_file(raw["out"])).read_text())["summary"]["weight_average"] is None


def test_the_medmnist_recipe_trains_with_its_step_schedule_and_records_why(dataset, tmp_path):
    summary = train(schema_lib.from_dict(_settings(dataset, tmp_path, recipe="medmnist-v2", epochs=4, batch_size=8)))
    doc = json.loads(Path(paths.config_file(summary["out"])).read_text())
    assert doc["config"]["recipe"] == "medmnist-v2" and doc["resolved"]["schedule"]["reason"] == "recipe medmnist-v2"
    assert "batch_size" not in doc["resolved"] and "epochs" not in doc["resolved"]  # given explicitly
    lrs = [float(r["lr"]) for r in _history(summary["out"])]  # after each epoch: x0.1 once half and again once 3/4 are done
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5])
    assert summary["weight_average"] is None and summary["epochs_run"] == 4  # patience 100: no early stop


def test_a_workflow_recipe_reaches_the_cell_under_the_cells_own_settings(tmp_path):
    import yaml

    from medcli import workflow as wf

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    config["train"]["recipe"] = "medmnist-v2"
    config["strategies"]["linear"] = {"lr": 0.003, "recipe": "quick"}  # a strategy may name its own
    text = wf.job_settings(wf.train_settings(config, wf.Cell("demo", "resnet18", "full", 0, 1, "pretrained")), data="d", name="demo",
                           weights="none", out="o", results="r", work="w", cache="c")
    (tmp_path / "cell.json").write_text(text)
    cfg = schema_lib.from_dict(schema_lib.read_settings(tmp_path / "cell.json"))
    assert (cfg.recipe, cfg.optimizer, cfg.schedule) == ("medmnist-v2", "adam", "step")
    assert (cfg.epochs, cfg.batch_size) == (6, 32)  # the config's train: section overrides the recipe
    linear = wf.train_settings(config, wf.Cell("demo", "resnet18", "linear", 0, 1, "pretrained"))
    assert linear["recipe"] == "quick"


def test_a_run_file_re_runs_with_its_recipe_and_data_derived_values_derived_again(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("medcli.training.loop.train", lambda cfg: seen.append(cfg) or {"main_process": False})
    cfg = schema_lib.from_dict({"data": str(tmp_path), "recipe": "medmnist-v2", "epochs": 7})
    trained, resolved = schema_lib.resolve_budget(cfg, 1080)
    doc = {"format": "medcli.run/1", "config": trained.to_dict(), "resolved": resolved}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert CliRunner().invoke(app, ["train", "--config", str(tmp_path / "config.json")]).exit_code == 0
    assert seen[-1].to_dict() == cfg.to_dict()  # the same settings as given, before the data decided anything
    assert CliRunner().invoke(app, ["train", "--config", str(tmp_path / "config.json"), "--recipe", "default"]).exit_code == 0
    assert (seen[-1].optimizer, seen[-1].epochs, seen[-1].batch_size) == ("adamw", 7, 32)  # another recipe really applies

    # a run recorded before recipes existed re-runs as it was trained: no weight averaging
    old = {k: v for k, v in trained.to_dict().items() if k not in ("recipe", "ema_epochs", "schedule")}
    (tmp_path / "old.json").write_text(json.dumps({"format": "medcli.run/1", "config": {**old, "optimizer": "adamw", "monitor": "balanced_accuracy"}}))
    assert CliRunner().invoke(app, ["train", "--config", str(tmp_path / "old.json")]).exit_code == 0
    assert (seen[-1].ema_epochs, seen[-1].schedule, seen[-1].monitor) == (0.0, "cosine", "balanced_accuracy")


def test_the_default_auc_monitor_falls_back_to_loss_on_a_single_class_validation_part(tmp_path):
    from medcli.data.synth import make_synthetic as synth
    from medcli.splits import split_data

    data = synth(tmp_path / "d", layout="imagefolder", n_classes=2, per_class=12, size=32, noise=0.1)
    doc_path = tmp_path / "splits.json"
    split_data(data, doc_path, folds=0, seed=0, val_fraction=0.2)
    doc = json.loads(doc_path.read_text())
    fold = doc["folds"][0]
    labels = doc["labels"]
    keep = labels[fold["val"][0]]
    moved = [i for i in fold["val"] if labels[i] != keep]
    fold["val"], fold["train"] = [i for i in fold["val"] if labels[i] == keep], fold["train"] + moved
    doc_path.write_text(json.dumps(doc))
    settings = _settings((data, doc_path), tmp_path, epochs=2, allow_missing_classes=True)
    summary = train(schema_lib.from_dict(settings))
    resolved = json.loads(Path(paths.config_file(summary["out"])).read_text())["resolved"]
    assert summary["monitor"] == "loss" and "single class" in resolved["monitor"]["reason"]
    with pytest.raises(MedcliError, match="--monitor auc: fold 0's validation part has a single class"):
        train(schema_lib.from_dict({**settings, "monitor": "auc", "out": str(tmp_path / "explicit")}))


def test_monitor_last_keeps_the_final_weights_without_early_stopping(dataset, tmp_path):
    summary = train(schema_lib.from_dict(_settings(dataset, tmp_path, epochs=3, patience=1, monitor="last", ema_epochs=0.0)))
    assert (summary["best_epoch"], summary["epochs_run"], summary["stopped_early"]) == (3, 3, False)
