"""Experiment tracking: each training run (one grid cell) as a run of TensorBoard or MLflow, through Accelerate's
trackers (``accelerate.tracking``), so a grid can be watched while it trains and browsed afterwards.

``--track tensorboard`` writes event files under ``<track_dir>/<dataset>/<backbone>__<strategy>/seed-<s>/fold-<k>/``
(default ``track_dir``: ``logs/tensorboard``; ``tensorboard --logdir logs/tensorboard`` shows the runs, whose names
filter the grid, and its HParams tab lists each run's settings with its best validation score). ``--track
mlflow`` makes one MLflow run per cell in the experiment ``medcli/<dataset>``, named like the run folder and tagged
``dataset``, ``backbone``, ``strategy``, ``seed``, ``fold`` (and ``recipe``), its parameters the resolved settings;
the store is ``$MLFLOW_TRACKING_URI`` when set, else the local file store ``<track_dir>`` (default ``mlruns``:
``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri mlruns``). No server or network is needed.

Logged per epoch (step = epoch, 1-based): ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``,
``val/balanced_accuracy``, ``val/macro_f1``, ``val/roc_auc``, ``lr`` (the head's, end of epoch),
``train/images_per_second`` (training images over the training part of the epoch, validation excluded) and
``epoch_seconds``; at the end ``best/<history column>`` (the monitored score of the selected epoch) and
``best/epoch``. Only the main process logs (Accelerate's trackers are ``on_main_process``). Nothing tracked
influences training: the tracker reads what the loop already computed.

A tracker is one :func:`register_tracker` entry: its package, what installs it and how to make Accelerate's
tracker for a run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import MedcliError
from ..registry import Registry

log = logging.getLogger("medcli")

# history row column -> tracked metric name (the slash groups them in TensorBoard's and MLflow's charts)
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "val_balanced_accuracy": "val/balanced_accuracy",
    "val_macro_f1": "val/macro_f1",
    "val_roc_auc": "val/roc_auc",
    "lr": "lr",
    "train_images_per_second": "train/images_per_second",
    "seconds": "epoch_seconds",
}
TAGS = ("dataset", "backbone", "strategy", "seed", "fold", "recipe")


@dataclass(frozen=True)
class Tracker:
    """One tracking backend. ``module``: the import that must work; ``install``: what to ``pip install`` when it
    is missing; ``default_dir``: the folder used when ``--track-dir`` is not given; ``make(cfg, folder)``:
    Accelerate's tracker for the run of ``cfg``; ``prepare(cfg)`` clears what an earlier training of the run left,
    before the tracker starts; ``settings(tracker, hparams)`` and ``result(tracker, hparams, metrics, step)``
    record the run's settings at its start and its best scores at its end (at step ``step``, the last epoch);
    ``abort(tracker, status)`` closes it when training raised (``FAILED``, or ``KILLED`` on an interrupt);
    ``remote()`` is where it writes instead of a local folder (a server URI), or None; ``check(what, off)``
    raises :class:`MedcliError` when that destination cannot work (``what``: the option, ``off``: how to switch
    tracking off)."""

    module: str
    install: str
    default_dir: str
    make: Callable
    settings: Callable
    result: Callable
    prepare: Callable = lambda cfg: None
    abort: Callable = lambda tracker, status: tracker.finish()
    remote: Callable = lambda: None
    check: Callable = lambda what, off: None


_TRACKERS: Registry[Tracker] = Registry("tracker")
NONE = "none"


def register_tracker(name: str, tracker: Tracker) -> Tracker:
    return _TRACKERS.add(name, tracker)


def tracker_names() -> tuple[str, ...]:
    """``none`` and the registered trackers: the choices of ``--track``."""
    return (NONE, *_TRACKERS.names())


def experiment_name(cfg) -> str:
    """``medcli/<dataset>``: the experiment (MLflow) or project (Accelerate) of a run."""
    return f"medcli/{cfg.dataset_name}"


def run_name(cfg) -> str:
    """``<dataset>/<backbone>__<strategy>/seed-<s>/fold-<k>``: the run folder's place in the results layout."""
    return "/".join((cfg.dataset_name, paths.run_key(cfg.backbone, cfg.strategy, cfg.seed, cfg.fold)))


def tags(cfg) -> dict[str, str]:
    return {"dataset": cfg.dataset_name, "backbone": cfg.backbone, "strategy": cfg.strategy, "seed": str(cfg.seed),
            "fold": str(cfg.fold), "recipe": cfg.recipe}


