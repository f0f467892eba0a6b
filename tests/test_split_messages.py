"""Split errors and warnings are true (issue 14, items 6 and 9): each names the step that failed, the class as a
plain string, counts over one pool, and fixes that work in the command the user ran (verified by applying them)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.splits import Advice, split_data
from tests.conftest import blob, save_image

_OPTION = re.compile(r"use (--[a-z-]+) ([0-9.]+)")


def _options(message: str) -> dict[str, str]:
    return dict(_OPTION.findall(message))


def test_too_few_groups_names_the_step_and_fixes_that_work(tmp_path):
    """3 images per class, 10 folds: the test holdout fails first, so "fewer --folds" would be no fix."""
    root = make_synthetic(tmp_path / "d", per_class=3, size=32)
    settings: dict = {"folds": 10}
    messages = []
    for _ in range(4):  # apply each hint's first option until the split succeeds
        try:
            doc = split_data(root, tmp_path / "s.json", **settings)
            break
        except MedcliError as err:
            messages.append(str(err))
            fixes = _options(str(err))
            assert fixes, err
            flag, value = next(iter(fixes.items()))
            settings[flag.lstrip("-").replace("-", "_")] = float(value) if "." in value else int(value)
    else:
        pytest.fail(f"the hints never led to a split: {messages}")
    assert "the test set" in messages[0] and "--test-fraction" in messages[0] and "--folds" not in messages[0]
    assert "only 3 independent image group(s) in the dataset" in messages[0]
    assert "10 folds" in messages[1] and "in the development pool" in messages[1]
    assert len(doc["folds"]) == settings["folds"] >= 2


def test_a_class_with_one_group_is_told_it_cannot_be_held_out(tmp_path):
    for k in range(6):
        save_image(tmp_path / "d" / "common" / f"{k}.png", blob(k))
    save_image(tmp_path / "d" / "rare" / "only.png", blob(99))
    with pytest.raises(MedcliError) as err:
        split_data(tmp_path / "d", tmp_path / "s.json", folds=5)
    text = str(err.value)
    assert "class 'rare' has only 1 independent image group(s)" in text
    assert "use --" not in text and "--folds" not in text  # no option fixes a class of one image
    assert "own test split" in text and "add images of class 'rare'" in text


def test_train_hint_says_to_run_medcli_split_with_the_option_first(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=3, size=32)
    out = tmp_path / "results" / "d" / "splits.json"
    with pytest.raises(MedcliError) as err:
        split_data(root, out, folds=0, advice=Advice(train=True, data=str(root), out=str(out)))
    text = str(err.value)
    assert "use --" not in text  # medcli train has none of these options
    command = re.search(r"`(medcli split [^`]+)`", text).group(1)
    assert command == f"medcli split {root} --folds 0 --test-fraction 0.34 --out {out}"
    assert not out.exists()


def test_train_logs_splits_written_only_once_they_are(tmp_path, caplog):
    from medcli.training import TrainConfig
    from medcli.training.config import resolve
    from medcli.training.loop import load_fold, make_accelerator

    root = make_synthetic(tmp_path / "d", per_class=3, size=32)
    cfg = resolve(TrainConfig(data=str(root), backbone="customcnn", strategy="scratch", results=str(tmp_path / "results"),
                              work=str(tmp_path / "work"), progress=False))
    accelerator, _ = make_accelerator(cfg)
    with caplog.at_level(logging.INFO, logger="medcli"), pytest.raises(MedcliError, match="run `medcli split"):
        load_fold(cfg, accelerator)
    assert not any("written" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not (tmp_path / "results" / "d" / "splits.json").exists()


# Patients holding several classes (issue 14, item 9): StratifiedGroupKFold cannot always give every fold
# every class. Counts per patient: {class: images}; t0 is the dataset's own test patient.
_PATIENTS = {
    "p0": {"a": 1, "b": 2, "c": 4}, "p1": {"a": 1}, "p2": {"a": 2, "c": 4}, "p3": {"a": 4, "b": 2},
    "p4": {"a": 3, "b": 2}, "p5": {"a": 3, "c": 1}, "t0": {"a": 1, "b": 1, "c": 1},
}


def _multi_class_patients(tmp_path: Path, **changes: dict) -> Path:
    rows, k = ["path,label,group,split"], 0
    for patient, counts in {**_PATIENTS, **changes}.items():
        for label, n in counts.items():
            for r in range(n):
                save_image(tmp_path / f"{patient}_{label}{r}.png", blob(k))
                k += 1
                rows.append(f"{patient}_{label}{r}.png,{label},{patient},{'test' if patient.startswith('t') else 'train'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def _lacking(doc: dict) -> list[tuple[int, str, str]]:
    classes = set(doc["classes"])
    return [(f["fold"], part, c) for f in doc["folds"] for part in ("train", "val") for c in sorted(classes - {doc["labels"][i] for i in f[part]})]


def test_a_validation_fold_without_a_class_is_refused_with_working_fixes(tmp_path):
    manifest = _multi_class_patients(tmp_path)
    with pytest.raises(MedcliError) as err:
        split_data(manifest, tmp_path / "s.json", folds=3, seed=0)
    text = str(err.value)
    assert re.search(r"fold \d's validation part has no image of class 'c'", text), text
    assert "np.str_" not in text and "--allow-missing-classes" in text
    assert not (tmp_path / "s.json").exists()
    fixes = _options(text)
    assert fixes.get("--folds") == "2"  # no seed of the next 20 works here, so none is offered
    doc = split_data(manifest, tmp_path / "s.json", folds=2, seed=0)
    assert _lacking(doc) == [] and "missing_classes" not in doc


def test_the_seed_offered_for_a_fold_without_a_class_works(tmp_path):
    manifest = _multi_class_patients(tmp_path, p2={"a": 2, "c": 2}, p5={"a": 3, "c": 2})
    with pytest.raises(MedcliError, match="has no image of class") as err:
        split_data(manifest, tmp_path / "s.json", folds=3, seed=2)
    seed = int(_options(str(err.value))["--seed"])
    assert seed > 2
    assert _lacking(split_data(manifest, tmp_path / "s.json", folds=3, seed=seed)) == []


def test_allow_missing_classes_records_and_warns(tmp_path, caplog):
    manifest = _multi_class_patients(tmp_path)
    with caplog.at_level(logging.WARNING, logger="medcli"):
        doc = split_data(manifest, tmp_path / "s.json", folds=3, seed=0, allow_missing_classes=True)
    lacking = _lacking(doc)
    assert lacking and all(part == "val" for _, part, _ in lacking)
    assert doc["missing_classes"] == [{"part": "val", "fold": f, "class": c} for f, _, c in lacking]
    assert doc["settings"]["allow_missing_classes"] is True
    assert any("has no image of class 'c'" in r.getMessage() for r in caplog.records)


def test_largest_group_warning_counts_development_images_only(tmp_path, caplog):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=6, size=48)
    src = sorted((root / "train" / "disk").glob("*.png"))[0]
    for k in range(4):
        shutil.copy(src, root / "train" / "disk" / f"copy{k}.png")
    for k in range(40):  # many more copies in the test split than the development pool holds
        shutil.copy(src, root / "test" / "disk" / f"copy{k}.png")
    with caplog.at_level(logging.WARNING, logger="medcli"):
        doc = split_data(root, tmp_path / "s.json", folds=3)
    n_dev = len(doc["labels"]) - len(doc["test"])
    warned = [r.getMessage() for r in caplog.records if "largest group" in r.getMessage()]
    assert warned and f"holds 5 of the {n_dev} development images" in warned[0], warned
    assert doc["leakage"]["largest_group"] == 45  # the file keeps the group's size over the whole dataset


def test_skip_bad_leaving_nothing_or_emptying_a_class_is_one_clear_error(tmp_path):
    for cls in ("a", "b"):
        for k in range(3):
            (tmp_path / "bad" / cls).mkdir(parents=True, exist_ok=True)
            (tmp_path / "bad" / cls / f"{k}.png").write_bytes(b"not an image")
    with pytest.raises(MedcliError) as err:
        split_data(tmp_path / "bad", tmp_path / "s.json", skip_bad=True)
    assert "no readable image left after --skip-bad: 6 unreadable file(s)" in str(err.value)
    assert "only one class" not in str(err.value)
    root = make_synthetic(tmp_path / "d", n_classes=3, per_class=10, size=32)
    for f in (root / "square").glob("*.png"):
        f.write_bytes(b"")
    with pytest.raises(MedcliError, match=r"class 'square' has no readable image left after --skip-bad \(all 10"):
        split_data(root, tmp_path / "s.json", skip_bad=True)
