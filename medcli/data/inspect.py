"""``medcli data inspect``: what is in a dataset, including what silently inflates published results.

The report counts classes per split, image sizes, modes and formats, lists unreadable files and files whose
extension lies, and finds exact and near-duplicates within and across splits, and duplicate groups whose labels
disagree; it shows what other near-duplicate thresholds would give, and the DICOM facts of the files (modality,
photometric interpretation, bits stored, transfer syntax, window, frames). The JSON form is documented in
docs/architecture.md (``medcli.inspect/1``). :func:`strict_problems` lists what ``--strict`` fails on.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .. import __version__
from .duplicates import DEFAULT_NEAR_THRESHOLD, DuplicateReport, find_duplicates, threshold_sweep
from .layouts import Dataset
from .scan import ScanRecord

INSPECT_FORMAT = "medcli.inspect/1"
SWEEP_THRESHOLDS = (16, 24, 32, 40)  # bits of 256: the near-duplicate thresholds the report compares
DICOM_FIELDS = ("modality", "photometric", "bits_stored", "transfer_syntax", "window", "frames")


def duplicates_of(dataset: Dataset, records: dict[str, ScanRecord], threshold: int = DEFAULT_NEAR_THRESHOLD) -> DuplicateReport:
    """Duplicate search over the readable images of ``dataset``."""
    ok = [s for s in dataset.samples if records[s.id].ok]
    return find_duplicates(
        [s.id for s in ok],
        [s.label for s in ok],
        [records[s.id].pixel_hash for s in ok],
        [records[s.id].phash for s in ok],
        [records[s.id].phash256 for s in ok],
        threshold,
    )


def build_report(dataset: Dataset, records: dict[str, ScanRecord], dups: DuplicateReport) -> dict:
    """The ``medcli.inspect/1`` report (a JSON-ready dict; see docs/architecture.md) of ``dataset``, its scan
    ``records`` and its duplicate groups ``dups``. ``contact_sheet`` is null here; :func:`medcli.data.inspect_data`
    sets it to the sheet's path when it writes one. Nothing is written."""
    split_of = {s.id: s.split for s in dataset.samples}
    counts: dict[str, dict[str, int]] = {}
    for s in dataset.samples:
        row = counts.setdefault(s.split or "all", {c: 0 for c in dataset.classes})
        row[s.label] += 1
    ok = [r for r in records.values() if r.ok]
    widths = np.array([r.width for r in ok]) if ok else np.zeros(1)
    heights = np.array([r.height for r in ok]) if ok else np.zeros(1)
    groups = [g.to_json(split_of) for g in dups.exact + dups.near]
    cross = [g for g in groups if len(g["splits"]) > 1]
    conflicts = [g for g in groups if len(g["labels"]) > 1]
    by_id = dataset.by_id()
    readable = [s for s in dataset.samples if records[s.id].ok]
    sweep = threshold_sweep(
        [s.id for s in readable], [s.label for s in readable], [records[s.id].pixel_hash for s in readable],
        [records[s.id].phash for s in readable], [records[s.id].phash256 for s in readable],
        [s.split for s in readable], [*SWEEP_THRESHOLDS, dups.threshold],
    )
    return {
        "format": INSPECT_FORMAT,
        "medcli_version": __version__,
        "dataset": {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "fingerprint": dataset.fingerprint(),
            "n_images": len(dataset.samples),
            "n_readable": len(ok),
        },
        "classes": dataset.classes,
        "class_mapping": dict(sorted(dataset.class_mapping.items())),
        "counts": counts,
        "image_sizes": {
            "width": _summary(widths),
            "height": _summary(heights),
            "most_common": [[w, h, n] for (w, h), n in Counter((r.width, r.height) for r in ok).most_common(5)],
        },
        "modes": dict(Counter(r.mode for r in ok).most_common()),
        "formats": dict(Counter(r.format for r in ok).most_common()),
        "extension_mismatch": [{"id": r.id, "format": r.format} for r in ok if r.ext_lies],
        "bad_files": [{"id": r.id, "path": by_id[r.id].path, "error": r.error} for r in records.values() if not r.ok],
        "dicom": dicom_facts(ok),
        "duplicates": {
            "near_threshold": dups.threshold,
            "linkage": "complete",
            "n_exact_groups": len(dups.exact),
            "n_near_groups": len(dups.near),
            "n_images_in_groups": len({i for g in groups for i in g["ids"]}),
            "n_cross_split_groups": len(cross),
            "n_label_conflicts": len(conflicts),
            "pairs_between_groups": dups.pairs_between_groups,
            "thresholds": sweep,
            "groups": groups,
        },
        "contact_sheet": None,
        "notes": dataset.notes,
    }


