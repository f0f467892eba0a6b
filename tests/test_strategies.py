from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medcli.errors import MedcliError
from medcli.models import Classifier, create_model
from medcli.strategies import (
    build_plan,
    check_combination,
    combination_problem,
    even_mults,
    get_strategy,
    list_strategies,
    set_train_mode,
)

NUM_CLASSES = 3


def head_ids(model: Classifier) -> set[int]:
    return {id(p) for p in model.head.parameters()}


def all_ids(model: Classifier) -> set[int]:
    return {id(p) for p in model.parameters()}


def last_stage_and_head(model: Classifier) -> set[int]:
    return {id(p) for p in model.stage_parameters()[-1]} | head_ids(model)


# What each strategy must train, per phase (with freeze_epochs=1 and partial_stages=1).
# A new strategy needs a row here: test_every_strategy_is_specified fails otherwise.
EXPECTED = {
    "scratch": [all_ids],
    "linear": [head_ids],
    "partial": [last_stage_and_head],
    "full": [all_ids],
    "two-phase": [head_ids, all_ids],
}


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory) -> dict[str, str]:
    """Pretrained-weights stand-ins: a trunk-only customcnn state dict, a full torchvision resnet18 one."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    custom, resnet = folder / "customcnn.pt", folder / "resnet18.pth"
    torch.save(create_model("customcnn", NUM_CLASSES).trunk.state_dict(), custom)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    return {"customcnn": str(custom), "resnet18": str(resnet)}


def make_model(backbone: str, strategy: str, weights_files) -> Classifier:
    weights = None if strategy == "scratch" else weights_files[backbone]
    check_combination(backbone, strategy, weights)
    torch.manual_seed(1)
    return create_model(backbone, NUM_CLASSES, weights=weights)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_strategy_is_specified():
    assert set(list_strategies()) == set(EXPECTED)


@pytest.mark.parametrize("backbone", ["customcnn", "resnet18"])
@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_strategy_trains_exactly_what_it_says(strategy, backbone, weights_files):
    model = make_model(backbone, strategy, weights_files)
    phases = EXPECTED[strategy]
    plan = build_plan(model, strategy, epochs=len(phases), lr=0.1, freeze_epochs=1, partial_stages=1)
    assert len(plan.phases) == len(phases)
    names = {id(p): n for n, p in model.named_parameters()}
    bn_modules = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    torch.manual_seed(2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))

    for epoch, expected in enumerate(phases):  # one epoch per phase
        phase = plan.apply(model, epoch)
        want = expected(model)
        assert {id(p) for p in model.parameters() if p.requires_grad} == want
        assert {id(p) for p in phase.trainable} == want
        assert plan.phase_changes_at(epoch) == (epoch == 0 or phase is not plan.phase(epoch - 1))

        before = snapshot(model)
        optimizer = torch.optim.SGD(phase.param_groups, lr=0.1, momentum=0.9)
        for _ in range(3):
            set_train_mode(model, phase)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        after = snapshot(model)

        for name, param in model.named_parameters():
            changed = not torch.equal(before[name], after[name])
            assert changed == (id(param) in want), f"{strategy}/{backbone} epoch {epoch}: {name} changed={changed}"
        for name, bn in bn_modules.items():
            frozen = not any(id(p) in want for p in bn.parameters())
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                key = f"{name}.{buffer}"
                same = torch.equal(before[key], after[key])
                assert same == frozen, f"{strategy}/{backbone} epoch {epoch}: {key} same={same} frozen={frozen}"
        assert all(names[id(p)] for p in phase.trainable)


def test_two_phase_uses_discriminative_learning_rates(weights_files):
    model = make_model("resnet18", "two-phase", weights_files)
    plan = build_plan(model, "two-phase", epochs=5, lr=0.01, freeze_epochs=2, lr_mult=100)
    assert [plan.phase_changes_at(e) for e in range(5)] == [True, False, True, False, False]

    frozen = plan.phase(1)
    assert [(g["name"], g["lr"]) for g in frozen.param_groups] == [("head", 0.01)]
    assert frozen.eval_modules == (model.trunk,)

    unfrozen = plan.phase(2)
    groups = unfrozen.param_groups
    assert [g["name"] for g in groups] == [f"stage {i}" for i in range(5)] + ["head"]
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and len(set(lrs)) == len(lrs)
    assert lrs[0] == pytest.approx(0.005 / 100) and lrs[-1] == pytest.approx(0.005)
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([100 ** (1 / 5)] * 5)
    assert unfrozen.eval_modules == ()
    assert {id(p) for g in groups for p in g["params"]} == all_ids(model)
    assert even_mults(1, 100, 3) == pytest.approx([1, 10, 100])


def test_partial_freezes_early_stages_and_their_statistics(weights_files):
    model = make_model("resnet18", "partial", weights_files)
    phase = build_plan(model, "partial", epochs=1, lr=0.1, partial_stages=2).phase(0)
    stages = model.stages()
    assert phase.eval_modules == tuple(m for group in stages[:3] for m in group)
    set_train_mode(model, phase)
    assert not model.trunk.layer2.training and not model.trunk.bn1.training
    assert model.trunk.layer3.training and model.trunk.layer4.training and model.head.training
    with pytest.raises(MedcliError, match="partial_stages 5: resnet18 has 5 stages; use 1 to 4"):
        build_plan(model, "partial", epochs=1, lr=0.1, partial_stages=5)


def test_loose_vit_parameters_belong_to_the_first_stage():
    model = create_model("vit_b_16", NUM_CLASSES, img_size=32)
    groups = build_plan(model, "two-phase", epochs=2, lr=0.01).phase(1).param_groups
    first = {id(p) for p in groups[0]["params"]}
    assert id(model.trunk.class_token) in first and id(model.trunk.encoder.pos_embedding) in first
    partial = build_plan(model, "partial", epochs=1, lr=0.01, partial_stages=1).phase(0)
    assert id(model.trunk.class_token) not in {id(p) for p in partial.trainable}


@pytest.mark.parametrize(
    ("backbone", "strategy", "weights", "reason"),
    [
        ("customcnn", "linear", None, "trains a head on random features.*weights file of a trained customcnn"),
        ("customcnn", "partial", "none", "frozen random features"),
        ("customcnn", "two-phase", None, "head on random features"),
        ("resnet18", "linear", "None", "use weights 'imagenet' or a weights file, or use strategy 'scratch'"),
        ("resnet18", "scratch", "imagenet", "trains from random weights, but weights 'imagenet' were given"),
        ("customcnn", "scratch", "trained.pt", "weights 'trained.pt' were given"),
        ("customcnn", "full", "imagenet", "customcnn has no ImageNet weights"),
    ],
)
def test_invalid_combinations_are_refused(backbone, strategy, weights, reason):  # noqa: D103
    problem = combination_problem(backbone, strategy, weights)
    assert problem is not None
    with pytest.raises(MedcliError, match=reason):
        check_combination(backbone, strategy, weights)


@pytest.mark.parametrize(
    ("backbone", "strategy", "weights"),
    [
        ("customcnn", "scratch", None),
        ("customcnn", "linear", "trained.pt"),
        ("resnet18", "scratch", "none"),
        ("resnet18", "two-phase", "imagenet"),
        ("densenet121", "partial", "imagenet"),
    ],
)
def test_valid_combinations_pass(backbone, strategy, weights):
    assert combination_problem(backbone, strategy, weights) is None
    check_combination(backbone, strategy, weights)


def test_bad_names_and_settings_are_refused():
    with pytest.raises(MedcliError, match="unknown strategy 'finetune'.*full, linear, partial, scratch, two-phase"):
        get_strategy("finetune")
    with pytest.raises(MedcliError, match="unknown strategy"):
        combination_problem("resnet18", "finetune", None)
    with pytest.raises(MedcliError, match="unknown backbone"):
        combination_problem("resnet", "full", "imagenet")
    model = create_model("customcnn", NUM_CLASSES)
    with pytest.raises(MedcliError, match="freeze_epochs 3 with epochs 3"):
        build_plan(model, "two-phase", epochs=3, lr=0.1, freeze_epochs=3)
    with pytest.raises(MedcliError, match="epochs 0"):
        build_plan(model, "full", epochs=0, lr=0.1)
    with pytest.raises(MedcliError, match="lr 0"):
        build_plan(model, "full", epochs=1, lr=0)


def test_full_with_random_weights_is_allowed():
    """``full`` without weights is a plain end-to-end run from random initialisation (the same as ``scratch``)."""
    assert combination_problem("resnet18", "full", "none") is None
    assert combination_problem("customcnn", "full", None) is None


@pytest.mark.parametrize("strategy", list_strategies())
def test_layer_decay_is_used_or_refused_by_every_strategy(strategy, weights_files):
    """A strategy that declares ``uses_layer_decay`` ends with every parameter in stage-then-head groups whose
    rates fall by the factor from head to stem; any other refuses the setting (a new strategy must choose)."""
    from medcli.strategies import setting_problem

    model = make_model("resnet18", strategy, weights_files)
    kwargs = dict(epochs=3, lr=0.01, freeze_epochs=1, layer_decay=0.8)
    if not get_strategy(strategy).uses_layer_decay:
        assert "only strategies 'full' and 'two-phase'" in setting_problem(strategy, 0.8)
        with pytest.raises(MedcliError, match=f"not '{strategy}'"):
            build_plan(model, strategy, **kwargs)
        return
    last = build_plan(model, strategy, **kwargs).phases[-1]
    names = [name for name, _, _ in last.groups]
    assert names == [f"stage {i}" for i in range(len(model.info.stages))] + ["head"]
    lrs = [lr for _, lr, _ in last.groups]
    assert [a / b for a, b in zip(lrs, lrs[1:])] == pytest.approx([0.8] * (len(lrs) - 1))
    assert sorted(id(p) for p in last.trainable) == sorted(all_ids(model))
