"""``medcli eval``: score a trained run on its validation fold, its test set, or another dataset.

* Inference uses exactly the validation preprocessing recorded in ``config.json`` (same image store, same
  normalisation, no augmentation); ``tta`` adds the horizontally flipped image and averages probabilities.
* Temperature scaling and (binary tasks) the Youden threshold are fitted on the run's own validation
  predictions (``predictions/val.csv``) only and applied unchanged to test and external data.
* Headline test metrics get stratified, seeded bootstrap 95 % intervals.

Outputs (paths from :mod:`medcli.paths`): ``predictions/<split>.csv``, ``predictions/<split>.calibrated.csv``,
``metrics/<split>.json`` (``medcli.metrics/1``) and figures; external datasets go to ``external/<name>/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths
from .._io import read_json, write_json
from ..errors import MedcliError
from .bootstrap import bootstrap_ci, headline_metric_fns
from .calibration import apply_temperature, expected_calibration_error, fit_temperature, softmax, temperature_nll
from .metrics import compute_metrics, youden_threshold

log = logging.getLogger("medcli")
METRICS_FORMAT = "medcli.metrics/1"
SPLITS = ("val", "test", "all")


def read_predictions(path: str | os.PathLike, classes: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(frame, labels as class indices, logits)`` from a predictions CSV."""
    try:
        frame = pd.read_csv(path, dtype={"id": str, "label": str, "pred": str})
    except FileNotFoundError:
        raise MedcliError(f"{path}: not found; re-run `medcli train` for this run") from None
    index = {c: k for k, c in enumerate(classes)}
    y = frame["label"].map(index).to_numpy()
    logits = frame[[f"logit_{c}" for c in classes]].to_numpy(dtype=np.float64)
    return frame, y, logits


def _load_run(run_dir: str | os.PathLike):
    from ..models import load_model

    run = Path(run_dir)
    if not (run / paths.CONFIG_FILE).is_file() or not (run / paths.MODEL_FILE).is_file():
        raise MedcliError(f"{run}: not a run folder (needs config.json and model.pt from `medcli train`)")
    doc = read_json(paths.config_file(run))
    model, _ = load_model(paths.model_file(run))
    return run, doc, model


@torch.no_grad()
def predict_logits(model, images: np.ndarray, rows: np.ndarray, mean, std, *, tta: bool = False, batch_size: int = 64) -> np.ndarray:
    """Logits for ``images[rows]`` (uint8, N×H×W×C); with ``tta`` the log of the averaged flipped/unflipped softmax."""
    from ..training.batches import to_model_input

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    m, s = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = np.sort(rows[start : start + batch_size])
        order = np.argsort(np.argsort(rows[start : start + batch_size]))
        pixels = torch.from_numpy(np.ascontiguousarray(images[chunk])).permute(0, 3, 1, 2).to(device)
        x = to_model_input(pixels, m, s)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and torch.cuda.is_bf16_supported()):
            logits = model(x).float()
            if tta:
                flipped = model(torch.flip(x, dims=[3])).float()
                # log of the mean of the two softmaxes, in log space: a saturated softmax never gives log(0)
                both = torch.stack([torch.log_softmax(logits, 1), torch.log_softmax(flipped, 1)])
                logits = torch.logsumexp(both, 0) - math.log(2)
        out.append(logits.cpu().numpy()[order])
    n_classes = model.config["num_classes"]
    return np.concatenate(out) if out else np.zeros((0, n_classes))


def _store_for(dataset, doc: dict, sample_ids: set[str] | None, cache_dir, workers):
    from ..data.store import StoreSettings, materialize

    pre = doc["preprocess"]
    if sample_ids is not None:
        dataset.samples = [s for s in dataset.samples if s.id in sample_ids]
    settings = StoreSettings(img_size=pre["img_size"], channels=pre["channels"], resize=pre["resize"], interpolation=pre["interpolation"])
    return materialize(dataset, settings, cache_dir, workers)


