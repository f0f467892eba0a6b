"""Render the ``medcli.summary/1`` document as GitHub-flavoured markdown.

The markdown is a pure function of the JSON document (``render_markdown(json.load(summary.json))`` reproduces
``summary.md``): pipe tables, ``##`` headings per dataset, relative image links, footnotes, no HTML.
"""

from __future__ import annotations

from datetime import datetime

from ..evaluation.metrics import list_metrics
from .summary import LOWER_IS_BETTER

LABELS = {m.name: m.label for m in list_metrics()}


def metric_label(name: str) -> str:
    return LABELS.get(name, name)


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _msd(s: dict) -> str:
    """``0.912 ± 0.021 (6)``; without an sd ``0.912 (1)``."""
    if not s or s.get("mean") is None:
        return f"n/a ({(s or {}).get('n', 0)})"
    sd = "" if s.get("sd") is None else f" ± {s['sd']:.3f}"
    return f"{s['mean']:.3f}{sd} ({s['n']})"


def _p(p) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _interval(low, high) -> str:
    return "n/a" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _counted(counts: dict, unit: str = "run") -> str:
    """``a (3 runs), b (1 run)``; a single value is given without its count."""
    if not counts:
        return "none"
    if len(counts) == 1:
        return f"{next(iter(counts))}"
    return ", ".join(f"{k} ({n} {unit}{'s' if n != 1 else ''})" for k, n in counts.items())


def _best(values: list, lower: bool):
    present = [round(v, 3) for v in values if v is not None]
    if not present:
        return None
    return min(present) if lower else max(present)


def _bold_if(text: str, value, best) -> str:
    return f"**{text}**" if best is not None and value is not None and round(value, 3) == best else text


def render_markdown(summary: dict) -> str:
    primary = summary["primary"]
    prov = summary["provenance"]
    direction = " (lower is better)" if summary.get("lower_is_better") else ""
    n_datasets = len(summary["datasets"])
    lines = ["# Experiment summary", "",
             f"Generated {_when(summary['generated'])} by medcli {prov['report_medcli_version']} from {prov['n_runs']} runs "
             f"on {n_datasets} dataset{'s' if n_datasets != 1 else ''}. Primary metric: **{metric_label(primary)}**{direction}. "
             "Numbers are rounded to 3 decimals; `summary.json` holds them unrounded and `summary.csv` every run's metrics.", ""]
    if prov.get("pretraining"):
        lines += [f"> **Transfer weights came from pretraining on a synthetic source task.** The pretrained weights used by "
                  f"the transfer strategies were produced by medcli's own pretraining on {_pretraining(prov['pretraining'])}; "
                  "see `pretraining` in `experiment.json`. They do not come from ImageNet. The tables show how the strategies compare "
                  "under that source task only.", ""]
    for name, dataset in summary["datasets"].items():
        lines += _dataset(name, dataset, summary)
    lines += _skipped(summary) + _missing(summary) + _provenance(prov, summary) + _footnotes(summary)
    return "\n".join(lines).rstrip("\n") + "\n"


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


def _pretraining(info) -> str:
    if not isinstance(info, dict):
        return "synthetic images"
    synth = info.get("synth") or {}
    parts = []
    if synth.get("classes"):
        parts.append(f"{synth['classes']} classes")
    if synth.get("signal"):
        parts.append(f"signal `{synth['signal']}`")
    if info.get("epochs"):
        parts.append(f"{info['epochs']} epochs")
    return "synthetic images" + (f" ({', '.join(parts)})" if parts else "")


