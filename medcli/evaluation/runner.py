"""``medcli eval``: score a trained run on its validation fold, its test set, or another dataset.

* Inference uses exactly the validation preprocessing recorded in ``config.json`` (same image store, same
  normalisation, no augmentation); ``tta`` adds the horizontally flipped image and averages probabilities.
* Temperature scaling and (binary tasks) the Youden threshold are fitted on the run's own validation
  predictions (``predictions/val.csv``) only and applied unchanged to test and external data.
* Headline test metrics get stratified, seeded bootstrap 95 % intervals.

Outputs (paths from :mod:`medcli.paths`, files written by :mod:`medcli.runs`): ``predictions/<split>.csv``,
``predictions/<split>.calibrated.csv``, ``metrics/<split>.json`` (``medcli.metrics/1``) and figures; external
datasets go to ``external/<name>/``.
* An external dataset is checked for copies of the run's own images (:mod:`medcli.evaluation.overlap`): its
  ``metrics.json`` gains ``overlap`` and :func:`render` prints one warning line when there is any.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import paths, runs
from ..errors import MedcliError, one_line
from ..runs import METRICS_FORMAT  # noqa: F401  (re-exported)
from .bootstrap import bootstrap_ci, headline_metric_fns
from .calibration import apply_temperature, expected_calibration_error, fit_temperature, softmax, temperature_nll
from .metrics import compute_metrics, youden_threshold

log = logging.getLogger("medcli")
SPLITS = ("val", "test", "all")


def read_predictions(path: str | os.PathLike, classes: list[str]) -> tuple["pd.DataFrame", np.ndarray, np.ndarray]:
    """``(frame, labels as (N,) class indices, (N, C) logits)`` from a predictions CSV (see :func:`medcli.runs.read_predictions`)."""
    frame = runs.read_predictions(path, classes, need_logits=True)
    return frame, runs.label_indices(frame, classes), runs.logits(frame, classes)


@torch.no_grad()
def predict_logits(model, images: np.ndarray, rows: np.ndarray, mean, std, *, tta: bool = False, batch_size: int = 64,
                   progress: str | None = None) -> np.ndarray:
    """Logits ``(len(rows), C)`` float32 for ``images[rows]`` (a store's N×H×W×C uint8 array), in ``rows`` order.

    With ``tta`` the log of the averaged flipped/unflipped softmax. Eval mode, ``batch_size`` images per batch,
    bf16 autocast on GPUs that support it; the loop is :func:`medcli.inference.infer`, shared with training.
    ``progress``: a description to show a progress bar under (:mod:`medcli.progress`); None shows none.
    """
    from ..inference import infer, row_batches, store_pixels
    from ..progress import track_units
    from ..preprocess import to_model_input

    device = runs.inference_device()
    model = model.to(device).eval()
    if len(rows) == 0:
        return np.zeros((0, model.config["num_classes"]))
    m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    def inputs(positions: torch.Tensor) -> torch.Tensor:
        return to_model_input(store_pixels(images, rows[positions.numpy()], device), m, s)

    batches = row_batches(rows, batch_size)
    if progress is not None:
        batches = track_units(((b, len(b)) for b in batches), len(rows), progress, unit="images")
    return infer(model, batches, inputs, len(rows), tta=tta,
                 autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)).numpy()


def _store_for(dataset, run: runs.Run, sample_ids: set[str] | None, cache_dir: str | os.PathLike | None = None):
    """The image store of ``dataset`` (only ``sample_ids`` when given) with the run's store settings, in the reader's
    ``cache_dir`` (None: the default cache; never the cache the run recorded)."""
    from ..data.store import materialize

    if sample_ids is not None:  # a filtered copy: the caller's dataset keeps every sample
        dataset = copy.copy(dataset)
        dataset.samples = [s for s in dataset.samples if s.id in sample_ids]
    return materialize(dataset, run.store_settings(), cache_dir)


def _run_splits(doc: dict, dataset) -> dict:
    """The run's splits file, checked against the dataset and against the splits the run was trained with.

    A splits file re-made after training (another seed, other folds) would put images the model was trained
    on into the test set, so a changed file is refused rather than used; so is one whose classes are not the
    run's (in the model's output order).
    """
    from ..splits import load_splits, splits_fingerprint

    splits_doc = load_splits(doc["splits_file"], dataset)
    if list(splits_doc.get("classes") or []) != list(doc["classes"]):
        raise MedcliError(f"{doc['splits_file']}: its classes {splits_doc.get('classes')} are not the run's classes {doc['classes']} "
                          "(config.json, in output order); evaluate with the run's own splits and config.json, or train it again")
    recorded = doc.get("splits_fingerprint")
    if recorded and splits_fingerprint(splits_doc) != recorded:
        raise MedcliError(
            f"{doc['splits_file']}: the splits changed since this run was trained (fingerprint differs), so its test "
            f"set may hold training images; evaluate with the original splits file or train the run again"
        )
    return splits_doc


def _external_name(name: str | None, data: str | os.PathLike) -> str:
    ext_name = name or Path(data).resolve().name
    if ext_name in ("", ".", "..") or "/" in ext_name or (os.altsep and os.altsep in ext_name) or os.sep in ext_name:
        raise MedcliError(f"--name {ext_name!r}: must be a plain folder name (it becomes external/<name>/ in the run folder)")
    return ext_name


class OwnData:
    """The run's own dataset, splits, image store and scan records, each loaded once and only when needed."""

    def __init__(self, run: runs.Run, cache_dir: str | os.PathLike | None = None) -> None:
        self.run = run
        self.cache_dir = cache_dir  # the reader's cache (None: the default one), never the run's recorded one

    @cached_property
    def dataset(self):
        return self.run.load_dataset(self.cache_dir)

    @cached_property
    def splits(self) -> dict:
        return _run_splits(self.run.doc, self.dataset)

    @cached_property
    def paths(self) -> dict[str, str]:
        return {s.id: s.path for s in self.dataset.samples}

    @cached_property
    def store(self):
        return _store_for(self.dataset, self.run, set(self.splits["labels"]), self.cache_dir)

    @cached_property
    def records(self) -> dict:
        """``{id: ScanRecord}`` of every file of the dataset (the scan cache written by ``inspect``/``split``)."""
        from ..data import scan_dataset

        return scan_dataset(self.dataset, self.cache_dir)


