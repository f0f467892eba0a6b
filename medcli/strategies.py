"""Transfer-learning strategies: which parameters train, at which learning rate, in which epochs.

===========  =======================================================================================
scratch      random initialisation, everything trains (weights must be none)
linear       pretrained trunk entirely frozen, BatchNorm statistics included; only the head trains
partial      the last N trunk stages and the head train; earlier stages are frozen incl. BatchNorm stats
full         pretrained initialisation, everything trains
two-phase    fastai's ``fine_tune``: the head alone for ``freeze_epochs`` epochs, then everything with
             discriminative learning rates (lower for early stages)
===========  =======================================================================================

``full`` and ``two-phase`` also take ``layer_decay`` (layer-wise learning-rate decay, BEiT/timm): each trunk stage
trains at the next stage's rate times the factor, the head at the full rate (:func:`layer_decay_groups`). The other
strategies refuse it (:func:`setting_problem`).

:func:`build_plan` turns a strategy into a :class:`Plan` of :class:`Phase` objects for a concrete model. The
training loop, once per epoch::

    phase = plan.apply(model, epoch)          # sets requires_grad
    if plan.phase_changes_at(epoch):          # epoch 0 and every phase boundary
        optimizer = SGD(phase.param_groups, momentum=0.9)   # and a new LR scheduler
    set_train_mode(model, phase)              # model.train(), frozen parts back to eval()

The optimizer must be rebuilt at a phase change because its parameter groups (and their learning rates)
change. Under DistributedDataParallel the wrapper must be re-created then too: DDP only synchronises the
parameters that required gradients when it was built.

"Frozen" means more than ``requires_grad=False``: a frozen BatchNorm layer left in train mode keeps updating
its running mean/variance from the new data, so the "frozen" features drift. :func:`set_train_mode` keeps
frozen stages (the whole trunk for ``linear``) in eval mode, which also disables their dropout.

Adding a strategy is one :func:`register_strategy` call (and a row in the strategy tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .errors import MedcliError
from .registry import Registry
from .models import Classifier, get_backbone


@dataclass(frozen=True, eq=False)
class Phase:
    """A run of epochs ``[start, stop)`` with fixed trainable parameters and learning rates.

    Attributes:
        groups: ``(name, lr, params)`` per optimizer parameter group.
        eval_modules: modules kept in eval mode while training (frozen stages / the frozen trunk).
    """

    name: str
    start: int
    stop: int
    groups: tuple[tuple[str, float, tuple[nn.Parameter, ...]], ...]
    eval_modules: tuple[nn.Module, ...] = ()

    @property
    def trainable(self) -> tuple[nn.Parameter, ...]:
        return tuple(p for _, _, params in self.groups for p in params)

    @property
    def param_groups(self) -> list[dict]:
        """Fresh ``{"params", "lr", "name"}`` dicts for a torch optimizer (which modifies the dicts it gets)."""
        return [{"params": list(params), "lr": lr, "name": name} for name, lr, params in self.groups]

    def describe(self) -> str:
        lrs = ", ".join(f"{name} {lr:.3g}" for name, lr, _ in self.groups)
        epochs = f"epoch {self.stop}" if self.stop == self.start + 1 else f"epochs {self.start + 1}-{self.stop}"
        return f"{epochs}: {self.name} (lr {lrs})"


@dataclass(frozen=True, eq=False)
class Plan:
    strategy: str
    epochs: int
    phases: tuple[Phase, ...]

    def phase(self, epoch: int) -> Phase:
        """The phase of 0-based ``epoch``."""
        for phase in self.phases:
            if phase.start <= epoch < phase.stop:
                return phase
        raise IndexError(f"epoch {epoch} is outside the plan's {self.epochs} epochs")

    def phase_changes_at(self, epoch: int) -> bool:
        """True where a phase begins (epoch 0 included): rebuild the optimizer and scheduler there."""
        return any(phase.start == epoch for phase in self.phases)

    def apply(self, model: nn.Module, epoch: int) -> Phase:
        """Set ``requires_grad`` of every parameter of ``model`` for ``epoch``; returns the phase."""
        phase = self.phase(epoch)
        trainable = {id(p) for p in phase.trainable}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
        return phase

    def describe(self) -> list[str]:
        return [f"{self.strategy}: {phase.describe()}" for phase in self.phases]

    def param_groups_summary(self, model: nn.Module) -> list[dict]:
        """Per phase, which learning rate each part of ``model`` trains with (``config.json``'s
        ``summary.param_groups``).

        One ``{"phase", "epochs": [first, last] (1-based), "groups"}`` per phase; ``groups``: the optimizer's
        parameter groups in order, ``{"name", "lr" (the peak rate, which the warm-up + cosine schedule scales),
        "n_params" (number of values), "n_tensors", "trainable": true}``, leaving out empty groups as the optimizer
        does, then, when something is frozen, ``{"name": "frozen", "lr": null, …, "trainable": false}`` for every
        parameter of ``model`` in no group.
        """
        out = []
        for phase in self.phases:
            groups = [_group_entry(name, lr, params, True) for name, lr, params in phase.groups if params]
            trainable = {id(p) for p in phase.trainable}
            frozen = [p for p in model.parameters() if id(p) not in trainable]
            if frozen:
                groups.append(_group_entry("frozen", None, frozen, False))
            out.append({"phase": phase.name, "epochs": [phase.start + 1, phase.stop], "groups": groups})
        return out


def _group_entry(name: str, lr: float | None, params, trainable: bool) -> dict:
    return {"name": name, "lr": lr, "n_params": sum(p.numel() for p in params), "n_tensors": len(params), "trainable": trainable}


def set_train_mode(model: nn.Module, phase: Phase) -> None:
    """``model.train()``, then frozen parts back to ``eval()`` so their BatchNorm statistics stay fixed."""
    model.train()
    for module in phase.eval_modules:
        module.eval()


@dataclass(frozen=True)
class PlanSettings:
    epochs: int
    lr: float
    partial_stages: int = 1
    freeze_epochs: int = 1
    lr_mult: float = 100.0
    layer_decay: float | None = None


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy.

    Attributes:
        needs_pretrained: refuses random initial weights; ``random_weights_reason`` says why.
        allows_pretrained: False for strategies defined by random initialisation (scratch).
        phases: ``(model, settings) -> phases`` covering epochs ``0 .. settings.epochs - 1``.
        uses_layer_decay: its phases read ``settings.layer_decay``; the others refuse a value
            (:func:`setting_problem`).
    """

    name: str
    description: str
    needs_pretrained: bool
    phases: Callable[[Classifier, PlanSettings], list[Phase]]
    allows_pretrained: bool = True
    random_weights_reason: str = ""
    uses_layer_decay: bool = False


