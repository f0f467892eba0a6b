"""``medcli report``: the cross-validated comparison table, ``results/summary.md`` (+ ``.csv``, ``.json``, figures).

Per dataset, each configuration (backbone × strategy) is summarised by:

* **CV** columns: mean ± sd (n) over folds × seeds of the *validation-fold* metrics (out-of-fold estimates);
* **Test**: the primary metric of the configuration's **fold ensemble** on the held-out test set: the test
  probabilities of all its K × S fold models (K folds, S seeds) averaged, with a 95 % stratified bootstrap
  interval of that same ensemble (the spread of the per-seed K-model ensembles is reported beside it);
* a paired comparison with a reference configuration: Nadeau–Bengio corrected resampled t-test over matched
  (seed, fold) validation scores, Holm-adjusted across the configurations of the dataset.

Missing runs (in the experiment but without outputs) and skipped cells are listed, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from datetime import datetime, timezone
from glob import glob
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__, paths
from .._io import read_json, write_json, write_text
from ..errors import MedcliError
from .stats import corrected_resampled_ttest, holm, mean_sd, paired_differences

CV_METRICS = ("balanced_accuracy", "macro_f1", "roc_auc", "ece")
LOWER_IS_BETTER = {"ece", "log_loss", "brier"}
LABELS = {"balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1", "roc_auc": "ROC-AUC", "ece": "ECE", "accuracy": "accuracy"}


def collect_runs(results: str | os.PathLike) -> pd.DataFrame:
    """One row per run folder: coordinates, file paths, and its config/summary."""
    rows = []
    for cfg_path in sorted(glob(os.path.join(glob_escape(str(results)), "*", "runs", "*", "seed-*", "fold-*", paths.CONFIG_FILE))):
        run = os.path.dirname(cfg_path)
        try:
            key = paths.parse_run_dir(run)
        except ValueError:
            continue
        if key.dataset.startswith("_"):
            continue  # the demo's pretraining runs
        doc = read_json(cfg_path)
        rows.append({"dataset": key.dataset, "backbone": key.backbone, "strategy": key.strategy, "seed": key.seed, "fold": key.fold,
                     "config": paths.run_name(key.backbone, key.strategy), "run": run, "doc": doc})
    return pd.DataFrame(rows)


def glob_escape(path: str) -> str:
    import glob as _glob

    return _glob.escape(path)


def _val_metrics(run: str, classes: list[str]) -> dict:
    path = paths.metrics_file(run, "val")
    if os.path.exists(path):
        return read_json(path)["metrics"]
    from ..evaluation.metrics import compute_metrics
    from ..evaluation.runner import read_predictions
    from ..evaluation.calibration import softmax

    _, y, logits = read_predictions(paths.predictions_file(run, "val"), classes)
    return compute_metrics(y, softmax(logits), classes)


def _test_probs(run: str, classes: list[str]) -> pd.DataFrame | None:
    path = paths.predictions_file(run, "test")
    if not os.path.exists(path):
        return None
    frame = pd.read_csv(path, dtype={"id": str, "label": str})
    return frame.set_index("id")[["label", *(f"prob_{c}" for c in classes)]]


def summarize_dataset(runs: pd.DataFrame, primary: str, reference: str | None, n_bootstrap: int = 1000) -> dict:
    """The comparison table of one dataset (JSON-ready)."""
    from ..ensemble import fold_ensemble
    from ..evaluation.bootstrap import bootstrap_ci, headline_metric_fns
    from ..evaluation.metrics import compute_metrics

    classes = runs.iloc[0]["doc"]["classes"]
    index = {c: k for k, c in enumerate(classes)}
    tidy, rows, not_evaluated = [], [], []
    scores: dict[str, dict] = {}
    sizes: dict[str, tuple[float, float]] = {}
    for config, group in runs.groupby("config", sort=True):
        per_metric = defaultdict(list)
        primary_scores = {}
        test_by_seed = defaultdict(list)
        for _, r in group.iterrows():
            metrics = _val_metrics(r["run"], classes)
            for m in dict.fromkeys((*CV_METRICS, "accuracy", primary)):
                per_metric[m].append(metrics.get(m))
                tidy.append((r["dataset"], r["backbone"], r["strategy"], r["seed"], r["fold"], "val", m, metrics.get(m)))
            primary_scores[(r["seed"], r["fold"])] = metrics.get(primary)
            test = _test_probs(r["run"], classes)
            if test is None:
                not_evaluated.append(r["run"])
            else:
                test_by_seed[r["seed"]].append(test)
                test_metrics_path = paths.metrics_file(r["run"], "test")
                if os.path.exists(test_metrics_path):
                    tm = read_json(test_metrics_path)["metrics"]
                    for m in (*CV_METRICS, "accuracy"):
                        tidy.append((r["dataset"], r["backbone"], r["strategy"], r["seed"], r["fold"], "test", m, tm.get(m)))
        summary = group.iloc[0]["doc"]["summary"]
        sizes[config] = (float(summary.get("n_train", 0)), float(summary.get("n_val", 0)))
        scores[config] = primary_scores
        row = {"config": config, "backbone": group.iloc[0]["backbone"], "strategy": group.iloc[0]["strategy"],
               "cv": {m: mean_sd(per_metric[m]) for m in dict.fromkeys((*CV_METRICS, primary))}, "test": None}
        if test_by_seed:
            ids = sorted(set.intersection(*(set(f.index) for frames in test_by_seed.values() for f in frames)))
            y = np.array([index[lbl] for lbl in test_by_seed[next(iter(test_by_seed))][0].loc[ids, "label"]])
            cols = [f"prob_{c}" for c in classes]
            per_seed = {s: fold_ensemble([f.loc[ids, cols].to_numpy() for f in frames]) for s, frames in test_by_seed.items()}
            seed_scores = [compute_metrics(y, p, classes).get(primary) for p in per_seed.values()]
            pooled = fold_ensemble(list(per_seed.values()))
            fns = headline_metric_fns(classes)
            ci = bootstrap_ci(y, pooled, {primary: fns[primary]}, n_resamples=n_bootstrap, seed=0)[primary] if primary in fns else None
            pooled_metrics = compute_metrics(y, pooled, classes)
            row["test"] = {"per_seed": mean_sd(seed_scores), "estimate": pooled_metrics.get(primary),
                           "low": ci["low"] if ci else None, "high": ci["high"] if ci else None, "n_images": len(ids),
                           "n_models": sum(len(f) for f in test_by_seed.values()),
                           "confusion": pooled_metrics["confusion_matrix"]["counts"]}
        rows.append(row)

    rows += _ensemble_rows(runs.iloc[0]["run"], runs.iloc[0]["dataset"], classes, primary, n_bootstrap)
    higher = primary not in LOWER_IS_BETTER
    rows.sort(key=lambda r: (r["cv"][primary]["mean"] is None, -(r["cv"][primary]["mean"] or 0) if higher else (r["cv"][primary]["mean"] or 0)))
    configs = [r["config"] for r in rows]
    ref = reference if reference in configs else None
    note = None
    if reference and ref is None:
        ref = next((c for c in configs if c.endswith("__scratch")), configs[-1] if configs else None)
        note = f"reference {reference!r} has no runs; compared with {ref!r} instead"
    tests = []
    for r in rows:
        if r["config"] == ref or r.get("ensemble"):
            r["comparison"] = None
            continue
        diffs, keys = paired_differences(scores[r["config"]], scores[ref])
        n_train, n_val = sizes[r["config"]]
        result = corrected_resampled_ttest(diffs, int(n_train) or 1, int(n_val) or 1) if len(diffs) else {"mean_diff": None, "p": None, "ci_low": None, "ci_high": None, "n": 0, "note": "no matched (seed, fold) pairs"}
        r["comparison"] = result
        tests.append(r)
    for r, p_adj in zip(tests, holm([t["comparison"].get("p") for t in tests])):
        r["comparison"]["p_holm"] = p_adj
    return {"classes": classes, "primary": primary, "reference": ref, "reference_note": note, "rows": rows,
            "tidy": tidy, "not_evaluated": not_evaluated}


def _ensemble_rows(any_run: str, dataset: str, classes: list[str], primary: str, n_bootstrap: int) -> list[dict]:
    """Rows for ``<dataset>/ensembles/<name>__<method>/seed-*/``: OOF metrics per seed, test pooled over seeds."""
    from ..ensemble import fold_ensemble
    from ..evaluation.bootstrap import bootstrap_ci, headline_metric_fns
    from ..evaluation.metrics import compute_metrics

    results = Path(any_run).parents[4]  # <results>/<dataset>/runs/<config>/seed-<s>/fold-<k>
    rows = []
    for folder in sorted(glob(os.path.join(glob_escape(str(results)), dataset, "ensembles", "*"))):
        seeds = sorted(glob(os.path.join(glob_escape(folder), "seed-*")))
        docs = [read_json(paths.metrics_file(d, "val")) for d in seeds if os.path.exists(paths.metrics_file(d, "val"))]
        tests = [_test_probs(d, classes) for d in seeds]
        tests = [t for t in tests if t is not None]
        statements = [read_json(paths.ensemble_file(d)) for d in seeds if os.path.exists(paths.ensemble_file(d))]
        if not docs:
            continue
        name = os.path.basename(folder)
        row = {"config": f"ensemble {name}", "backbone": "ensemble", "strategy": name, "ensemble": True,
               "cv": {m: mean_sd([d["metrics"].get(m) for d in docs]) for m in dict.fromkeys((*CV_METRICS, primary))},
               "test": None, "statements": [f"seed {e['seed']}: {e['statement']}" for e in statements],
               "members": statements[0]["members"] if statements else []}
        if tests:
            ids = sorted(set.intersection(*(set(t.index) for t in tests)))
            y = np.array([{c: k for k, c in enumerate(classes)}[lbl] for lbl in tests[0].loc[ids, "label"]])
            cols = [f"prob_{c}" for c in classes]
            per_seed = [t.loc[ids, cols].to_numpy() for t in tests]
            pooled = fold_ensemble(per_seed)
            fns = headline_metric_fns(classes)
            ci = bootstrap_ci(y, pooled, {primary: fns[primary]}, n_resamples=n_bootstrap, seed=0)[primary] if primary in fns else None
            pm = compute_metrics(y, pooled, classes)
            row["test"] = {"per_seed": mean_sd([compute_metrics(y, p, classes).get(primary) for p in per_seed]), "estimate": pm.get(primary),
                           "low": ci["low"] if ci else None, "high": ci["high"] if ci else None, "n_images": len(ids),
                           "n_models": len(per_seed), "confusion": pm["confusion_matrix"]["counts"]}
        rows.append(row)
    return rows


def write_report(results: str | os.PathLike, *, out: str | os.PathLike | None = None, primary: str | None = None,
                 reference: str | None = None, n_bootstrap: int = 1000) -> Path:
    """Collect every run under ``results`` and write summary.md, summary.csv, summary.json and figures."""
    from .markdown import render_markdown

    results = Path(results)
    runs = collect_runs(results)
    if runs.empty:
        raise MedcliError(f"{results}: no run folders found (expected <dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/config.json)")
    experiment = read_json(paths.experiment_file(results)) if os.path.exists(paths.experiment_file(results)) else None
    settings = ((experiment or {}).get("config") or {}).get("report") or {}
    primary = primary or settings.get("primary_metric") or "balanced_accuracy"
    reference = reference or settings.get("reference") or "customcnn__scratch"
    out = Path(out) if out else Path(paths.summary_file(results))

    datasets = {}
    for dataset, group in runs.groupby("dataset", sort=True):
        datasets[dataset] = summarize_dataset(group, primary, reference, n_bootstrap)
        datasets[dataset]["data"] = _data_section(results, dataset)
        datasets[dataset]["figures"] = _figures(results, dataset, group, datasets[dataset], out.parent)
        datasets[dataset]["gradcam"] = sorted(os.path.relpath(p, out.parent) for p in glob(os.path.join(glob_escape(str(results)), dataset, "runs", "*", "seed-*", "fold-*", "gradcam", "*", "gallery_*.png")))
    missing, skipped = _missing_and_skipped(results, experiment)
    provenance = _provenance(runs, experiment)
    report = {"format": "medcli.summary/1", "generated": provenance["date"], "primary": primary, "datasets": datasets,
              "missing": missing, "skipped": skipped, "provenance": provenance}

    write_text(out, render_markdown(report, out.parent, results))
    _write_csv(Path(paths.summary_file(out.parent, "csv")), datasets)
    write_json(paths.summary_file(out.parent, "json"), json.loads(json.dumps(
        {**report, "datasets": {d: {k: v for k, v in s.items() if k != "tidy"} for d, s in datasets.items()}}, default=_plain)))
    return out


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_csv(path: Path, datasets: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "backbone", "strategy", "seed", "fold", "split", "metric", "value"])
    for summary in datasets.values():
        for row in summary["tidy"]:
            writer.writerow([*row[:-1], "" if row[-1] is None else f"{row[-1]:.6g}"])
    write_text(path, buf.getvalue())


def _data_section(results: Path, dataset: str) -> dict:
    section: dict = {}
    if os.path.exists(paths.inspect_file(results, dataset)):
        ins = read_json(paths.inspect_file(results, dataset))
        section["counts"] = ins["counts"]
        section["duplicates"] = {k: v for k, v in ins["duplicates"].items() if k != "groups"}
        section["bad_files"] = len(ins["bad_files"])
    if os.path.exists(paths.splits_file(results, dataset)):
        sp = read_json(paths.splits_file(results, dataset))
        section["renamed"] = {raw: can for raw, can in sp["class_mapping"].items() if raw != can}
        section["test_source"] = sp["test_source"]
        section["n_test"] = len(sp["test"])
        section["folds"] = [{"fold": f["fold"], "train": len(f["train"]), "val": len(f["val"])} for f in sp["folds"]]
        section["leakage"] = {"test_duplicating_dev": len(sp["leakage"]["test_duplicating_dev"]),
                              "test_duplicates_dropped": sp["leakage"]["test_duplicates_dropped"],
                              "val_duplicating_train": len(sp["leakage"]["val_duplicating_train"]),
                              "n_label_conflicts": sp["leakage"]["n_label_conflicts"],
                              "largest_group": sp["leakage"].get("largest_group"), "grouped_images": len(sp["groups"])}
        section["excluded"] = len(sp["excluded"])
        section["split_settings"] = sp["settings"]
    return section


def _missing_and_skipped(results: Path, experiment: dict | None) -> tuple[list[str], list[dict]]:
    if not experiment:
        return [], []
    missing = []
    for cell in experiment.get("cells", []):
        run = paths.run_dir(results, cell["dataset"], cell["backbone"], cell["strategy"], cell["seed"], cell["fold"])
        if not os.path.exists(paths.model_file(run)):
            missing.append(os.path.relpath(run, results))
    return missing, list(experiment.get("skipped", []))


def _provenance(runs: pd.DataFrame, experiment: dict | None) -> dict:
    docs = list(runs["doc"])
    seconds = [d["summary"].get("train_seconds", 0.0) for d in docs]
    return {
        "medcli_version": __version__,
        "git_revisions": sorted({str(d.get("git_revision")) for d in docs}),
        "versions": docs[0].get("versions", {}),
        "config_hash": (experiment or {}).get("config_hash"),
        "pretraining": (experiment or {}).get("pretraining"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": sorted({d.get("hardware", {}).get("cpu", "?") for d in docs}),
        "gpus": sorted({g for d in docs for g in d.get("hardware", {}).get("gpus", [])}),
        "n_runs": len(docs),
        "train_seconds_total": float(np.sum(seconds)),
        "train_seconds_mean": float(np.mean(seconds)),
        "train_seconds_max": float(np.max(seconds)),
    }


def _figures(results: Path, dataset: str, runs: pd.DataFrame, summary: dict, base: Path) -> dict:
    from .figures import confusion_best, learning_curves, strategy_comparison

    folder = Path(paths.summary_figures_dir(results))
    out = {}
    out["strategies"] = strategy_comparison(summary, folder / f"{dataset}_strategies.png")
    out["learning_curves"] = learning_curves(runs, summary["primary"], folder / f"{dataset}_learning_curves.png")
    best = next((r for r in summary["rows"] if r["test"]), None)
    if best:
        out["confusion_best"] = confusion_best(best, summary["classes"], folder / f"{dataset}_confusion_best.png")
    return {k: os.path.relpath(v, base) for k, v in out.items() if v}
