"""The model card of one trained run (``model_card.md``), written by ``medcli export``.

Sections follow "Model Cards for Model Reporting" (Mitchell et al., FAT* 2019) where they apply: model details,
intended use, factors, metrics, evaluation and training data, quantitative analyses (class-wise performance,
calibration), known limitations (the paper's caveats and recommendations) and provenance. Everything comes from
the files medcli wrote, read as they are: the run's ``config.json``, ``metrics/{val,test}.json`` (``medcli eval``),
``external/<name>/metrics.json``, its splits file and the ``inspect.json`` beside it, and the ``metrics/val.json``
of the configuration's other folds and seeds. A missing file is said, never guessed.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

import numpy as np

from . import __version__, paths, runs
from ._io import read_json
from .errors import MedcliError

PAPER = "Mitchell et al., \"Model Cards for Model Reporting\", FAT* 2019 (https://arxiv.org/abs/1810.03993)"
NOT_A_DEVICE = ("It is not a medical device, has no regulatory clearance and must not be used to diagnose, triage or "
                "treat patients.")
NO_EXTERNAL = ("No external validation: the model has only been scored on images of the dataset it was trained on "
               "(its validation fold and held-out test set); expect lower performance on other sites, scanners or "
               "populations, and validate it on local data first (`medcli eval RUN --data OTHER_DATASET`).")


def _read(path) -> dict | None:
    try:
        doc = read_json(path) if os.path.isfile(path) else None
    except MedcliError:
        return None
    return doc if isinstance(doc, dict) else None


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _with_ci(doc: dict | None, key: str) -> str:
    if doc is None:
        return "not evaluated"
    value = (doc.get("metrics") or {}).get(key)
    if value is None:
        return "undefined"
    ci = (doc.get("ci") or {}).get(key) or {}
    if ci.get("low") is None or ci.get("high") is None:
        return _f(value)
    return f"{_f(value)} [{_f(ci['low'])}, {_f(ci['high'])}]"


def render_model_card(run: runs.Run, export: dict | None = None) -> str:
    """The model card of ``run`` as Markdown. ``export``: the ``preprocess.json`` document of the export that
    carries it (its file, exporter, temperature and decision rule are described), or None.

    Raises :class:`MedcliError` when a metrics file of the run folder was written for another model (its
    ``run_id`` is not the run's): the card would describe the wrong model."""
    cfg, doc, classes = run.config, run.doc, run.classes
    metrics = {s: _read(paths.metrics_file(run.path, s)) for s in ("val", "test")}
    for split, found in metrics.items():  # numbers of another model of this folder would describe the wrong model
        if found is not None:
            runs.check_derived(doc, found, paths.metrics_file(run.path, split), f"re-run `medcli eval {run.path} --split all`")
    splits = _read(doc.get("splits_file") or "")
    backbone = doc.get("backbone") or {"name": cfg.get("backbone")}
    title = f"{backbone.get('name')} · {cfg.get('strategy')} on {cfg.get('dataset_name')} (seed {cfg.get('seed')}, fold {cfg.get('fold')})"
    lines = [f"# Model card: {title}", "",
             f"Written by `medcli export` (medcli {__version__}) from the run folder `{run.path.resolve()}`. Structure after {PAPER}, "
             "where it applies. Every number comes from the run's own files; missing ones are said.", ""]
    lines += _details(run, backbone, export)
    lines += _intended_use(run)
    lines += _factors(run)
    lines += _metrics(run, metrics)
    lines += _data(run, splits)
    lines += _preprocessing(run)
    lines += _quantitative(run, metrics)
    lines += _limitations(run, metrics, splits)
    lines += _provenance(run)
    return "\n".join(lines).rstrip() + "\n"


def _details(run: runs.Run, backbone: dict, export: dict | None) -> list[str]:
    cfg, summary = run.config, run.doc.get("summary") or {}
    arch = ", ".join(f"{k} {backbone[k]}" for k in ("family", "arch", "tag") if backbone.get(k))
    lines = ["## Model details", "",
             f"- Task: image classification into {len(run.classes)} classes: {', '.join(f'`{c}`' for c in run.classes)} "
             "(output order).",
             f"- Architecture: backbone `{backbone.get('name')}`{f' ({arch})' if arch else ''}, head `{cfg.get('head')}`, input "
             f"{run.preprocess['channels']} × {run.preprocess['img_size']} × {run.preprocess['img_size']}.",
             f"- Weights: initialised from `{backbone.get('weights_source', cfg.get('weights'))}`"
             + (f" (license: {backbone['license']})" if backbone.get("license") else "") + ".",
             f"- Training: strategy `{cfg.get('strategy')}`, recipe `{cfg.get('recipe') or 'none'}`; optimizer {cfg.get('optimizer')}, "
             f"learning rate {cfg.get('lr')}, batch size {cfg.get('batch_size')}, {cfg.get('schedule')} schedule, up to "
             f"{cfg.get('epochs')} epochs ({summary.get('epochs_run', '?')} run, best epoch {summary.get('best_epoch', '?')} by "
             f"validation {summary.get('monitor', cfg.get('monitor'))}), augmentation {'on' if cfg.get('augment') else 'off'}, "
             f"class weights {'on' if cfg.get('class_weights') else 'off'}, label smoothing {cfg.get('label_smoothing')}, "
             f"precision {summary.get('precision', cfg.get('precision'))}. All settings: `config.json` (`config`).",
             f"- Trained with medcli {(run.doc.get('versions') or {}).get('medcli', '?')} on {run.doc.get('finished', '?')} "
             f"(git revision {run.doc.get('git_revision') or 'unknown'}).",
             ]
    if export is not None:
        cal = export.get("calibration") or {}
        lines.append(f"- Exported as `{export.get('model_file')}` ({export.get('exporter')}) on {export.get('exported')}: the network "
                     f"outputs raw logits; probabilities are {cal.get('probabilities')}"
                     + (f" with temperature {cal['temperature']:.4g}" if cal.get("temperature") is not None else "")
                     + f"; decision: {(export.get('decision') or {}).get('how')}. Preprocessing contract: `preprocess.json`.")
    lines.append("")
    return lines


def _intended_use(run: runs.Run) -> list[str]:
    cfg = run.config
    return ["## Intended use", "",
            f"- Primary use: research on classifying `{cfg.get('dataset_name')}`-like images into {', '.join(run.classes)}, "
            "e.g. comparing transfer-learning configurations, or as a starting point for a properly validated model.",
            "- Primary users: researchers and engineers who can check the inputs against the preprocessing below.",
            f"- Out of scope: clinical use of any kind. {NOT_A_DEVICE} Also out of scope: images of other modalities, "
            "body parts, sites, scanners or populations than the training data without validation on them; classes "
            "other than those listed (every image is forced into one of them); images preprocessed differently from "
            "`preprocess.json`.", ""]


def _factors(run: runs.Run) -> list[str]:
    return ["## Factors", "",
            "- Performance is reported per class (below). No subgroup metadata (age, sex, site, scanner, acquisition "
            "protocol) was recorded with the images, so performance across such groups is unknown.", ""]


def _metric_names(docs: list[dict | None]) -> list[tuple[str, str]]:
    from .evaluation.metrics import list_metrics

    present = set().union(*((d.get("metrics") or {}).keys() for d in docs if d)) if any(docs) else set()
    return [(m.name, m.label) for m in list_metrics() if m.name in present or not present and not m.binary_only]


def _cross_validated(run: runs.Run) -> tuple[dict[str, tuple[float, float, int]], int]:
    """``{metric: (mean, sd, n)}`` over the ``metrics/val.json`` of every seed and fold of this configuration."""
    try:
        paths.parse_run_dir(run.path)
    except (ValueError, MedcliError):
        return {}, 0
    config_dir = run.path.parent.parent
    docs = [d for d in (_read(p) for p in sorted(glob.glob(os.path.join(glob.escape(str(config_dir)), "seed-*", "fold-*", "metrics", "val.json")))) if d]
    values: dict[str, list[float]] = {}
    for d in docs:
        for k, v in (d.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
                values.setdefault(k, []).append(float(v))
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), len(v)) for k, v in values.items()}, len(docs)


