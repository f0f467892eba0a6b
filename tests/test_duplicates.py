"""Exact and near-duplicates are found (sub-quadratically) and grouped; label conflicts are surfaced."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from medcli.data import inspect_data
from medcli.data.duplicates import find_duplicates, near_pairs
from medcli.data.synth import make_synthetic
from tests.conftest import blob, save_image


@pytest.mark.parametrize("threshold", [0, 2, 4, 8])
def test_near_pairs_matches_brute_force(threshold):
    rng = np.random.default_rng(threshold)
    base = rng.integers(0, 2**63, 60, dtype=np.uint64)
    # plant hashes at controlled distances from the first few
    flips = [base[i % 5] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, d, replace=False))) for i, d in enumerate(range(12))]
    hashes = np.concatenate([base, np.array(flips, dtype=np.uint64)])
    brute = {(i, j) for i, j in itertools.combinations(range(len(hashes)), 2) if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= threshold}
    assert set(map(tuple, near_pairs(hashes, threshold).tolist())) == brute


def test_exact_and_near_groups_and_clusters():
    ids = list("abcdef")
    labels = ["x", "x", "y", "x", "y", "y"]
    pixel = ["p1", "p1", "p2", "p3", "p4", "p5"]  # a and b are exact copies
    ph = [0, 0, 0xFFFF << 20, 0b11, 0xFFFF << 48, 0xFFFF << 4]  # d is 2 bits from a
    zero, far = "0" * 64, "f" * 32 + "0" * 32
    ph256 = [zero, zero, far, "0" * 63 + "7", far, far]  # d is 3 bits from a; c, e, f are not candidates
    rep = find_duplicates(ids, labels, pixel, ph, ph256, threshold=4)
    assert [g.ids for g in rep.exact] == [["a", "b"]]
    assert [g.ids for g in rep.near] == [["a", "b", "d"]]
    assert rep.clusters["a"] == rep.clusters["b"] == rep.clusters["d"]
    assert len({rep.clusters[i] for i in "cef"}) == 3
    assert rep.conflicts == []
    labels[3] = "y"
    assert len(find_duplicates(ids, labels, pixel, ph, ph256, threshold=4).conflicts) == 1
    # a candidate by its 64-bit hash that the 256-bit hash rejects is no duplicate
    ph256[3] = far
    assert find_duplicates(ids, labels, pixel, ph, ph256, threshold=4).near == []


def test_inspect_finds_planted_duplicates_across_splits_and_conflicts(tmp_path):
    root = make_synthetic(tmp_path / "d", layout="presplit", per_class=12, size=48)
    train = sorted((root / "train" / "disk").glob("*.png"))
    # exact copy (re-encoded as RGBA PNG) of a train image placed in test
    Image.open(train[0]).convert("RGBA").save(root / "test" / "disk" / "copy_of_train.png")
    # near copy (resized + JPEG) of another train image placed in val
    Image.open(train[1]).resize((40, 40)).save(root / "val" / "disk" / "near_copy.jpg", quality=90)
    # the same picture under a different label: a label conflict
    Image.open(train[2]).save(root / "train" / "square" / "mislabelled.png")
    report = inspect_data(root)
    groups = report["duplicates"]["groups"]
    exact = [g for g in groups if g["kind"] == "exact"]
    assert any("test/disk/copy_of_train.png" in g["ids"] and g["splits"] == ["test", "train"] for g in exact)
    assert any("val/disk/near_copy.jpg" in g["ids"] for g in groups if g["kind"] == "near")
    conflicts = [g for g in groups if len(g["labels"]) > 1]
    assert any("train/square/mislabelled.png" in g["ids"] for g in conflicts)
    assert report["duplicates"]["n_cross_split_groups"] >= 2
    assert report["duplicates"]["n_label_conflicts"] >= 1


def test_inspect_reports_bad_files_modes_and_lying_extensions(tmp_path):
    save_image(tmp_path / "d" / "a" / "ok.png", blob(1))
    save_image(tmp_path / "d" / "a" / "jpeg.png", blob(2), fmt="JPEG")
    save_image(tmp_path / "d" / "b" / "rgba.png", blob(3), mode="RGBA")
    (tmp_path / "d" / "b" / "empty.png").write_bytes(b"")
    (tmp_path / "d" / "b" / "junk.jpg").write_bytes(b"not an image at all")
    report = inspect_data(tmp_path / "d")
    assert {b["id"] for b in report["bad_files"]} == {"b/empty.png", "b/junk.jpg"}
    assert report["extension_mismatch"] == [{"id": "a/jpeg.png", "format": "JPEG"}]
    assert report["modes"] == {"L": 2, "RGBA": 1}
    assert report["counts"] == {"all": {"a": 2, "b": 3}}
