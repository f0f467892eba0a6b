"""Classification heads: the part that maps a trunk's pooled feature vector to class logits.

* ``linear``: one ``nn.Linear(F, C)``, i.e. the pretrained network with its final layer replaced.
* ``mlp``: ``BatchNorm1d(F) -> Linear(F, hidden) -> ReLU -> Dropout(p) -> Linear(hidden, C)``.

The "chained model" of many published notebooks (a pretrained trunk feeding a small custom dense head, trained
end to end) is backbone + ``mlp`` head + the ``full`` strategy.

Because the ``mlp`` head starts with a BatchNorm layer, it needs training batches of at least two samples; the
training loop drops a last batch of one.

Adding a head is one :func:`register_head` call with a builder ``(feature_dim, num_classes, dropout, hidden)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class HeadInfo:
    name: str
    description: str
    build: Callable[[int, int, float, int], nn.Module]


_HEADS: Registry[HeadInfo] = Registry("head")


def register_head(info: HeadInfo, *, overwrite: bool = False) -> HeadInfo:
    """Add a head to the registry (``overwrite=True`` replaces an existing entry of that name)."""
    return _HEADS.add(info.name, info, overwrite=overwrite)


def list_heads() -> list[str]:
    return _HEADS.names()


def get_head(name: str) -> HeadInfo:
    return _HEADS.get(name)


def build_head(name: str, feature_dim: int, num_classes: int, *, dropout: float = 0.5, hidden: int = 256) -> nn.Module:
    return get_head(name).build(feature_dim, num_classes, dropout, hidden)


def _linear(feature_dim: int, num_classes: int, dropout: float, hidden: int) -> nn.Module:
    # dropout and hidden are deliberately unused: "linear" is exactly a replaced final layer.
    return nn.Linear(feature_dim, num_classes)


def _mlp(feature_dim: int, num_classes: int, dropout: float, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm1d(feature_dim),
        nn.Linear(feature_dim, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


register_head(HeadInfo("linear", "one linear layer replacing the network's final layer", _linear))
register_head(HeadInfo("mlp", "BatchNorm -> Linear(hidden) -> ReLU -> Dropout -> Linear", _mlp))