def _dataset(name: str, d: dict, summary: dict) -> list[str]:
    primary, label = d["primary"], metric_label(d["primary"])
    lines = [f"## {name}", ""]
    lines += _verdict(d) + ["### Comparison", ""]
    configs = [r for r in d["rows"] if r["kind"] == "configuration"]
    header = ["Configuration", *(f"CV {metric_label(m)}" + (" (lower is better)" if m in LOWER_IS_BETTER else "") for m in d["metrics"]),
              f"Test {label} [95% CI][^test]", "Test sd over seeds (n)"]
    lines += _table(header, _rows(configs, d["metrics"], primary))
    k = d["n_folds"]
    lines += [f"CV: mean ± sd (n) of the validation-fold metrics over folds × seeds; n is the number of runs ({k} folds × "
              f"{len(d['seeds'])} seed{'s' if len(d['seeds']) != 1 else ''} when none is missing). Rows are sorted by CV {label}; "
              f"the best value of each column is in bold{_lowest(d['metrics'])}. Test: each configuration's fold ensemble (its "
              "fold models' test probabilities averaged, per seed) scored on the held-out test set, mean over seeds, with a "
              "95% bootstrap CI; the test set played no part in training, early stopping or this ranking.", ""]
    partial = [f"`{r['config']}` seed {s} ({_models(r, s)} of {k} models)" for r in configs if r["test"]
               for s in r["test"].get("incomplete_seeds", [])]
    if partial:
        lines += ["Fold ensembles with fewer models than folds (runs missing or not evaluated): " + "; ".join(partial) + ".", ""]
    lines += (_comparison(d) + _checks(d) + _ensembles(d) + _external(d) + _data(d["data"]) + _figures(d) + _gradcam(d)
              + _sources(name, d))
    return lines


def _models(row: dict, seed: int) -> int:
    return next((s["n_models"] for s in row["test"]["seeds"] if s["seed"] == seed), 0)


def _lowest(metrics: list[str]) -> str:
    lower = [metric_label(m) for m in metrics if m in LOWER_IS_BETTER]
    return f" (lowest for {', '.join(lower)})" if lower else ""


def _rows(rows: list[dict], metrics: list[str], primary: str) -> list[list[str]]:
    best = {m: _best([r["cv"][m]["mean"] for r in rows], m in LOWER_IS_BETTER) for m in metrics}
    best_test = _best([r["test"]["estimate"] for r in rows if r["test"]], primary in LOWER_IS_BETTER)
    out = []
    for r in rows:
        cells = [f"`{r['config']}`"] + [_bold_if(_msd(r["cv"][m]), r["cv"][m]["mean"], best[m]) for m in metrics]
        if r["test"]:
            t = r["test"]
            cells += [f"{_bold_if(_num(t['estimate']), t['estimate'], best_test)} {_interval(t['low'], t['high'])}",
                      f"{_num(t['per_seed']['sd'])} ({t['per_seed']['n']})"]
        else:
            cells += ["not evaluated", "n/a"]
        out.append(cells)
    return out


def _verdict(d: dict) -> list[str]:
    v = d.get("verdict")
    if not v:
        return ["No configuration has a CV value of the primary metric.", ""]
    label = metric_label(d["primary"])
    text = f"**Best by CV {label}: `{v['config']}`**, {_msd(v['cv'])}"
    if v.get("runner_up"):
        text += f", {_num(v['margin'])} {'below' if d['primary'] in LOWER_IS_BETTER else 'above'} the runner-up `{v['runner_up']}`"
    text += "."
    c = v.get("comparison")
    if v["config"] == d.get("reference"):
        text += " It is the reference configuration."
    elif c:
        text += f" Against the reference `{d['reference']}`: {_signed(c['mean_diff'])}"
        if c.get("p") is not None:
            text += f" (95% CI {_num(c['ci_low'])} to {_num(c['ci_high'])}; Holm-adjusted p = {_p(c['p_holm'])}, {c['n']} pairs)."
        else:
            text += f" ({c.get('note') or 'no test'})."
    if v.get("test"):
        t = v["test"]
        text += f" On the held-out test set its fold ensemble scores {_num(t['estimate'])} (95% CI {_num(t['low'])} to {_num(t['high'])})."
    use, card = v.get("use"), v.get("model_card")
    lines = [text, ""]
    if use:
        lines += [f"Apply it to new images (its seed-{use['seed']} fold ensemble, as the test column scores it): "
                  f"`medcli predict {use['folds']} NEW_IMAGES/ --out predictions.csv`.", ""]
    if card:
        lines += [f"Model card of its exported run `{card['run']}`: [model_card.md]({card['file']}).", ""]
    else:
        run = use["run"] if use else "RUN"
        lines += [f"An ONNX file, its preprocessing contract and a model card: `medcli export {run} --format onnx --out export/`.", ""]
    return lines


