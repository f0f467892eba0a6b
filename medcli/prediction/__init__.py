"""``medcli predict``: apply a trained model to new images, with exactly the training preprocessing.

MODEL is a run folder, a configuration's fold ensemble or a ``medcli ensemble`` output
(:mod:`medcli.prediction.model`); INPUT is image/DICOM files, folders or a CSV manifest
(:mod:`medcli.prediction.inputs`). The images go through the code ``medcli eval`` uses: the run's decode options
(DICOM window, frame), :func:`medcli.data.scan_dataset`, the image store (:func:`medcli.data.store.materialize`:
resize mode, interpolation, channels of ``config.json``) and :func:`medcli.evaluation.runner.predict_logits`
(normalisation, TTA, batches, GPU when present). Labelled input is scored by
:func:`medcli.evaluation.runner.score_external`, the code of ``medcli eval RUN --data``.

The CSV (written atomically) has one row per input image, in input order: ``id``, ``path``, ``label`` (labelled
input only), ``pred`` (arg-max class), ``decision`` (binary runs: the class at the validation-fitted threshold),
``prob_<class>`` (temperature-calibrated; runs only), ``raw_prob_<class>``, ``width``, ``height``, ``mode``,
``format``, ``modality`` (of the file as decoded), ``flags`` (ways the image is unlike the training images,
``; ``-separated: :mod:`medcli.prediction.reference`) and ``error`` (unreadable files: every score empty).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import paths, runs
from .._io import write_text
from ..errors import MedcliError, one_line
from .inputs import collect_files, labelled_source, unlabelled_dataset
from .model import Model, resolve_model
from .reference import modality_of, training_reference

__all__ = ["PredictResult", "predict", "resolve_model"]
log = logging.getLogger("medcli")


@dataclass
class PredictResult:
    """What :func:`predict` did: the files written, counts and (labelled input) the metrics document."""

    out: Path
    model: str
    n: int
    n_errors: int
    n_flagged: int
    predicted: dict[str, int]
    calibrated: bool
    metrics_file: Path | None = None
    metrics: dict | None = None
    warnings: list[str] = field(default_factory=list)


def predict(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    tta: bool = False,
    labels: bool | None = None,
    aliases: dict[str, str] | None = None,
    batch_size: int = 64,
    n_bootstrap: int = 1000,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> PredictResult:
    """Predict every image of ``inputs`` with ``model`` and write the predictions CSV ``out``.

    Args:
        model: a run folder, a configuration's seed folder (its ``fold-<k>/`` runs) or a ``medcli ensemble`` output.
        inputs: image or DICOM files, folders (recursively) and/or CSV manifests (``path`` column).
        out: the CSV to write (columns in the module docstring).
        tta: average each image's softmax with its horizontal flip's (as ``medcli eval --tta``; the temperature and
            threshold are then fitted on TTA validation scores, as eval does).
        labels: None: labelled input when it looks labelled (one folder of class sub-folders, or a CSV with a
            ``label`` column); True: require it; False: never score.
        aliases: ``{raw class name: model class}`` for labelled input (as ``medcli eval --alias``).
        batch_size: images per forward pass.
        n_bootstrap, seed: bootstrap of the 95 % intervals of labelled metrics (0: none).
        cache_dir: where decoded images are cached (None: the default cache; never the cache a run recorded).

    Writes ``out`` and, for labelled input, ``<out stem>.metrics.json`` (:func:`medcli.paths.predict_metrics_file`:
    a run's document is exactly ``medcli eval RUN --data INPUT``'s ``metrics.json``; an ensemble's has
    ``calibration`` and ``threshold`` null). Decoded images are cached like eval's (``<cache>/store/``).

    Raises :class:`MedcliError` when MODEL is not a model, an INPUT is missing or holds no image, labelled input's
    classes do not match the model's, or no input image is readable. Unreadable files are rows with an ``error``.
    """
    from ..data import scan_dataset

    resolved = resolve_model(model)
    lead = resolved.all_runs[0]
    cache, workers = cache_dir, None  # the user's cache, never a run folder's record
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise MedcliError("give at least one INPUT (image or DICOM files, folders or a CSV manifest)")
    dataset, mapping, source = _input_dataset(lead, inputs, labels, aliases)
    records = scan_dataset(dataset, cache, workers)
    readable = [s for s in dataset.samples if records[s.id].ok]
    bad = [s for s in dataset.samples if not records[s.id].ok]
    if not readable:
        first = bad[0]
        raise MedcliError(f"none of the {len(bad)} input file(s) is readable, e.g. {first.path} ({records[first.id].error})")
    for s in bad:
        log.warning("unreadable: %s (%s)", s.path, records[s.id].error)
    readable_ds = replace(dataset, samples=readable)
    warnings: list[str] = []

    scoring, scores = None, None
    if resolved.kind == "run":
        scoring, scores, raw, logits = _run_probabilities(resolved, readable_ds, mapping, records, source, tta, batch_size,
                                                           n_bootstrap, seed, warnings, cache)
    else:
        raw, logits = _ensemble_probabilities(resolved, readable_ds, tta, batch_size, cache), None
        log.info("%s: probabilities are the fold models' raw probabilities averaged (as the report's test column); "
                 "no temperature or threshold", resolved.description)

    reference = training_reference(lead, cache)
    if reference is None:
        warnings.append("no 'unlike training' flags: training images and inspect.json unavailable")
    row_of = {s.id: k for k, s in enumerate(readable)}
    classes = resolved.classes
    calibrated = None
    if scoring is not None:
        from ..evaluation.calibration import apply_temperature

        calibrated = apply_temperature(logits, scoring.temperature)
    decision = None
    if scoring is not None and scoring.threshold is not None:
        from ..evaluation.metrics import predict_labels

        decision = predict_labels(raw, scoring.threshold)

    metrics = None
    metrics_path = None
    if mapping is not None:
        metrics = scores.document if scores is not None else _ensemble_document(resolved, readable_ds, mapping, raw, source, tta, n_bootstrap, seed)
        metrics_path = Path(paths.predict_metrics_file(out))
        metrics = runs.write_metrics(metrics_path, metrics)

    n_flagged = 0
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["id", "path", *(["label"] if mapping is not None else []), "pred", *(["decision"] if decision is not None else []),
              *([f"prob_{c}" for c in classes] if calibrated is not None else []), *(f"raw_prob_{c}" for c in classes),
              "width", "height", "mode", "format", "modality", "flags", "error"]
    writer.writerow(header)
    for s in dataset.samples:
        rec = records[s.id]
        label = [mapping[s.label]] if mapping is not None else []
        if not rec.ok:
            writer.writerow([s.id, s.path, *label, *([""] * (len(header) - 3 - len(label))), rec.error or "unreadable"])
            continue
        k = row_of[s.id]
        flags = reference.flags(rec.width, rec.height, rec.mode, modality_of(rec)) if reference is not None else []
        n_flagged += bool(flags)
        writer.writerow([s.id, s.path, *label, classes[int(raw[k].argmax())],
                         *([classes[int(decision[k])]] if decision is not None else []),
                         *([f"{p:.8g}" for p in calibrated[k]] if calibrated is not None else []),
                         *(f"{p:.8g}" for p in raw[k]),
                         rec.width, rec.height, rec.mode, rec.format, modality_of(rec), "; ".join(flags), ""])
    write_text(out, buf.getvalue())
    if bad:
        warnings.append(f"{len(bad)} unreadable file(s) listed with an error in {out}")
    if n_flagged:
        warnings.append(f"{n_flagged} image(s) unlike the training images (see the flags column; reference: {reference.source})")
    counts = np.bincount(raw.argmax(1), minlength=len(classes))
    return PredictResult(Path(out), resolved.description, len(readable), len(bad), n_flagged,
                         {c: int(n) for c, n in zip(classes, counts)}, calibrated is not None, metrics_path, metrics, warnings)


def _input_dataset(lead: runs.Run, inputs: list[Path], labels: bool | None, aliases):
    """``(dataset, mapping or None, labelled source or None)``."""
    from ..evaluation.runner import load_external

    src = labelled_source(inputs, labels)
    if src is not None:
        try:
            other, mapping = load_external(lead, src, aliases)
            return other, mapping, src
        except MedcliError as exc:
            if labels:
                raise
            log.info("%s: read as unlabelled images (%s)", src, one_line(exc))
    return unlabelled_dataset(collect_files(inputs), lead.decode_options(), inputs), None, None


def _run_probabilities(resolved: Model, dataset, mapping, records, source, tta: bool, batch_size: int, n_bootstrap: int,
                       seed: int, warnings: list[str], cache_dir=None):
    """``(scoring or None, ExternalScores or None, raw probs (N, C), logits (N, C))`` of one run."""
    from ..evaluation.calibration import softmax
    from ..evaluation.runner import OwnData, score_external, validation_fit

    run = resolved.all_runs[0]
    model = run.load_model()
    own = OwnData(run, cache_dir)
    try:
        scoring = validation_fit(run, model, own, tta=tta, n_bootstrap=n_bootstrap, seed=seed)
    except MedcliError as exc:
        if mapping is not None:
            raise
        scoring = None
        warnings.append(f"raw probabilities only: no temperature/threshold could be fitted on validation ({one_line(exc)})")
    if mapping is not None:
        scores = score_external(scoring, model, own, dataset, mapping, records, source, batch_size=batch_size,
                                progress="predicting")
        return scoring, scores, softmax(scores.logits), scores.logits
    logits = _logits(run, model, dataset, tta, batch_size, "predicting", cache_dir)
    return scoring, None, softmax(logits), logits


def _logits(run: runs.Run, model, dataset, tta: bool, batch_size: int, progress: str, cache_dir=None) -> np.ndarray:
    """A run's logits ``(N, C)`` for ``dataset``'s samples, through its own image store and :func:`predict_logits`."""
    from ..data.store import materialize
    from ..evaluation.runner import predict_logits

    ds = replace(dataset, decode=run.decode_options())
    store = materialize(ds, run.store_settings(), cache_dir)
    return predict_logits(model, store.images, store.rows([s.id for s in ds.samples]), run.preprocess["mean"], run.preprocess["std"],
                          tta=tta, batch_size=batch_size, progress=progress)


def _ensemble_probabilities(resolved: Model, dataset, tta: bool, batch_size: int, cache_dir=None) -> np.ndarray:
    """Each member's fold models' softmax averaged (:func:`medcli.ensemble.fold_ensemble`), then combined."""
    from ..ensemble import fold_ensemble
    from ..evaluation.calibration import softmax

    member_probs = []
    for member in resolved.members:
        probs = []
        for run in member.runs:
            model = run.load_model()
            probs.append(softmax(_logits(run, model, dataset, tta, batch_size, f"predicting ({member.name}, fold {run.config.get('fold')})", cache_dir)))
            del model
        member_probs.append(fold_ensemble(probs))
    return resolved.combine(member_probs)


def _ensemble_document(resolved: Model, dataset, mapping, probs: np.ndarray, source, tta: bool, n_bootstrap: int, seed: int) -> dict:
    """The metrics document of an ensemble on labelled input (uncalibrated: no temperature or threshold)."""
    from ..evaluation.bootstrap import bootstrap_ci, headline_metric_fns
    from ..evaluation.metrics import compute_metrics

    classes = resolved.classes
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[mapping[s.label]] for s in dataset.samples], dtype=np.intp)
    ci = bootstrap_ci(y, probs, headline_metric_fns(classes), n_resamples=n_bootstrap, seed=seed) if n_bootstrap > 0 else {}
    return {"format": runs.METRICS_FORMAT, "model": {"kind": resolved.kind, "path": str(resolved.path), **resolved.info},
            "split": "external", "n": int(len(y)), "classes": classes, "tta": tta, "metrics": compute_metrics(y, probs, classes),
            "threshold": None, "calibration": None, "ci": ci,
            "external": {"data": str(Path(source).resolve()), "fingerprint": dataset.fingerprint(),
                         "class_mapping": {raw: mapping[label] for raw, label in sorted(dataset.class_mapping.items())}},
            "versions": runs.versions()}


def render(result: PredictResult, console) -> None:
    """Print what was predicted, the warnings and (labelled input) the metrics table of ``medcli eval``."""
    console.print(f"{result.n} image(s) predicted with {result.model}: "
                  + ", ".join(f"{c} {n}" for c, n in result.predicted.items()), markup=False, highlight=False, soft_wrap=True)
    if result.metrics is not None:
        from ..evaluation.runner import render as render_metrics

        doc = result.metrics
        if doc.get("calibration") is None:  # an ensemble's: the eval table needs a calibration
            doc = {**doc, "calibration": {"ece_after": float("nan")}}
        render_metrics({"input": doc}, console)
    for line in result.warnings:
        console.print(f"warning: {line}", style="bold yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(f"predictions written to {result.out}" + (f", metrics to {result.metrics_file}" if result.metrics_file else ""),
                  markup=False, highlight=False, soft_wrap=True)
