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
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


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


def _counting_steps(fn, *args):
    """``fn(*args)`` and the number of optimizer steps it took (torch's global step hook: no loop internals)."""
    steps = []
    handle = register_optimizer_step_post_hook(lambda *a: steps.append(1))
    try:
        return fn(*args), len(steps)
    finally:
        handle.remove()


def test_killed_run_resumes_to_the_same_result(dataset, tmp_path, monkeypatch):
    full, full_steps = _counting_steps(train, _cfg(dataset, tmp_path / "full", epochs=4))

    real_save = loop_mod.save_checkpoint

    def save_then_die(path, cfg, epoch, *args, **kwargs):
        real_save(path, cfg, epoch, *args, **kwargs)
        if epoch == 2:
            raise KeyboardInterrupt  # the job is killed right after epoch 2's checkpoint

    cfg = _cfg(dataset, tmp_path / "killed", epochs=4, checkpoint_every=0)
    run = Path(paths.run_dir(cfg.results, "d", "customcnn", "scratch", 0, 0))
    checkpoint = Path(paths.checkpoint_file(paths.work_dir(cfg.work, "d", "customcnn", "scratch", 0, 0)))
    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert checkpoint.is_file() and not Path(paths.model_file(run)).exists()  # killed: a checkpoint, no half-written run
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)
    resumed, resumed_steps = _counting_steps(train, cfg)
    assert Path(resumed["out"]) == run
    assert resumed_steps * 2 == full_steps > 0  # it trained epochs 3 and 4 only, not the whole run again
    assert _history(resumed["out"]) == _history(full["out"])
    wa = torch.load(paths.model_file(full["out"]), weights_only=True)["state_dict"]
    wb = torch.load(paths.model_file(resumed["out"]), weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not checkpoint.exists()  # removed once the run folder is written


class OptimizerSpy:
    """Watches every optimizer a training run builds, through torch's public hooks (not the loop's internals).

    ``groups[i]``: ``(name, lr, params)`` of optimizer ``i`` as built, before a scheduler rescales the rate;
    ``first[i]`` / ``last[i]``: the values of its parameters (in group order) before its first step and after its last.
    ``first[0]`` is the run's own starting point, whatever seed or initialisation produced it.
    """

    def __init__(self, monkeypatch) -> None:
        self.groups: list[list[tuple[str, float, list[torch.Tensor]]]] = []
        self.first: list[list[torch.Tensor] | None] = []
        self.last: list[list[torch.Tensor] | None] = []
        self._optimizers: list[torch.optim.Optimizer] = []  # kept alive, so that their ids stay unique
        real_init = torch.optim.Optimizer.__init__

        def init(opt, params, defaults):
            real_init(opt, params, defaults)
            self._optimizers.append(opt)
            self.groups.append([(g.get("name"), g["lr"], list(g["params"])) for g in opt.param_groups])
            self.first.append(None)
            self.last.append(None)

        monkeypatch.setattr(torch.optim.Optimizer, "__init__", init)
        self._handles = [register_optimizer_step_pre_hook(self._before),
                         register_optimizer_step_post_hook(self._after)]

    def _find(self, opt) -> int | None:
        return next((i for i, o in enumerate(self._optimizers) if o is opt), None)

    def _values(self, i: int) -> list[torch.Tensor]:
        return [p.detach().clone() for _, _, params in self.groups[i] for p in params]

    def _before(self, opt, args, kwargs) -> None:
        i = self._find(opt)
        if i is not None and self.first[i] is None:
            self.first[i] = self._values(i)

    def _after(self, opt, args, kwargs) -> None:
        i = self._find(opt)
        if i is not None:
            self.last[i] = self._values(i)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def plan(self) -> list[list[tuple[str, float, int]]]:
        """Per optimizer: ``(group name, learning rate, number of parameters)``."""
        return [[(name, lr, len(params)) for name, lr, params in groups] for groups in self.groups]

    def named_first(self, i: int, names: list[str]) -> dict[str, torch.Tensor]:
        return dict(zip(names, self.first[i], strict=True))


@pytest.fixture
def spy(monkeypatch):
    watcher = OptimizerSpy(monkeypatch)
    yield watcher
    watcher.close()


def _param_names(model, params) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in params]