def check_available(name: str, option: str = "--track", off: str = "--track none") -> None:
    """Raise :class:`MedcliError` (one line naming what to install) when tracker ``name``'s package is
    missing; ``none`` always passes; an unknown name lists the known ones."""
    if name == NONE:
        return
    tracker = _TRACKERS.get(name)
    if importlib.util.find_spec(tracker.module) is None:
        raise MedcliError(f"{option} {name}: the {tracker.module} package is not installed; pip install {tracker.install} (or {off})")
    tracker.check(f"{option} {name}", off)


def local_dir(cfg) -> str | None:
    """The local folder the run's tracker writes to (:func:`track_dir`); None for ``--track none`` and for a tracker
    writing to a server (MLflow with the user's ``$MLFLOW_TRACKING_URI``)."""
    if cfg.track == NONE or _TRACKERS.get(cfg.track).remote():
        return None
    return track_dir(cfg)


def _check_server(uri: str, what: str, off: str, timeout: float = 5.0) -> None:
    """Refuse an http(s) tracking server that does not answer a connection within ``timeout`` seconds: MLflow's
    client would retry for minutes before the first epoch. Other URIs (files, databases) are left to MLflow."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise MedcliError(f"{what}: MLFLOW_TRACKING_URI {uri} does not answer ({exc}); start the server, unset MLFLOW_TRACKING_URI for "
                          f"the local store ./mlruns, or {off}") from None


def track_dir(cfg) -> str:
    """The folder tracker ``cfg.track`` writes to: ``cfg.track_dir``, else the tracker's default."""
    return cfg.track_dir or _TRACKERS.get(cfg.track).default_dir


def make_trackers(cfg) -> list:
    """Accelerate trackers (``accelerate.tracking.GeneralTracker``) for the run of ``cfg``; ``[]`` for ``--track
    none``. ``cfg`` is resolved (:func:`medcli.training.config.resolve`: dataset name known, and the tracker checked
    by :func:`check_available`)."""
    if cfg.track == NONE:
        return []
    return [_TRACKERS.get(cfg.track).make(cfg, track_dir(cfg))]


class Tracking:
    """The trackers of one run, started by :func:`start`. ``epoch(row)`` logs a history row, ``finish(best)`` the
    result and closes the run, ``fail(status)`` closes it as failed or killed."""

    def __init__(self, accelerator, cfg, hparams: dict) -> None:
        self.accelerator, self.cfg, self.hparams = accelerator, cfg, hparams
        self.kind = _TRACKERS.get(cfg.track)
        self.open = True

    def _tracker(self):
        return self.accelerator.trackers[0] if self.accelerator.is_main_process else None

    def epoch(self, row: dict) -> None:
        values = {name: float(row[column]) for column, name in EPOCH_METRICS.items() if isinstance(row.get(column), (int, float))}
        self.accelerator.log(values, step=int(row["epoch"]))

    def finish(self, best: dict, last_epoch: int) -> None:
        """``best``: ``{history column: value}`` of the selected epoch plus ``epoch``; logged as ``best/<name>`` at
        step ``last_epoch``."""
        if self.accelerator.is_main_process:
            self.kind.result(self._tracker(), self.hparams, {f"best/{k}": float(v) for k, v in best.items()}, last_epoch)
        self._close()

    def fail(self, status: str = "FAILED") -> None:
        if self.open:
            self._close(lambda tracker: self.kind.abort(tracker, status))

    def _close(self, close=lambda tracker: tracker.finish()) -> None:
        # each tracker closed (main process only: the others have none), as Accelerator.end_training does, but
        # without destroying the process group: later cells of a `medcli train --cells` call still use it
        for tracker in self.accelerator.trackers:
            close(tracker)
        self.accelerator.trackers.clear()
        self.open = False


def start(accelerator, cfg, restored: list[dict]) -> Tracking | None:
    """Start the run's trackers (main process), record its settings, and log ``restored`` (the history rows of a
    resumed run, so the tracked run shows every epoch once). What an earlier training of the same run folder left
    goes first (``Tracker.prepare``): TensorBoard's event files (a killed run's included, whose epochs ``restored``
    replays), MLflow runs of the same name that never finished; so each run name shows one model.
    ``None`` for ``--track none``."""
    if cfg.track == NONE:
        return None
    hparams = settings_of(cfg)
    if accelerator.is_main_process:
        kind = _TRACKERS.get(cfg.track)
        kind.prepare(cfg)
        accelerator.init_trackers(experiment_name(cfg))
        kind.settings(accelerator.trackers[0], hparams)
        log.info("tracking with %s in %s (run %s)", cfg.track, _where(cfg), run_name(cfg))
    tracking = Tracking(accelerator, cfg, hparams)
    for row in restored:
        tracking.epoch(row)
    return tracking