def _comparison(d: dict) -> list[str]:
    if not d.get("reference"):
        return []
    label = metric_label(d["primary"])
    lines = [f"### Compared with the reference `{d['reference']}`", ""]
    if d.get("reference_note"):
        lines += [f"Note: {d['reference_note']}.", ""]
    compared = [r for r in d["rows"] if r.get("comparison")]
    if not compared:
        return lines + ["The reference is the only configuration: nothing to compare.", ""]
    rows = []
    for r in compared:
        c = r["comparison"]
        rows.append([f"`{r['config']}`", _signed(c["mean_diff"]), _interval(c["ci_low"], c["ci_high"]), _num(c["t"], 2),
                     "n/a" if c["df"] is None else str(c["df"]), _p(c["p"]), _p(c["p_holm"]), str(c["n"]), c.get("note") or ""])
    lines += _table(["Configuration", f"Difference in CV {label}", "95% CI", "t", "df", "p", "p (Holm)", "Pairs", "Note"], rows)
    sizes = sorted({(r["comparison"]["n_train"], r["comparison"]["n_test"]) for r in compared if r["comparison"]["n_train"]})
    size_text = "; ".join(f"n_train = {a}, n_val = {b}" for a, b in sizes) or "unknown"
    better = "negative" if d["primary"] in LOWER_IS_BETTER else "positive"
    n_tests = sum(1 for r in compared if r["comparison"]["p"] is not None)
    lines += [f"Difference: configuration minus reference, averaged over runs matched on (seed, fold); {better} favours the "
              "configuration. t, p and the 95% CI are from the Nadeau–Bengio corrected resampled t-test (variance × "
              "(1/(k·r) + n_val/n_train), k·r − 1 degrees of freedom, two-sided), which allows for the overlap between training "
              f"folds; p (Holm) is Holm-adjusted over the {n_tests} test{'s' if n_tests != 1 else ''} of this dataset. "
              f"Fold sizes from config.json: {size_text}.", ""]
    return lines


def _checks(d: dict) -> list[str]:
    lines = ["### Is the comparison clean?", ""]
    labels = {True: "OK", False: "**Check**", None: "Note"}
    lines += [f"- {labels[c['ok']]}: {c['text']}." for c in d["checks"]]
    return lines + [""]


def _ensembles(d: dict) -> list[str]:
    rows = d.get("ensembles") or []
    if not rows:
        return []
    label = metric_label(d["primary"])
    lines = ["### Ensembles", ""]
    header = ["Ensemble", *(f"OOF {metric_label(m)}" + (" (lower is better)" if m in LOWER_IS_BETTER else "") for m in d["metrics"]),
              f"Test {label} [95% CI][^test]", "Test sd over seeds (n)"]
    table = []
    for r in rows:
        cells = [f"`{r['config']}`"] + [_msd(r["cv"][m]) for m in d["metrics"]]
        t = r["test"]
        if t:
            cells += [f"{_num(t['estimate'])} {_interval(t['low'], t['high'])}", f"{_num(t['per_seed']['sd'])} ({t['per_seed']['n']})"]
        else:
            cells += ["not evaluated", "n/a"]
        table.append(cells)
    lines += _table(header, table)
    lines += ["Fitted by `medcli ensemble` on out-of-fold validation predictions only; the OOF columns are cross-fitted scores "
              "over all development images, one per seed (n = seeds), so they are not comparable one-to-one with the per-fold "
              "CV columns above and the ensembles are not ranked with the configurations. Test: one ensemble per seed, mean "
              "over seeds, interval as for the configurations.", ""]
    for r in rows:
        lines.append(f"- `{r['config']}` (members: {', '.join(r.get('members') or []) or 'n/a'})")
        lines += [f"  - {s}" for s in r.get("statements") or []]
    return lines + [""]


def _overlap(o: dict | None) -> str:
    """The overlap cell of an external result (see :mod:`medcli.evaluation.overlap`)."""
    if o is None:
        return "not checked"
    dev, test = o.get("exact_dev", 0) + o.get("near_dev", 0), o.get("exact_test", 0) + o.get("near_test", 0)
    if not dev and not test:
        return f"none (of {o.get('n_external', 'n/a')} images)"
    parts = []
    if dev:
        parts.append(f"**{dev} of {o.get('n_external', 'n/a')} duplicate development images** ({o.get('exact_dev', 0)} exact, "
                     f"{o.get('near_dev', 0)} near)")
    if test:
        parts.append(f"{test} duplicate test images ({o.get('exact_test', 0)} exact, {o.get('near_test', 0)} near)")
    return "; ".join(parts)