def test_linear_strategy_keeps_trunk_and_bn_statistics_bit_identical(dataset, tmp_path, spy):
    weights = _trunk_weights_file(tmp_path, "resnet18")
    summary = train(_cfg(dataset, tmp_path, backbone="resnet18", strategy="linear", weights=str(weights), epochs=2))
    trained = torch.load(paths.model_file(summary["out"]), weights_only=True)["state_dict"]
    original = torch.load(weights, weights_only=True)
    for key, value in original.items():  # weights and BatchNorm running statistics
        assert torch.equal(trained[f"trunk.{key}"], value), key
    # The head moved away from the run's own starting point (its values before the first optimizer step), not
    # merely from some other random head.
    reference = create_model("resnet18", 3, in_channels=1)
    assert [name for name, _, _ in spy.groups[0]] == ["head"] and spy.first[0] is not None, "the head was never stepped"
    start = spy.named_first(0, _param_names(reference, reference.head.parameters()))
    assert set(start) == {"head.weight", "head.bias"}
    for key, value in start.items():
        assert not torch.equal(trained[key], value), f"{key} did not train"


def _expected_optimizers(model, strategy: str, lr: float, lr_mult: float = 100.0) -> list[list[tuple[str, float, int]]]:
    """What each strategy promises to train, at which rate (epochs 2, freeze_epochs 1, partial_stages 1)."""
    n_trunk, n_head = len(list(model.trunk.parameters())), len(list(model.head.parameters()))
    stages = model.stage_parameters()
    if strategy in ("scratch", "full"):
        return [[("trunk", lr, n_trunk), ("head", lr, n_head)]]
    if strategy == "linear":
        return [[("head", lr, n_head)]]
    if strategy == "partial":
        return [[("last 1 stage(s)", lr, len(stages[-1])), ("head", lr, n_head)]]
    assert strategy == "two-phase"
    base = lr / 2  # fastai's fine_tune: halved, then spread geometrically from base / lr_mult (first stage) to base (head)
    lrs = [base / lr_mult * lr_mult ** (i / len(stages)) for i in range(len(stages) + 1)]
    unfrozen = [(f"stage {i}", lrs[i], len(params)) for i, params in enumerate(stages)] + [("head", lrs[-1], n_head)]
    return [[("head", lr, n_head)], unfrozen]


def _frozen_keys(model, weights: dict, strategy: str) -> list[str]:
    """Keys of the trunk's state dict (weights and BatchNorm buffers) that the strategy never trains."""
    if strategy == "linear":
        return list(weights)
    if strategy != "partial":
        return []
    names = {id(m): n for n, m in model.trunk.named_modules()}
    last = [names[id(m)] + "." for m in model.stages()[-1]]
    return [k for k in weights if not any(k.startswith(prefix) for prefix in last)]


