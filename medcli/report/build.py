"""``medcli report``: the cross-validated comparison, ``results/summary.md`` (+ ``.csv``, ``.json``, figures).

:func:`write_report` collects every run folder (:mod:`.collect`), summarises each dataset (:mod:`.summary`:
CV columns, fold-ensemble test column with its bootstrap interval, paired tests against a reference row),
adds the data facts and provenance (:mod:`.facts`), draws the figures (:mod:`.figures`) and writes

* ``summary.json`` (``medcli.summary/1``): every number of the markdown, unrounded;
* ``summary.md``: rendered from that JSON document alone (:func:`.markdown.render_markdown`);
* ``summary.csv``: one row per run × split × metric.

Missing runs (cells of ``experiment.json`` without outputs) and skipped cells are listed, never fatal.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

from .. import paths
from .._io import read_json, write_json, write_text
from ..errors import MedcliError
from .collect import (METRICS, VAL_FROM_METRICS, Run, collect_ensembles, collect_runs, experiment_cells, external_results,
                      gradcam_indexes, load_experiment, missing_runs, scalar_metrics)
from .facts import current_splits_fingerprint, data_facts, provenance
from .summary import (DEFAULT_REFERENCE, LOWER_IS_BETTER, check_primary, choose_reference, columns_for, compare_with_reference, comparability,
                      configuration_row, ensemble_row, sort_rows, verdict)

SUMMARY_FORMAT = "medcli.summary/1"
DEFAULT_PRIMARY = "balanced_accuracy"
CSV_COLUMNS = ("dataset", "backbone", "strategy", "seed", "fold", "split", "metric", "value")


def write_report(results: str | os.PathLike, *, out: str | os.PathLike | None = None, primary: str | None = None,
                 reference: str | None = None, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write the cross-validated comparison of every run below ``results``; return the markdown's path.

    Writes (atomically) ``summary.md`` (to ``out``, default ``<results>/summary.md``), the same as one
    self-contained web page beside it (``summary.html``, figures embedded: :mod:`medcli.report.html`), ``summary.json``
    (``medcli.summary/1``: every number of the markdown, unrounded) and ``summary.csv`` (one row per run × split ×
    metric) beside it, and the figures ``<results>/figures/<dataset>_{strategies,learning_curves,confusion_best}.png``
    (:func:`medcli.paths.summary_figure_file`). Run folders that cannot be used are listed in the report with
    the reason, never fatal.

    Args:
        results: the results folder (``<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/``).
        out: where the markdown goes; figure links in it are relative to its folder.
        primary: the metric that ranks the rows and is tested; None takes ``report.primary_metric`` from
            ``experiment.json``, else ``balanced_accuracy``.
        reference: the ``<backbone>__<strategy>`` every row is compared with; None takes ``report.reference``
            from ``experiment.json``, else ``customcnn__scratch``. A reference without runs falls back (with a
            note) to the first configuration trained from scratch.
        n_bootstrap: bootstrap resamples of the test intervals.
        seed: seed of the bootstrap.

    Raises :class:`MedcliError` when ``results`` is not a folder, holds no usable run folder, or an
    ``experiment.json`` cell is malformed.
    """
    from .html import render_html
    from .markdown import render_markdown

    out = Path(out) if out is not None else Path(paths.summary_file(results))
    if out.suffix.lower() == ".html":
        raise MedcliError(f"--out {out}: give the Markdown file (e.g. {out.with_suffix('.md')}); the HTML page is written beside it")
    summary, runs = build_summary(results, link_base=out.parent, primary=primary, reference=reference,
                                  n_bootstrap=n_bootstrap, seed=seed)
    write_json(paths.summary_file(out.parent, "json"), summary)
    write_csv(paths.summary_file(out.parent, "csv"), runs)
    text = render_markdown(summary)
    write_text(out, text)
    write_text(out.with_suffix(".html"), render_html(text, out.parent))
    return out


