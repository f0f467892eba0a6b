"""`medcli data inspect`: --strict fails CI on what inflates results, the contact sheet shows the groups, the
threshold table and the DICOM facts are reported (issue 14, items 8 and the --strict and DICOM parts)."""

from __future__ import annotations

import dataclasses
import json
import shutil

from PIL import Image
from typer.testing import CliRunner

from medcli.cli import app
from medcli.data import inspect_data, load_dataset, scan_dataset
from medcli.data.contact_sheet import PER_ROW, ROW, sheet_size, write_contact_sheet
from medcli.data.inspect import build_report, dicom_facts, duplicates_of, strict_problems
from medcli.data.scan import ScanRecord
from medcli.data.synth import make_synthetic

runner = CliRunner()


def _clean(tmp_path):
    return make_synthetic(tmp_path / "clean", layout="presplit", per_class=8, size=48)


def _dirty(tmp_path):
    """A presplit set with one unreadable file, one label conflict and one train image copied into test."""
    root = make_synthetic(tmp_path / "dirty", layout="presplit", per_class=8, size=48)
    train = sorted((root / "train" / "disk").glob("*.png"))
    shutil.copy(train[0], root / "test" / "disk" / "leak.png")
    shutil.copy(train[1], root / "train" / "square" / "mislabelled.png")
    (root / "val" / "disk" / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def test_strict_problems_lists_each_kind_once(tmp_path):
    assert strict_problems(inspect_data(_clean(tmp_path))) == []
    problems = strict_problems(inspect_data(_dirty(tmp_path)))
    assert len(problems) == 3
    assert problems[0].startswith("1 unreadable file(s), e.g. val/disk/broken.png")
    assert problems[1].startswith("1 duplicate group(s) with conflicting labels") and "disk, square" in problems[1]
    assert problems[2].startswith("1 duplicate group(s) across splits") and "(test, train)" in problems[2]


def test_strict_exits_1_without_it_inspect_stays_a_report(tmp_path):
    dirty = _dirty(tmp_path)
    res = runner.invoke(app, ["data", "inspect", str(dirty), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "inspect", str(dirty), "--strict", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--strict" in errors[0] and "unreadable" in errors[0] and "across splits" in errors[0]
    assert json.loads((tmp_path / "r.json").read_text())["bad_files"]  # the report is still written
    res = runner.invoke(app, ["data", "inspect", str(_clean(tmp_path)), "--strict"])
    assert res.exit_code == 0, res.output


def test_contact_sheet_is_a_png_with_one_row_per_shown_group(tmp_path):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=12, size=48)
    train = sorted((root / "train" / "disk").glob("*.png"))
    for k in range(PER_ROW + 2):  # a group larger than a row: ends with "+N more"
        shutil.copy(train[0], root / "train" / "disk" / f"many{k}.png")
    Image.open(train[1]).resize((40, 40)).save(root / "test" / "disk" / "near.jpg", quality=90)  # across splits
    shutil.copy(train[2], root / "train" / "square" / "conflict.png")  # label conflict
    sheet = tmp_path / "out" / "sheet.png"
    res = runner.invoke(app, ["data", "inspect", str(root), "--contact-sheet", str(sheet), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["contact_sheet"] == str(sheet)
    img = Image.open(sheet)
    assert img.format == "PNG"
    ds = load_dataset(root)
    records = scan_dataset(ds)
    shown = write_contact_sheet(ds, records, duplicates_of(ds, records), tmp_path / "again.png")
    assert img.size == sheet_size(len(shown)) and img.height == 6 + ROW * len(shown)
    assert [s.reasons for s in shown] == [("label conflict",), ("across splits",), ("largest",)]
    assert len(shown[2].group.ids) == PER_ROW + 3
    assert len(shown) == 3  # every group: the conflict, the near copy across splits, the large exact group
    # rows are drawn: the thumbnail area of each row is not blank, the gap below the last row is
    pixels = img.convert("L")
    for row in range(len(shown)):
        top = 6 + row * ROW + 16
        assert pixels.crop((6, top, 6 + 96, top + 96)).getextrema() != (255, 255)
    assert Image.open(tmp_path / "again.png").size == img.size


def test_contact_sheet_caps_groups_but_shows_every_label_conflict(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=16, size=48)
    disks = sorted((root / "disk").glob("*.png"))
    for k in range(6):
        shutil.copy(disks[k], root / "square" / f"conflict{k}.png")
    for k in range(6, 12):
        shutil.copy(disks[k], root / "disk" / f"copy{k}.png")
    ds = load_dataset(root)
    records = scan_dataset(ds)
    shown = write_contact_sheet(ds, records, duplicates_of(ds, records), tmp_path / "s.png", max_groups=2)
    assert [s.reasons for s in shown] == [("label conflict",)] * 6 + [("largest",)] * 2
    assert Image.open(tmp_path / "s.png").size == sheet_size(8)
    clean = load_dataset(_clean(tmp_path))
    clean_records = scan_dataset(clean)
    empty = write_contact_sheet(clean, clean_records, duplicates_of(clean, clean_records), tmp_path / "e.png")
    assert empty == [] and Image.open(tmp_path / "e.png").size == sheet_size(0)


def test_report_has_the_threshold_table_and_distinct_image_counts(tmp_path):
    report = inspect_data(_dirty(tmp_path))
    d = report["duplicates"]
    assert [r["threshold"] for r in d["thresholds"]] == [16, 24, 32, 40]
    used = next(r for r in d["thresholds"] if r["threshold"] == d["near_threshold"])
    assert used["n_near_groups"] == d["n_near_groups"] and used["n_label_conflicts"] == d["n_label_conflicts"]
    assert used["n_images_in_groups"] == d["n_images_in_groups"] == len({i for g in d["groups"] for i in g["ids"]})
    assert used["n_test_duplicating_dev"] == 1  # test/disk/leak.png
    assert d["linkage"] == "complete" and report["dicom"] is None


def _DicomRecord(id: str, modality=None, photometric=None, bits_stored=None, transfer_syntax=None, window=None, frames=None):
    """A readable scan record with the given DICOM facts (all None: not a DICOM file)."""
    return ScanRecord(id, True, modality=modality, photometric=photometric, bits_stored=bits_stored,
                      transfer_syntax=transfer_syntax, window=window, frames=frames)


def test_dicom_facts_count_each_value_only_when_there_are_dicom_files(tmp_path):
    assert dicom_facts([_DicomRecord("a.png"), _DicomRecord("b.png")]) is None
    facts = dicom_facts([
        _DicomRecord("a.png"),
        _DicomRecord("ct1.dcm", "CT", "MONOCHROME2", 12, "1.2.840.10008.1.2.1", "40,400", 1),
        _DicomRecord("ct2.dcm", "CT", "MONOCHROME2", 16, "1.2.840.10008.1.2.1", None, 1),
        _DicomRecord("mr.dcm", "MR", "MONOCHROME1", 12, "1.2.840.10008.1.2.4.70", "600,1200", 1),
    ])
    assert facts == {
        "n_images": 3,
        "modality": {"CT": 2, "MR": 1},
        "photometric": {"MONOCHROME2": 2, "MONOCHROME1": 1},
        "bits_stored": {"12": 2, "16": 1},
        "transfer_syntax": {"1.2.840.10008.1.2.1": 2, "1.2.840.10008.1.2.4.70": 1},
        "window": {"40,400": 1, "600,1200": 1, "none": 1},
        "frames": {"1": 3},
    }
    # in the report and the console, with records that carry the fields
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    ds = load_dataset(root)
    records = scan_dataset(ds)
    first = ds.samples[0].id
    records = {k: (_with_dicom(r) if k == first else r) for k, r in records.items()}
    report = build_report(ds, records, duplicates_of(ds, records))
    assert report["dicom"]["modality"] == {"CT": 1}
    from io import StringIO

    from rich.console import Console

    from medcli.data.inspect import render_report

    out = StringIO()
    render_report(report, Console(file=out, width=200))
    assert "DICOM (1 image(s))" in out.getvalue() and "MONOCHROME2 (1)" in out.getvalue()


def _with_dicom(record):
    """The scan record of a PNG, given the DICOM facts a CT file would have (ScanRecord carries the fields)."""
    return dataclasses.replace(record, modality="CT", photometric="MONOCHROME2", bits_stored=12,
                               transfer_syntax="1.2.840.10008.1.2.1", window="40,400", frames=1)


def test_a_large_cross_split_group_shows_both_sides_on_the_contact_sheet():
    from medcli.data.contact_sheet import PER_ROW, _representative

    cells = [(f"test/{k}.png", "a") for k in range(PER_ROW + 3)] + [("train/x.png", "a"), ("train/y.png", "b")]
    split_of = {sid: sid.split("/")[0] for sid, _ in cells}
    shown = _representative(cells, split_of)
    assert len(shown) == PER_ROW - 1  # the last cell says "+N more"
    assert ("train/x.png", "a") in shown and ("train/y.png", "b") in shown and shown[0] == ("test/0.png", "a")
    assert _representative(cells[:3], split_of) == cells[:3]
