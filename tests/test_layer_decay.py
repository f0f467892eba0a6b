"""Layer-wise learning-rate decay (BEiT / timm's ``param_groups_layer_decay``) for ``full`` and ``two-phase``, and
``config.json``'s ``summary.param_groups``, checked on plans and on real tiny training runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from medcli import paths
from medcli.errors import MedcliError
from medcli.models import create_model
from medcli.strategies import (
    build_plan,
    check_combination,
    combination_problem,
    layer_decay_groups,
    setting_problem,
    trunk_stage_parameters,
)
from medcli.training import TrainConfig, train
from tests.conftest import synthetic_fold_data

NUM_CLASSES = 3
REFUSED = ("scratch", "linear", "partial")


def ids(params) -> list[int]:
    return [id(p) for p in params]


@pytest.fixture(scope="module")
def models() -> dict:
    torch.manual_seed(0)
    return {name: create_model(name, NUM_CLASSES) for name in ("customcnn", "resnet18")}


@pytest.mark.parametrize("backbone", ["customcnn", "resnet18"])
@pytest.mark.parametrize("decay", [0.75, 0.5, 1.0])
def test_full_groups_run_from_stem_to_head_at_lr_times_decay_powers(models, backbone, decay):
    model = models[backbone]
    lr = 3e-3
    groups = build_plan(model, "full", epochs=3, lr=lr, layer_decay=decay).phase(0).param_groups
    n = len(model.info.stages)
    assert [g["name"] for g in groups] == [f"stage {i}" for i in range(n)] + ["head"]
    # exactly lr * F**k, k = distance from the head: stem lr*F^n ... last stage lr*F, head lr
    assert [g["lr"] for g in groups] == [lr * decay ** (n - i) for i in range(n)] + [lr]
    if decay < 1:
        assert [g["lr"] for g in groups] == sorted(g["lr"] for g in groups)  # rising from stem to head
    assert ids(groups[-1]["params"]) == ids(model.head.parameters())
    for group, stage in zip(groups, model.stage_parameters()):
        assert ids(group["params"]) == ids(stage)


@pytest.mark.parametrize("strategy", ["full", "two-phase"])
@pytest.mark.parametrize("backbone", ["customcnn", "resnet18"])
def test_every_parameter_is_in_exactly_one_group(models, strategy, backbone):
    model = models[backbone]
    phase = build_plan(model, strategy, epochs=3, lr=0.01, layer_decay=0.7).phases[-1]
    listed = [id(p) for _, _, params in phase.groups for p in params]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(ids(model.parameters()))
    torch.optim.AdamW(phase.param_groups, lr=0.01)  # torch itself refuses a parameter in two groups


def test_two_phase_second_phase_decays_from_the_halved_base_and_first_phase_is_unchanged(models):
    model = models["resnet18"]
    lr, decay = 0.01, 0.6
    plain = build_plan(model, "two-phase", epochs=4, lr=lr, freeze_epochs=2)
    decayed = build_plan(model, "two-phase", epochs=4, lr=lr, freeze_epochs=2, layer_decay=decay, lr_mult=7)
    first, first_plain = decayed.phases[0], plain.phases[0]
    assert (first.name, first.start, first.stop) == (first_plain.name, first_plain.start, first_plain.stop) == (first.name, 0, 2)
    assert [(n, lr_, ids(p)) for n, lr_, p in first.groups] == [(n, lr_, ids(p)) for n, lr_, p in first_plain.groups]
    assert [(n, lr_) for n, lr_, _ in first.groups] == [("head", lr)]
    assert first.eval_modules == first_plain.eval_modules == (model.trunk,)

    second = decayed.phases[1]
    assert (second.start, second.stop, second.eval_modules) == (2, 4, ())
    base = lr / 2  # fastai's halving of the unfrozen phase's rate is kept; layer decay replaces the lr_mult spacing
    n = len(model.info.stages)
    assert [(name, rate) for name, rate, _ in second.groups] == [(f"stage {i}", base * decay ** (n - i)) for i in range(n)] + [("head", base)]
    # lr_mult (7 here) plays no part once layer decay is set; the plain plan keeps its geometric spacing
    plain_lrs = [rate for _, rate, _ in plain.phases[1].groups]
    assert plain_lrs[0] == pytest.approx(base / 100) and plain_lrs[-1] == pytest.approx(base)


def test_without_layer_decay_full_keeps_one_trunk_group(models):
    model = models["customcnn"]
    groups = build_plan(model, "full", epochs=1, lr=0.02).phase(0).groups
    assert [(name, lr) for name, lr, _ in groups] == [("trunk", 0.02), ("head", 0.02)]
    assert ids(groups[0][2]) == ids(model.trunk.parameters())


def test_unstaged_trunk_parameters_join_the_stem_and_doubly_staged_ones_are_refused():
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES)
    # A description whose stages miss the stem (conv1, bn1): those parameters must still train, with the stem.
    model.info = dataclasses.replace(model.info, stages=model.info.stages[1:])
    stem = [*model.trunk.conv1.parameters(), *model.trunk.bn1.parameters()]
    stages = trunk_stage_parameters(model)
    assert len(stages) == 4
    assert ids(stages[0]) == ids(model.trunk.layer1.parameters()) + ids(stem)
    groups = layer_decay_groups(model, 1.0, 0.5)
    assert [(name, lr) for name, lr, _ in groups] == [("stage 0", 0.5**4), ("stage 1", 0.5**3), ("stage 2", 0.25),
                                                      ("stage 3", 0.5), ("head", 1.0)]
    listed = [id(p) for _, _, params in groups for p in params]
    assert sorted(listed) == sorted(ids(model.parameters()))
    # the lr_mult path of two-phase puts them in its first group as well
    two_phase = build_plan(model, "two-phase", epochs=2, lr=0.01).phase(1).groups
    assert set(ids(stem)) <= set(ids(two_phase[0][2]))

    model.info = dataclasses.replace(model.info, stages=(("layer1",), ("layer1.0", "layer2")))
    with pytest.raises(ValueError, match="in stages 0 and 1"):
        trunk_stage_parameters(model)


@pytest.mark.parametrize("strategy", REFUSED)
def test_other_strategies_refuse_layer_decay_with_one_line(models, strategy):
    message = setting_problem(strategy, 0.75)
    assert message == (f"layer decay 0.75: only strategies 'full' and 'two-phase' use layer-wise learning-rate decay, "
                       f"not '{strategy}'; drop the layer decay or change the strategy")
    weights = None if strategy == "scratch" else "trained.pt"
    assert combination_problem("resnet18", strategy, weights, layer_decay=0.75) == message
    assert combination_problem("resnet18", strategy, weights) is None  # the same cell without it is fine
    with pytest.raises(MedcliError) as raised:
        check_combination("resnet18", strategy, weights, layer_decay=0.75)
    assert str(raised.value) == message and "\n" not in message
    with pytest.raises(MedcliError, match="only strategies 'full' and 'two-phase'"):
        build_plan(models["resnet18"], strategy, epochs=2, lr=0.01, layer_decay=0.75)
    assert setting_problem(strategy, None) is None


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_layer_decay_must_be_in_zero_one(models, bad):
    assert setting_problem("full", bad).startswith(f"layer decay {bad}: use a factor in (0, 1]")
    with pytest.raises(MedcliError, match=r"use a factor in \(0, 1\]"):
        build_plan(models["customcnn"], "full", epochs=1, lr=0.01, layer_decay=bad)
    assert setting_problem("full", 1) is None and setting_problem("two-phase", 0.01) is None
    with pytest.raises(MedcliError, match="unknown strategy 'nope'"):
        setting_problem("nope", None)  # an unknown strategy is an error, not "no problem", even without a value


# --- real training runs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic_fold_data(tmp_path_factory.mktemp("data"), per_class=16, folds=0)


def _cfg(dataset, tmp_path: Path, name: str, **kw) -> TrainConfig:
    data, splits = dataset
    base = dict(data=str(data), splits=str(splits), backbone="customcnn", epochs=1, batch_size=16, img_size=32, channels=1,
                lr=4e-3, results=str(tmp_path / "results"), work=str(tmp_path / "work"), out=str(tmp_path / name), progress=False)
    base.update(kw)
    return TrainConfig(**base)


class StepRecorder:
    """Each optimizer's parameter groups at its first step, read from torch's optimizer through its public hook."""

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.groups: list[list[dict]] = []
        self.handle = register_optimizer_step_post_hook(self._after)

    def _after(self, opt, args, kwargs) -> None:
        if any(o is opt for o in self.optimizers):
            return
        self.optimizers.append(opt)  # kept alive: ids stay unique
        self.groups.append([{"name": g.get("name"), "initial_lr": g["initial_lr"], "lr": g["lr"],
                             "n_params": sum(p.numel() for p in g["params"]), "n_tensors": len(g["params"]),
                             "params": list(g["params"])} for g in opt.param_groups])


@pytest.fixture
def recorder():
    rec = StepRecorder()
    yield rec
    rec.handle.remove()


def _summary_groups(run: str) -> list[dict]:
    return json.loads(Path(paths.config_file(run)).read_text())["summary"]["param_groups"]


def _matches_optimizers(summary: list[dict], recorded: list[list[dict]]) -> None:
    """``summary.param_groups``: per phase, the optimizer's groups (name, peak lr, size) in order, then the frozen rest."""
    assert len(summary) == len(recorded)
    for phase, groups in zip(summary, recorded):
        trainable = [g for g in phase["groups"] if g["trainable"]]
        assert [(g["name"], g["lr"], g["n_params"], g["n_tensors"]) for g in trainable] == \
               [(g["name"], g["initial_lr"], g["n_params"], g["n_tensors"]) for g in groups]
        assert all(g["lr"] is None and g["name"] == "frozen" for g in phase["groups"] if not g["trainable"])


