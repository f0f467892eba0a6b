"""Splits are deterministic, stratified, leak-free (duplicates and patients never straddle folds), validated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from medcli.data import load_dataset
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.splits import load_splits, split_data
from tests.conftest import blob, save_image


def _fold_of(doc: dict) -> dict[str, int]:
    return {i: f["fold"] for f in doc["folds"] for i in f["val"]}


def test_same_seed_same_splits_other_seed_other_splits(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=20, size=32)
    a = split_data(root, tmp_path / "a.json", folds=4, seed=1)
    b = split_data(root, tmp_path / "b.json", folds=4, seed=1)
    c = split_data(root, tmp_path / "c.json", folds=4, seed=2)
    assert a["folds"] == b["folds"] and a["test"] == b["test"]
    assert a["folds"] != c["folds"]


def test_folds_partition_the_development_pool_and_are_stratified(tmp_path):
    root = make_synthetic(tmp_path / "d", n_classes=3, per_class=30, size=32)
    doc = split_data(root, tmp_path / "s.json", folds=5, seed=0, test_fraction=0.2)
    assert doc["test_source"] == "holdout"
    dev = set(doc["labels"]) - set(doc["test"])
    vals = [set(f["val"]) for f in doc["folds"]]
    assert set().union(*vals) == dev and sum(map(len, vals)) == len(dev)
    for f in doc["folds"]:
        assert set(f["train"]) | set(f["val"]) == dev
        counts = np.unique([doc["labels"][i] for i in f["val"]], return_counts=True)[1]
        assert counts.min() >= 4  # each class present in every validation fold
    assert 0.15 <= len(doc["test"]) / 90 <= 0.25


def test_planted_duplicates_land_in_one_fold(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=20, size=48)
    originals = sorted((root / "disk").glob("*.png"))[:4]
    for k, src in enumerate(originals):
        shutil.copy(src, root / "disk" / f"exact{k}.png")
        Image.open(src).resize((44, 44)).save(root / "disk" / f"near{k}.jpg", quality=92)
    doc = split_data(root, tmp_path / "s.json", folds=5, seed=0, test_fraction=0.2)
    where = {**_fold_of(doc), **{i: "test" for i in doc["test"]}}
    for k, src in enumerate(originals):
        trio = {f"disk/{src.name}", f"disk/exact{k}.png", f"disk/near{k}.jpg"}
        assert len({where[i] for i in trio}) == 1, trio
        assert len({doc["groups"][i] for i in trio}) == 1


def test_manifest_groups_never_split_across_folds(tmp_path):
    manifest = make_synthetic(tmp_path / "d", layout="csv", per_class=24, per_group=4, size=32, noise=0.3)
    # drop the split column: medcli makes its own holdout and folds
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(",".join(line.split(",")[:3]) for line in lines) + "\n")
    doc = split_data(manifest, tmp_path / "s.json", folds=3, seed=0)
    ds = load_dataset(manifest)
    where = {**_fold_of(doc), **{i: "test" for i in doc["test"]}}
    by_group: dict[str, set] = {}
    for s in ds.samples:
        by_group.setdefault(s.group, set()).add(where[s.id])
    assert all(len(v) == 1 for v in by_group.values())


def test_own_test_split_is_kept_and_test_duplicates_reported_or_dropped(tmp_path):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=15, size=48)
    leak = sorted((root / "train" / "disk").glob("*.png"))[0]
    shutil.copy(leak, root / "test" / "disk" / "leak.png")
    kept = split_data(root, tmp_path / "a.json", folds=3)
    assert kept["test_source"] == "dataset"
    assert "test/disk/leak.png" in kept["test"]
    assert "test/disk/leak.png" in kept["leakage"]["test_duplicating_dev"]
    dropped = split_data(root, tmp_path / "b.json", folds=3, drop_test_duplicates=True)
    assert "test/disk/leak.png" not in dropped["test"]
    assert {"id": "test/disk/leak.png", "reason": "test image duplicates a development image"} in dropped["excluded"]


def test_folds_zero_keeps_the_datasets_own_train_val(tmp_path):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=15, size=32)
    doc = split_data(root, tmp_path / "s.json", folds=0)
    ds = load_dataset(root)
    (fold,) = doc["folds"]
    assert set(fold["val"]) == {s.id for s in ds.samples if s.split == "val"}
    assert set(fold["train"]) == {s.id for s in ds.samples if s.split == "train"}
    assert fold["source"] == "dataset"


def test_single_class_and_too_many_folds_are_refused(tmp_path):
    for k in range(4):
        save_image(tmp_path / "one" / "only" / f"{k}.png", blob(k))
    with pytest.raises(MedcliError, match="only one class"):
        split_data(tmp_path / "one", tmp_path / "s.json")
    root = make_synthetic(tmp_path / "d", per_class=3, size=32)
    with pytest.raises(MedcliError, match="test set"):  # the holdout fails first: "fewer --folds" is no fix there
        split_data(root, tmp_path / "s.json", folds=10)
    with pytest.raises(MedcliError, match="cannot make 10 folds.*use --folds 2"):
        split_data(root, tmp_path / "s.json", folds=10, test_fraction=0.34)
    assert not (tmp_path / "s.json").exists()  # nothing half-written


def test_unreadable_files_stop_the_split_unless_skipped(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=10, size=32)
    (root / "disk" / "zero.png").write_bytes(b"")
    (root / "square" / "trunc.png").write_bytes((root / "square" / "img00010.png").read_bytes()[:60])
    with pytest.raises(MedcliError, match="2 unreadable image file") as err:
        split_data(root, tmp_path / "s.json", folds=2)
    assert "zero.png" in str(err.value) and "trunc.png" in str(err.value)
    doc = split_data(root, tmp_path / "s.json", folds=2, skip_bad=True)
    assert {e["id"] for e in doc["excluded"]} == {"disk/zero.png", "square/trunc.png"}
    assert "disk/zero.png" not in doc["labels"]


def test_load_validates_overlap_missing_files_and_fingerprint(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=10, size=32)
    path = tmp_path / "s.json"
    doc = split_data(root, path, folds=2)
    assert load_splits(path, load_dataset(root))["folds"] == doc["folds"]

    bad = json.loads(path.read_text())
    bad["folds"][0]["val"].append(bad["folds"][0]["train"][0])
    (tmp_path / "overlap.json").write_text(json.dumps(bad))
    with pytest.raises(MedcliError, match="in both train and val"):
        load_splits(tmp_path / "overlap.json")

    bad = json.loads(path.read_text())
    bad["test"].append(bad["folds"][0]["train"][0])
    (tmp_path / "leak.json").write_text(json.dumps(bad))
    with pytest.raises(MedcliError, match="train and test"):
        load_splits(tmp_path / "leak.json")

    save_image(root / "disk" / "new.png", blob(99))
    with pytest.raises(MedcliError, match="changed since these splits were made"):
        load_splits(path, load_dataset(root))