@pytest.mark.parametrize("backbone", ["customcnn", "resnet18"])
@pytest.mark.parametrize("strategy", ["scratch", "linear", "partial", "full", "two-phase"])
def test_every_strategy_trains_what_it_promises(dataset, tmp_path, backbone, strategy, spy):
    """Through the real training loop: the optimizers hold exactly the promised groups at the promised rates, every
    parameter they hold changes, and what is frozen (weights and BatchNorm statistics) stays bit-identical to the
    weights file."""
    lr = 3e-3
    weights = None if strategy == "scratch" else _trunk_weights_file(tmp_path, backbone)
    summary = train(_cfg(dataset, tmp_path, backbone=backbone, strategy=strategy, weights=weights and str(weights), epochs=2,
                         freeze_epochs=1, lr=lr))
    history = _history(summary["out"])
    assert [r["epoch"] for r in history] == ["1", "2"]
    reference = create_model(backbone, 3, in_channels=1)
    expected, got = _expected_optimizers(reference, strategy, lr), spy.plan()
    assert [[(n, k) for n, _, k in groups] for groups in got] == [[(n, k) for n, _, k in groups] for groups in expected]
    for groups, want in zip(got, expected):
        assert [rate for _, rate, _ in groups] == pytest.approx([rate for _, rate, _ in want], rel=1e-9)

    for i, groups in enumerate(spy.groups):  # every parameter a phase trains moved during that phase
        assert spy.first[i] is not None and spy.last[i] is not None, f"optimizer {i} never stepped"
        flat = [(name, j) for name, _, params in groups for j in range(len(params))]
        for (name, j), before, after in zip(flat, spy.first[i], spy.last[i], strict=True):
            assert not torch.equal(before, after), f"{strategy}/{backbone}: group {name!r} parameter {j} did not change"

    if weights is None:
        return
    trained = torch.load(paths.model_file(summary["out"]), weights_only=True)["state_dict"]
    original = torch.load(weights, weights_only=True)
    frozen = _frozen_keys(reference, original, strategy)
    for key in frozen:
        assert torch.equal(trained[f"trunk.{key}"], original[key]), f"{strategy}/{backbone}: frozen {key} changed"
    trainable = {n for n, _ in reference.trunk.named_parameters()} - set(frozen)
    if strategy in ("partial", "full"):  # the trunk parameters it trains are no longer those of the file
        assert trainable
        for key in trainable:
            assert not torch.equal(trained[f"trunk.{key}"], original[key]), f"{strategy}/{backbone}: {key} did not train"
    if strategy == "partial":
        assert any("running_mean" in k for k in frozen)  # the early stages' BatchNorm statistics are among the checked keys
    if strategy == "two-phase":  # the trunk stayed as loaded through the frozen phase: the second phase starts from the file
        stage_names = _param_names(reference, [p for params in reference.stage_parameters() for p in params])
        start = spy.named_first(1, stage_names + _param_names(reference, reference.head.parameters()))
        for name in stage_names:
            assert torch.equal(start[name], original[name.removeprefix("trunk.")]), f"two-phase/{backbone}: {name} changed while frozen"
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
    assert "run folder" in res.output
    _, meta = load_model(run / "model.pt")
    assert meta["classes"] == ["disk", "square", "triangle"]
    assert Path("results/d/splits.json").exists()  # made from the dataset's own train/val split

    import urllib.request

    def no_network(*a, **k):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    res = runner.invoke(app, ["train", "--data", str(data), "--backbone", "resnet18", "--strategy", "linear", "--epochs", "1", "--img-size", "32"])
    assert res.exit_code == 1
    assert "medcli weights download resnet18" in res.output


@pytest.mark.slow
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
           "--epochs", "2", "--img-size", "32", "--channels", "1", "--batch-size", "16", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"),
           "--track", "tensorboard", "--track-dir", str(tmp_path / "tb")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(paths.run_dir(tmp_path / "results", "d", "customcnn", "scratch", 0, 0))
    config = json.loads((run / "config.json").read_text())
    assert config["summary"]["num_processes"] == 2
    assert len(_history(str(run))) == 2
    assert proc.stdout.count("run folder:") == 1  # rank 1 prints nothing
    assert proc.stderr.count("epoch 2/2") == 1
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one writing process (the pid in the name): the main one
    with open(run / "predictions" / "val.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == config["summary"]["n_val"] and len({r["id"] for r in rows}) == len(rows)


@pytest.mark.slow
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
    real_save = loop_mod.save_checkpoint
    monkeypatch.setattr(loop_mod, "save_checkpoint", lambda path, cfg, epoch, *a, **kw: saved.append(epoch) or real_save(path, cfg, epoch, *a, **kw))
    train(_cfg(dataset, tmp_path / "every", epochs=3, checkpoint_every=0))
    assert saved == [1, 2]  # never after the last epoch: the run folder is written instead
    saved.clear()
    summary = train(_cfg(dataset, tmp_path / "rarely", epochs=3, checkpoint_every=3600))
    assert saved == [] and Path(paths.model_file(summary["out"])).exists()