def _run_splits(doc: dict, dataset) -> dict:
    """The run's splits file, checked against the dataset and against the splits the run was trained with.

    A splits file re-made after training (another seed, other folds) would put images the model was trained
    on into the test set, so a changed file is refused rather than used.
    """
    from ..splits import load_splits, splits_fingerprint

    splits_doc = load_splits(doc["splits_file"], dataset)
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
) -> dict[str, dict]:
    """Evaluate a run; returns ``{split: metrics document}`` (also written to the run folder)."""
    from ..data import load_dataset, require_readable, scan_dataset

    if split not in SPLITS:
        raise MedcliError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    run, doc, model = _load_run(run_dir)
    cfg, classes, pre = doc["config"], doc["classes"], doc["preprocess"]
    val_frame, val_y, val_logits = read_predictions(paths.predictions_file(run, "val"), classes)
    own: dict = {}

    def own_data() -> dict:
        """The run's own dataset, splits and image store, loaded once and only when needed."""
        if not own:
            dataset = load_dataset(cfg["data"], cfg.get("layout", "auto"), cfg.get("aliases"))
            own["splits"] = _run_splits(doc, dataset)
            own["paths"] = {s.id: s.path for s in dataset.samples}
            own["store"] = _store_for(dataset, doc, set(own["splits"]["labels"]), cfg.get("cache_dir"), cfg.get("workers"))
        return own

    if tta:
        # The temperature and the threshold must be fitted on the kind of scores they are applied to, so with
        # TTA they come from TTA predictions of the same validation images (still never from test data).
        store = own_data()["store"]
        val_logits = predict_logits(model, store.images, store.rows(list(val_frame["id"])), pre["mean"], pre["std"], tta=True)
    temperature = fit_temperature(val_logits, val_y)
    binary = len(classes) == 2
    threshold = youden_threshold(val_y, softmax(val_logits)[:, 1]) if binary and len(set(val_y.tolist())) == 2 else None
    fitted = {"temperature": temperature, "threshold": threshold}
    results: dict[str, dict] = {}

    if data is not None:
        from ..data.classes import reconcile_classes

        ext_name = _external_name(name, data)
        other = load_dataset(data, "auto", aliases)
        # --alias is applied by load_dataset; what is left to match against the model's classes are its labels
        mapping = reconcile_classes({"train": set(classes), "test": {s.label for s in other.samples}}, None)
        other = require_readable(other, scan_dataset(other, cfg.get("cache_dir"), cfg.get("workers")), skip_bad)
        store = _store_for(other, doc, None, cfg.get("cache_dir"), cfg.get("workers"))
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[mapping[s.label]] for s in other.samples])
        ids = [s.id for s in other.samples]
        logits = predict_logits(model, store.images, store.rows(ids), pre["mean"], pre["std"], tta=tta)
        out_dir = Path(run) / "external" / ext_name
        external = {"data": str(Path(data).resolve()), "fingerprint": other.fingerprint(), "class_mapping": {raw: mapping[label] for raw, label in sorted(other.class_mapping.items())}}
        results[ext_name] = _score(out_dir, "external", ids, [s.path for s in other.samples], y, logits, classes, cfg, doc, fitted, tta,
                                   n_bootstrap, seed, figures, external=external, pred_path=out_dir / "predictions.csv", metrics_path=out_dir / "metrics.json")
        return results

    wanted = ["val", "test"] if split == "all" else [split]
    if "val" in wanted:
        results["val"] = _score(run, "val", list(val_frame["id"]), list(val_frame["path"]), val_y, val_logits, classes, cfg, doc, fitted, tta, n_bootstrap, seed, figures)
    if "test" in wanted:
        splits_doc, store = own_data()["splits"], own_data()["store"]
        ids = list(splits_doc["test"])
        if not ids:
            raise MedcliError(f"{doc['splits_file']}: the test set is empty")
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[splits_doc["labels"][i]] for i in ids])
        logits = predict_logits(model, store.images, store.rows(ids), pre["mean"], pre["std"], tta=tta)
        results["test"] = _score(run, "test", ids, [own_data()["paths"][i] for i in ids], y, logits, classes, cfg, doc, fitted, tta, n_bootstrap, seed, figures)
    if figures:
        _learning_curves(run, cfg)
    return results