def build_summary(results: str | os.PathLike, *, link_base: str | os.PathLike | None = None, primary: str | None = None,
                  reference: str | None = None, n_bootstrap: int = 1000, seed: int = 0,
                  figures: bool = True) -> tuple[dict, list[Run]]:
    """The ``medcli.summary/1`` document (plain JSON values) and the runs it was built from.

    Figures are drawn into ``<results>/figures/`` unless ``figures`` is false; their links are relative to
    ``link_base`` (default: ``results``).
    """
    results = Path(results)
    if not results.is_dir():
        raise MedcliError(f"{results}: no such folder; pass the results folder of an experiment")
    runs, unusable = collect_runs(results)
    if not runs:
        detail = f"; {len(unusable)} run folder(s) unusable, e.g. {unusable[0]['run']}: {unusable[0]['reason']}" if unusable else ""
        raise MedcliError(f"{results}: no usable run folders (expected <dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/ "
                          f"with config.json and predictions/val.csv){detail}")
    experiment = load_experiment(results)
    settings = ((experiment or {}).get("config") or {}).get("report") or {}
    primary = check_primary(primary or settings.get("primary_metric") or DEFAULT_PRIMARY)
    explicit = reference or settings.get("reference")
    requested = explicit or DEFAULT_REFERENCE
    link_base = Path(link_base) if link_base is not None else results
    cells = experiment_cells(experiment)

    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_dataset[r.key.dataset].append(r)
    datasets, used = {}, []
    for dataset in sorted(by_dataset):
        kept, classes, rejected = _consistent_classes(results, dataset, by_dataset[dataset])
        unusable += rejected
        used += kept
        datasets[dataset] = summarize_dataset(results, dataset, kept, classes, primary=primary, reference=requested,
                                              n_bootstrap=n_bootstrap, seed=seed, experiment_cells=cells,
                                              link_base=link_base, figures=figures)
    generated = _now()
    return {
        "format": SUMMARY_FORMAT,
        "generated": generated.isoformat(timespec="seconds"),
        "primary": primary,
        "lower_is_better": primary in LOWER_IS_BETTER,
        "reference_requested": explicit,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "confidence": 0.95},
        "files": {"csv": Path(paths.summary_file(".", "csv")).name, "json": Path(paths.summary_file(".", "json")).name},
        "datasets": datasets,
        "missing": missing_runs(results, experiment, used, unusable),
        "skipped": [{"dataset": s.get("dataset"), "backbone": s.get("backbone"), "strategy": s.get("strategy"),
                     "reason": s.get("reason")} for s in (experiment or {}).get("skipped", [])],
        "experiment": experiment is not None,
        "provenance": provenance(used, experiment, generated),
    }, used


def _now() -> datetime:
    """Now (UTC), or ``$SOURCE_DATE_EPOCH`` for reproducible documents."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), tz=timezone.utc)
    return datetime.now(timezone.utc).replace(microsecond=0)


def _consistent_classes(results: Path, dataset: str, runs: list[Run]) -> tuple[list[Run], list[str], list[dict]]:
    """Runs whose classes are the dataset's (those of splits.json, else the most common); the others rejected."""
    classes = None
    if os.path.isfile(paths.splits_file(results, dataset)):
        try:
            classes = list(read_json(paths.splits_file(results, dataset)).get("classes") or []) or None
        except MedcliError:
            classes = None  # an unreadable splits.json is reported as missing in the data section
    if classes is None:
        classes = list(Counter(tuple(r.classes) for r in runs).most_common(1)[0][0])
    kept = [r for r in runs if r.classes == classes]
    rejected = [{"dataset": r.key.dataset, "backbone": r.key.backbone, "strategy": r.key.strategy, "seed": r.key.seed,
                 "fold": r.key.fold, "run": r.rel, "reason": f"classes {r.classes} differ from the dataset's {classes}"}
                for r in runs if r.classes != classes]
    return kept, classes, rejected