def test_config_json_param_groups_match_the_optimizers_of_real_runs(dataset, tmp_path, recorder):
    """scratch (its model.pt is the next runs' pretrained weights), then linear and two-phase with layer decay."""
    scratch = train(_cfg(dataset, tmp_path, "scratch", strategy="scratch", weights="none"))
    model_pt = paths.model_file(scratch["out"])
    linear = train(_cfg(dataset, tmp_path, "linear", strategy="linear", weights=str(model_pt), augment=True))
    decay = 0.5
    two = train(_cfg(dataset, tmp_path, "two", strategy="two-phase", weights=str(model_pt), epochs=2, layer_decay=decay))
    assert len(recorder.groups) == 4  # scratch, linear, two-phase x 2 phases

    reference = create_model("customcnn", NUM_CLASSES, in_channels=1)
    n_trunk = sum(p.numel() for p in reference.trunk.parameters())
    n_head = sum(p.numel() for p in reference.head.parameters())

    s = _summary_groups(scratch["out"])
    _matches_optimizers(s, recorder.groups[:1])
    assert s == scratch["param_groups"]
    assert [(g["name"], g["lr"], g["n_params"], g["trainable"]) for g in s[0]["groups"]] == \
           [("trunk", 4e-3, n_trunk, True), ("head", 4e-3, n_head, True)]
    assert (s[0]["phase"], s[0]["epochs"]) == ("all (from scratch)", [1, 1])

    s = _summary_groups(linear["out"])
    _matches_optimizers(s, recorder.groups[1:2])
    assert [(g["name"], g["n_params"], g["trainable"]) for g in s[0]["groups"]] == [("head", n_head, True), ("frozen", n_trunk, False)]

    s = _summary_groups(two["out"])
    _matches_optimizers(s, recorder.groups[2:])
    assert [phase["epochs"] for phase in s] == [[1, 1], [2, 2]]
    assert [(g["name"], g["lr"]) for g in s[0]["groups"]] == [("head", 4e-3), ("frozen", None)]
    n = len(reference.info.stages)
    assert [(g["name"], g["lr"]) for g in s[1]["groups"]] == [(f"stage {i}", 2e-3 * decay ** (n - i)) for i in range(n)] + [("head", 2e-3)]
    assert sum(g["n_params"] for g in s[1]["groups"]) == n_trunk + n_head and all(g["trainable"] for g in s[1]["groups"])