def _metrics(run: runs.Run, metrics: dict) -> list[str]:
    val, test = metrics["val"], metrics["test"]
    lines = ["## Metrics", ""]
    if val is None and test is None:
        return lines + [f"Not evaluated: no `metrics/val.json` or `metrics/test.json`; run `medcli eval {run.path} --split all` "
                        "and export again.", ""]
    n_boot = next((c.get("n_resamples") for d in (test, val) if d for c in (d.get("ci") or {}).values()), None)
    lines += [f"Headline metrics from `medcli eval` with 95% stratified bootstrap percentile intervals"
              + (f" ({n_boot} resamples)" if n_boot else " (no intervals were computed)")
              + "; labels by the arg-max. The validation column is this run's own validation fold (the images that chose "
              "its best epoch and fitted the temperature and threshold), the test column the held-out test set.", ""]
    cv, n_cv = _cross_validated(run)
    header = ["Metric", f"Validation, fold {run.config.get('fold')} (n={val['n'] if val else '–'})", f"Test (n={test['n'] if test else '–'})"]
    if n_cv > 1:
        header.append(f"Cross-validated (mean ± sd over {n_cv} fold runs)")
    rows = []
    for name, label in _metric_names([val, test]):
        row = [label, _with_ci(val, name), _with_ci(test, name)]
        if n_cv > 1:
            m = cv.get(name)
            row.append("n/a" if m is None else f"{_f(m[0])} ± {_f(m[1])} (n={m[2]})")
        rows.append(row)
    lines += _table(header, rows)
    for split, d in (("validation", val), ("test", test)):
        if d is None:
            lines.append(f"- {split.capitalize()}: not evaluated (run `medcli eval {run.path} --split all`).")
        for key, reason in ((d or {}).get("metrics", {}).get("undefined") or {}).items():
            lines.append(f"- {split.capitalize()}: {key} undefined: {reason}.")
    thr = (test or val or {}).get("threshold")
    if thr and thr.get("value") is not None:
        at = thr.get("metrics") or {}
        which = "test" if test else "validation"
        lines.append(f"- Binary decision threshold {thr['value']:.4g} on the probability of `{thr.get('positive_class')}` "
                     f"({thr.get('source')}); on {which} at that threshold: sensitivity {_f(at.get('sensitivity'))}, "
                     f"specificity {_f(at.get('specificity'))}, balanced accuracy {_f(at.get('balanced_accuracy'))}.")
    return lines + [""]