def summarize_dataset(results: Path, dataset: str, runs: list[Run], classes: list[str], *, primary: str, reference: str | None,
                      n_bootstrap: int, seed: int, experiment_cells: set | None, link_base: Path, figures: bool = True) -> dict:
    """Everything the report says about one dataset (JSON-ready)."""
    by_config: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_config[r.config].append(r)
    facts = data_facts(results, dataset, classes)
    n_folds = len((facts.get("handling") or {}).get("folds") or []) or len({r.key.fold for r in runs})
    rows = sort_rows([configuration_row(group, classes, primary, n_bootstrap=n_bootstrap, seed=seed, n_folds=n_folds)
                      for group in by_config.values()], primary)
    ref, note = choose_reference(rows, reference)
    if ref is not None:
        compare_with_reference(rows, by_config, ref, primary)
    by_ensemble = defaultdict(list)
    for output in collect_ensembles(results, dataset):
        by_ensemble[output.name].append(output)
    ensembles = sort_rows([ensemble_row(group, classes, primary, n_bootstrap=n_bootstrap, seed=seed)
                           for group in by_ensemble.values()], primary)
    summary = {
        "dataset": dataset, "classes": classes, "primary": primary, "metrics": columns_for(primary),
        "n_runs": len(runs), "n_folds": n_folds, "seeds": sorted({r.key.seed for r in runs}),
        "reference": ref, "reference_requested": reference, "reference_note": note,
        "rows": rows, "ensembles": ensembles, "verdict": _with_model_card(verdict(rows, primary), by_config, link_base),
        "checks": comparability(runs, rows, splits_fingerprint=current_splits_fingerprint(results, dataset),
                                experiment_cells=experiment_cells),
        "data": facts, "figures": [], "gradcam": _gradcam(runs, link_base), "external": _external(runs, primary),
        "sources": {"val_metrics_files": sum(1 for r in runs if r.val_source == VAL_FROM_METRICS),
                    "val_recomputed": [p for row in rows for p in row["val_recomputed"]],
                    "not_evaluated": [p for row in rows for p in row["not_evaluated"]]},
    }
    if figures:
        summary["figures"] = _figures(results, dataset, runs, summary, link_base)
    return summary


def _with_model_card(v: dict | None, by_config: dict[str, list[Run]], base: Path) -> dict | None:
    """The verdict plus ``model_card``: ``{run, file}`` of the best configuration's run with the lowest (seed, fold)
    that has a ``model_card.md`` (``medcli export`` writes it into the run folder), else None; and ``use``:
    ``{seed, folds, run}``, the folder of its first seed's fold models (``medcli predict``'s fold ensemble) and
    its first run (to export), as paths from where the report was made."""
    if v is None:
        return None
    best = sorted(by_config.get(v["config"], []), key=lambda r: (r.key.seed, r.key.fold))
    # how to apply it: the fold ensemble of its first seed (what the test column scores) and one run to export
    use = {"seed": best[0].key.seed, "folds": str(Path(best[0].path).parent), "run": str(best[0].path)} if best else None
    for r in best:
        card = paths.model_card_file(r.path)
        if os.path.isfile(card):
            return {**v, "use": use, "model_card": {"run": r.rel, "file": _link(card, base)}}
    return {**v, "use": use, "model_card": None}


