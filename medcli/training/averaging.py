"""Weight averaging: an exponential moving average (EMA) of the trained weights, validated, selected and saved in
place of the raw weights (``--ema-epochs``).

The average is timm's :class:`timm.utils.ModelEmaV3` (parameters and BatchNorm buffers), with its warm-up
(``decay = min(decay, 1 - t^(-3/4))`` after ``t`` optimizer steps, the first update a plain copy; power 3/4
is timm's advice for shorter runs, 2/3 for runs of a million steps or more), so the random initialisation is
forgotten within the first epochs. The horizon is given in
epochs and turned into a per-step decay at the fold's size: ``decay = 1 - 1 / (ema_epochs x steps_per_epoch)``.
timm trains ImageNet with ``--model-ema-decay 0.9998`` at ~2,500 steps per epoch, a horizon of 2 epochs.

On a small validation fold the score of consecutive epochs of raw weights jumps by several points, and the
best epoch is then partly chosen by noise; averaging the weights over the last epochs smooths the weights
themselves (Polyak and Juditsky, 1992; Izmailov et al., "Averaging weights leads to wider optima and better
generalization", UAI 2018). The defaults study (``docs/recipes.md``) measures what it is worth.

When the plan never trains the trunk (a linear probe) only the head is averaged; the averaged model is then a
shallow copy of the model with the averaged head: it shares the trunk module and the model's own parameter
dicts, so it is only ever put in eval mode and run (never moved, trained or loaded into).
"""

from __future__ import annotations

import copy

import torch.nn as nn

WARMUP_POWER = 3 / 4


def ema_decay(ema_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay of an average over about ``ema_epochs`` epochs of ``steps_per_epoch`` steps (0 for
    an average of one step or less)."""
    horizon = ema_epochs * steps_per_epoch
    return 0.0 if horizon <= 1 else 1.0 - 1.0 / horizon


class WeightAverage:
    """EMA of ``model`` (or of its head alone, ``head_only``); :meth:`averaged` is a model with the averaged
    weights, whose ``state_dict()`` has the keys of ``model.state_dict()``."""

    def __init__(self, model: nn.Module, decay: float, *, head_only: bool = False) -> None:
        from timm.utils import ModelEmaV3

        self.model, self.decay, self.head_only = model, decay, head_only
        self.ema = ModelEmaV3(model.head if head_only else model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
        self._view = _with_head(model, self.ema.module) if head_only else self.ema.module

    def update(self, step: int) -> None:
        """Fold in the model's weights after optimizer step ``step`` (1-based, counted over the whole run)."""
        self.ema.update(self.model.head if self.head_only else self.model, step=step)

    def averaged(self) -> nn.Module:
        return self._view

    def counterpart(self, net: nn.Module) -> nn.Module:
        """The averaged version of ``net``, which is the model itself or its head (trained on cached features)."""
        if net is self.model:
            return self._view
        if net is self.model.head:
            return self._view.head
        raise ValueError("net is neither the model nor its head")

    def state_dict(self) -> dict:
        """The averaged tensors (the head's alone when ``head_only``): stored in the resume checkpoint."""
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state)


def _with_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """A shallow copy of ``model`` sharing everything with it except its ``head`` submodule."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["head"] = head
    return view