def dicom_facts(records: list[ScanRecord]) -> dict | None:
    """Per DICOM field (:data:`DICOM_FIELDS`), ``{value: number of images}`` over the records that have any of
    them (``n_images``); ``None`` when none has (no DICOM file). A missing value counts as ``"none"``; the window is
    the scan record's text (``"c,w"``, ``"file VOI LUT"``, ``"full range"``)."""
    # ``frames`` is recorded for every format; the DICOM-only fields say whether a record is a DICOM file
    dicom = [r for r in records if any(getattr(r, name) is not None for name in DICOM_FIELDS if name != "frames")]
    if not dicom:
        return None
    out: dict = {"n_images": len(dicom)}
    for name in DICOM_FIELDS:
        values = Counter("none" if getattr(r, name) is None else str(getattr(r, name)) for r in dicom)
        out[name] = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def strict_problems(report: dict) -> list[str]:
    """What ``medcli data inspect --strict`` fails on, one line each (empty: nothing): unreadable files, duplicate
    groups whose labels disagree, and duplicate groups that span splits (train/val/test leakage). Works on a
    report dict or its JSON read back."""
    problems = []
    bad = report["bad_files"]
    if bad:
        problems.append(f"{len(bad)} unreadable file(s), e.g. {bad[0]['id']} ({bad[0]['error']})")
    groups = report["duplicates"]["groups"]
    conflicts = [g for g in groups if len(g["labels"]) > 1]
    if conflicts:
        g = conflicts[0]
        problems.append(f"{len(conflicts)} duplicate group(s) with conflicting labels, e.g. {g['ids'][0]} ({', '.join(g['labels'])})")
    cross = [g for g in groups if len(g["splits"]) > 1]
    if cross:
        g = cross[0]
        problems.append(f"{len(cross)} duplicate group(s) across splits, e.g. {g['ids'][0]} ({', '.join(g['splits'])})")
    return problems


def _summary(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def render_report(report: dict, console) -> None:
    """Print the report as rich tables."""
    from rich.table import Table

    ds = report["dataset"]
    console.print(f"[bold]{ds['root']}[/]  layout={ds['layout']}  images={ds['n_images']}  readable={ds['n_readable']}")
    renamed = {raw: can for raw, can in report["class_mapping"].items() if raw != can}
    if renamed:
        mapping = Table(title="class names reconciled", title_justify="left")
        mapping.add_column("found")
        mapping.add_column("class")
        for raw, can in renamed.items():
            mapping.add_row(raw, can)
        console.print(mapping)

    table = Table(title="images per class and split", title_justify="left")
    table.add_column("class")
    splits = list(report["counts"])
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for cls in report["classes"]:
        row = [report["counts"][s].get(cls, 0) for s in splits]
        table.add_row(cls, *map(str, row), str(sum(row)))
    totals = [sum(report["counts"][s].values()) for s in splits]
    table.add_row("[bold]total[/]", *map(str, totals), str(sum(totals)))
    console.print(table)

    sizes = report["image_sizes"]
    console.print(
        f"sizes: width {sizes['width']['min']}-{sizes['width']['max']} (median {sizes['width']['median']:g}), "
        f"height {sizes['height']['min']}-{sizes['height']['max']} (median {sizes['height']['median']:g})"
    )
    console.print("modes: " + ", ".join(f"{m} {n}" for m, n in report["modes"].items()))
    console.print("formats: " + ", ".join(f"{f} {n}" for f, n in report["formats"].items()))
    if report["extension_mismatch"]:
        console.print(f"[yellow]{len(report['extension_mismatch'])} file(s) whose extension lies about the format[/], e.g. {report['extension_mismatch'][0]['id']} is {report['extension_mismatch'][0]['format']}")
    if report["bad_files"]:
        bad = Table(title=f"[red]{len(report['bad_files'])} unreadable file(s)[/]", title_justify="left")
        bad.add_column("file")
        bad.add_column("problem")
        for b in report["bad_files"]:
            bad.add_row(b["id"], b["error"])
        console.print(bad)

    d = report["duplicates"]
    console.print(
        f"duplicates: {d['n_exact_groups']} exact group(s), {d['n_near_groups']} near group(s) (pHash distance <= {d['near_threshold']}/256 bits), "
        f"{d['n_images_in_groups']} images involved; [bold]{d['n_cross_split_groups']} of these groups span splits[/], "
        f"[bold]{d['n_label_conflicts']} with conflicting labels[/]"
    )
    if d.get("thresholds"):
        sweep = Table(title="what each near-duplicate threshold gives (complete linkage; same candidate pairs). Clusters = exact "
                            "and near groups merged where they share an image: the unit kept within one fold", title_justify="left")
        for col in ("bits of 256", "near groups", "images in groups", "clusters across splits", "clusters with label conflicts",
                    "test images duplicating train/val"):
            sweep.add_column(col, justify="right")
        for row in d["thresholds"]:
            leak = "-" if row["n_test_duplicating_dev"] is None else str(row["n_test_duplicating_dev"])
            mark = " (used)" if row["threshold"] == d["near_threshold"] else ""
            sweep.add_row(f"{row['threshold']}{mark}", str(row["n_near_groups"]), str(row["n_images_in_groups"]),
                          str(row["n_cross_split_groups"]), str(row["n_label_conflicts"]), leak)
        console.print(sweep)
    shown = sorted(d["groups"], key=lambda g: (-len(g["labels"]), -len(g["splits"]), -g["size"]))[:10]
    if shown:
        dup = Table(title="largest/most worrying duplicate groups (all in the JSON report)", title_justify="left")
        for col in ("kind", "size", "splits", "labels", "files"):
            dup.add_column(col)
        for g in shown:
            files = ", ".join(g["ids"][:3]) + (f" (+{g['size'] - 3})" if g["size"] > 3 else "")
            style = "red" if len(g["labels"]) > 1 else None
            dup.add_row(g["kind"], str(g["size"]), ",".join(g["splits"]), ",".join(g["labels"]), files, style=style)
        console.print(dup)
    if report.get("contact_sheet"):
        console.print(f"contact sheet of the duplicate groups: {report['contact_sheet']}")
    dicom = report.get("dicom")
    if dicom:
        facts = Table(title=f"DICOM ({dicom['n_images']} image(s))", title_justify="left")
        facts.add_column("field")
        facts.add_column("values (images)")
        for name in DICOM_FIELDS:
            facts.add_row(name, ", ".join(f"{v} ({n})" for v, n in dicom[name].items()))
        console.print(facts)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
