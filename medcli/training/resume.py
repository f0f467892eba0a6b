"""Resume state: the checkpoint a killed run restarts from (``work/…/checkpoint.pt``, see :mod:`medcli.paths`).

A checkpoint (:data:`CHECKPOINT_FORMAT`) is a ``torch.save`` dict with the keys ``format``, ``key`` (the
settings' :meth:`TrainConfig.key`), ``epoch`` (epochs done), ``model``, ``trunk_sha256``, ``optimizer``,
``scheduler``, ``best_state``, ``best_score``, ``best_epoch``, ``bad_epochs``, ``history`` (the rows of
``history.csv`` so far) and ``ema`` (the weight average's tensors, or None). It is written atomically (``.checkpoint.pt.tmp-<pid>``, then renamed), so it is complete or absent; a
temporary file left by a killed process is removed when the run starts again (:func:`prepare_folders`).

When the plan never trains the trunk, the trunk stays exactly as loaded from the weights: ``model`` and
``best_state`` then hold the head's tensors alone and ``trunk_sha256`` the trunk's hash
(:func:`medcli.training.features.trunk_fingerprint`); :func:`resume_state` completes them with the trunk of
the model it has just rebuilt, after checking the hash.
"""

from __future__ import annotations

import logging
import os

import torch

from .config import TrainConfig
from .early_stopping import EarlyStopping

log = logging.getLogger("medcli")

CHECKPOINT_FORMAT = "medcli.checkpoint/3"  # 2: head-only states and trunk_sha256 when the trunk stays frozen; 3: ema


def save_checkpoint(path: str, cfg: TrainConfig, epoch: int, model, optimizer, scheduler, stopper: EarlyStopping, history: list[dict],
                    *, frozen_trunk: str | None = None, average: dict | None = None) -> None:
    """Write the resume state after ``epoch`` epochs to ``path``; with ``frozen_trunk`` (the trunk's hash) the
    trunk's tensors are left out of ``model`` and ``best_state``; ``average``: the weight average's state."""
    from .._io import save_torch

    tracked = stopper.state_dict()
    model_state, best_state = model.state_dict(), tracked["best_state"]
    if frozen_trunk:  # a frozen trunk equals the loaded weights: rewriting it every epoch would only cost time
        model_state, best_state = head_part(model_state), head_part(best_state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "key": cfg.key(),
        "epoch": epoch,
        "model": model_state,
        "trunk_sha256": frozen_trunk,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        **tracked,
        "best_state": best_state,
        "history": history,
        "ema": average,
    }
    save_torch(payload, path)  # a full disk: one error naming the file; a kill mid-write: a temp the next start removes


def load_checkpoint(path: str, cfg: TrainConfig, frozen_trunk: str | None = None) -> dict | None:
    """The checkpoint at ``path`` as saved, or None (with a log line saying why) when it is unreadable, has
    another format, belongs to other settings or was saved with another frozen trunk: the run starts over."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises an unsafe load: not passed on
        log.warning("ignoring checkpoint %s: not a safe medcli checkpoint; starting over", path)
        return None
    except Exception as exc:  # a damaged checkpoint only costs the time to redo it
        text = str(exc).strip()
        log.warning("ignoring unreadable checkpoint %s (%s); starting over", path, text.splitlines()[0] if text else type(exc).__name__)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring checkpoint %s: not a medcli checkpoint; starting over", path)
        return None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != cfg.key():
        log.info("checkpoint %s belongs to different settings; starting over", path)
        return None
    if state.get("trunk_sha256") != frozen_trunk:
        log.info("checkpoint %s was saved with other trunk weights; starting over", path)
        return None
    return state


def resume_state(path: str, cfg: TrainConfig, model, frozen_trunk: str | None = None) -> dict | None:
    """:func:`load_checkpoint` when ``path`` exists, with head-only states completed with ``model``'s trunk;
    None when there is nothing to resume.

    First, as every training starts here: :func:`prepare_folders` (the run folder may be replaced; leftovers of
    interrupted writes removed)."""
    prepare_folders(cfg, path)
    state = load_checkpoint(path, cfg, frozen_trunk) if os.path.exists(path) else None
    if state and frozen_trunk:
        state["model"], state["best_state"] = with_trunk(state["model"], model), with_trunk(state["best_state"], model)
    return state


def prepare_folders(cfg: TrainConfig, checkpoint: str) -> None:
    """Before a run trains: refuse an ``--out`` folder that holds files a run folder does not (training replaces
    it whole at the end, :func:`medcli.runs.check_replaceable`), and, in the main process, remove the temporary
    files of interrupted writes by processes that are gone (:func:`medcli._cleanup.remove_stale_temps`) from the
    checkpoint's folder, the run folder and the run folder's own staging names beside it (only its own: the
    folder beside it may hold other runs that jobs on other machines are writing)."""
    from pathlib import Path

    from .._cleanup import remove_stale_temps
    from ..runs import check_replaceable

    if cfg.out is not None:
        check_replaceable(cfg.out)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    remove_stale_temps(os.path.dirname(checkpoint) or ".", recursive=False)
    if cfg.out is None:  # an unresolved cfg (its run folder not known yet)
        return
    remove_stale_temps(cfg.out)
    out = Path(cfg.out).absolute()  # a staging folder (`.<run>.tmp-<pid>`) or an old folder set aside (`.<run>.old-<pid>`)
    remove_stale_temps(out.parent, recursive=False, prefix=f".{out.name}.")


def head_part(state: dict | None) -> dict | None:
    """``state`` without the trunk's tensors (keys ``trunk.*``)."""
    return None if state is None else {k: v for k, v in state.items() if not k.startswith("trunk.")}


def with_trunk(head_state: dict | None, model) -> dict | None:
    """A head-only state completed with ``model``'s trunk tensors (copies, on the CPU)."""
    if head_state is None:
        return None
    full = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k.startswith("trunk.")}
    full.update(head_state)
    return full
