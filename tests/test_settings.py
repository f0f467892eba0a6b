"""The training-settings schema: one declaration, reachable from the CLI, a config file and the workflow."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medcli import workflow as wf
from medcli.cli import app
from medcli.errors import MedcliError
from medcli.training import TrainConfig
from medcli.training import config as schema_lib

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_workflow_train_schema_is_the_settings_schema():
    block = dict(WORKFLOW_SCHEMA["$defs"]["train"]["properties"])
    block.pop("weights")  # the workflow's own key (backbones.<b>.weights), not a training setting
    expected = schema_lib.workflow_schema()
    assert block == expected, "workflow/schemas/config.schema.yaml drifted from TrainConfig: regenerate with `python -m medcli.training.config`"


def test_every_setting_is_declared_with_a_group_help_and_a_workflow_home():
    dataset_keys = set(WORKFLOW_SCHEMA["properties"]["datasets"]["additionalProperties"]["properties"])
    for name, s in schema_lib.schema().items():
        assert s.help and s.group in (schema_lib.DATA, schema_lib.MODEL, schema_lib.OPTIMISATION, schema_lib.AUGMENTATION, schema_lib.RUN)
        assert s.workflow in schema_lib.WORKFLOW_SCOPES, name
        if s.workflow == "dataset":
            assert name in dataset_keys, f"{name} is read from datasets.<name> but the workflow schema has no such key"
    assert {f.name for f in fields(TrainConfig)} - set(schema_lib.schema()) == {"given"}  # the one field that is not a setting


def test_every_setting_has_a_command_line_option():
    import typer.main

    command = typer.main.get_command(app).commands["train"]
    options = {opt for p in command.params for opt in p.opts + p.secondary_opts}
    for name in schema_lib.schema():
        assert schema_lib.option_name(name) in options, name
    assert {"--config", "-b", "-s", "--no-augment", "--hidden", "--momentum", "--min-lr-ratio", "--channels-last"} <= options


@pytest.mark.parametrize("values, message", [
    ({"lrr": 0.1}, "unknown training setting 'lrr'; did you mean lr"),
    ({"lr": "fast"}, "lr 'fast': expected a number, got str"),
    ({"epochs": 2.5}, "epochs 2.5: expected a whole number, got float"),
    ({"augment": "yes"}, "augment 'yes': expected true or false"),
    ({"monitor": "auroc"}, "monitor 'auroc': choose one of auc, balanced_accuracy, accuracy, macro_f1, loss"),
    ({"channels": 2}, "channels 2: choose one of 1, 3"),
    ({"batch_size": 0}, "batch_size 0: must be at least 1"),
    ({"label_smoothing": 1.0}, "label_smoothing 1.0: must be less than 1"),
    ({"batch_size": None}, "batch_size: null is not allowed"),
    ({"ema_epochs": -1}, "ema_epochs -1.0: must be at least 0"),
    ({"recipe": "fast"}, "recipe: unknown recipe 'fast': choose one of default, medmnist-v2, quick"),
])
def test_bad_settings_are_one_line_errors_naming_key_value_and_what_is_allowed(values, message):
    with pytest.raises(MedcliError) as err:
        schema_lib.from_dict(values, "cell.yaml: ")
    assert message in str(err.value) and str(err.value).startswith("cell.yaml: ") and "\n" not in str(err.value)


def test_numbers_are_normalised_like_the_command_line_does():
    cfg = schema_lib.from_dict({"lr": 1, "img_size": 64, "out": Path("x")})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and cfg.out == "x"


def _captured_train(monkeypatch) -> list:
    seen: list = []

    def fake_train(cfg):
        seen.append(cfg)
        return {"main_process": True, "best_epoch": 1, "monitor": cfg.monitor, "best_score": 0.5, "out": "x"}

    monkeypatch.setattr("medcli.training.loop.train", fake_train)
    return seen


def test_options_override_the_config_file_which_overrides_the_defaults(tmp_path, monkeypatch):
    seen = _captured_train(monkeypatch)
    cell = tmp_path / "cell.yaml"
    cell.write_text(yaml.safe_dump({"data": "somewhere", "lr": 0.01, "epochs": 7, "aliases": {"a_b": "a"}, "augment": False}))
    result = CliRunner().invoke(app, ["train", "--config", str(cell), "--epochs", "3", "-b", "customcnn", "--alias", "c_d=c", "--hidden", "64"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert cfg.epochs == 3 and cfg.lr == 0.01 and cfg.backbone == "customcnn" and cfg.hidden == 64  # option > file > default
    assert cfg.aliases == {"c_d": "c"} and cfg.augment is False and cfg.data == "somewhere"
    assert cfg.batch_size == TrainConfig().batch_size and cfg.augment is False


def test_options_alone_are_handed_over_with_schema_types(monkeypatch):
    seen = _captured_train(monkeypatch)
    result = CliRunner().invoke(app, ["train", "--data", "d", "--lr", "0.5", "--no-class-weights", "--precision", "fp32",
                                      "--min-lr-ratio", "0.2", "--momentum", "0.8", "--no-channels-last", "--compile", "--name", "n"])
    assert result.exit_code == 0, result.output
    expected = TrainConfig(data="d", lr=0.5, class_weights=False, precision="fp32", min_lr_ratio=0.2, momentum=0.8,
                           channels_last=False, compile=True, dataset_name="n")
    assert seen[0] == expected


def test_bad_option_or_file_value_exits_1_with_one_line(tmp_path, monkeypatch):
    seen = _captured_train(monkeypatch)
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitor: auroc\n")
    for args in (["train", "--config", str(bad), "--data", "d"], ["train", "--data", "d", "--optimizer", "lion"],
                 ["train", "--config", str(tmp_path / "missing.yaml")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and not seen
        assert len(result.output.strip().splitlines()) == 1 and "error:" in result.output, result.output


def test_a_run_config_json_feeds_back_into_the_same_settings(tmp_path, monkeypatch):
    seen = _captured_train(monkeypatch)
    resolved = TrainConfig(data=str(tmp_path), dataset_name="ds", backbone="customcnn", strategy="scratch", weights="none", img_size=32,
                           channels=1, epochs=2, augment=True, out=str(tmp_path / "run"), aliases={"x_1": "x"}, seed=3, fold=2)
    doc = {"format": "medcli.run/1", "config": resolved.to_dict(), "classes": ["a", "b"], "summary": {}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "config.json")])
    assert result.exit_code == 0, result.output
    assert seen[0] == resolved and seen[0].key() == resolved.key()


def test_workflow_job_settings_are_a_valid_config_file(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    cell = wf.expand_grid(config).cells[0]
    text = wf.job_settings(wf.train_settings(config, cell), data="work/data/demo", name="demo", weights="none", out="results/x",
                           results="results", work="work", cache="work/cache", splits="results/demo/splits.json")
    (tmp_path / "settings.json").write_text(text)
    cfg = schema_lib.from_dict(schema_lib.read_settings(tmp_path / "settings.json"))
    assert (cfg.backbone, cfg.strategy, cfg.seed, cfg.fold) == (cell.backbone, cell.strategy, cell.seed, cell.fold)
    assert (cfg.epochs, cfg.img_size, cfg.channels, cfg.splits, cfg.cache_dir) == (6, 64, 1, "results/demo/splits.json", "work/cache")


def test_pretraining_settings_follow_the_pretrain_section():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    settings = wf.pretrain_settings(config, "resnet18")
    assert settings["epochs"] == config["pretrain"]["epochs"] and settings["lr"] == config["pretrain"]["train"]["lr"]
    assert settings["channels"] == config["pretrain"]["synth"]["channels"] and settings["strategy"] == "scratch"


def test_full_from_random_weights_is_one_rule_with_two_outcomes(tmp_path, caplog):
    """The grid skips the cell; training by hand warns and proceeds; both say the same thing."""
    from medcli.strategies import combination_note

    note = combination_note("customcnn", "full", None)
    assert note and combination_note("customcnn", "full", "some.pt") is None and combination_note("resnet18", "scratch", None) is None
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["weights"] = "none"
    config.pop("pretrain")
    skipped = {(s["backbone"], s["strategy"]): s["reason"] for s in wf.expand_grid(config).skipped}
    assert skipped[("customcnn", "full")] == note
    with caplog.at_level("WARNING", logger="medcli"):
        cfg = schema_lib.resolve(TrainConfig(data=str(tmp_path), backbone="customcnn", strategy="full"))
    assert cfg.weights == "none" and note in caplog.text


def test_resume_key_covers_exactly_the_settings_that_change_results():
    base = TrainConfig(data="d")
    assert base.key() == TrainConfig(data="d", out="elsewhere", workers=3, checkpoint_every=0, feature_cache=False, progress=False).key()
    for change in ({"lr": 0.01}, {"hidden": 128}, {"momentum": 0.5}, {"min_lr_ratio": 0.1}, {"channels_last": False}, {"seed": 1}):
        assert TrainConfig(data="d", **change).key() != base.key(), change


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `lr: 1e-3` as a string; a learning rate written that way is still a number."""
    (tmp_path / "s.yaml").write_text("lr: 1e-3\nweight_decay: 5E-5\n")
    assert schema_lib.read_settings(tmp_path / "s.yaml") == {"lr": 0.001, "weight_decay": 5e-5}
    with pytest.raises(MedcliError, match="lr 'fast'"):
        schema_lib.from_dict({"lr": "fast"})


