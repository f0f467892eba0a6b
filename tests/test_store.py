"""Decoded images are materialized once, reused when nothing changed, rebuilt when anything did."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medcli.data import load_dataset
from medcli.data import store as store_mod
from medcli.data.store import StoreSettings, materialize
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from tests.conftest import blob, save_image


def test_store_holds_the_decoded_resized_pixels(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=4, size=40, channels=3)
    ds = load_dataset(root)
    st = materialize(ds, StoreSettings(img_size=20, channels=3))
    assert st.images.shape == (12, 20, 20, 3) and st.images.dtype == np.uint8
    sample = ds.samples[5]
    expected = np.asarray(Image.open(sample.path).convert("RGB").resize((20, 20), Image.Resampling.BILINEAR, reducing_gap=3.0))
    assert np.array_equal(st.images[st.rows([sample.id])[0]], expected)
    gray = materialize(ds, StoreSettings(img_size=20, channels=1))
    assert gray.images.shape == (12, 20, 20, 1)


def test_same_inputs_reuse_the_store(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    first = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    calls = []
    monkeypatch.setattr(store_mod, "_build", lambda *a, **k: calls.append(a))
    again = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    assert calls == [] and again.path == first.path


def test_changed_file_size_or_settings_invalidate(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    base = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    assert materialize(load_dataset(root), StoreSettings(img_size=24, channels=1)).path != base.path
    assert materialize(load_dataset(root), StoreSettings(img_size=16, channels=1, resize="pad")).path != base.path
    target = root / "disk" / "img00000.png"
    save_image(target, blob(7, 32))
    os.utime(target, ns=(1, 1))
    rebuilt = materialize(load_dataset(root), StoreSettings(img_size=16, channels=1))
    assert rebuilt.path != base.path
    assert not np.array_equal(rebuilt.images[0], base.images[0])


def test_parallel_workers_give_identical_store(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=70, size=32)  # 210 images: above the in-process cutoff
    ds = load_dataset(root)
    serial = store_mod._decode_chunk((ds.samples, StoreSettings(img_size=16, channels=1), ds.decode))
    st = materialize(ds, StoreSettings(img_size=16, channels=1), workers=2)
    assert np.array_equal(np.asarray(st.images), serial)


def test_npz_store(tmp_path):
    path = make_synthetic(tmp_path / "d", layout="npz", per_class=5, size=28, channels=3)
    st = materialize(load_dataset(path), StoreSettings(img_size=28, channels=3))
    with np.load(path) as data:
        assert np.array_equal(st.images[st.rows(["train/0"])[0]], data["train_images"][0])


def test_bad_settings_are_refused(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=2, size=32)
    with pytest.raises(MedcliError, match="--channels"):
        materialize(load_dataset(root), StoreSettings(channels=2))