def _external(d: dict) -> list[str]:
    entries = d.get("external") or []
    if not entries:
        return []
    label = metric_label(d["primary"])
    rows = [[f"`{e['config']}`", str(e["seed"]), str(e["fold"]), f"`{e['name']}`", "n/a" if e["n"] is None else str(e["n"]),
             f"{_num(e['estimate'])} {_interval(e['low'], e['high'])}", _overlap(e.get("overlap"))] for e in entries]
    lines = ["### External validation", ""]
    lines += _table(["Configuration", "Seed", "Fold", "External data", "Images", f"External {label} [95% CI]",
                     "Overlap with the run's images"], rows)
    thresholds = sorted({e["overlap"]["threshold_bits"] for e in entries if e.get("overlap") and "threshold_bits" in e["overlap"]})
    near = f"within {', '.join(map(str, thresholds))} of 256 bits" if thresholds else "within the splits' near-duplicate threshold"
    lines += ["Each run scored by `medcli eval --data` on another dataset (`external/<name>/metrics.json`), with a 95% "
              "bootstrap CI over its images. Overlap: external images that are exact (same decoded pixels) or near "
              f"(perceptual hash {near}) copies of the run's development images (train + val of every fold) or of its "
              "test images; not checked for results written before medcli checked it.", ""]
    dirty = [e for e in entries if (e.get("overlap") or {}).get("exact_dev", 0) + (e.get("overlap") or {}).get("near_dev", 0)]
    if dirty:
        lines += [f"- **Check**: `{e['config']}` seed {e['seed']} fold {e['fold']} on `{e['name']}`: "
                  f"{e['overlap']['exact_dev'] + e['overlap']['near_dev']} of {e['overlap']['n_external']} external images "
                  "duplicate development images of this run: these metrics are not external." for e in dirty] + [""]
    return lines


def _data(f: dict) -> list[str]:
    lines = ["### Data", ""]
    if not f.get("inspect_file") and not f.get("splits_file"):
        return lines + ["No `inspect.json` or `splits.json` for this dataset: class counts and leakage checks are not available.", ""]
    counts = f.get("counts") or {}
    if counts:
        columns = list(counts)
        rows = [[c, *(str(counts[col].get(c, 0)) for col in columns)] for c in f["classes"]]
        rows.append(["**total**", *(f"**{sum(counts[col].values())}**" for col in columns)])
        lines += _table(["Class", *columns], rows)
        lines += ["Images per class: the dataset's own splits as found by `medcli data inspect`, then the development pool "
                  "divided into cross-validation folds and the held-out test set, as made by `medcli split`.", ""]
    renamed = f.get("renamed") or {}
    names = "; ".join(f"`{raw}` → `{c}`" for raw, c in renamed.items()) if renamed else "used as found (none renamed)"
    lines.append(f"- Class names: {names}.")
    dup = f.get("duplicates")
    if dup is not None:
        lines.append(f"- Duplicates found: {dup.get('n_exact_groups', 0)} exact and {dup.get('n_near_groups', 0)} near-duplicate "
                     f"groups ({dup.get('n_images_in_groups', 0)} images), {dup.get('n_cross_split_groups', 0)} of them spanning "
                     f"the dataset's splits; {dup.get('n_label_conflicts', 0)} group(s) with conflicting labels. "
                     f"Unreadable files: {f.get('bad_files', 0)}.")
    h = f.get("handling")
    if h:
        if h["grouped_images"]:
            largest = f"; the largest has {h['largest_group']} images" if (h.get("largest_group") or 0) > 1 else ""
            grouped = (f"duplicate clusters and patient groups ({h['grouped_images']} images in {h['groups']} groups{largest}) "
                       "are kept within one cross-validation fold")
        else:
            grouped = "no duplicate clusters or patient groups to keep together; folds are stratified by class"
        lines.append(f"- Handling: {grouped}; validation images duplicating their training fold: {h['val_duplicating_train']}.")
        source = "the dataset's own test split" if h.get("test_source") == "dataset" else "a stratified group holdout"
        fate = "dropped from the test set" if h["test_duplicates_dropped"] else "kept in the test set (`--drop-test-duplicates` drops them)"
        lines.append(f"- Test set: {source} ({h['n_test']} images); test images duplicating development images: "
                     f"{h['test_duplicating_dev']}, {fate}. Label conflicts: {h.get('n_label_conflicts') or 0}.")
        excluded = h.get("excluded") or {}
        reasons = f" ({'; '.join(f'{k}: {n}' for k, n in excluded.items())})" if excluded else ""
        lines.append(f"- Excluded files: {sum(excluded.values())}{reasons}.")
        lines.append(f"- Folds: {len(h['folds'])}; train/val images per fold: " + ", ".join(f"{x['train']}/{x['val']}" for x in h["folds"]) + ".")
    return lines + [""]