def _split_counts(run: runs.Run, splits: dict) -> dict[str, Counter]:
    labels = splits.get("labels") or {}
    fold = next((f for f in splits.get("folds") or [] if f.get("fold") == run.config.get("fold")), None)
    parts = {"train (this fold)": (fold or {}).get("train") or [], "validation (this fold)": (fold or {}).get("val") or [],
             "test (held out)": splits.get("test") or []}
    return {name: Counter(labels.get(i) for i in ids) for name, ids in parts.items()}


def _data(run: runs.Run, splits: dict | None) -> list[str]:
    cfg, doc = run.config, run.doc
    lines = ["## Training and evaluation data", "",
             f"- Dataset: `{cfg.get('dataset_name')}` at `{cfg.get('data')}` (layout {cfg.get('layout')}), data fingerprint "
             f"`{doc.get('data_fingerprint')}`.",
             f"- Splits: `{doc.get('splits_file')}` (fingerprint `{doc.get('splits_fingerprint')}`)."]
    if splits is None:
        return lines + ["- The splits file is missing: class counts, split method and duplicate handling are not available.", ""]
    s = splits.get("settings") or {}
    source = "the dataset's own test split" if splits.get("test_source") == "dataset" else "a stratified group holdout"
    method = (f"{s.get('folds')}-fold StratifiedGroupKFold (seed {s.get('seed')}) over the development pool"
              if s.get("folds") else f"one stratified group holdout for validation (fraction {s.get('val_fraction')})")
    grouping = f"; images grouped by {s['group_by']}" if s.get("group_by") else ""
    lines.append(f"- Split method: {method}; test set: {source}; duplicate clusters kept within one fold "
                 f"(near-duplicate threshold {s.get('near_duplicate_threshold')} bits){grouping}. This model is fold "
                 f"{cfg.get('fold')} of seed {cfg.get('seed')}.")
    lines.append("")
    counts = _split_counts(run, splits)
    rows = [[f"`{c}`", *(str(counts[p].get(c, 0)) for p in counts)] for c in run.classes]
    rows.append(["**total**", *(f"**{sum(counts[p].values())}**" for p in counts)])
    lines += _table(["Class", *counts], rows)
    inspect = _read(os.path.join(os.path.dirname(str(doc.get("splits_file"))), paths.INSPECT_FILE))
    dup = (inspect or {}).get("duplicates")
    if dup:
        lines.append(f"- Duplicates found (`medcli data inspect`): {dup.get('n_exact_groups', 0)} exact and "
                     f"{dup.get('n_near_groups', 0)} near-duplicate groups ({dup.get('n_images_in_groups', 0)} images), "
                     f"{dup.get('n_cross_split_groups', 0)} spanning the dataset's splits, {dup.get('n_label_conflicts', 0)} "
                     f"with conflicting labels; unreadable files: {len((inspect or {}).get('bad_files') or [])}.")
    else:
        lines.append("- Duplicates found: no `inspect.json` beside the splits file (run `medcli data inspect --json`); "
                     "the split still grouped the duplicates it found.")
    leak = splits.get("leakage") or {}
    groups = splits.get("groups") or {}
    fate = "dropped from the test set" if leak.get("test_duplicates_dropped") else "kept in the test set"
    excluded = Counter(str(e.get("reason", "?")) for e in splits.get("excluded") or [])
    lines.append(f"- Duplicates handled (`splits.json`): {len(groups)} images in {len(set(groups.values()))} groups kept within one "
                 f"fold; validation images duplicating their training fold: {len(leak.get('val_duplicating_train') or [])}; "
                 f"test images duplicating development images: {len(leak.get('test_duplicating_dev') or [])}, {fate}; label "
                 f"conflicts: {leak.get('n_label_conflicts') or 0}; excluded files: {sum(excluded.values())}"
                 + (f" ({'; '.join(f'{k}: {n}' for k, n in sorted(excluded.items()))})" if excluded else "") + ".")
    return lines + [""]