def test_layer_decay_rates_read_back_from_torchs_optimizer_equal_the_plans(dataset, tmp_path, recorder):
    """A ``full`` run with layer decay: the optimizer torch steps holds the plan's groups, parameters and peak rates,
    and the schedule scales every group by the same factor, so the rates keep their ratios F^k while they move."""
    decay, lr = 0.6, 4e-3
    weights = tmp_path / "trunk.pt"
    torch.manual_seed(5)
    torch.save(create_model("customcnn", NUM_CLASSES, in_channels=1).trunk.state_dict(), weights)
    summary = train(_cfg(dataset, tmp_path, "full", strategy="full", weights=str(weights), layer_decay=decay, lr=lr))
    assert len(recorder.groups) == 1
    groups = recorder.groups[0]
    reference = create_model("customcnn", NUM_CLASSES, in_channels=1)
    plan = build_plan(reference, "full", epochs=1, lr=lr, layer_decay=decay)
    planned = plan.phase(0).groups
    assert [(g["name"], g["initial_lr"]) for g in groups] == [(name, rate) for name, rate, _ in planned]
    assert [g["n_tensors"] for g in groups] == [len(params) for _, _, params in planned]
    # the same parameters in the same order (the run's model is another object: compare shapes, tensor by tensor)
    assert [[tuple(p.shape) for p in g["params"]] for g in groups] == [[tuple(p.shape) for p in params] for _, _, params in planned]
    # after the first step the warm-up has scaled every group alike: ratios to the head stay exactly F^k
    head = groups[-1]["lr"]
    n = len(groups) - 1
    assert head < lr  # warm-up is on: the schedule really scaled the rates
    assert [g["lr"] / head for g in groups] == pytest.approx([decay ** (n - i) for i in range(n)] + [1.0], rel=1e-12)
    _matches_optimizers(_summary_groups(summary["out"]), recorder.groups)