_STRATEGIES: Registry[StrategyInfo] = Registry("strategy")


def register_strategy(info: StrategyInfo, *, overwrite: bool = False) -> StrategyInfo:
    return _STRATEGIES.add(info.name, info, overwrite=overwrite)


def list_strategies() -> list[str]:
    return _STRATEGIES.names()


def get_strategy(name: str) -> StrategyInfo:
    return _STRATEGIES.get(name)


# --- combination rules ------------------------------------------------------------------------------------


def _weights_kind(weights: str | os.PathLike | None) -> str | None:
    if weights is None or (isinstance(weights, str) and weights.strip().lower() == "none"):
        return None
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":  # resolve() maps --weights pretrained here
        return "imagenet"
    return "file"


def setting_problem(strategy: str, layer_decay: float | None = None) -> str | None:
    """Why a strategy setting does not fit ``strategy``, or None: today ``layer_decay``.

    Layer-wise learning-rate decay needs 0 < ``layer_decay`` <= 1 and a strategy that trains the whole trunk
    (``full``, ``two-phase``: ``StrategyInfo.uses_layer_decay``). ``linear`` and ``partial`` train too few stages
    for a per-stage schedule to mean anything, and ``scratch`` has no pretrained features to protect, which is
    what the decay is for (BEiT, Bao et al. 2021, §2.3). A value that would be ignored is refused rather than
    dropped, so that a run's recorded settings are the ones it trained with. Unknown strategies raise.
    """
    strat = get_strategy(strategy)
    if layer_decay is None:
        return None
    if not 0 < layer_decay <= 1:
        return f"layer decay {layer_decay}: use a factor in (0, 1] (1 = the same rate for every stage; e.g. 0.75)"
    if not strat.uses_layer_decay:
        users = " and ".join(f"'{name}'" for name in list_strategies() if get_strategy(name).uses_layer_decay)
        return (f"layer decay {layer_decay}: only strategies {users} use layer-wise learning-rate decay, "
                f"not '{strategy}'; drop the layer decay or change the strategy")
    return None