def _preprocessing(run: runs.Run) -> list[str]:
    pre, cfg = run.preprocess, run.config
    window, frame = cfg.get("window"), cfg.get("frame")
    return ["## Preprocessing", "",
            f"- Decoding: Pillow with the EXIF orientation applied (DICOM through pydicom: modality LUT, window "
            f"{window or 'from the file'}){f'; frame {frame} of multi-frame files' if frame is not None else ''}; "
            f"converted to {'gray (L)' if pre['channels'] == 1 else 'RGB'}.",
            f"- Resize: `{pre['resize']}` to {pre['img_size']} × {pre['img_size']} px, Pillow `{pre['interpolation']}` "
            "(reducing_gap 3.0).",
            f"- Normalisation: pixel / 255, minus mean {[round(m, 4) for m in pre['mean']]}, divided by std "
            f"{[round(s, 4) for s in pre['std']]} (per channel).",
            "- No test-time augmentation unless the metrics say so. The exact contract is in the export's `preprocess.json`.", ""]


def _quantitative(run: runs.Run, metrics: dict) -> list[str]:
    lines = ["## Quantitative analyses", "", "### Class-wise performance", ""]
    evaluated = [(name, d) for name, d in (("test", metrics["test"]), ("validation", metrics["val"])) if d]
    if not evaluated:
        lines += ["Not evaluated (no metrics files).", ""]
    for name, d in evaluated:
        per = (d.get("metrics") or {}).get("per_class") or {}
        rows = [[f"`{c}`", _f(per.get(c, {}).get("precision")), _f(per.get(c, {}).get("recall")), _f(per.get(c, {}).get("f1")),
                 _f(per.get(c, {}).get("roc_auc")), str(per.get(c, {}).get("support", 0))] for c in run.classes]
        lines += [f"{name.capitalize()} (arg-max labels):", ""]
        lines += _table(["Class", "Precision", "Recall", "F1", "ROC AUC (one-vs-rest)", "Images"], rows)
    lines += ["### Calibration", ""]
    for name, d in evaluated:
        c = d.get("calibration") or {}
        lines.append(f"- {name.capitalize()}: temperature {_f(c.get('temperature'), 4)} (fitted on {c.get('fitted_on', 'val')}); "
                     f"ECE {_f(c.get('ece_before'))} before → {_f(c.get('ece_after'))} after; negative log-likelihood "
                     f"{_f(c.get('nll_before'))} → {_f(c.get('nll_after'))}.")
    if not evaluated:
        lines.append("- Not evaluated: no temperature was fitted.")
    return lines + [""]