def _link(path: str | os.PathLike, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _figures(results: Path, dataset: str, runs: list[Run], summary: dict, base: Path) -> list[dict]:
    from .figures import confusion_figure, learning_curve_figure, strategy_figure
    from .markdown import metric_label

    primary, label = summary["primary"], metric_label(summary["primary"])
    made = []
    path = strategy_figure(runs, primary, label, paths.summary_figure_file(results, dataset, "strategies"))
    if path:
        made.append({"kind": "strategies", "file": _link(path, base),
                     "caption": f"CV {label} of every run (one point per seed × fold), by strategy, one panel per backbone; "
                                "boxes show median and quartiles, n the number of runs, the dotted line the chance level where "
                                "it does not depend on class frequencies."})
    path = learning_curve_figure(runs, primary, label, paths.summary_figure_file(results, dataset, "learning_curves"))
    if path:
        made.append({"kind": "learning_curves", "file": _link(path, base),
                     "caption": "Validation metric (top) and loss (bottom) per epoch (history.csv), one column per backbone, one line "
                                "per strategy: mean ± sd over the runs still training at that epoch (early stopping ends runs)."})
    best = next((row for row in summary["rows"] if row["test"]), None)
    if best:
        n_seeds = len(best["test"]["seeds"])
        backbone, strategy = paths.parse_run_name(best["config"])
        title = (f"Best configuration: {backbone}, {strategy}\nfold ensemble on the test set"
                 + (f" (counts summed over {n_seeds} seeds)" if n_seeds > 1 else ""))
        path = confusion_figure(best["test"]["confusion"], summary["classes"], title, paths.summary_figure_file(results, dataset, "confusion_best"))
        made.append({"kind": "confusion_best", "file": _link(path, base), "config": best["config"],
                     "caption": f"Test-set confusion matrix of the best configuration, `{best['config']}` (fold ensemble"
                                + (f"; counts summed over its {n_seeds} seeds" if n_seeds > 1 else "")
                                + "); colours and fractions are row-normalised (recall per class on the diagonal)."})
    return made


def _gradcam(runs: list[Run], base: Path) -> list[dict]:
    """One entry per explained run × split: method, faithfulness means (from ``index.json``) and gallery links.

    ``n`` counts the scored maps and ``n_empty`` the empty (constant) maps that the means leave out; an
    ``index.json`` written before empty maps were detected has no ``n_empty`` (None here: not checked).
    """
    out = []
    for r in sorted(runs, key=lambda r: (r.config, r.key.seed, r.key.fold)):
        for split, folder, index in gradcam_indexes(r):
            faith = index.get("faithfulness") or {}
            galleries = [{"class": cls, "file": _link(Path(folder) / name, base)}
                         for cls, name in index["galleries"].items() if (Path(folder) / name).is_file()]
            out.append({"run": r.rel, "config": r.config, "seed": r.key.seed, "fold": r.key.fold, "split": split,
                        "method": index.get("method"), "target": index.get("target"),
                        "normalization": index.get("normalization"), "n": faith.get("n"), "n_empty": faith.get("n_empty"),
                        "score": faith.get("mean_score"), "drop_keep": faith.get("mean_drop_keep_top20"),
                        "drop_remove": faith.get("mean_drop_remove_top20"), "fraction": faith.get("fraction"),
                        "galleries": galleries})
    return out


def _external(runs: list[Run], primary: str) -> list[dict]:
    """One entry per run × external dataset (``medcli eval --data``): the primary metric with its 95 % interval, ``n``
    and ``overlap`` (the ``metrics.json`` block: external images duplicating the run's development pool or test set;
    None for results written before the check)."""
    out = []
    for r in sorted(runs, key=lambda r: (r.config, r.key.seed, r.key.fold)):
        for name, doc in external_results(r):
            value = scalar_metrics(doc.get("metrics") or {}).get(primary)
            ci = (doc.get("ci") or {}).get(primary) or {}
            out.append({"run": r.rel, "config": r.config, "seed": r.key.seed, "fold": r.key.fold, "name": name,
                        "data": (doc.get("external") or {}).get("data"), "n": doc.get("n"), "metric": primary,
                        "estimate": value, "low": ci.get("low"), "high": ci.get("high"), "overlap": doc.get("overlap")})
    return out


def tidy_rows(runs: list[Run]) -> list[tuple]:
    """One row per run × split × metric (the columns of :data:`CSV_COLUMNS`)."""
    rows = []
    for r in runs:
        for split, metrics in (("val", r.val_metrics), ("test", r.test_metrics)):
            for name in METRICS:
                if metrics is not None and name in metrics:
                    rows.append((r.key.dataset, r.key.backbone, r.key.strategy, r.key.seed, r.key.fold, split, name, metrics[name]))
    return rows


def write_csv(path: str | os.PathLike, runs: list[Run]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in tidy_rows(runs):
        writer.writerow([*row[:-1], "" if row[-1] is None else repr(float(row[-1]))])
    return write_text(path, buf.getvalue())
