"""The training stage: ``train(TrainConfig)`` trains one model and writes its run folder."""

from .config import TrainConfig, resolve
from .loop import train

__all__ = ["TrainConfig", "resolve", "train"]