def _figures(d: dict) -> list[str]:
    if not d.get("figures"):
        return []
    lines = ["### Figures", ""]
    titles = {"strategies": "Strategies per backbone", "learning_curves": "Learning curves",
              "confusion_best": "Confusion matrix of the best configuration"}
    for fig in d["figures"]:
        lines += [f"![{titles.get(fig['kind'], fig['kind'])}]({fig['file']})", "", f"*{fig['caption']}*", ""]
    return lines


def _gradcam(d: dict) -> list[str]:
    if not d.get("gradcam"):
        return []
    entries = d["gradcam"]
    fraction = next((g["fraction"] for g in entries if g.get("fraction")), 0.2)
    lines = ["### Grad-CAM", "",
             f"Where each model looks (`medcli gradcam`): per true class, correctly and wrongly classified images "
             f"with their CAM overlay. Faithfulness score = confidence drop when the top {fraction:.0%} CAM region is "
             f"removed minus the drop when only that region is kept (mean over the explained images; higher = the "
             f"highlighted region matters more to the model). CAM values are min-max normalised per image. Empty maps "
             "(constant before normalisation, e.g. all zero: nothing to point at) get no score and are left out of the "
             "mean; Images counts the scored maps.", "",
             "| Configuration | Seed | Fold | Split | Method | Images | Faithfulness score | Empty maps (left out) | Drop, region kept | Drop, region removed | Galleries (per true class) |",
             "|---|--:|--:|---|---|--:|--:|--:|--:|--:|---|"]
    for g in entries:
        links = ", ".join(f"[{_escape(x['class'])}]({x['file']})" for x in g["galleries"]) or "none"
        lines.append(f"| `{g['config']}` | {g['seed']} | {g['fold']} | {g['split']} | {g['method']} | {g['n'] if g['n'] is not None else 'n/a'} "
                     f"| {_signed(g['score'])} | {_empties(g.get('n_empty'))} | {_signed(g['drop_keep'])} | {_signed(g['drop_remove'])} | {links} |")
    return lines + [""]


def _empties(n_empty) -> str:
    """The empty-map count; an index.json from before the check has none ("not checked")."""
    return "not checked" if n_empty is None else str(n_empty)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def _sources(name: str, d: dict) -> list[str]:
    s = d["sources"]
    text = (f"Sources[^sources]: CV columns and paired tests from `metrics/val.json` of {s['val_metrics_files']} run(s) below "
            f"`{name}/runs/`")
    if s["val_recomputed"]:
        text += f", recomputed from `predictions/val.csv` for {len(s['val_recomputed'])} ({', '.join(f'`{p}`' for p in s['val_recomputed'])})"
    text += "; test columns from the evaluated runs' `predictions/test.csv`"
    files = [x for x in (d["data"].get("inspect_file"), d["data"].get("splits_file")) if x]
    if files:
        text += "; data from " + " and ".join(f"`{x}`" for x in files)
    return [text + ".", ""]


def _skipped(summary: dict) -> list[str]:
    lines = ["## Skipped configurations", ""]
    if not summary.get("experiment"):
        return lines + ["No `experiment.json`: the grid is unknown, so skipped and missing cells cannot be listed.", ""]
    if not summary["skipped"]:
        return lines + ["None: every configuration of the grid was run.", ""]
    rows = [[s["dataset"] or "", f"`{s['backbone']}__{s['strategy']}`", s["reason"] or ""] for s in summary["skipped"]]
    return lines + _table(["Dataset", "Configuration", "Reason"], rows) + [
        "Cells of the grid that were not trained because the combination is invalid (from `experiment.json`).", ""]