def combination_problem(backbone: str, strategy: str, weights: str | os.PathLike | None, *,
                        layer_decay: float | None = None) -> str | None:
    """Why ``backbone`` + ``strategy`` + ``weights`` (+ ``layer_decay``) makes no sense, or None if it does.

    Meant for skipping cells of an experiment grid with a logged reason, and (through :func:`check_combination`)
    for refusing a training run: one rule, two outcomes. Unknown names still raise: a typo must not silently
    empty a grid. Whether a weights file exists is checked when the model is built. ``layer_decay`` is checked
    by :func:`setting_problem`.
    """
    info = get_backbone(backbone)
    strat = get_strategy(strategy)
    setting = setting_problem(strategy, layer_decay)
    if setting:
        return setting
    kind = _weights_kind(weights)
    if kind == "imagenet" and info.imagenet_weights is None:
        what = "pretrained weights in timm (`medcli models --search` marks the names that have)" if info.family == "timm" else "ImageNet weights"
        return f"{backbone} has no {what}: use a weights file of a trained {backbone}, or weights 'none'"
    if kind is None and strat.needs_pretrained:
        if info.imagenet_weights is None:
            fix = f"{backbone} has no ImageNet weights, so give a weights file of a trained {backbone}"
        else:
            fix = "use weights 'imagenet' or a weights file"
        return (
            f"strategy '{strategy}' with random weights {strat.random_weights_reason}: "
            f"{fix}, or use strategy 'scratch'"
        )
    if kind is not None and not strat.allows_pretrained:
        return (
            f"strategy '{strategy}' trains from random weights, but weights '{os.fspath(weights)}' were given: "
            f"use weights 'none', or strategy 'full' to train everything from the pretrained weights"
        )
    return None


def combination_note(backbone: str, strategy: str, weights: str | os.PathLike | None) -> str | None:
    """Why a valid combination duplicates another one, or None.

    Training proceeds with a warning; an experiment grid skips the cell (it would train the same model twice
    under two names). Today: ``full`` from random weights is ``scratch``.
    """
    if strategy == "full" and _weights_kind(weights) is None:
        return "strategy 'full' with weights 'none' trains from random initialisation, exactly like 'scratch'"
    return None


def check_combination(backbone: str, strategy: str, weights: str | os.PathLike | None, *,
                      layer_decay: float | None = None) -> None:
    """Raise :class:`MedcliError` with the reason if the combination makes no sense."""
    problem = combination_problem(backbone, strategy, weights, layer_decay=layer_decay)
    if problem:
        raise MedcliError(problem)


# --- plans ------------------------------------------------------------------------------------------------


def _head(model: Classifier) -> tuple[nn.Parameter, ...]:
    return tuple(model.head.parameters())


def _frozen_stage_modules(model: Classifier, trainable_stages: int) -> tuple[nn.Module, ...]:
    """Modules of the stages that stay frozen when the last ``trainable_stages`` stages train."""
    stages = model.stages()
    return tuple(m for group in stages[: len(stages) - trainable_stages] for m in group)


def _head_only(model: Classifier, start: int, stop: int, lr: float) -> Phase:
    return Phase("head only (trunk frozen)", start, stop, (("head", lr, _head(model)),), (model.trunk,))


def trunk_stage_parameters(model: Classifier) -> list[tuple[nn.Parameter, ...]]:
    """Every trunk parameter exactly once, grouped by stage from input to output.

    :meth:`Classifier.stage_parameters` lists what the backbone's ``stages`` name; a trunk parameter no stage
    names (a backbone whose stages come from a pattern that misses, say, a final norm) joins the first stage,
    the stem: the most general features, trained at the lowest rate. A parameter named by two stages is an error
    of the backbone's description (an optimizer refuses a parameter in two groups).
    """
    stages = [list(group) for group in model.stage_parameters()]
    where: dict[int, int] = {}
    for i, group in enumerate(stages):
        for param in group:
            if id(param) in where:
                raise ValueError(f"backbone {model.backbone!r}: a trunk parameter is in stages {where[id(param)]} and {i}")
            where[id(param)] = i
    stages[0].extend(p for p in model.trunk.parameters() if id(p) not in where)
    return [tuple(group) for group in stages]