@pytest.mark.parametrize("text, message", [
    ("backbone: customcnnn\n", "s.yaml: backbone: unknown backbone 'customcnnn'"),
    ("strategy: lineer\n", "s.yaml: strategy: unknown strategy 'lineer'"),
    ("window: lungs\n", "s.yaml: window 'lungs': give a preset (lung, mediastinum, soft-tissue, bone, brain, liver)"),
    ("aliases: {a: 1}\n", "s.yaml: aliases {'a': 1}: expected a mapping of RAW: CLASS names, all strings"),
])
def test_bad_names_in_a_settings_file_name_the_file_and_key(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(MedcliError) as err:
        schema_lib.read_settings(tmp_path / "s.yaml")
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0])) and message.split(": ", 1)[1] in str(err.value)


def test_dataset_reading_settings_are_read_back_from_the_splits_file(tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"settings": {"group_by": "patient", "decode": {"window": "lung", "frame": None}}}))
    cfg = schema_lib.resolve(TrainConfig(data=str(tmp_path), backbone="customcnn", strategy="scratch", splits=str(splits)))
    assert (cfg.group_by, cfg.window, cfg.frame) == ("patient", "lung", None)
    with pytest.raises(MedcliError, match=r"--window 'bone': .*splits.json was made with 'lung'"):
        schema_lib.resolve(TrainConfig(data=str(tmp_path), backbone="customcnn", strategy="scratch", splits=str(splits), window="bone"))