@dataclass(frozen=True)
class Scoring:
    """What every scored split shares: the run, the post-hoc fits from validation, and the output options."""

    run: runs.Run
    temperature: float
    threshold: float | None
    tta: bool
    n_bootstrap: int
    seed: int
    figures: bool


@dataclass(frozen=True)
class _Outputs:
    predictions: str
    metrics: str
    figures: str


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    tta: bool = False,
    data: str | os.PathLike | None = None,
    name: str | None = None,
    aliases: dict[str, str] | None = None,
    skip_bad: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    figures: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Score a trained run on its validation fold, its test set, or an external dataset.

    Args:
        run_dir: a run folder written by ``medcli train`` (``config.json``, ``model.pt``, ``predictions/val.csv``).
        split: ``test`` (the splits file's test set), ``val`` (the run's validation fold, from its training
            predictions) or ``all`` (both). Ignored when ``data`` is given.
        tta: average the softmax of each image and its horizontal flip (the validation scores the temperature and
            threshold are fitted on are then recomputed with TTA as well).
        data: an external dataset (any layout) to score instead; its classes are matched to the run's.
        name: the external dataset's folder name below ``external/`` (default: the dataset's folder name).
        aliases: ``{raw class name: run class}`` applied to the external dataset before matching.
        skip_bad: leave unreadable external images out instead of stopping.
        n_bootstrap: bootstrap resamples for the 95 % intervals of the headline metrics (0: none).
        seed: seed of the bootstrap.
        figures: also draw the confusion, ROC, PR and reliability figures (and the learning curves).
        cache_dir: where decoded images are cached (None: the default cache, :func:`medcli.paths.default_cache_dir`);
            the cache a run recorded is never used: a run folder is read, not obeyed.

    Returns ``{split or external name: metrics document}`` (format ``medcli.metrics/1``, as written).

    Writes, per scored split (paths from :mod:`medcli.paths`): ``predictions/<split>.csv`` (N rows),
    ``predictions/<split>.calibrated.csv`` (temperature-scaled), ``metrics/<split>.json`` and
    ``figures/{confusion,roc,pr,reliability}_<split>.png`` plus ``figures/learning_curves.png``; for ``data``,
    the same below ``external/<name>/`` (``predictions.csv``, ``metrics.json``, ``<figure>_external.png``), and
    ``metrics.json`` gains ``overlap``: external images duplicating the run's development pool or test set
    (:func:`medcli.evaluation.overlap.external_overlap`; keys ``exact_dev``, ``near_dev``, ``exact_test``,
    ``near_test``, ``n_external``, ``n_dev``, ``n_test``, ``threshold_bits``, ``ids``).
    The temperature and (binary tasks) the Youden threshold are fitted on validation predictions only. Every
    metrics document records the model's ``run_id``.

    Raises :class:`MedcliError` for an unknown ``split``, a folder that is not a run (or whose ``config.json`` has
    an invalid field, or whose ``model.pt`` is unsafe or not the model ``config.json`` describes), missing or unreadable
    validation predictions, a splits file changed since training, an empty test set, a bad external ``name``
    or external classes that do not match the run's.
    """
    if split not in SPLITS:
        raise MedcliError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    run = runs.open_run(run_dir)
    model = run.load_model()
    own = OwnData(run, cache_dir)
    val_frame, val_y, val_logits = _validation_scores(run, model, own, tta)
    scoring = _fit_on_validation(run, val_y, val_logits, tta=tta, n_bootstrap=n_bootstrap, seed=seed, figures=figures)
    if data is not None:
        return _evaluate_external(scoring, model, own, data, name, aliases, skip_bad)
    results: dict[str, dict] = {}
    if split in ("val", "all"):
        results["val"] = _score(scoring, "val", list(val_frame["id"]), list(val_frame["path"]), val_y, val_logits, _run_outputs(run, "val"))
    if split in ("test", "all"):
        results["test"] = _evaluate_test(scoring, model, own)
    if figures:
        _learning_curves(run)
    return results


def evaluate_runs(run_dirs: list[str | os.PathLike], figures_for: list[str | os.PathLike] | None = None,
                  **options) -> Iterator[tuple[str | os.PathLike, dict[str, dict] | str]]:
    """Evaluate several runs in one process, one after the other, each with the same ``options``.

    ``options`` are the keyword arguments of :func:`evaluate_run` (``split``, ``tta``, ``data``, ``name``,
    ``aliases``, ``skip_bad``, ``n_bootstrap``, ``seed``, ``figures``); each run is scored by
    :func:`evaluate_run` and writes exactly what it writes, in its own run folder. With ``figures_for``, only
    those runs get figures (when ``figures`` is on): the workflow draws them for one run per configuration,
    since on a grid of small cells the nine figures of a run cost more than its training.

    Yields ``(run_dir, outcome)`` in the order given, as each run finishes: ``outcome`` is the results of
    :func:`evaluate_run`, or, when that run failed, one line naming the run and the reason. A failed run does not
    stop the others: a :class:`MedcliError` (e.g. a folder that is not a run) gives its message; any other
    exception is logged with its traceback (``logging.getLogger("medcli")``) and gives its type and message.
    ``KeyboardInterrupt`` is not caught. ``list(evaluate_runs(...))`` gives every outcome.

    Raises :class:`MedcliError`, before any run is evaluated, for an unknown ``split`` or a bad external
    ``name``, which would make every run fail alike.
    """
    if options.get("split", "test") not in SPLITS:
        raise MedcliError(f"--split {options['split']!r}: choose one of {', '.join(SPLITS)}")
    if options.get("data") is not None:
        _external_name(options.get("name"), options["data"])
    drawn = None if figures_for is None else {os.path.abspath(p) for p in figures_for}
    for k, run_dir in enumerate(run_dirs, 1):
        log.info("evaluating run %d of %d: %s", k, len(run_dirs), run_dir)
        figures = options.get("figures", True) and (drawn is None or os.path.abspath(run_dir) in drawn)
        try:
            outcome: dict[str, dict] | str = evaluate_run(run_dir, **{**options, "figures": figures})
        except MedcliError as exc:
            message = one_line(exc, limit=1000)
            named = message.startswith((f"{run_dir}:", f"{run_dir}{os.sep}"))  # e.g. "RUN: not a run folder", "RUN/config.json: ..."
            outcome = message if named else f"{run_dir}: {message}"
        except Exception as exc:  # a bug: keep its traceback in the log, evaluate the other runs
            log.exception("%s: evaluation failed with an unexpected error", run_dir)
            outcome = f"{run_dir}: unexpected {type(exc).__name__}: {one_line(exc)} (traceback in the log)"
        yield run_dir, outcome


def _validation_scores(run: runs.Run, model, own: OwnData, tta: bool) -> tuple["pd.DataFrame", np.ndarray, np.ndarray]:
    """The validation fold's ``(frame, labels, logits)`` from training, or recomputed with TTA.

    The temperature and the threshold must be fitted on the kind of scores they are applied to, so with TTA they
    come from TTA predictions of the same validation images (still never from test data).
    """
    frame, y, logits = read_predictions(paths.predictions_file(run.path, "val"), run.classes)
    if tta:
        logits = predict_logits(model, own.store.images, own.store.rows(list(frame["id"])), run.preprocess["mean"], run.preprocess["std"], tta=True)
    return frame, y, logits


def _fit_on_validation(run: runs.Run, val_y: np.ndarray, val_logits: np.ndarray, **options) -> Scoring:
    """Temperature scaling and, for binary tasks with both classes in validation, the Youden threshold."""
    temperature = fit_temperature(val_logits, val_y)
    binary = len(run.classes) == 2
    threshold = youden_threshold(val_y, softmax(val_logits)[:, 1]) if binary and len(set(val_y.tolist())) == 2 else None
    return Scoring(run=run, temperature=temperature, threshold=threshold, **options)


def _evaluate_test(scoring: Scoring, model, own: OwnData) -> dict:
    run = scoring.run
    ids = list(own.splits["test"])
    if not ids:
        raise MedcliError(f"{run.doc['splits_file']}: the test set is empty")
    index = {c: k for k, c in enumerate(run.classes)}
    y = np.array([index[own.splits["labels"][i]] for i in ids])
    logits = predict_logits(model, own.store.images, own.store.rows(ids), run.preprocess["mean"], run.preprocess["std"], tta=scoring.tta)
    return _score(scoring, "test", ids, [own.paths[i] for i in ids], y, logits, _run_outputs(run, "test"))


def validation_fit(run: runs.Run, model, own: OwnData, *, tta: bool, n_bootstrap: int = 1000, seed: int = 0,
                   figures: bool = False) -> Scoring:
    """The temperature and (binary tasks) Youden threshold exactly as :func:`evaluate_run` fits them: on the run's
    validation predictions (``predictions/val.csv``; with ``tta`` recomputed with TTA from the run's own data).

    Raises :class:`MedcliError` when the validation predictions are missing or unreadable (or, with ``tta``, when
    the run's dataset cannot be read)."""
    _, val_y, val_logits = _validation_scores(run, model, own, tta)
    return _fit_on_validation(run, val_y, val_logits, tta=tta, n_bootstrap=n_bootstrap, seed=seed, figures=figures)


def load_external(run: runs.Run, data: str | os.PathLike, aliases: dict[str, str] | None = None):
    """``(dataset, mapping)``: another labelled dataset (any layout) indexed with the run's decode options, and
    ``{its class: the run's class}``.

    Raises :class:`MedcliError` when it cannot be indexed or its classes do not match the run's."""
    from ..data import load_dataset
    from ..data.classes import reconcile_classes

    other = load_dataset(data, "auto", aliases, decode=run.decode_options())  # the training preprocessing
    # --alias is applied by load_dataset; what is left to match against the model's classes are its labels
    mapping = reconcile_classes({"train": set(run.classes), "test": {s.label for s in other.samples}}, None)
    return other, mapping


@dataclass(frozen=True)
class ExternalScores:
    """What :func:`score_external` computed: ``ids``/``paths`` (N), ``y`` (N,) run-class indices, ``logits`` (N, C)
    and the metrics ``document`` (``medcli.metrics/1``, split ``external``; not written)."""

    ids: list[str]
    paths: list[str]
    y: np.ndarray
    logits: np.ndarray
    document: dict


def score_external(scoring: Scoring, model, own: OwnData, other, mapping: dict[str, str], records: dict, data,
                   *, batch_size: int = 64, progress: str | None = None) -> ExternalScores:
    """Predict and score a labelled external dataset (its readable samples: drop unreadable ones first), with the
    run's store settings, normalisation and ``scoring`` (temperature, threshold, TTA, bootstrap).

    The one code path of ``medcli eval --data`` and labelled ``medcli predict`` input. ``records``: the scan
    records of ``other``'s samples (for the overlap with the run's own images). Nothing is written.
    """
    from .overlap import development_pool, external_overlap, near_threshold

    run = scoring.run
    overlap = external_overlap({s.id: records[s.id] for s in other.samples}, own.records, development_pool(own.splits),
                               own.splits["test"], near_threshold(own.splits))
    store = _store_for(other, run, None, own.cache_dir)
    index = {c: k for k, c in enumerate(run.classes)}
    y = np.array([index[mapping[s.label]] for s in other.samples], dtype=np.intp)
    ids = [s.id for s in other.samples]
    logits = predict_logits(model, store.images, store.rows(ids), run.preprocess["mean"], run.preprocess["std"], tta=scoring.tta,
                            batch_size=batch_size, progress=progress)
    external = {"data": str(Path(data).resolve()), "fingerprint": other.fingerprint(),
                "class_mapping": {raw: mapping[label] for raw, label in sorted(other.class_mapping.items())}}
    document = metrics_document(scoring, "external", y, logits, external=external, overlap=overlap)
    return ExternalScores(ids, [s.path for s in other.samples], y, logits, document)


def _evaluate_external(scoring: Scoring, model, own: OwnData, data, name: str | None, aliases, skip_bad: bool) -> dict[str, dict]:
    """Score the run on another dataset; results go to ``external/<name>/``, apart from the run's own.

    The metrics document gains ``overlap`` (:func:`medcli.evaluation.overlap.external_overlap`): how many external
    images duplicate the run's development pool and its test set, exactly or nearly. It only reports.
    """
    from ..data import require_readable, scan_dataset

    run = scoring.run
    ext_name = _external_name(name, data)
    other, mapping = load_external(run, data, aliases)
    records = scan_dataset(other, own.cache_dir)
    other = require_readable(other, records, skip_bad)
    scores = score_external(scoring, model, own, other, mapping, records, data)
    outputs = _Outputs(paths.external_predictions_file(run.path, ext_name), paths.external_metrics_file(run.path, ext_name),
                       paths.external_dir(run.path, ext_name))
    return {ext_name: _write_scored(scoring, "external", scores.ids, scores.paths, scores.y, scores.logits, outputs, scores.document)}


def _run_outputs(run: runs.Run, split: str) -> _Outputs:
    return _Outputs(paths.predictions_file(run.path, split), paths.metrics_file(run.path, split), paths.figures_dir(run.path))


def _score(scoring: Scoring, split: str, ids: list[str], image_paths: list[str], y: np.ndarray, logits: np.ndarray,
           outputs: _Outputs) -> dict:
    """Write the predictions (raw and calibrated), the metrics document and the figures of one of the run's splits."""
    return _write_scored(scoring, split, ids, image_paths, y, logits, outputs, metrics_document(scoring, split, y, logits))


def metrics_document(scoring: Scoring, split: str, y: np.ndarray, logits: np.ndarray, *, external: dict | None = None,
                     overlap: dict | None = None) -> dict:
    """The metrics document (``medcli.metrics/1``) of ``logits`` (N, C) against labels ``y`` (N,), not written.

    ``overlap`` (external data only) comes after ``external``; the run's own splits have no such key."""
    run, classes = scoring.run, scoring.run.classes
    probs = softmax(logits)
    calibrated = apply_temperature(logits, scoring.temperature)
    metrics = compute_metrics(y, probs, classes)
    at_threshold = compute_metrics(y, probs, classes, threshold=scoring.threshold) if scoring.threshold is not None else None
    ci = bootstrap_ci(y, probs, headline_metric_fns(classes), n_resamples=scoring.n_bootstrap, seed=scoring.seed) if scoring.n_bootstrap > 0 else {}
    return {
        "format": METRICS_FORMAT,
        "run": run.coordinates(),
        "run_id": run.run_id,
        "split": split,
        "n": int(len(y)),
        "classes": classes,
        "tta": scoring.tta,
        "metrics": metrics,
        "threshold": None if scoring.threshold is None else {
            "value": scoring.threshold, "source": "val (Youden's J)", "positive_class": classes[1], "metrics": at_threshold},
        "calibration": {
            "temperature": scoring.temperature, "fitted_on": "val",
            "nll_before": temperature_nll(logits, y, 1.0), "nll_after": temperature_nll(logits, y, scoring.temperature),
            "ece_before": expected_calibration_error(y, probs), "ece_after": expected_calibration_error(y, calibrated),
        },
        "ci": ci,
        "external": external,
        **({"overlap": overlap} if overlap is not None else {}),
        "versions": runs.versions(),
    }


def _write_scored(scoring: Scoring, split: str, ids: list[str], image_paths: list[str], y: np.ndarray, logits: np.ndarray,
                  outputs: _Outputs, document: dict) -> dict:
    """Write the predictions (raw and calibrated), ``document`` and the figures; return the document as written."""
    classes, cfg = scoring.run.classes, scoring.run.config
    probs = softmax(logits)
    calibrated_logits = logits / scoring.temperature
    calibrated = apply_temperature(logits, scoring.temperature)
    runs.write_predictions(outputs.predictions, ids, image_paths, y, logits, classes, fold=cfg["fold"], seed=cfg["seed"], split=split, probs=probs)
    runs.write_predictions(paths.calibrated_file(outputs.predictions), ids, image_paths, y, calibrated_logits, classes,
                           fold=cfg["fold"], seed=cfg["seed"], split=split, probs=calibrated)
    document = runs.write_metrics(outputs.metrics, document)
    if scoring.figures:
        _figures(Path(outputs.figures), split, y, probs, calibrated, classes, document["metrics"])
    return document


def _figures(folder: Path, split: str, y, probs, calibrated, classes, metrics) -> None:
    from .plots import plot_confusion_matrix, plot_pr_curves, plot_reliability, plot_roc_curves

    folder.mkdir(parents=True, exist_ok=True)
    figure = {kind: paths.eval_figure_file(folder, kind, split) for kind in paths.EVAL_FIGURES}
    n = f"{split} split, n = {len(y)}"
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]["counts"]), classes, figure["confusion"], title=f"Confusion matrix ({n})")
    plot_roc_curves(y, probs, classes, figure["roc"], title=f"ROC curves, one class against the rest ({n})")
    plot_pr_curves(y, probs, classes, figure["pr"], title=f"Precision-recall curves ({n})")
    plot_reliability(y, probs, figure["reliability"], probs_calibrated=calibrated, title=f"Reliability diagram ({n})")