def _external(run: runs.Run) -> list[str]:
    found = sorted(glob.glob(os.path.join(glob.escape(str(run.path)), "external", "*", "metrics.json")))
    lines = []
    for path in found:
        d = _read(path)
        if d is not None:
            runs.check_derived(run.doc, d, path, f"re-run `medcli eval {run.path} --data {(d.get('external') or {}).get('data', 'DATA')}`")
        if not d:
            continue
        ext = d.get("external") or {}
        overlap = d.get("overlap") or {}
        dirty = (overlap.get("exact_dev") or 0) + (overlap.get("near_dev") or 0)
        lines.append(f"- External validation on `{ext.get('data', Path(path).parent.name)}` ({d.get('n')} images): balanced "
                     f"accuracy {_with_ci(d, 'balanced_accuracy')}, macro-F1 {_with_ci(d, 'macro_f1')}"
                     + (f"; {dirty} of its images duplicate this run's development images, so it is not fully external" if dirty else "")
                     + ". Other sites and populations remain untested.")
    return lines


def _limitations(run: runs.Run, metrics: dict, splits: dict | None) -> list[str]:
    lines = ["## Known limitations", ""]
    lines += _external(run) or [f"- {NO_EXTERNAL}"]
    lines.append(f"- Research use only. {NOT_A_DEVICE}")
    lines.append("- One model of a cross-validation: trained on one fold's training part; the configuration's other folds "
                 "and seeds give other models (the summary's test column averages a seed's fold models).")
    test = metrics["test"]
    if test is None:
        lines.append(f"- Not evaluated on the test set: run `medcli eval {run.path} --split all`.")
    elif test.get("n", 0) < 100:
        lines.append(f"- Small test set ({test['n']} images): the intervals above are wide.")
    leak = (splits or {}).get("leakage") or {}
    if leak.get("test_duplicating_dev") and not leak.get("test_duplicates_dropped"):
        lines.append(f"- {len(leak['test_duplicating_dev'])} test images duplicate development images and were kept: test "
                     "metrics may be optimistic.")
    if any(d and d.get("tta") for d in metrics.values()):
        lines.append("- Metrics were computed with test-time augmentation (flip averaging); the exported network does not do it.")
    lines.append("- Every input is assigned to one of the training classes, also images of none of them; inputs unlike the "
                 "training images (other size, modality, colour mode) are not detected by the exported network.")
    return lines + [""]


def _provenance(run: runs.Run) -> list[str]:
    doc = run.doc
    hw, summary = doc.get("hardware") or {}, doc.get("summary") or {}
    versions = doc.get("versions") or {}
    seconds = summary.get("train_seconds")
    return ["## Provenance", "",
            f"- medcli source: git revision {doc.get('git_revision') or 'unknown'}; run finished {doc.get('finished', '?')}.",
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
            f"- Hardware: CPU {hw.get('cpu') or 'unknown'}; GPUs: {', '.join(hw.get('gpus') or []) or 'none'}; device "
            f"{summary.get('device', '?')}, {summary.get('num_processes', 1)} process(es), precision {summary.get('precision', '?')}"
            + (f"; training took {seconds:.0f} s" if isinstance(seconds, (int, float)) else "") + ".",
            f"- Files: `config.json`, `model.pt`, `history.csv`, `predictions/`, `metrics/` in `{run.path.resolve()}`"
            + (f"; model identity (`run_id`, recorded in each of them) `{run.run_id}`" if run.run_id else "") + ".", ""]
