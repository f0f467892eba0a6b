"""The dataset fingerprint covers every image's content: an image edited in place (same byte size, even with its
old modification time) is caught and named, as are missing and added images; content hashes are cached, and
splits files made before content hashes were recorded are still accepted, with a warning."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medcli.data import load_dataset
from medcli.data import scan as scan_mod
from medcli.data.store import StoreSettings, materialize
from medcli.errors import MedcliError
from medcli.splits import load_splits, split_data, splits_fingerprint
from tests.conftest import REPO, blob, save_image


def _bmp_dataset(root: Path, per_class: int = 8) -> Path:
    """Uncompressed BMP files: new pixels keep the byte size exactly."""
    for k, cls in enumerate(("a", "b")):
        for i in range(per_class):
            save_image(root / cls / f"{i}.bmp", blob(100 * k + i, 32), fmt="BMP")
    return root


def _edit_keeping_size_and_mtime(path: Path, seed: int) -> None:
    st = path.stat()
    save_image(path, blob(seed, 32), fmt="BMP")
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `cp -p` or `touch -r` would leave it


def test_same_size_edit_changes_the_fingerprint_and_is_named(tmp_path):
    root = _bmp_dataset(tmp_path / "d")
    path = tmp_path / "splits.json"
    split_data(root, path, folds=2)
    before = load_dataset(root).fingerprint()
    edited = root / "a" / "3.bmp"
    save_image(edited, blob(999, 32), fmt="BMP")
    assert load_dataset(root).fingerprint() != before
    with pytest.raises(MedcliError) as err:
        load_splits(path, load_dataset(root))
    msg = str(err.value)
    assert "1 image with other content (a/3.bmp)" in msg and "re-run `medcli split`" in msg


def test_edit_that_restores_size_and_mtime_is_still_caught(tmp_path):
    root = _bmp_dataset(tmp_path / "d")
    path = tmp_path / "splits.json"
    split_data(root, path, folds=2)
    _edit_keeping_size_and_mtime(root / "b" / "0.bmp", seed=7)
    with pytest.raises(MedcliError, match=r"with other content \(b/0.bmp\)"):
        load_splits(path, load_dataset(root))


def test_missing_and_added_images_are_named_with_counts(tmp_path):
    root = _bmp_dataset(tmp_path / "d")
    path = tmp_path / "splits.json"
    split_data(root, path, folds=2)
    for i in range(7):
        (root / "a" / f"{i}.bmp").unlink()
    save_image(root / "b" / "new.bmp", blob(55, 32), fmt="BMP")
    with pytest.raises(MedcliError) as err:
        load_splits(path, load_dataset(root))
    msg = str(err.value)
    assert "7 images missing (a/0.bmp, a/1.bmp, a/2.bmp, a/3.bmp, a/4.bmp and 2 more)" in msg
    assert "1 image added (b/new.bmp)" in msg


def test_splits_record_every_images_content_hash(tmp_path):
    root = _bmp_dataset(tmp_path / "d", per_class=4)
    doc = split_data(root, tmp_path / "s.json", folds=0, test_fraction=0.5, val_fraction=0.5)
    hashes = doc["dataset"]["content_hashes"]
    assert sorted(hashes) == sorted(s.id for s in load_dataset(root).samples)
    import hashlib

    assert hashes["a/1.bmp"] == hashlib.blake2b((root / "a" / "1.bmp").read_bytes(), digest_size=16).hexdigest()
    assert doc["dataset"]["fingerprint"].startswith("content-sha256:")


def test_old_splits_files_are_accepted_with_a_warning(tmp_path, caplog):
    root = _bmp_dataset(tmp_path / "d")
    path = tmp_path / "splits.json"
    doc = split_data(root, path, folds=2)
    old = json.loads(path.read_text())  # as medcli wrote it before content hashes
    del old["dataset"]["content_hashes"]
    old["dataset"]["fingerprint"] = scan_mod.index_fingerprint(load_dataset(root))
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="medcli"):
        assert splits_fingerprint(load_splits(legacy, load_dataset(root))) == splits_fingerprint(doc)
    warned = [r.getMessage() for r in caplog.records if "recorded no content hashes" in r.getMessage()]
    assert len(warned) == 1 and "re-run `medcli split`" in warned[0]
    # an old run's recorded fingerprint compares like with like (Grad-CAM checks runs this way)
    assert load_dataset(root).fingerprint(like=old["dataset"]["fingerprint"]) == old["dataset"]["fingerprint"]
    (root / "a" / "5.bmp").unlink()
    with pytest.raises(MedcliError, match=r"1 image missing \(a/5.bmp\)"):
        load_splits(legacy, load_dataset(root))


def test_content_hashes_are_cached_and_only_changed_files_reread(tmp_path, monkeypatch):
    root = _bmp_dataset(tmp_path / "d")
    split_data(root, tmp_path / "s.json", folds=2)  # the scan hashes every file while decoding it
    reads: list[str] = []
    real = scan_mod.sample_digest
    monkeypatch.setattr(scan_mod, "sample_digest", lambda s: reads.append(s.id) or real(s))
    monkeypatch.setattr(scan_mod, "_DIGESTS", {})  # a new process: only the scan cache on disk
    load_dataset(root).fingerprint()
    assert reads == []
    _edit_keeping_size_and_mtime(root / "a" / "2.bmp", seed=3)
    monkeypatch.setattr(scan_mod, "_DIGESTS", {})
    load_dataset(root).fingerprint()
    assert reads == ["a/2.bmp"]


def test_store_is_keyed_by_content(tmp_path):
    root = _bmp_dataset(tmp_path / "d")
    first = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    old_pixels = np.array(first.images[first.rows(["a/0.bmp"])[0]])
    _edit_keeping_size_and_mtime(root / "a" / "0.bmp", seed=11)
    again = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    assert again.path != first.path
    assert not np.array_equal(again.images[again.rows(["a/0.bmp"])[0]], old_pixels)


def test_npz_rows_have_their_own_hashes(tmp_path):
    from medcli.data.synth import make_synthetic

    path = make_synthetic(tmp_path / "d", layout="npz", per_class=4, size=28)
    hashes = scan_mod.content_hashes(load_dataset(path))
    assert len(set(hashes.values())) == len(hashes) and None not in hashes.values()
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    before = load_dataset(path).fingerprint()
    arrays["train_images"][1] = 255 - arrays["train_images"][1]
    np.savez(path, **arrays)
    after = scan_mod.content_hashes(load_dataset(path))
    assert [i for i in hashes if hashes[i] != after[i]] == ["train/1"]
    assert load_dataset(path).fingerprint() != before


def test_gradcam_refuses_an_image_edited_in_place(tmp_path):
    from medcli.gradcam.run import load_pixels

    root = _bmp_dataset(tmp_path / "d")
    doc = {"config": {"data": str(root)}, "preprocess": {"img_size": 16, "channels": 1, "resize": "squash", "interpolation": "bilinear"},
           "data_fingerprint": load_dataset(root).fingerprint()}
    assert load_pixels(doc, ["a/1.bmp"]).shape == (1, 16, 16, 1)
    save_image(root / "a" / "1.bmp", blob(77, 32), fmt="BMP")
    with pytest.raises(MedcliError, match="changed since this run was trained"):
        load_pixels(doc, ["a/1.bmp"])


@pytest.mark.slow
def test_same_size_edit_stops_medcli_train_with_one_line(tmp_path):
    root = _bmp_dataset(tmp_path / "d")
    split_data(root, tmp_path / "s.json", folds=2)
    _edit_keeping_size_and_mtime(root / "b" / "4.bmp", seed=5)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "medcli", "train", "--data", str(root), "--splits", str(tmp_path / "s.json"), "--backbone",
         "customcnn", "--strategy", "scratch", "--epochs", "1", "--img-size", "16", "--channels", "1", "--results",
         str(tmp_path / "res"), "--work", str(tmp_path / "work"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "b/4.bmp" in lines[0], proc.stderr
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").rglob("model.pt"))

