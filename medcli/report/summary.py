"""The comparison of one dataset: the rows of its table, the test column and the paired tests.

* **CV columns**: mean, sd (``ddof=1``) and n over folds × seeds of each run's validation-fold metrics.
* **Test column**: for every seed, the *fold ensemble* of a configuration (the test probabilities of its fold
  models averaged per image, rows matched by image id) is scored on the held-out test set; the column shows
  the mean of these per-seed scores. Its 95 % interval comes from :func:`seed_averaged_bootstrap`: a stratified
  percentile bootstrap over test images of that same seed-averaged number, where each resample draws one set
  of images and scores every seed's ensemble on it. The interval thus describes the test-set sampling error of
  exactly the number shown; the spread between seeds is reported beside it as their sd. (The alternatives are
  worse: an interval for the first seed alone ignores the other seeds and need not contain the mean, and an
  interval for one ensemble of all K × S models belongs to a different, larger model than the one scored.)
* **Comparison**: each configuration against a reference configuration on the primary CV metric, paired on
  (seed, fold), with :func:`~medcli.report.stats.corrected_resampled_ttest` and Holm's adjustment over the
  configurations of the dataset.

Ensembles written by ``medcli ensemble`` get rows of the same shape (``kind: "ensemble"``); their test
column is computed by the same function from their own test predictions.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Callable

import numpy as np
import pandas as pd

from .. import paths
from ..errors import MedcliError
from ..evaluation.metrics import list_metrics
from .collect import VAL_FROM_METRICS, EnsembleOutput, Run, read_probabilities
from .stats import MIN_PAIRED_RESULTS, corrected_resampled_ttest, holm, mean_sd, paired_differences

#: The CV columns of every table (the primary metric is put first when it is not one of them).
CV_COLUMNS = ("balanced_accuracy", "macro_f1", "roc_auc", "ece")
LOWER_IS_BETTER = frozenset(m.name for m in list_metrics() if m.lower_is_better)
PRIMARY_CHOICES = tuple(m.name for m in list_metrics() if m.primary)
#: Training settings that should agree between the configurations of one comparison.
PROTOCOL_KEYS = ("recipe", "epochs", "img_size", "channels", "resize", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                 "monitor", "patience", "ema_epochs", "augment", "class_weights", "label_smoothing", "head", "precision")
_BLOCK_ELEMENTS = 1 << 21  # bootstrap indices held in memory at once


def columns_for(primary: str) -> list[str]:
    return list(dict.fromkeys((primary, *CV_COLUMNS))) if primary not in CV_COLUMNS else list(CV_COLUMNS)


def check_primary(primary: str) -> str:
    if primary not in PRIMARY_CHOICES:
        raise MedcliError(f"unknown primary metric {primary!r}; choose one of {', '.join(PRIMARY_CHOICES)}")
    return primary


def seed_averaged_bootstrap(y: np.ndarray, probs: list[np.ndarray], fn: Callable[[np.ndarray, np.ndarray], float], *,
                            n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile interval of ``mean_s fn(y, probs[s])``, resampling test images jointly for all ``s``.

    Resamples are drawn as in :func:`~medcli.evaluation.bootstrap.bootstrap_ci` (stratified by class, seeded,
    in bounded blocks), so with a single probability matrix the result equals ``bootstrap_ci``'s interval.
    A resample on which ``fn`` is undefined for any seed is skipped and not counted in ``n_valid``.
    """
    from ..evaluation.bootstrap import draw_indices

    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise MedcliError(f"the number of bootstrap resamples must be a positive integer, got {n_resamples}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // len(y))
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, int(n_resamples), block):
            for rows in draw_indices(y, min(block, int(n_resamples) - start), rng, stratified=True):
                scores = [_safe(fn, y[rows], p[rows]) for p in probs]
                if all(s is not None for s in scores):
                    values.append(float(np.mean(scores)))
    low = high = None
    if values:
        low, high = (float(q) for q in np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
    return {"low": low, "high": high, "n_resamples": int(n_resamples), "n_valid": len(values)}


def _safe(fn, y, p) -> float | None:
    try:
        value = float(fn(y, p))
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return None
    return value if math.isfinite(value) else None


def average_frames(frames: list[pd.DataFrame], classes: list[str]) -> pd.DataFrame:
    """The fold ensemble: probabilities of several models averaged per image (images common to all frames)."""
    if not frames:
        raise MedcliError("a fold ensemble needs at least one fold model")
    from ..ensemble import fold_ensemble

    ids = sorted(set.intersection(*(set(f.index) for f in frames)))
    cols = [f"prob_{c}" for c in classes]
    _check_labels(frames, ids)
    out = frames[0].loc[ids, ["label"]].copy()
    out[cols] = fold_ensemble([f.loc[ids, cols].to_numpy(dtype=np.float64) for f in frames])
    return out


def _check_labels(frames: list[pd.DataFrame], ids: list[str]) -> None:
    first = frames[0].loc[ids, "label"]
    for other in frames[1:]:
        differ = first.index[first.to_numpy() != other.loc[ids, "label"].to_numpy()]
        if len(differ):
            raise MedcliError(f"test image {differ[0]!r} has different labels in the predictions of one configuration; "
                              "the runs were not made from the same splits")


def test_column(per_seed: dict[int, pd.DataFrame], models: dict[int, int], classes: list[str], primary: str, *,
                n_bootstrap: int, seed: int) -> dict:
    """The test column of one row from per-seed test probabilities (a fold ensemble or an ensemble per seed)."""
    from ..evaluation.bootstrap import headline_metric_fns
    from ..evaluation.metrics import compute_metrics

    frames = [per_seed[s] for s in sorted(per_seed)]
    ids = sorted(set.intersection(*(set(f.index) for f in frames)))
    _check_labels(frames, ids)
    index = {c: k for k, c in enumerate(classes)}
    y = frames[0].loc[ids, "label"].map(index).to_numpy(dtype=np.intp)
    cols = [f"prob_{c}" for c in classes]
    probs = [f.loc[ids, cols].to_numpy(dtype=np.float64) for f in frames]
    metrics = [compute_metrics(y, p, classes) for p in probs]
    values = [m.get(primary) for m in metrics]
    spread = mean_sd(values)
    ci = seed_averaged_bootstrap(y, probs, headline_metric_fns(classes)[primary], n_resamples=n_bootstrap, seed=seed)
    return {
        "estimate": spread["mean"], "low": ci["low"], "high": ci["high"],
        "per_seed": spread,
        "seeds": [{"seed": int(s), "value": v, "n_models": int(models[s])} for s, v in zip(sorted(per_seed), values)],
        "n_images": len(ids),
        "n_images_dropped": int(max(len(f) for f in frames) - len(ids)),
        "n_models": int(sum(models.values())),
        "n_resamples": ci["n_resamples"], "n_valid": ci["n_valid"],
        "confusion": np.sum([m["confusion_matrix"]["counts"] for m in metrics], axis=0).astype(int).tolist(),
    }


def configuration_row(runs: list[Run], classes: list[str], primary: str, *, n_bootstrap: int, seed: int,
                      n_folds: int | None) -> dict:
    """One row of the table: a configuration's CV columns and the test column of its fold ensembles."""
    first = runs[0]
    cv = {m: mean_sd(r.val_metrics.get(m) for r in runs) for m in columns_for(primary)}
    by_seed: dict[int, list[Run]] = defaultdict(list)
    for r in runs:
        if r.evaluated:
            by_seed[r.key.seed].append(r)
    test = None
    if by_seed:
        per_seed = {s: average_frames([read_probabilities(paths.predictions_file(r.path, "test"), classes) for r in rs], classes)
                    for s, rs in by_seed.items()}
        test = test_column(per_seed, {s: len(rs) for s, rs in by_seed.items()}, classes, primary, n_bootstrap=n_bootstrap, seed=seed)
        if n_folds:
            test["incomplete_seeds"] = [s for s, rs in sorted(by_seed.items()) if len(rs) < n_folds]
    return {
        "kind": "configuration", "config": first.config, "backbone": first.key.backbone, "strategy": first.key.strategy,
        "n_runs": len(runs), "seeds": sorted({r.key.seed for r in runs}), "folds": sorted({r.key.fold for r in runs}),
        "cv": cv, "test": test,
        "val_recomputed": [r.rel for r in runs if r.val_source != VAL_FROM_METRICS],
        "not_evaluated": [r.rel for r in runs if not r.evaluated],
        "comparison": None,
    }


def ensemble_row(outputs: list[EnsembleOutput], classes: list[str], primary: str, *, n_bootstrap: int, seed: int) -> dict:
    """A row for one ensemble (all its seeds): out-of-fold columns over seeds and the seed-averaged test column."""
    cv = {m: mean_sd((o.val_metrics or {}).get(m) for o in outputs) for m in columns_for(primary)}
    with_test = [o for o in outputs if o.has_test_predictions]
    test = None
    if with_test:
        per_seed = {o.seed: read_probabilities(paths.predictions_file(o.path, "test"), classes) for o in with_test}
        test = test_column(per_seed, {o.seed: 1 for o in with_test}, classes, primary, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "kind": "ensemble", "config": outputs[0].name, "backbone": None, "strategy": None, "n_runs": len(outputs),
        "seeds": sorted(o.seed for o in outputs), "folds": [], "cv": cv, "test": test,
        "members": outputs[0].members, "statements": [f"seed {o.seed}: {o.statement}" for o in outputs if o.statement],
        "sources": [o.rel for o in outputs], "comparison": None,
    }


def sort_rows(rows: list[dict], primary: str) -> list[dict]:
    """Best primary CV mean first (lowest for lower-is-better metrics); rows without a value last."""
    sign = 1.0 if primary in LOWER_IS_BETTER else -1.0

    def key(row):
        mean = row["cv"][primary]["mean"]
        return (mean is None, sign * mean if mean is not None else 0.0, row["config"])

    return sorted(rows, key=key)


#: The reference row when neither ``--reference`` nor the experiment's ``report.reference`` names one.
DEFAULT_REFERENCE = "customcnn__scratch"


def choose_reference(rows: list[dict], requested: str | None) -> tuple[str | None, str | None]:
    """The reference configuration and, when the requested one has no runs, a note saying what replaced it."""
    configs = [r["config"] for r in rows if r["cv"] and any(v["n"] for v in r["cv"].values())]
    if not configs:
        return None, None
    if requested in configs:
        return requested, None
    fallback = next((r["config"] for r in rows if r["strategy"] == "scratch" and r["config"] in configs), configs[-1])
    if requested is None:
        return fallback, None
    how = "the first configuration trained from scratch" if fallback.endswith("__scratch") else "the lowest-ranked configuration"
    which = "the default reference" if requested == DEFAULT_REFERENCE else "the requested reference"
    return fallback, f"{which} `{requested}` has no runs for this dataset; {how}, `{fallback}`, is used instead"


def compare_with_reference(rows: list[dict], runs_by_config: dict[str, list[Run]], reference: str, primary: str) -> None:
    """Fill ``row["comparison"]`` for every configuration row except the reference (in place)."""
    def scores(config):
        return {(r.key.seed, r.key.fold): r.val_metrics.get(primary) for r in runs_by_config[config]}

    ref_scores = scores(reference)
    tested = []
    for row in rows:
        if row["kind"] != "configuration" or row["config"] == reference:
            continue
        diffs, keys = paired_differences(scores(row["config"]), ref_scores)
        paired = set(keys)
        matched = [r for c in (row["config"], reference) for r in runs_by_config[c] if (r.key.seed, r.key.fold) in paired]
        n_train = _mean_size(matched, "n_train")
        n_test = _mean_size(matched, "n_val")
        if not keys:
            result = {"mean_diff": None, "t": None, "df": None, "p": None, "ci_low": None, "ci_high": None, "n": 0,
                      "note": "no runs matched on (seed, fold)"}
        elif n_train is None or n_test is None:
            result = {"mean_diff": float(np.mean(diffs)), "t": None, "df": None, "p": None, "ci_low": None, "ci_high": None,
                      "n": len(keys), "note": "fold sizes unknown (config.json summary lacks n_train/n_val); no test"}
        else:
            result = corrected_resampled_ttest(diffs, n_train, n_test)
            if len(keys) < MIN_PAIRED_RESULTS:
                result["note"] = f"n too small for a test ({len(keys)} matched pairs, at least {MIN_PAIRED_RESULTS} needed)"
            elif result["note"] == "all differences identical":
                result["note"] = "all paired differences identical: no variance to test"
        result.update({"n_train": n_train, "n_test": n_test, "reference": reference, "p_holm": None})
        row["comparison"] = result
        tested.append(row)
    for row, adjusted in zip(tested, holm([r["comparison"]["p"] for r in tested])):
        row["comparison"]["p_holm"] = adjusted


def _mean_size(runs: list[Run], name: str) -> int | None:
    values = [r.summary_value(name) for r in runs]
    if not values or any(not isinstance(v, (int, float)) or v < 1 for v in values):
        return None
    return int(round(float(np.mean(values))))


def verdict(rows: list[dict], primary: str) -> dict | None:
    """The best configuration by the primary CV metric, its margin over the runner-up and its test result."""
    ranked = [r for r in rows if r["kind"] == "configuration" and r["cv"][primary]["mean"] is not None]
    if not ranked:
        return None
    best = ranked[0]
    out = {"config": best["config"], "cv": best["cv"][primary], "runner_up": None, "margin": None,
           "comparison": best["comparison"], "test": None if not best["test"] else
           {k: best["test"][k] for k in ("estimate", "low", "high")}}
    if len(ranked) > 1:
        gap = best["cv"][primary]["mean"] - ranked[1]["cv"][primary]["mean"]
        out.update(runner_up=ranked[1]["config"], margin=abs(gap))
    return out


def comparability(runs: list[Run], rows: list[dict], *, splits_fingerprint: str | None,
                  experiment_cells: set[tuple] | None) -> list[dict]:
    """Checks that tell whether the rows are comparable: ``[{ok: bool | None, text: str}]``, in this order (a
    check with nothing to say is left out): one split assignment, one data version, the same (seed, fold) runs in
    every configuration, runs lacking test results, one test-set size, settings within a configuration, settings
    between configurations (``ok`` None: a note), source revisions, runs outside the experiment's grid.

    ``splits_fingerprint`` is the current splits file's (None: no file); ``experiment_cells`` the
    ``(dataset, backbone, strategy, seed, fold)`` cells of ``experiment.json`` (None: no such file).
    """
    configs = [r for r in rows if r["kind"] == "configuration"]
    settings = _settings_by_config(runs)
    checks = (
        _check_split_assignment(runs, splits_fingerprint),
        _check_data_version(runs),
        _check_same_runs(runs, configs),
        _check_evaluated(configs),
        _check_test_size(configs),
        _check_settings_within(settings),
        _check_settings_between(settings),
        _check_revisions(runs),
        _check_grid(runs, experiment_cells),
    )
    return [c for c in checks if c is not None]


def _check_split_assignment(runs: list[Run], splits_fingerprint: str | None) -> dict:
    fingerprints = {r.doc.get("splits_fingerprint") for r in runs}
    if len(fingerprints) > 1:
        return {"ok": False, "text": f"runs were trained on {len(fingerprints)} different split assignments "
                "(`splits_fingerprint` in config.json differs); paired comparisons mix different folds"}
    if splits_fingerprint and fingerprints != {splits_fingerprint}:
        return {"ok": False, "text": "the runs' `splits_fingerprint` does not match the current splits.json; "
                "the splits were remade after training"}
    where = " and match splits.json" if splits_fingerprint else ""
    return {"ok": True, "text": f"all {len(runs)} runs share one split assignment (same `splits_fingerprint`{where})"}


def _check_data_version(runs: list[Run]) -> dict | None:
    if len({r.doc.get("data_fingerprint") for r in runs}) > 1:
        return {"ok": False, "text": "runs saw different versions of the data (`data_fingerprint` differs)"}
    return None


def _check_same_runs(runs: list[Run], configs: list[dict]) -> dict:
    grid = {(r.key.seed, r.key.fold) for r in runs}
    have = defaultdict(set)
    for r in runs:
        have[r.config].add((r.key.seed, r.key.fold))
    short = [f"`{row['config']}` {len(have[row['config']])} of {len(grid)} (lacks "
             + ", ".join(f"seed {s} fold {f}" for s, f in sorted(grid - have[row["config"]])) + ")"
             for row in configs if have[row["config"]] != grid]
    if short:
        return {"ok": False, "text": "not every configuration has the same (seed, fold) runs: " + ", ".join(short)
                + "; CV columns use the runs present and paired tests the matched pairs only"}
    return {"ok": True, "text": f"every configuration has the same {len(grid)} (seed, fold) runs"}


def _check_evaluated(configs: list[dict]) -> dict | None:
    not_evaluated = sum(len(row["not_evaluated"]) for row in configs)
    if not_evaluated:
        return {"ok": False, "text": f"{not_evaluated} run(s) lack test results (`medcli eval` not run; listed under "
                "Not evaluated); their fold ensembles have fewer models"}
    return None


def _check_test_size(configs: list[dict]) -> dict | None:
    sizes = {row["test"]["n_images"] for row in configs if row["test"]}
    if len(sizes) > 1:
        return {"ok": False, "text": f"test columns are scored on different numbers of test images ({sorted(sizes)})"}
    if sizes:
        return {"ok": True, "text": f"every test column is scored on the same {sizes.pop()} held-out test images"}
    return None


def _settings_by_config(runs: list[Run]) -> dict[str, dict[str, set[str]]]:
    """``{protocol key: {configuration: the values its runs were trained with}}`` (keys in PROTOCOL_KEYS order)."""
    out = {}
    for key in PROTOCOL_KEYS:
        by_config = defaultdict(set)
        for r in runs:
            if key in (r.doc.get("config") or {}):
                by_config[r.config].add(str(r.doc["config"][key]))
        out[key] = by_config
    return out


def _check_settings_within(settings: dict[str, dict[str, set[str]]]) -> dict | None:
    within = []
    for key, by_config in settings.items():
        mixed = sorted(c for c, values in by_config.items() if len(values) > 1)
        if mixed:
            within.append(f"{key} in " + ", ".join(f"`{c}` ({', '.join(sorted(by_config[c]))})" for c in mixed))
    if within:
        return {"ok": False, "text": "runs of one configuration were trained with different settings: " + "; ".join(within)}
    return None


def _check_settings_between(settings: dict[str, dict[str, set[str]]]) -> dict | None:
    """Settings that differ between configurations (a key that also differs within one is reported there only)."""
    between = []
    for key, by_config in settings.items():
        if any(len(values) > 1 for values in by_config.values()):
            continue
        if len({v for values in by_config.values() for v in values}) > 1:
            groups = defaultdict(list)
            for c, values in sorted(by_config.items()):
                groups[next(iter(values))].append(f"`{c}`")
            between.append(f"{key}: " + "; ".join(f"{value} for {', '.join(cs)}" for value, cs in sorted(groups.items())))
    if between:
        return {"ok": None, "text": "configurations differ in these training settings (by the config or a strategy's "
                "default, so part of what is compared): " + " | ".join(between)}
    return None


def _check_revisions(runs: list[Run]) -> dict | None:
    revisions = {str(r.doc.get("git_revision")) for r in runs}
    dirty = sum(1 for r in runs if str(r.doc.get("git_revision") or "").endswith("-dirty"))
    if len(revisions) > 1 or dirty:
        text = f"runs come from {len(revisions)} source revision(s)"
        return {"ok": False, "text": text + (f"; {dirty} run(s) from uncommitted changes" if dirty else "") + " (see Provenance)"}
    return None


def _check_grid(runs: list[Run], experiment_cells: set[tuple] | None) -> dict | None:
    if experiment_cells is None:
        return None
    extra = [r.rel for r in runs if (r.key.dataset, r.key.backbone, r.key.strategy, r.key.seed, r.key.fold) not in experiment_cells]
    if extra:
        return {"ok": False, "text": f"{len(extra)} run(s) are not cells of experiment.json (left from an "
                f"earlier grid?) but are included, e.g. `{extra[0]}`"}
    return None
