"""Synthetic datasets are deterministic and learnable (well above chance for a simple classifier)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from medcli.data.synth import class_region, draw, make_synthetic
from medcli.errors import MedcliError


def test_same_seed_same_bytes(tmp_path):
    a = make_synthetic(tmp_path / "a", per_class=3, size=32, seed=4)
    b = make_synthetic(tmp_path / "b", per_class=3, size=32, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


@pytest.mark.parametrize("signal", ["mixed", "shape", "location", "texture"])
def test_learnable_well_above_chance(signal):
    rng = np.random.default_rng(0)
    n_classes, size = 3, 32
    X, y = [], []
    for i in range(300):
        k = i % n_classes
        X.append(draw(k, n_classes, size, rng, signal=signal).ravel() / 255.0)
        y.append(k)
    X, y = np.array(X), np.array(y)
    clf = LogisticRegression(max_iter=300).fit(X[:200], y[:200])
    if signal in ("shape", "texture"):  # translation-invariant signals: use a crude translation-free feature
        feats = np.abs(np.fft.fft2(X.reshape(-1, size, size))).reshape(len(X), -1)
        clf = LogisticRegression(max_iter=1000).fit(feats[:200], y[:200])
        assert clf.score(feats[200:], y[200:]) > 0.6
    else:
        assert clf.score(X[200:], y[200:]) > 0.6  # chance is 1/3


def test_location_signal_sits_in_the_class_region():
    rng = np.random.default_rng(1)
    for k in range(4):
        img = draw(k, 4, 64, rng, signal="location", noise=0.0).astype(float)
        top, left, bottom, right = class_region(k, 4, 64)
        ys, xs = np.nonzero(img > np.percentile(img, 95))  # the object is far brighter than the lighting
        assert top <= ys.mean() < bottom and left <= xs.mean() < right


def test_bad_arguments(tmp_path):
    with pytest.raises(MedcliError, match="--classes"):
        make_synthetic(tmp_path / "x", n_classes=1)
    make_synthetic(tmp_path / "y", per_class=1, size=16)
    with pytest.raises(MedcliError, match="not empty"):
        make_synthetic(tmp_path / "y", per_class=1, size=16)
