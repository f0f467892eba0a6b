"""Grad-CAM maps that carry no information (all zero or constant) are flagged, captioned and left out of the means.

Issue 14, item 7: gradcam++ and scorecam on a barely trained model give all-zero maps, which used to get a
faithfulness score (from an arbitrary "top 20 %" block of pixels) that entered the mean.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from torch import nn

from medcli.data.synth import make_synthetic
from medcli.gradcam import compute_cam_maps, compute_cams, empty_maps, explain_run, summarize
from medcli.gradcam import run as gradcam_run
from medcli.models import create_model
from medcli.training import TrainConfig, train


class _ConstantFeatures(nn.Module):
    """A classifier whose CAM layer outputs the same value at every position: every CAM of it is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.5, 2.0, 1.0], [-1.0, 0.2, 0.1, 0.3]]))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_constant_maps_are_flagged_and_informative_maps_are_not():
    model = _ConstantFeatures()
    x = torch.randn(3, 1, 16, 16)
    maps = compute_cam_maps(model, x, [0, 1, 0], target_layer=model.features)
    assert maps.empty.tolist() == [True, True, True] and maps.n_empty == 3
    # Constant but not zero before normalisation (positive channel weights for class 0): still empty.
    assert maps.raw_max[0] == pytest.approx(6 / 256) and maps.raw_max[0] - maps.raw_min[0] < 1e-6  # sum_k (w_k / 256) * bias_k
    assert not maps.cams.any()
    np.testing.assert_array_equal(compute_cams(model, x, [0, 1, 0], target_layer=model.features), maps.cams)

    torch.manual_seed(0)
    informative = create_model("customcnn", 2, in_channels=1)
    maps = compute_cam_maps(informative, torch.randn(4, 1, 32, 32), [0, 1, 1, 0], method="gradcam++")
    assert not maps.empty.any() and (maps.raw_max - maps.raw_min > 1e-3).all()


def test_empty_maps_tolerance():
    flags = empty_maps(np.array([0.0, 5.0, 5.0, 1e-9, 0.0]), np.array([0.0, 5.0 + 1e-6, 5.01, 3e-8, 1e-3]))
    assert flags.tolist() == [True, True, False, False, False]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gradcam-empty")
    data = make_synthetic(root / "data", layout="presplit", n_classes=2, per_class=12, size=32, seed=3)
    summary = train(TrainConfig(
        data=str(data), backbone="customcnn", strategy="scratch", epochs=1, batch_size=8, img_size=32, channels=1,
        augment=False, seed=0, results=str(root / "results"), work=str(root / "work"), cache_dir=str(root / "cache"),
        workers=1, progress=False,
    ))
    return summary["out"]


def test_explain_run_flags_empty_maps_and_leaves_them_out_of_the_means(tiny_run, monkeypatch):
    original = pgc.GradCAM.get_cam_weights

    def every_other_weight_zero(self, *args, **kwargs):
        weights = np.array(original(self, *args, **kwargs))
        weights[::2] = 0.0  # images 0, 2, 4, ... of the chunk get an all-zero map
        return weights

    monkeypatch.setattr(pgc.GradCAM, "get_cam_weights", every_other_weight_zero)
    captions: list[str] = []
    real_gallery = gradcam_run.save_gallery

    def recording_gallery(path, tiles, title, **kwargs):
        captions.extend(t.caption for t in tiles)
        return real_gallery(path, tiles, title, **kwargs)

    monkeypatch.setattr(gradcam_run, "save_gallery", recording_gallery)
    result = explain_run(tiny_run, split="val", n=4, method="gradcam", batch_size=16)
    index = json.loads((gradcam_run.Path(result["folder"]) / "index.json").read_text())
    images = index["images"]
    empty = [e for e in images if e["empty_cam"]]
    scored = [e for e in images if not e["empty_cam"]]
    assert len(empty) == (len(images) + 1) // 2 and scored  # the even rows of the single chunk
    faith = index["faithfulness"]
    assert faith["n_empty"] == len(empty) > 0 and faith["n"] == len(scored)
    assert faith["mean_score"] == pytest.approx(np.mean([e["faithfulness"]["score"] for e in scored]))
    assert faith["mean_drop_keep_top20"] == pytest.approx(np.mean([e["faithfulness"]["drop_keep_top20"] for e in scored]))
    for e in empty:
        assert e["faithfulness"]["score"] is None and e["faithfulness"]["drop_remove_top20"] is None
        assert 0 <= e["faithfulness"]["prob"] <= 1  # the full-image probability is still meaningful
    assert sum(c["n_empty"] for c in faith["per_class"].values()) == len(empty)
    assert sum(c["n"] for c in faith["per_class"].values()) == len(scored)
    assert sum("empty CAM" in c for c in captions) == len(empty) and len(captions) == len(images)
    line = summarize(result)
    assert f"{len(empty)} of {len(images)} maps empty" in line and f"mean score {faith['mean_score']:+.3f}" in line


def test_a_run_whose_maps_are_all_empty_has_no_mean(tiny_run, monkeypatch):
    monkeypatch.setattr(pgc.GradCAM, "get_cam_weights", lambda self, *a, **k: np.zeros(np.shape(a[4])[:2], np.float32))
    result = explain_run(tiny_run, split="val", n=2, method="gradcam")
    faith = result["faithfulness"]
    assert faith["n"] == 0 and faith["n_empty"] == len(result["images"]) and faith["mean_score"] is None
    assert "no map to score" in summarize(result)


def test_barely_trained_model_gradcam_plus_plus_is_empty_gradcam_is_not(tiny_run):
    """The issue's observation, unpatched: after one epoch, gradcam++ maps are empty while gradcam's are not."""
    plus = explain_run(tiny_run, split="val", n=2, method="gradcam++")
    assert plus["faithfulness"]["n_empty"] > 0
    assert all(e["faithfulness"]["score"] is None for e in plus["images"] if e["empty_cam"])
    plain = explain_run(tiny_run, split="val", n=2, method="gradcam")
    faith = plain["faithfulness"]
    assert faith["n_empty"] == 0 and faith["n"] == len(plain["images"]) and not any(e["empty_cam"] for e in plain["images"])
    assert faith["mean_score"] == pytest.approx(np.mean([e["faithfulness"]["score"] for e in plain["images"]]))
    assert "maps empty" not in summarize(plain)
