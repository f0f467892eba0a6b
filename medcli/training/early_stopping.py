"""Early stopping on the monitored validation score, with a real copy of the best epoch's weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EarlyStopping:
    """Tracks the best score, its epoch, a CPU copy of its weights and the epochs since it last improved.

    ``mode`` is ``"max"`` (accuracy-like scores) or ``"min"`` (losses); ``patience`` is in epochs. Epochs are
    counted from 0. The tracker records improvements in every phase of a strategy plan, but
    :meth:`should_stop` never stops before the plan's last phase has started (two-phase: never before the
    trunk is unfrozen). Its state (:meth:`state_dict`) is stored in the training checkpoint under the keys
    ``best_state``, ``best_score``, ``best_epoch`` and ``bad_epochs``.
    """

    mode: str
    patience: int
    best_score: float | None = None
    best_epoch: int = -1  # -1: no epoch scored yet
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")

    def is_better(self, score: float) -> bool:
        """True when ``score`` beats the best so far (strictly), or when nothing was scored yet."""
        return self.best_score is None or (score > self.best_score if self.mode == "max" else score < self.best_score)

    def update(self, score: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record epoch ``epoch``'s ``score``; on an improvement copy ``model``'s state (detached, on the CPU,
        never a reference to the live tensors). Returns whether the score improved."""
        if not self.is_better(score):
            self.bad_epochs += 1
            return False
        self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def should_stop(self, epoch: int, *, last_phase_start: int, epochs: int) -> bool:
        """Stop after epoch ``epoch``: ``patience`` epochs without improvement, the plan's last phase (starting
        at epoch ``last_phase_start``) has begun, and epochs remain (``epoch + 1 < epochs``)."""
        return epoch >= last_phase_start and self.bad_epochs >= self.patience and epoch + 1 < epochs

    def state_dict(self) -> dict:
        """``best_state``, ``best_score``, ``best_epoch``, ``bad_epochs``: the checkpoint's keys."""
        return {"best_state": self.best_state, "best_score": self.best_score, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint (or any mapping with the keys of :meth:`state_dict`)."""
        self.best_state, self.best_score = state["best_state"], state["best_score"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
