"""Checks a command makes before its work: can it write where its outputs go, is there room for them.

A command that cannot write its outputs should say so in its first second, naming the folder, not after
training every epoch. :func:`check_writable` probes each output folder for real (a file created and removed in
the folder, or in its nearest existing parent when the folder is still to be made): ``os.access`` says yes to
root on a read-only mount. :func:`check_train` is ``medcli train``'s: the run folders, the work folders, the
splits file a run would make, and room for the model file on the run folder's disk.

Nothing is written: the probe file is removed at once and no folder is created.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from .errors import MedcliError, existing_ancestor, free_bytes, human_bytes


class Output(NamedTuple):
    """A file or folder a command will write: ``path``; ``what`` names how the user chose it (an option such
    as ``--out``, or ``run folder``); ``fix`` says what to do when it cannot be written (default: choose another
    folder with the option ``what``)."""

    path: str | os.PathLike
    what: str
    fix: str = ""


def check_writable(outputs: Iterable[Output]) -> None:
    """Refuse, before any work, an output that cannot be written.

    For each output, its nearest existing folder (the output itself if it is an existing folder, the folder of an
    existing file) gets a probe: a temporary file created and removed there. Each folder is probed once.

    Raises :class:`MedcliError` for the first output whose folder refuses the probe (read-only file system,
    permission denied, no space left, ...), or whose nearest existing path is a file, not a folder: one line
    ``<what> <path>: cannot write in <folder>: <reason>; <fix>``.
    """
    probed: set[str] = set()
    for out in outputs:
        folder = existing_ancestor(out.path)
        if folder == os.path.abspath(out.path) and not os.path.isdir(folder):
            folder = os.path.dirname(folder)  # an existing file is replaced by a rename in its folder
        if folder in probed:
            continue
        problem = _probe(folder)
        if problem:
            where = "there" if os.path.abspath(out.path) == folder else f"in {folder}"
            raise MedcliError(f"{out.what} {out.path}: cannot write {where}: {problem}; {_fix(out)}")
        probed.add(folder)


def run_folder(run: str | os.PathLike, verb: str) -> Output:
    """A run folder as the output of a command that adds files to it (``verb``: what the command does to a run)."""
    return Output(run, "run folder", f"make it writable, or copy the run folder somewhere writable and {verb} the copy")


def check_room(out: Output, needed: int, what_needs_it: str) -> None:
    """Refuse when the disk of ``out`` has less than ``needed`` bytes free; ``what_needs_it`` says what will be
    written there (e.g. ``the model file (resnet18: 11.2 M parameters)``), ``out.fix`` where else to write.
    Nothing is refused when the free space cannot be told."""
    free = free_bytes(out.path)
    if free is not None and free < needed:
        raise MedcliError(f"{out.what} {out.path}: {human_bytes(free)} free on its disk, but {what_needs_it} needs about "
                          f"{human_bytes(needed)}; free space there, or {out.fix or f'point {out.what} to another disk'}")


def check_train(cfgs: Sequence, logs: str | os.PathLike | None = None) -> None:
    """``medcli train``'s checks, before any data is read or any epoch runs, for each of the settings ``cfgs``
    (:class:`~medcli.training.config.TrainConfig`, one per cell):

    * writable: the run folder (``--out``, else under ``--results``), the work folder (``--work``: resume
      checkpoints), the splits file when the run would make it (no ``--splits`` and none at the default place),
      the tracking folder (``--track-dir``; MLflow's only when ``$MLFLOW_TRACKING_URI`` is not set) and ``logs``
      (``--cell-logs``). The decoded-image cache is not required to be writable: a read-only cache
      that already holds the images serves training, and one that does not fails before the first epoch;
    * room: the run folder's disk must have room for ``model.pt`` (4 bytes per parameter and buffer, from the
      model built on PyTorch's ``meta`` device: no memory, no weights read). Resume checkpoints are larger but
      written only for runs longer than ``--checkpoint-every``, so their room is not required up front.

    A cell whose settings do not resolve is left to training, which reports it; the other cells are checked.
    Raises :class:`MedcliError`.
    """
    from .training.config import resolve_quietly, splits_file, work_dir
    from .training.tracking import local_dir

    pairs = []
    for cfg in cfgs:
        try:
            pairs.append((cfg, resolve_quietly(cfg)))
        except MedcliError:
            continue  # training reports that cell's settings error itself, in its own words; the others are checked
    outputs, runs, resolved = [], [], [r for _, r in pairs]
    for given, cfg in pairs:
        run = Output(cfg.out, "--out", "") if given.out else Output(cfg.out, "run folder", "choose a writable folder with --out or --results")
        runs.append(run)
        outputs += [run, Output(work_dir(cfg), "work folder", "choose a writable folder for resume checkpoints with --work")]
        tracking = local_dir(cfg)
        if tracking is not None:
            _check_track_dir(cfg, tracking)
            outputs.append(Output(tracking, "--track-dir", "choose a writable folder with --track-dir, or --track none"))
        splits = splits_file(cfg)
        if not cfg.splits and not os.path.exists(splits):
            outputs.append(Output(splits, "splits file", "make the splits elsewhere with `medcli split --out FILE` and train with "
                                  "--splits FILE, or choose a writable folder with --results"))
    if logs is not None:
        outputs.append(Output(logs, "--cell-logs"))
    check_writable(outputs)
    sizes: dict[tuple, int | None] = {}
    for run, cfg in zip(runs, resolved):
        model = (cfg.backbone, cfg.head, cfg.channels, cfg.img_size)
        if model not in sizes:
            sizes[model] = model_file_bytes(*model)
        if sizes[model] is not None:
            check_room(run._replace(fix="" if run.what == "--out" else "point --out or --results to another disk"), sizes[model], f"the model file ({cfg.backbone}: {sizes[model] / 4e6:.1f} M parameters)")


def _check_track_dir(cfg, folder: str) -> None:
    """The tracking folder must be a folder (or not exist yet) outside the run folder, which training replaces whole."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MedcliError(f"--track-dir {folder}: is a file, not a folder; choose a folder with --track-dir")
    run, track = Path(cfg.out).resolve(), Path(folder).resolve()
    if track == run or run in track.parents:
        raise MedcliError(f"--track-dir {folder}: inside the run folder {cfg.out}, which training replaces whole; choose a folder "
                          "outside it (default: logs/tensorboard)")


def model_file_bytes(backbone: str, head: str, channels: int, img_size: int | None) -> int | None:
    """About the size of a ``model.pt`` of this model in bytes: its parameters and buffers as stored (float32 on
    the CPU), counted on a copy built on the ``meta`` device; None when it cannot be built that way."""
    import torch

    from .models import create_model

    try:
        with torch.device("meta"):
            model = create_model(backbone, 2, in_channels=channels, head=head, weights=None, img_size=img_size)
    except Exception:  # an estimate only: training builds the model for real and reports its errors
        return None
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _probe(folder: str) -> str:
    """Why nothing can be written in ``folder`` ('' when a file could be created and removed there)."""
    if not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".medcli-probe-", dir=folder)
    except OSError as exc:
        return _REASONS.get(exc.errno, exc.strerror or str(exc))
    os.close(fd)
    Path(tmp).unlink(missing_ok=True)
    return ""


_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.ENOSPC: "no space left on the disk",
            errno.EDQUOT: "disk quota exceeded"}


def _fix(out: Output) -> str:
    return out.fix or f"choose a writable folder with {out.what}"