def _missing(summary: dict) -> list[str]:
    lines = ["## Missing runs", ""]
    if summary["missing"]:
        rows = [[m["dataset"], f"`{m['backbone']}__{m['strategy']}`", str(m["seed"]), str(m["fold"]), m["reason"]] for m in summary["missing"]]
        lines += _table(["Dataset", "Configuration", "Seed", "Fold", "Reason"], rows)
        lines += [f"{len(rows)} run(s) have no usable outputs (failed or not finished); the tables use the others.", ""]
    else:
        lines += ["None: every run of the experiment has its outputs." if summary.get("experiment") else "None found.", ""]
    pending = [p for d in summary["datasets"].values() for p in d["sources"]["not_evaluated"]]
    if pending:
        lines += ["### Not evaluated", ""] + _table(["Run folder"], [[f"`{p}`"] for p in pending])
        lines += ["These runs have no `metrics/test.json` or `predictions/test.csv` (`medcli eval` not run): they count in the "
                  "CV columns and paired tests but not in the test column.", ""]
    return lines


def _provenance(p: dict, summary: dict) -> list[str]:
    t = p["train_seconds"]
    lines = ["## Provenance", "",
             f"- Generated {_when(p['generated'])} by medcli {p['report_medcli_version']}"
             + (f"; `experiment.json` written by medcli {p['experiment_medcli_version']}, config hash `{p['config_hash']}`"
                if p.get("config_hash") else "; no `experiment.json`")
             + ".",
             f"- Runs: {p['n_runs']} (" + ", ".join(f"{k}: {n}" for k, n in p["runs_per_dataset"].items()) + ").",
             f"- medcli source revision(s) of the runs: {_counted({f'`{k}`': n for k, n in p['git_revisions'].items()})}.",
             f"- Training recipe (docs/recipes.md; options given explicitly override it, see each run's `config.json` "
             f"`resolved`): {_counted({f'`{k}`': n for k, n in (p.get('recipes') or {}).items()})}.",
             "- Packages: " + "; ".join(f"{name} {_counted(v)}" for name, v in p["packages"].items()) + ".",
             f"- Hardware: CPU {_counted(p['cpus'])}; GPU {_counted(p['gpus'])}; device {_counted(p['devices'])}; "
             f"precision {_counted(p['precision'])}; processes per run {_counted(p['processes'])}.",
             f"- Training time: {_duration(t['total'])} in total over {t['n_runs']} runs; per run {_duration(t['mean'])} on average, "
             f"{_duration(t['max'])} at most" + (f" (`{t['slowest_run']}`)" if t.get("slowest_run") else "") + "."]
    if p.get("backbones"):
        lines.append("- Backbones and their starting weights: " + "; ".join(
            f"`{name}` ({b['family'] or 'family not recorded'}{', tag ' + b['tag'] if b.get('tag') else ''}; weights "
            + ", ".join(f"{src} ({n})" for src, n in b["weights"].items()) + ")" for name, b in p["backbones"].items()) + ".")
    if p.get("pretraining"):
        lines.append(f"- Transfer weights: **pretrained on a synthetic source task**, {_pretraining(p['pretraining'])}; not ImageNet.")
    b = summary["bootstrap"]
    lines.append(f"- Test intervals: {b['n_resamples']} stratified bootstrap resamples, seed {b['seed']}.")
    return lines + [""]


def _footnotes(summary: dict) -> list[str]:
    b = summary["bootstrap"]
    return [
        f"[^test]: For each seed, the test-set probabilities of a configuration's fold models (one per cross-validation fold) "
        "are averaged image by image, rows matched by image id, and the metric of this fold ensemble is computed; the column "
        f"shows the mean over seeds. The 95% CI is a stratified percentile bootstrap over test images ({b['n_resamples']} "
        f"resamples, seed {b['seed']}) of that seed-averaged value: each resample draws one set of test images and scores "
        "every seed's fold ensemble on it, so the interval covers the test-set sampling error of exactly the number shown "
        "(with one seed it is the usual bootstrap interval of that seed's ensemble). The spread between seeds is given "
        "separately as their sd. An interval for the first seed alone would ignore the other seeds and need not contain "
        "the mean; one for a single ensemble of all folds × seeds would describe a larger model than the one reported.",
        "",
        "[^sources]: Paths are relative to the results folder; run folders are "
        "`<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/` with `config.json` (fold sizes `summary.n_train`, "
        "`summary.n_val`; versions; hardware), `history.csv` (learning curves), `metrics/<split>.json` and "
        "`predictions/<split>.csv`. Skipped and missing cells come from `experiment.json`. "
        f"`{summary['files']['csv']}` lists every run's metrics (one row per run × split × metric) and "
        f"`{summary['files']['json']}` every number of this page, unrounded.",
    ]
