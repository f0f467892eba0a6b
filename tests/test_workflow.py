"""The Snakemake workflow: config validation, the grid, rerun triggers, a dry run and a real tiny run."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medcli import paths
from medcli import workflow as wf
from medcli.errors import MedcliError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "slurm" / "config.yaml"


def _snakemake(tmp_path: Path, *args: str, config: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    if config is not None:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MEDCLI_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=timeout)


def _demo() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.mark.slow
def test_demo_config_dry_run_builds_the_whole_dag(tmp_path):
    proc = _snakemake(tmp_path, "-n", "--cores", "2", config=_demo())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    grid = wf.expand_grid(_demo())
    batches = wf.plan_batches(grid, wf.cells_per_job(_demo()))
    assert sum(len(b.cells) for b in batches) == len(grid.cells) == 36 and len(batches) == 12  # 6 configurations x 2 seeds x 3 folds
    stats = dict(line.split() for line in out[out.index("Job stats:"):].splitlines()[3:] if len(line.split()) == 2)
    assert {name for name in stats if name.startswith("train__")} == {b.rule for b in batches}
    assert sum(int(n) for name, n in stats.items() if name.startswith(("train__", "eval__"))) == 2 * len(batches)
    assert "pretrain" in out and "report" in out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(colour="blue"), "config: colour: unknown key (allowed: backbones, cache,"),
        (lambda c: c["train"].update(epochs="many"), "config: train.epochs: 'many' is not a whole number"),
        (lambda c: c["datasets"]["demo"].update(folds=1), "config: datasets.demo.folds: 1 is not allowed (allowed: 0 "),
        (lambda c: c["strategies"].update(finetune={}), "config: strategies.finetune: unknown name (allowed: scratch,"),
    ],
)
def test_config_schema_rejects_unknown_keys_and_wrong_types(edit, message):
    """One line naming the key (tests/test_workflow_config.py has the rest; a dry run prints just this line)."""
    config = _demo()
    edit(config)
    with pytest.raises(MedcliError) as caught:
        wf.check_config(config)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_workflow_lints_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_invalid_cells_are_skipped_with_a_reason():
    config = _demo()
    config["weights"] = "none"
    config.pop("pretrain")
    config["strategies"] = {"scratch": {}, "linear": {}, "full": {}}
    grid = wf.expand_grid(config)
    reasons = {(s["backbone"], s["strategy"]): s["reason"] for s in grid.skipped}
    assert "random features" in reasons[("resnet18", "linear")]
    assert "exactly like 'scratch'" in reasons[("customcnn", "full")]
    assert {c.strategy for c in grid.cells} == {"scratch"}
    assert len(grid.cells) == 2 * 2 * 3  # backbones x seeds x folds


def test_train_settings_merge_defaults_and_overrides():
    config = _demo()
    config["backbones"]["resnet18"] = {"img_size": 96, "head": "mlp"}
    config["datasets"]["demo"]["aliases"] = {"circle_x": "circle"}
    cell = wf.Cell("demo", "resnet18", "linear", 0, 1, "pretrained")
    settings = wf.train_settings(config, cell)
    assert settings["img_size"] == 96 and settings["head"] == "mlp"  # backbone over global
    assert settings["lr"] == 0.003 and settings["epochs"] == 6  # strategy over global; global kept
    assert (settings["backbone"], settings["strategy"], settings["seed"], settings["fold"]) == ("resnet18", "linear", 0, 1)
    assert settings["aliases"] == {"circle_x": "circle"} and settings["layout"] == "auto"


def test_train_settings_name_the_config_key_of_a_bad_value():
    config = _demo()
    config["strategies"]["linear"] = {"monitor": "auroc"}
    cell = wf.Cell("demo", "resnet18", "linear", 0, 1, "pretrained")
    with pytest.raises(MedcliError, match=r"config key strategies\.linear\.monitor 'auroc': choose one of"):
        wf.train_settings(config, cell)


def test_rerun_triggers_only_on_relevant_changes():
    config = _demo()
    cell = wf.expand_grid(config).cells[0]

    def job(cfg):
        return wf.job_settings(wf.train_settings(cfg, cell), data="d", name="demo", weights="none", out="o", results="r", work="w", cache="c", splits="s")

    before = (job(config), wf.rerun_token(config))
    unrelated = copy.deepcopy(config)
    unrelated["report"]["primary_metric"] = "macro_f1"
    unrelated["eval"]["bootstrap"] = 50
    assert (job(unrelated), wf.rerun_token(unrelated)) == before
    knob = copy.deepcopy(config)
    knob["rerun_token"] = "new-augmentation"
    assert wf.rerun_token(knob) != before[1]
    changed = copy.deepcopy(config)
    changed["train"]["epochs"] = 7
    assert job(changed) != before[0]


def test_gradcam_runs_follow_the_config():
    config = _demo()
    grid = wf.expand_grid(config)
    chosen = wf.gradcam_cells(config, grid)
    assert {c.config_name for c in chosen} == {c.config_name for c in grid.cells}
    assert {(c.seed, c.fold) for c in chosen} == {(0, 0)}
    config["gradcam"] = {"configurations": ["resnet18__full"], "seeds": [1], "folds": [1, 2], "method": "gradcam++", "n": 3}
    chosen = wf.gradcam_cells(config, grid)
    assert sorted((c.config_name, c.seed, c.fold) for c in chosen) == [("resnet18__full", 1, 1), ("resnet18__full", 1, 2)]
    assert wf.gradcam_args(config) == "--method gradcam++ --n 3 --target pred"
    config["gradcam"]["configurations"] = ["resnet18__fulll"]
    with pytest.raises(MedcliError, match="gradcam.configurations: resnet18__fulll"):
        wf.gradcam_cells(config, grid)
    del config["gradcam"]
    assert wf.gradcam_cells(config, grid) == []


def test_config_schema_offers_every_registered_cam_method():
    from medcli.gradcam import list_methods

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["gradcam"]["properties"]["method"]["enum"] == list_methods()


def test_config_schema_offers_every_registered_ensemble_method():
    from medcli.ensemble import list_methods

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    methods = schema["properties"]["ensembles"]["additionalProperties"]["properties"]["methods"]["items"]["enum"]
    assert methods == list_methods()


@pytest.mark.slow
def test_big_grid_dry_run_is_quick(tmp_path):
    from tests.conftest import blob, save_image

    config = yaml.safe_load(TINY.read_text())
    config["datasets"] = {"a": {"path": str(tmp_path / "a"), "folds": 5}, "b": {"path": str(tmp_path / "b"), "folds": 5}}
    for name in ("a", "b"):  # the workflow checks that each dataset holds images before planning
        save_image(tmp_path / name / "normal" / "0.png", blob(0))
    config["weights"] = "imagenet"
    config["backbones"] = {"resnet18": {}, "resnet50": {}, "densenet121": {}, "efficientnet_b0": {}}
    config["strategies"] = {"scratch": {}, "linear": {}, "partial": {}, "full": {}, "two-phase": {}}
    config["seeds"] = [0, 1, 2]
    assert len(wf.expand_grid(config).cells) == 600
    proc = _snakemake(tmp_path, "-n", "--cores", "1", config=config, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    stats = dict(line.split() for line in out[out.index("Job stats:"):].splitlines()[3:] if len(line.split()) == 2)
    # one training and one evaluation job per configuration and seed (5 folds each), not one per cell
    assert sum(int(n) for name, n in stats.items() if name.startswith("train__")) == 120
    assert sum(int(n) for name, n in stats.items() if name.startswith("eval__")) == 120


@pytest.mark.slow
def test_tiny_workflow_runs_locally_and_resumes_nothing_twice(tmp_path):
    shutil.copy(TINY, tmp_path / "config.yaml")
    proc = _snakemake(tmp_path, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = (tmp_path / "results" / "summary.md").read_text()
    assert "customcnn" in summary
    run = Path(tmp_path, paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 1))
    test_metrics = yaml.safe_load((run / "metrics" / "test.json").read_text())  # JSON is YAML
    test_rows = (run / "predictions" / "test.csv").read_text().splitlines()[1:]
    assert test_metrics["format"] == "medcli.metrics/1" and test_metrics["n"] == len(test_rows) > 0
    assert 0 <= test_metrics["metrics"]["balanced_accuracy"] <= 1
    assert list((tmp_path / "logs" / "train" / "tiny").rglob("*.log"))
    cams = Path(tmp_path, paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 0))
    assert Path(paths.gradcam_index_file(cams, "test")).is_file()
    assert not Path(paths.gradcam_dir(run, "test")).exists()  # only fold 0 of the first seed by default
    assert "### Grad-CAM" in summary and "gradcam/test/gallery_" in summary
    again = _snakemake(tmp_path, "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # every cell's curves in TensorBoard's event files (track: tensorboard, the default), read back by tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for fold in (0, 1):
        events = EventAccumulator(str(tmp_path / "logs" / "tensorboard" / "tiny" / paths.run_key("customcnn", "scratch", 0, fold)))
        events.Reload()
        assert [e.step for e in events.Scalars("val/balanced_accuracy")] == [1]  # one epoch
        assert events.Scalars("best/epoch")[-1].value == 1
    # switching tracking off (or to another tracker) retrains nothing (the experiment record and summary follow the config)
    off = _snakemake(tmp_path, "-n", "--config", "track=none")
    assert off.returncode == 0 and "experiment" in off.stdout and "train__" not in off.stdout and "eval__" not in off.stdout


@pytest.mark.slow
def test_two_processes_per_training_job(tmp_path):
    """gpus_per_job: 2 launches one process per GPU; on a CPU machine the same path runs over gloo."""
    config = yaml.safe_load(TINY.read_text())
    config["resources"]["gpus_per_job"] = 2
    target = paths.model_file(paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 0))
    proc = _snakemake(tmp_path, "--cores", "2", target, config=config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    summary = json.loads(Path(tmp_path, paths.config_file(paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 0))).read_text())["summary"]
    assert summary["num_processes"] == 2


def test_layer_decay_cells_follow_the_strategy_rule():
    """Layer decay set for every strategy: the strategies that do not use it are skipped with the reason."""
    config = _demo()
    config["train"]["layer_decay"] = 0.75
    grid = wf.expand_grid(config)
    reasons = {(s["backbone"], s["strategy"]): s["reason"] for s in grid.skipped}
    assert "only strategies 'full' and 'two-phase' use layer-wise learning-rate decay" in reasons[("resnet18", "linear")]
    assert {c.strategy for c in grid.cells} == {"full"}
    config["train"].pop("layer_decay")
    config["strategies"]["full"] = {"layer_decay": 0.75}  # where it belongs: only full gets it
    grid = wf.expand_grid(config)
    assert {c.strategy for c in grid.cells} == {"scratch", "linear", "full"}
    full = next(c for c in grid.cells if c.strategy == "full")
    assert wf.train_settings(config, full)["layer_decay"] == 0.75


@pytest.mark.slow
def test_a_grid_mixing_torchvision_customcnn_and_timm_backbones_runs_to_the_summary(tmp_path):
    """timm names (here timm's tiny test architectures, random weights) are grid backbones like any other."""
    config = yaml.safe_load(TINY.read_text())
    config["backbones"] = {"customcnn": {}, "resnet18": {}, "test_convnext": {}, "test_vit.r160_in1k": {}}
    config["strategies"] = {"scratch": {}}
    config["gradcam"] = {"n": 1, "configurations": ["test_convnext__scratch", "test_vit.r160_in1k__scratch"]}
    config["ensembles"] = {"all": {"members": "all", "methods": ["mean"]}}
    proc = _snakemake(tmp_path, "--cores", "2", config=config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = (tmp_path / "results" / "summary.md").read_text()
    for name in ("customcnn__scratch", "resnet18__scratch", "test_convnext__scratch", "test_vit.r160_in1k__scratch"):
        assert f"`{name}`" in summary, name
    assert "`test_vit.r160_in1k` (timm, tag r160_in1k; weights none (2))" in summary
    assert "`resnet18` (torchvision; weights none (2))" in summary
    cams = Path(tmp_path, paths.gradcam_index_file(paths.run_dir("results", "tiny", "test_vit.r160_in1k", "scratch", 0, 0), "test"))
    assert json.loads(cams.read_text())["images"]


def test_the_demo_grid_keeps_its_transfer_cells():
    """The demo's `weights: pretrained` (its synthetic pretraining) is a weights file for every backbone: customcnn's
    linear and full cells train from it (and are not taken for ImageNet weights customcnn does not have)."""
    grid = wf.expand_grid(_demo())
    assert not grid.skipped
    assert {(c.backbone, c.strategy) for c in grid.cells} == {(b, s) for b in ("customcnn", "resnet18") for s in ("scratch", "linear", "full")}
    assert len(grid.cells) == 2 * 3 * 2 * 3


def _cells_of(batches):
    return [[(c.dataset, c.backbone, c.strategy, c.seed, c.fold) for c in b.cells] for b in batches]


def test_batches_hold_one_configuration_and_seed_each_and_stay_put_when_seeds_or_models_are_added():
    config = _demo()
    grid = wf.expand_grid(config)
    batches = wf.plan_batches(grid, 2)
    assert sorted(cell for b in _cells_of(batches) for cell in b) == sorted((c.dataset, c.backbone, c.strategy, c.seed, c.fold) for c in grid.cells)
    assert all(len({(c.backbone, c.strategy, c.seed) for c in b.cells}) == 1 and 1 <= len(b.cells) <= 2 for b in batches)
    assert [[c.fold for c in b.cells] for b in batches if (b.backbone, b.strategy, b.seed) == ("resnet18", "full", 1)] == [[0, 1], [2]]
    assert len({b.rule for b in batches}) == len(batches) and all(b.rule.isidentifier() for b in batches)
    assert len(wf.plan_batches(grid, 15)) == 12  # 6 configurations x 2 seeds, each seed's 3 folds in one job
    config["seeds"] = [0, 1, 2]
    config["backbones"]["resnet50"] = {}
    more = {b.rule: b for b in wf.plan_batches(wf.expand_grid(config), 2)}
    for old in batches:  # every existing job keeps exactly its cells: Snakemake retrains none of them
        assert _cells_of([more[old.rule]]) == _cells_of([old])
    assert len(more) > len(batches)
    with pytest.raises(MedcliError, match="cells_per_job 0"):
        wf.plan_batches(grid, 0)


def test_batch_settings_split_what_cells_share_from_what_they_do_not():
    common, cells = wf.batch_settings([{"lr": 0.1, "fold": 0, "out": "a"}, {"lr": 0.1, "fold": 1, "out": "b"}])
    assert json.loads(common) == {"lr": 0.1}
    assert json.loads(cells) == [{"fold": 0, "out": "a"}, {"fold": 1, "out": "b"}]


def test_two_configurations_with_one_rule_name_are_refused():
    config = _demo()
    config["backbones"] = {"resnet18": {}}
    config["strategies"] = {"two-phase": {}, "two_phase": {}}
    grid = wf.Grid(cells=[wf.Cell("demo", "resnet18", s, 0, 0, "none") for s in ("two-phase", "two_phase")])  # one seed
    with pytest.raises(MedcliError, match="same workflow rule name"):
        wf.plan_batches(grid, 15)


@pytest.mark.slow
def test_a_killed_workflow_reruns_only_the_cells_that_had_not_finished(tmp_path):
    """kill -9 of snakemake and its training job while the second of three cells of one batch trains: the same
    command again removes the dead snakemake's lock, reruns the incomplete job (profiles/default), restores the
    finished cell (the very files) and trains the other two."""
    import signal
    import time

    config = yaml.safe_load(TINY.read_text())
    config["datasets"]["tiny"]["folds"] = 3
    config["train"]["epochs"] = 40
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MEDCLI_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml", "--cores", "1"]
    kept = tmp_path / paths.finished_copy_dir(paths.work_dir("work", "tiny", "customcnn", "scratch", 0, 0)) / "cell.json"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not kept.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the medcli process it started
    proc.wait()
    assert kept.exists(), "the first cell should have finished before the kill"
    first = tmp_path / paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 0)
    inode = (first / "model.pt").stat().st_ino
    third = tmp_path / paths.run_dir("results", "tiny", "customcnn", "scratch", 0, 2)
    assert not (third / "model.pt").exists()

    assert list((tmp_path / ".snakemake" / "locks").glob("*.lock")), "the killed snakemake should have left its lock"
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)  # the same command
    assert again.returncode == 0, again.stderr[-4000:]
    assert "removed the lock left by a snakemake that no longer runs" in again.stderr
    log = (tmp_path / paths.log_file("logs", "train", "tiny", "customcnn__scratch/seed-0/batch-0")).read_text()
    statuses = [line.split()[0] for line in log.splitlines() if line.split()[:1] in (["restored"], ["trained"], ["failed"])]
    assert statuses == ["restored", "trained", "trained"], log[-3000:]
    assert (first / "model.pt").stat().st_ino == inode  # not trained again
    assert (third / "model.pt").is_file() and (tmp_path / "results" / "summary.md").is_file()


def test_eval_figures_go_to_each_configurations_first_run_unless_asked_otherwise():
    config = _demo()
    grid = wf.expand_grid(config)
    first = wf.figure_cells(config, grid.cells)
    assert {(c.backbone, c.strategy) for c in first} == {(c.backbone, c.strategy) for c in grid.cells}  # one per configuration
    assert {(c.seed, c.fold) for c in first} == {(config["seeds"][0], 0)} and len(first) == len({c.config_name for c in grid.cells})
    config["eval"]["figures"] = "all"
    assert wf.figure_cells(config, grid.cells) == grid.cells
    config["eval"]["figures"] = "none"
    assert wf.figure_cells(config, grid.cells) == []
    config["eval"]["figures"] = "some"
    with pytest.raises(MedcliError, match="eval.figures 'some'"):
        wf.figure_cells(config, grid.cells)