def settings_of(cfg) -> dict:
    """The run's settings as flat scalars (TensorBoard's hparams and MLflow's params take str/int/float/bool):
    ``None`` as ``"none"``, mappings as JSON; where things go (folders, workers, progress) left out."""
    skip = {"out", "results", "work", "cache_dir", "workers", "progress", "track", "track_dir", "checkpoint_every"}
    flat = {}
    for name, value in cfg.to_dict().items():
        if name in skip:
            continue
        if value is None:
            value = "none"
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        flat[name] = value
    return flat


def _where(cfg) -> str:
    return _TRACKERS.get(cfg.track).remote() or track_dir(cfg)


# --- TensorBoard ---------------------------------------------------------------------------------------------


def _tensorboard(cfg, folder: str):
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(run_name(cfg), folder)


def _tensorboard_settings(tracker, hparams: dict) -> None:
    table = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
    tracker.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table, global_step=0)
    tracker.writer.flush()


def _tensorboard_prepare(cfg) -> None:
    shutil.rmtree(Path(track_dir(cfg)) / run_name(cfg), ignore_errors=True)


def _tensorboard_result(tracker, hparams: dict, metrics: dict, step: int) -> None:
    # run_name=".": the HParams entry (and its metrics, as scalars) goes into the run's own folder instead of a new
    # timestamped run; at the last epoch's step, so the run's steps stay in order
    tracker.writer.add_hparams(hparams, metrics, run_name=".", global_step=step)
    tracker.writer.flush()


# --- MLflow ----------------------------------------------------------------------------------------------------


_LOCAL_STORES: set[str] = set()  # the local stores medcli set in this process (mlflow.set_tracking_uri exports them)


def _mlflow_remote() -> str | None:
    """The user's ``$MLFLOW_TRACKING_URI``, not a local store an earlier cell of this process set (MLflow's
    ``set_tracking_uri`` writes the variable too)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri not in _LOCAL_STORES else None


def _mlflow_check(what: str, off: str) -> None:
    uri = _mlflow_remote()
    if uri:
        _check_server(uri, what, off)


def _mlflow(cfg, folder: str):
    from accelerate.tracking import MLflowTracker

    if not _mlflow_remote():
        # MLflow 3 keeps a local file store only when asked: one folder per run, which many jobs can write at once
        # on a shared file system (its default, a SQLite file, cannot).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        uri = Path(folder).resolve().as_uri()
        _LOCAL_STORES.add(uri)
        mlflow.set_tracking_uri(uri)
    return MLflowTracker(experiment_name=experiment_name(cfg), run_name=run_name(cfg), tags=tags(cfg))


def _mlflow_settings(tracker, hparams: dict) -> None:
    tracker.store_init_configuration(hparams)


def _mlflow_prepare(cfg) -> None:
    """The experiment made once (Accelerate's tracker looks it up, then creates it: two jobs starting together
    would both try), and runs of this run's name that never finished (killed) deleted: a resumed run replays
    their epochs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.tracking.MlflowClient()
    name = experiment_name(cfg)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name)
        except MlflowException:  # made meanwhile by another job
            pass
        experiment = client.get_experiment_by_name(name)
    for run in client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name(cfg)}' and "
                                  "attributes.status = 'RUNNING'"):
        client.delete_run(run.info.run_id)


def _mlflow_result(tracker, hparams: dict, metrics: dict, step: int) -> None:
    tracker.log(metrics, step=step)


def _mlflow_abort(tracker, status: str) -> None:
    import mlflow

    mlflow.end_run(status=status)  # Accelerate's finish() would mark the run FINISHED


register_tracker("tensorboard", Tracker(module="tensorboard", install="tensorboard", default_dir=paths.tensorboard_dir(paths.DEFAULT_LOGS),
                                        make=_tensorboard, settings=_tensorboard_settings, result=_tensorboard_result,
                                        prepare=_tensorboard_prepare))
register_tracker("mlflow", Tracker(module="mlflow", install="'medcli[mlflow]'", default_dir=paths.DEFAULT_MLFLOW_STORE, make=_mlflow, settings=_mlflow_settings,
                                   result=_mlflow_result, prepare=_mlflow_prepare, abort=_mlflow_abort, remote=_mlflow_remote,
                                   check=_mlflow_check))