def _score(run, split, ids, image_paths, y, logits, classes, cfg, doc, fitted, tta, n_bootstrap, seed, figures, *, external=None, pred_path=None, metrics_path=None) -> dict:
    from ..training.outputs import versions, write_predictions

    probs = softmax(logits)
    calibrated_logits = logits / fitted["temperature"]
    calibrated = apply_temperature(logits, fitted["temperature"])
    pred_path = pred_path or paths.predictions_file(run, split)
    write_predictions(pred_path, ids, image_paths, y, logits, classes, fold=cfg["fold"], seed=cfg["seed"], split=split, probs=probs)
    calibrated_path = Path(pred_path).with_suffix(".calibrated.csv")  # <split>.calibrated.csv
    write_predictions(calibrated_path, ids, image_paths, y, calibrated_logits, classes, fold=cfg["fold"], seed=cfg["seed"], split=split, probs=calibrated)
    metrics = compute_metrics(y, probs, classes)
    at_threshold = compute_metrics(y, probs, classes, threshold=fitted["threshold"]) if fitted["threshold"] is not None else None
    ci = bootstrap_ci(y, probs, headline_metric_fns(classes), n_resamples=n_bootstrap, seed=seed) if n_bootstrap > 0 else {}
    document = {
        "format": METRICS_FORMAT,
        "run": {k: cfg[k] for k in ("dataset_name", "backbone", "strategy", "seed", "fold")},
        "split": split,
        "n": int(len(y)),
        "classes": classes,
        "tta": tta,
        "metrics": metrics,
        "threshold": None if fitted["threshold"] is None else {
            "value": fitted["threshold"], "source": "val (Youden's J)", "positive_class": classes[1], "metrics": at_threshold},
        "calibration": {
            "temperature": fitted["temperature"], "fitted_on": "val",
            "nll_before": temperature_nll(logits, y, 1.0), "nll_after": temperature_nll(logits, y, fitted["temperature"]),
            "ece_before": expected_calibration_error(y, probs), "ece_after": expected_calibration_error(y, calibrated),
        },
        "ci": ci,
        "external": external,
        "versions": versions(),
    }
    document = _finite(json.loads(json.dumps(document, default=_plain)))
    write_json(metrics_path or paths.metrics_file(run, split), document)
    if figures:
        _figures(Path(metrics_path).parent if metrics_path else Path(paths.figures_dir(run)), split, y, probs, calibrated, classes, metrics)
    return document


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _figures(folder: Path, split: str, y, probs, calibrated, classes, metrics) -> None:
    from .plots import plot_confusion_matrix, plot_pr_curves, plot_reliability, plot_roc_curves

    folder.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(np.array(metrics["confusion_matrix"]["counts"]), classes, folder / f"confusion_{split}.png", title=f"confusion matrix ({split})")
    plot_roc_curves(y, probs, classes, folder / f"roc_{split}.png", title=f"ROC ({split})")
    plot_pr_curves(y, probs, classes, folder / f"pr_{split}.png", title=f"precision-recall ({split})")
    plot_reliability(y, probs, folder / f"reliability_{split}.png", probs_calibrated=calibrated, title=f"reliability ({split})")


def _learning_curves(run: Path, cfg: dict) -> None:
    from .plots import plot_learning_curves

    history = pd.read_csv(paths.history_file(run))
    monitor = "val_loss" if cfg.get("monitor") == "loss" else f"val_{cfg.get('monitor', 'balanced_accuracy')}"
    Path(paths.figures_dir(run)).mkdir(parents=True, exist_ok=True)
    plot_learning_curves(history, Path(paths.figures_dir(run)) / "learning_curves.png", monitor=monitor if monitor in history else None)


def render(results: dict[str, dict], console) -> None:
    from rich.table import Table

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