def layer_decay_groups(model: Classifier, lr: float, decay: float) -> tuple[tuple[str, float, tuple[nn.Parameter, ...]], ...]:
    """Layer-wise learning-rate decay: ``(name, lr, params)`` groups ``stage 0`` (stem) .. ``stage N-1``, ``head``.

    The head trains at ``lr``, the last trunk stage at ``lr * decay``, the one before at ``lr * decay**2``, down to
    the stem at ``lr * decay**N``: BEiT's fine-tuning recipe (Bao et al. 2021, "BEiT: BERT Pre-Training of Image
    Transformers", §2.3 and appendix), as timm's ``optim.param_groups_layer_decay`` implements it (layer ``i`` of
    ``max`` gets ``layer_decay ** (max - i)``). timm counts blocks; here the unit is one of the backbone's
    ``stages``, so CNNs and transformers get the same number of rates as ``partial``/``two-phase`` see. timm stores
    the factor as ``lr_scale`` for its own schedulers; the rate is stored here, which torch's schedulers scale.
    Every trunk parameter is in exactly one group (:func:`trunk_stage_parameters`).
    """
    stages = trunk_stage_parameters(model)
    n = len(stages)
    groups = tuple((f"stage {i}", lr * decay ** (n - i), params) for i, params in enumerate(stages))
    return (*groups, ("head", lr, _head(model)))


def _everything(name: str) -> Callable[[Classifier, PlanSettings], list[Phase]]:
    def phases(model: Classifier, s: PlanSettings) -> list[Phase]:
        if s.layer_decay is not None:
            return [Phase(f"{name}, layer decay {s.layer_decay:g}", 0, s.epochs, layer_decay_groups(model, s.lr, s.layer_decay))]
        groups = (("trunk", s.lr, tuple(model.trunk.parameters())), ("head", s.lr, _head(model)))
        return [Phase(name, 0, s.epochs, groups)]

    return phases


def _linear(model: Classifier, s: PlanSettings) -> list[Phase]:
    return [_head_only(model, 0, s.epochs, s.lr)]