def test_workflow_settings_are_checked_before_the_json_schema():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["train"]["batch_sise"] = 4
    with pytest.raises(MedcliError, match=r"config key train: unknown training setting 'batch_sise'; did you mean batch_size"):
        wf.check_settings(config)
    del config["train"]["batch_sise"]
    config["strategies"]["linear"] = {"lr": "3e-3"}
    config["datasets"]["demo"]["window"] = "-600,1500"
    wf.check_settings(config)
    assert config["strategies"]["linear"]["lr"] == 0.003
    config["datasets"]["demo"]["frame"] = -1
    with pytest.raises(MedcliError, match=r"config key datasets.demo.frame -1: must be at least 0"):
        wf.check_settings(config)


def test_a_run_reruns_from_its_config_json_in_another_folder(tmp_path, monkeypatch):
    """config.json records the data and the splits actually used, as absolute paths: the same folds from anywhere."""
    from medcli.data.synth import make_synthetic

    make_synthetic(tmp_path / "first" / "ds", n_classes=2, per_class=12, size=24, seed=1)
    monkeypatch.chdir(tmp_path / "first")
    monkeypatch.setenv("MEDCLI_NO_PROGRESS", "1")
    common = ["--backbone", "customcnn", "--strategy", "scratch", "--img-size", "24", "--channels", "1", "--epochs", "1",
              "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--checkpoint-every", "0"]
    assert CliRunner().invoke(app, ["split", "ds", "--folds", "2", "--cache-dir", str(tmp_path / "cache")]).exit_code == 0
    first = CliRunner().invoke(app, ["train", "--data", "ds", *common])
    assert first.exit_code == 0, first.output
    run = tmp_path / "first" / "results" / "ds" / "runs" / "customcnn__scratch" / "seed-0" / "fold-0"
    recorded = json.loads((run / "config.json").read_text())["config"]
    assert recorded["splits"] == str(tmp_path / "first" / "results" / "ds" / "splits.json")
    assert recorded["data"] == str(tmp_path / "first" / "ds")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = CliRunner().invoke(app, ["train", "--config", str(run / "config.json"), "--out", "again"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "elsewhere" / "again" / "predictions" / "val.csv").read_text() == (run / "predictions" / "val.csv").read_text()
    assert not (tmp_path / "elsewhere" / "results").exists()  # no new splits were made
