"""The training stage: ``train(TrainConfig)`` trains one model and writes its run folder.

``train`` is imported on first use, so that reading the settings schema (``medcli train --help``) does not
import torch.
"""

from .config import TrainConfig, resolve

__all__ = ["TrainConfig", "resolve", "train"]


def __getattr__(name: str):
    if name == "train":
        from .loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