def _partial(model: Classifier, s: PlanSettings) -> list[Phase]:
    stages = model.stage_parameters()
    n = s.partial_stages
    if not 1 <= n < len(stages):
        raise MedcliError(
            f"partial_stages {n}: {model.backbone} has {len(stages)} stages; use 1 to {len(stages) - 1} "
            f"(all {len(stages)} is strategy 'full')"
        )
    top = tuple(p for group in stages[-n:] for p in group)
    groups = ((f"last {n} stage(s)", s.lr, top), ("head", s.lr, _head(model)))
    return [Phase(f"last {n} of {len(stages)} stages + head", 0, s.epochs, groups, _frozen_stage_modules(model, n))]


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """``n`` geometrically spaced values from ``start`` to ``stop`` (fastai's ``even_mults``)."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


def _two_phase(model: Classifier, s: PlanSettings) -> list[Phase]:
    """fastai's ``fine_tune`` (Howard & Gugger 2020): the head alone at ``lr``, then everything at ``lr / 2``.

    The second phase's rates fall from the head (``lr / 2``) to the stem: spaced geometrically over the stages so
    that head / stem = ``lr_mult`` (fastai's ``slice(base_lr / lr_mult, base_lr)``), or, when ``layer_decay`` is
    set, each stage at the next one's rate times ``layer_decay`` (:func:`layer_decay_groups`, BEiT/timm). The
    layer decay wins over ``lr_mult``: ``lr_mult`` has a default (100) and cannot tell a chosen value from an
    untouched one, whereas ``layer_decay`` is off unless asked for. Both keep fastai's halving of the base rate, so
    the head's rate in the second phase is the same either way and only the spacing differs; the first phase is
    the same either way.
    """
    if not 1 <= s.freeze_epochs < s.epochs:
        raise MedcliError(
            f"freeze_epochs {s.freeze_epochs} with epochs {s.epochs}: two-phase needs 1 <= freeze_epochs < epochs "
            f"(epochs counts both phases)"
        )
    base = s.lr / 2
    if s.layer_decay is not None:
        groups = layer_decay_groups(model, base, s.layer_decay)
        unfrozen = Phase(f"all, layer decay {s.layer_decay:g}", s.freeze_epochs, s.epochs, groups)
        return [_head_only(model, 0, s.freeze_epochs, s.lr), unfrozen]
    stages = trunk_stage_parameters(model)
    # fastai fine_tune: base_lr is halved for the unfrozen phase and spread as slice(base_lr / lr_mult, base_lr)
    # over all parameter groups, input stage lowest, head highest.
    lrs = even_mults(base / s.lr_mult, base, len(stages) + 1)
    groups = tuple((f"stage {i}", lrs[i], params) for i, params in enumerate(stages))
    unfrozen = Phase("all, discriminative lr", s.freeze_epochs, s.epochs, (*groups, ("head", lrs[-1], _head(model))))
    return [_head_only(model, 0, s.freeze_epochs, s.lr), unfrozen]


register_strategy(StrategyInfo(
    "scratch", "random initialisation, all parameters train", False, _everything("all (from scratch)"),
    allows_pretrained=False,
))
register_strategy(StrategyInfo(
    "linear", "frozen pretrained trunk (BatchNorm statistics included); only the head trains", True, _linear,
    random_weights_reason="trains a head on random features",
))
register_strategy(StrategyInfo(
    "partial", "the last N trunk stages and the head train; earlier stages stay frozen", True, _partial,
    random_weights_reason="fine-tunes the last stages on top of frozen random features",
))
# ``full`` with random weights is allowed (a plain end-to-end run), and trains exactly like ``scratch``; the
# training log says so, and an experiment grid should not list both.
register_strategy(StrategyInfo(
    "full", "pretrained initialisation (if weights are given), all parameters train", False, _everything("all (fine-tuning)"),
    uses_layer_decay=True,
))
register_strategy(StrategyInfo(
    "two-phase", "head only for freeze_epochs epochs, then all with discriminative learning rates (fastai fine_tune)",
    True, _two_phase, random_weights_reason="starts by training a head on random features", uses_layer_decay=True,
))


def build_plan(
    model: Classifier,
    strategy: str,
    *,
    epochs: int,
    lr: float,
    partial_stages: int = 1,
    freeze_epochs: int = 1,
    lr_mult: float = 100.0,
    layer_decay: float | None = None,
) -> Plan:
    """The training plan of ``strategy`` for ``model``.

    Args:
        epochs: total epochs; for ``two-phase`` both phases together (unlike fastai's ``fine_tune``, which adds
            ``freeze_epochs`` on top), so that every strategy in a comparison gets the same budget.
        lr: base learning rate (the peak rate, if the loop schedules it).
        partial_stages: ``partial``: how many of the last trunk stages train.
        freeze_epochs: ``two-phase``: epochs of the head-only phase.
        lr_mult: ``two-phase``: ratio between the head's and the first stage's learning rate (unused when
            ``layer_decay`` is set).
        layer_decay: ``full`` and ``two-phase``: layer-wise learning-rate decay factor in (0, 1], None = off
            (:func:`layer_decay_groups`); other strategies refuse it (:func:`setting_problem`).
    """
    info = get_strategy(strategy)
    if int(epochs) < 1:
        raise MedcliError(f"epochs {epochs}: train for at least 1 epoch")
    if not lr > 0:
        raise MedcliError(f"lr {lr}: the learning rate must be positive")
    if not lr_mult >= 1:
        raise MedcliError(f"lr_mult {lr_mult}: use a ratio >= 1 (1 = the same rate for every stage)")
    problem = setting_problem(strategy, layer_decay)
    if problem:
        raise MedcliError(problem)
    settings = PlanSettings(int(epochs), float(lr), int(partial_stages), int(freeze_epochs), float(lr_mult),
                            None if layer_decay is None else float(layer_decay))
    phases = tuple(info.phases(model, settings))
    if phases[0].start != 0 or phases[-1].stop != settings.epochs or any(
        a.stop != b.start for a, b in zip(phases, phases[1:])
    ):
        raise ValueError(f"strategy {strategy!r} produced phases that do not cover epochs 0..{settings.epochs - 1}")
    return Plan(strategy, settings.epochs, phases)