def _learning_curves(run: runs.Run) -> None:
    from .plots import plot_learning_curves

    history = runs.read_history(run.path)
    monitor = runs.history_column(run.doc.get("summary", {}).get("monitor") or run.config.get("monitor", "balanced_accuracy"))
    Path(paths.figures_dir(run.path)).mkdir(parents=True, exist_ok=True)
    plot_learning_curves(history, paths.learning_curves_file(run.path), monitor=monitor if monitor in history else None)


def render(results: dict[str, dict], console) -> None:
    """Print the metrics table, undefined metrics, and one warning line per external result that overlaps the run."""
    from rich.table import Table

    from .overlap import overlap_warning

    table = Table(title="evaluation", title_justify="left")
    for col in ("split", "n", "accuracy", "balanced acc.", "macro-F1", "ROC-AUC", "ECE", "ECE (calibrated)"):
        table.add_column(col, justify="right" if col != "split" else "left")

    def cell(doc, key):
        value = doc["metrics"].get(key)
        if value is None:
            return "n/a"
        ci = doc["ci"].get(key)
        return f"{value:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci and ci.get("low") is not None else "")

    for split, doc in results.items():
        table.add_row(split, str(doc["n"]), cell(doc, "accuracy"), cell(doc, "balanced_accuracy"), cell(doc, "macro_f1"),
                      cell(doc, "roc_auc"), cell(doc, "ece"), f"{doc['calibration']['ece_after']:.3f}")
    console.print(table)
    for doc in results.values():
        for key, reason in (doc["metrics"].get("undefined") or {}).items():
            console.print(f"[yellow]{doc['split']}: {key} undefined: {reason}[/]", markup=True, highlight=False)
    for name, doc in results.items():
        warning = overlap_warning(doc.get("overlap"))
        if warning:
            console.print(f"warning: {name}: {warning}", style="bold yellow", markup=False, highlight=False, soft_wrap=True)
