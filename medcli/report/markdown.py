"""Render the summary as GitHub-friendly markdown: pipe tables, relative image links, no HTML."""

from __future__ import annotations

import os
from pathlib import Path

from .build import CV_METRICS, LABELS, LOWER_IS_BETTER


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _msd(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    sd = "" if s["sd"] is None else f" ± {s['sd']:.3f}"
    return f"{s['mean']:.3f}{sd} ({s['n']})"


def _p(p) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def render_markdown(report: dict, base: Path, results: Path) -> str:
    primary = report["primary"]
    lines = ["# medcli summary", ""]
    lines.append(f"Generated {report['generated']} by medcli {report['provenance']['medcli_version']} from "
                 f"{report['provenance']['n_runs']} runs under `{results}`. Primary metric: **{LABELS.get(primary, primary)}**.")
    if report["provenance"].get("pretraining"):
        lines += ["", "> **Demo pretraining.** Transfer strategies here start from weights pretrained by medcli on a separate "
                  "*synthetic* source task (no ImageNet weights offline), not from ImageNet."]
    lines.append("")
    for dataset, s in report["datasets"].items():
        lines += _dataset(dataset, s, primary)
    if report["skipped"]:
        lines += ["## Skipped configurations", "", "| dataset | configuration | reason |", "|---|---|---|"]
        lines += [f"| {k['dataset']} | {k['backbone']}__{k['strategy']} | {k['reason']} |" for k in report["skipped"]]
        lines.append("")
    lines += ["## Missing runs", ""]
    if report["missing"]:
        lines.append(f"{len(report['missing'])} run(s) of the experiment have no model (failed or not finished); the table uses the rest:")
        lines += [""] + [f"- `{m}`" for m in report["missing"]]
    else:
        lines.append("None: every run of the experiment finished.")
    lines += [""] + _provenance(report["provenance"])
    return "\n".join(lines) + "\n"


def _dataset(dataset: str, s: dict, primary: str) -> list[str]:
    out = [f"## {dataset}", ""]
    metrics = list(dict.fromkeys((primary, *CV_METRICS)))
    best = {}
    for m in metrics:
        values = [r["cv"][m]["mean"] for r in s["rows"] if r["cv"][m]["mean"] is not None]
        if values:
            best[m] = (min if m in LOWER_IS_BETTER else max)(values)
    test_values = [r["test"]["estimate"] for r in s["rows"] if r["test"] and r["test"]["estimate"] is not None]
    best_test = max(test_values) if test_values else None
    header = ["configuration", *(f"CV {LABELS.get(m, m)}" for m in metrics), f"test {LABELS.get(primary, primary)} (fold ensemble)", "95% CI", "per-seed ensembles"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in s["rows"]:
        cells = [f"`{r['config']}`"]
        for m in metrics:
            text = _msd(r["cv"][m])
            cells.append(f"**{text}**" if best.get(m) is not None and r["cv"][m]["mean"] == best[m] else text)
        if r["test"]:
            t = r["test"]
            text = _fmt(t["estimate"])
            cells.append(f"**{text}**" if t["estimate"] == best_test else text)
            cells.append(f"[{_fmt(t['low'])}, {_fmt(t['high'])}]")
            cells.append(_msd(t["per_seed"]))
        else:
            cells += ["not evaluated", "", ""]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "CV columns: mean ± sd (n) over folds × seeds of the validation-fold (out-of-fold) metrics; best per column in bold "
            "(lowest for ECE). Test: all fold models (folds × seeds) of a configuration averaged on the held-out test set, with a "
            "stratified bootstrap 95% CI (1,000 resamples); the last column gives mean ± sd (n) of the per-seed fold ensembles. "
            "Nothing about the test set was used for training, early stopping, calibration or model choice.", ""]
    if s.get("reference"):
        out += [f"### Compared with `{s['reference']}`", ""]
        if s.get("reference_note"):
            out += [f"Note: {s['reference_note']}.", ""]
        out += [f"| configuration | mean difference in CV {LABELS.get(primary, primary)} | 95% CI | p (Holm) | n pairs | note |", "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            c = r.get("comparison")
            if not c:
                continue
            out.append(f"| `{r['config']}` | {_fmt(c.get('mean_diff'))} | [{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}] | "
                       f"{_p(c.get('p_holm'))} | {c.get('n', 0)} | {c.get('note') or ''} |")
        out += ["", "Paired over matched (seed, fold) validation scores with the Nadeau–Bengio corrected resampled t-test (variance × "
                "(1/(k·r) + n_val/n_train)), two-sided; p-values Holm-adjusted across the configurations above.", ""]
    ensembles = [r for r in s["rows"] if r.get("ensemble")]
    if ensembles:
        out += ["### Ensembles", "", "Fitted on out-of-fold validation predictions only (weights, stacker and selection never see "
                "the test set); their CV columns are cross-fitted out-of-fold scores, over seeds. Out-of-fold check against the "
                "best member:", ""]
        for r in ensembles:
            out += [f"- `{r['config']}` (members: {', '.join(r.get('members', []))})"] + [f"  - {line}" for line in r.get("statements", [])]
        out.append("")
    out += _data(s.get("data") or {}, s["classes"])
    figs = s.get("figures") or {}
    if figs:
        out += ["### Figures", ""]
        titles = {"strategies": "Strategies per backbone (validation folds)", "learning_curves": "Learning curves", "confusion_best": "Best configuration: test confusion matrix"}
        for key, rel in figs.items():
            out += [f"![{titles.get(key, key)}]({rel})", ""]
    if s.get("gradcam"):
        out += ["### Grad-CAM galleries", ""] + [f"- [{g}]({g})" for g in s["gradcam"]] + [""]
    if s.get("not_evaluated"):
        out += [f"{len(s['not_evaluated'])} run(s) have no test predictions yet (`medcli eval` not run); they count in the CV columns only.", ""]
    out += ["Sources: every number comes from `<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/` "
            "(`metrics/val.json`, `predictions/test.csv`, `config.json`); the tidy table is `summary.csv`.", ""]
    return out


def _data(d: dict, classes: list[str]) -> list[str]:
    if not d:
        return []
    out = ["### Data", ""]
    counts = d.get("counts") or {}
    if counts:
        splits = sorted(counts, key=lambda k: ["train", "val", "test", "all"].index(k) if k in ("train", "val", "test", "all") else 9)
        out += ["| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        for c in classes:
            out.append(f"| {c} | " + " | ".join(str(counts[sp].get(c, 0)) for sp in splits) + " |")
        out.append("")
    if d.get("renamed"):
        out.append("Class names reconciled: " + "; ".join(f"`{raw}` → `{can}`" for raw, can in d["renamed"].items()) + ".")
        out.append("")
    dup, leak = d.get("duplicates") or {}, d.get("leakage") or {}
    if dup:
        out.append(f"Duplicates found: {dup.get('n_exact_groups', 0)} exact and {dup.get('n_near_groups', 0)} near-duplicate groups "
                   f"({dup.get('n_images_in_groups', 0)} images; {dup.get('n_cross_split_groups', 0)} groups span the dataset's splits); "
                   f"{dup.get('n_label_conflicts', 0)} groups carry conflicting labels.")
    if leak:
        handled = "dropped" if leak.get("test_duplicates_dropped") else "kept and reported"
        out.append(f"How they were handled: duplicate groups and patient groups ({leak.get('grouped_images', 0)} images) are kept within one "
                   f"cross-validation fold; {leak.get('test_duplicating_dev', 0)} test image(s) duplicate development images ({handled}); "
                   f"{d.get('excluded', 0)} file(s) excluded. Test set: {d.get('test_source', '?')} ({d.get('n_test', 0)} images); "
                   f"folds: " + ", ".join(f"{f['train']}/{f['val']}" for f in d.get("folds", [])) + " (train/val).")
    out.append("")
    return out


def _provenance(p: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in (p.get("versions") or {}).items())
    hours = p["train_seconds_total"] / 3600
    return ["## Provenance", "",
            f"- medcli {p['medcli_version']}, git {', '.join(p['git_revisions'])}",
            f"- packages: {versions}",
            f"- experiment config hash: {p.get('config_hash') or 'n/a'}",
            f"- hardware: CPU {', '.join(p['cpus'])}; GPU {', '.join(p['gpus']) or 'none'}",
            f"- training time: {p['train_seconds_total']:.0f} s in total ({hours:.2f} h), {p['train_seconds_mean']:.1f} s per run on average, {p['train_seconds_max']:.1f} s at most ({p['n_runs']} runs)",
            f"- generated: {p['date']}"]
