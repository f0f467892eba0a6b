"""Grad-CAM: maps point at the class signal, every backbone and frozen models work, run outputs are complete."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medcli import paths
from medcli._io import read_json
from medcli.cli import app
from medcli.data.store import open_store
from medcli.data.synth import class_region, make_synthetic
from medcli.errors import MedcliError
from medcli.gradcam import (
    compute_cams,
    confidence_drops,
    explain_run,
    image_file_name,
    list_methods,
    load_pixels,
    safe_name,
    select_samples,
    top_masks,
)
from medcli.models import create_model, list_backbones, load_model
from medcli.training import TrainConfig, train
from medcli.training.batches import to_model_input

N_CLASSES = 4  # a 2 x 2 grid of class regions: each region is a quarter of the image


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, str]:
    """A customcnn trained on a task whose class signal is the object's location; returns (run, cache dir).

    No augmentation: shifts and flips would move the object across region borders. The mlp head is used
    because with a single linear layer after global pooling this small network tends to classify from the
    empty context around the object (its CAMs then rightly sit outside the class region).
    """
    root = tmp_path_factory.mktemp("gradcam")
    data = make_synthetic(root / "data", layout="presplit", n_classes=N_CLASSES, per_class=60, size=64, signal="location", seed=0)
    cache = str(root / "cache")
    summary = train(TrainConfig(
        data=str(data), backbone="customcnn", head="mlp", strategy="scratch", epochs=12, batch_size=16, lr=3e-3,
        img_size=64, channels=1, augment=False, seed=0, monitor="balanced_accuracy", results=str(root / "results"), work=str(root / "work"),
        cache_dir=cache, workers=1, progress=False,
    ))
    assert summary["best_score"] > 0.9, "the synthetic task was not learned; the CAM checks below would be meaningless"
    return summary["out"], cache


def _inputs(run: str, ids: list[str]) -> tuple[nn.Module, torch.Tensor, np.ndarray, list[str]]:
    doc = read_json(paths.config_file(run))
    pixels = load_pixels(doc, ids)
    model, _ = load_model(paths.model_file(run))
    pre = doc["preprocess"]
    x = to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.tensor(pre["mean"]), torch.tensor(pre["std"]))
    return model, x, pixels, doc["classes"]


# --- CAMs look where the signal is -----------------------------------------------------------------------


@pytest.mark.parametrize("method, factor", [("gradcam", 1.25), ("gradcam++", 1.5)])
def test_cams_concentrate_on_the_class_region(trained, method, factor):
    run, _ = trained
    frame = pd.read_csv(paths.predictions_file(run, "val"), dtype=str)
    frame = frame[frame["label"] == frame["pred"]]
    model, x, pixels, classes = _inputs(run, list(frame["id"]))
    targets = [classes.index(c) for c in frame["label"]]
    cams = compute_cams(model, x, targets, method=method)
    size = pixels.shape[1]
    mass = []
    for cam, k in zip(cams, targets):
        top, left, bottom, right = class_region(k, N_CLASSES, size)
        mass.append(cam[top:bottom, left:right].sum() / cam.sum())
    area = (size // 2) ** 2 / size**2
    assert len(mass) >= 20
    assert np.mean(mass) > factor * area, f"{method}: mean CAM mass in the class region {np.mean(mass):.3f}"


def test_pixels_are_exactly_the_run_image_store(trained):
    run, cache = trained
    doc = read_json(paths.config_file(run))
    ids = list(pd.read_csv(paths.predictions_file(run, "val"), dtype=str)["id"][:10])
    store = open_store(Path(cache) / "store" / doc["store_key"])
    assert np.array_equal(load_pixels(doc, ids), np.asarray(store.images[store.rows(ids)]))


# --- every backbone, every method, frozen models ----------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_gives_an_input_sized_cam(name, channels):
    torch.manual_seed(0)
    model = create_model(name, 3, in_channels=channels, img_size=32)
    cams = compute_cams(model, torch.randn(2, channels, 32, 32), [0, 2], batch_size=2)
    assert cams.shape == (2, 32, 32) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert not model.cam_target_layer()._forward_hooks  # the method's hooks are gone


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs(method):
    torch.manual_seed(0)
    model = create_model("customcnn", 2, in_channels=1)
    cams = compute_cams(model, torch.randn(3, 1, 32, 32), [0, 1, 1], method=method, batch_size=16)
    assert cams.shape == (3, 32, 32) and np.isfinite(cams).all()


def test_frozen_model_is_explained_and_left_as_it_was():
    torch.manual_seed(0)
    model = create_model("customcnn", 3, in_channels=1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():  # a caller's no_grad must not silently break the gradients the CAM needs
        cams = compute_cams(model, x, [0, 1, 2, 0, 1], batch_size=2)
    assert cams.shape == (5, 32, 32) and (cams.reshape(5, -1).max(1) > 0).all()
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters()) and x.grad is None and not x.requires_grad
    assert not model.training


def test_partly_frozen_training_model_keeps_its_flags_modes_and_gradients():
    torch.manual_seed(0)
    model = create_model("customcnn", 2, in_channels=1)
    for p in model.trunk.parameters():
        p.requires_grad_(False)
    model.train()
    model.trunk.blocks[0].bn.eval()  # frozen BatchNorm statistics inside a training model, as strategies leave them
    head_weight = next(model.head.parameters())
    head_weight.grad = torch.full_like(head_weight, 7.0)  # an optimizer's pending gradient
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    compute_cams(model, torch.randn(2, 1, 32, 32), [0, 1])
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(head_weight.grad, torch.full_like(head_weight, 7.0))
    assert all(p.grad is None for p in model.trunk.parameters())


def test_unknown_method_lists_the_choices():
    with pytest.raises(MedcliError, match="gradcam, gradcam\\+\\+, hirescam"):
        compute_cams(create_model("customcnn", 2, in_channels=1), torch.randn(1, 1, 32, 32), [0], method="magic")


# --- faithfulness -----------------------------------------------------------------------------------------


def test_top_masks_hold_exactly_the_requested_share():
    cams = np.random.default_rng(0).random((3, 10, 10)).astype(np.float32)
    cams[2] = 0.5  # ties: the first pixels in row-major order win
    masks = top_masks(cams, 0.2)
    assert masks.sum(axis=(1, 2)).tolist() == [20, 20, 20]
    assert masks[0][cams[0] >= np.sort(cams[0].ravel())[-20]].all()
    assert masks[2].ravel()[:20].all() and not masks[2].ravel()[20:].any()


class _LeftEdge(nn.Module):
    """Class 0's logit is 4 x the mean of the two left-most pixel columns; class 1's is 0."""

    def forward(self, x):
        edge = x[:, :, :, :2].mean(dim=(1, 2, 3)) * 4
        return torch.stack([edge, torch.zeros_like(edge)], dim=1)


def test_faithfulness_rewards_a_map_on_the_evidence():
    x = torch.ones(1, 1, 10, 10)
    on_evidence = np.zeros((1, 10, 10), np.float32)
    on_evidence[:, :, :2] = 1  # top 20 % = the two left-most columns
    elsewhere = np.zeros((1, 10, 10), np.float32)
    elsewhere[:, :, -2:] = 1
    good = confidence_drops(_LeftEdge(), x, on_evidence, [0])
    bad = confidence_drops(_LeftEdge(), x, elsewhere, [0])
    assert good["score"][0] > 0 > bad["score"][0]
    for result in (good, bad):
        assert np.allclose(result["score"], result["prob_keep"] - result["prob_remove"])
        assert np.allclose(result["drop_keep"], result["prob"] - result["prob_keep"])


# --- selection and file names -----------------------------------------------------------------------------


def test_selection_balances_correct_and_wrong_and_is_deterministic():
    rows = [(f"a{i:02d}", "a", "a" if i < 10 else "b") for i in range(12)]  # class a: 10 correct, 2 wrong
    rows += [(f"b{i:02d}", "b", "b") for i in range(3)]  # class b: 3 correct, no wrong
    frame = pd.DataFrame(rows, columns=["id", "label", "pred"])
    chosen = select_samples(frame, ["a", "b", "c"], n=6, seed=0)
    a = chosen[chosen["label"] == "a"]
    assert (a["pred"] == "a").sum() == 4 and (a["pred"] != "a").sum() == 2  # wrong ones short: correct ones fill up
    assert (chosen["label"] == "b").sum() == 3 and "c" not in set(chosen["label"])
    shuffled = frame.sample(frac=1, random_state=1)
    assert select_samples(shuffled, ["a", "b", "c"], n=6, seed=0).equals(chosen)
    assert not select_samples(frame, ["a", "b", "c"], n=6, seed=1).equals(chosen)


def test_file_names_from_awkward_ids_are_safe_and_distinct():
    ids = ["test/COVID (12)/img 1.png", "test/COVID_12_/img_1.png", "tëst/Ürün/ımg.PNG", "train/17", "../../etc/passwd", "a/b", "a_b", "A_B"]
    names = [image_file_name(i) for i in ids]
    assert len(set(n.lower() for n in names)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png", n) for n in names), names
    assert safe_name("normal") == "normal"
    assert safe_name("large.cell carcinoma") != safe_name("large_cell_carcinoma")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", safe_name("größe/..")) and safe_name("") != ""


# --- the run command --------------------------------------------------------------------------------------


def test_explain_run_writes_overlays_galleries_and_index(trained):
    run, _ = trained
    result = explain_run(run, split="val", n=3)
    out = Path(result["folder"])
    assert out == Path(run) / "gradcam" / "val"
    index = json.loads((out / "index.json").read_text())
    present = set(pd.read_csv(paths.predictions_file(run, "val"), dtype=str)["label"])
    assert sorted(p.name for p in out.glob("gallery_*.png")) == sorted(f"gallery_{c}.png" for c in present)
    overlays = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*/*.png"))
    assert overlays == sorted(e["overlay"] for e in index["images"]) and len(overlays) == 3 * len(present)
    assert index["format"] == "medcli.gradcam/1" and index["normalization"] == "per-image min-max"
    assert (index["method"], index["target"], index["split"], index["n_per_class"]) == ("gradcam", "pred", "val", 3)
    for entry in index["images"]:
        assert entry["overlay"].split("/")[1] == ("correct" if entry["correct"] else "wrong")
        assert set(entry["faithfulness"]) >= {"drop_keep_top20", "drop_remove_top20", "score"}
    faith = index["faithfulness"]
    assert {"definition", "mean_drop_keep_top20", "mean_drop_remove_top20", "mean_score", "per_class"} <= set(faith)
    assert faith["mean_score"] == pytest.approx(np.mean([e["faithfulness"]["score"] for e in index["images"]]))

    # A second call replaces the folder as a whole: nothing of the first one is left over.
    again = explain_run(run, split="val", n=1, method="layercam", target="true")
    assert len(list(out.glob("*/*/*.png"))) == len(present) and again["method"] == "layercam"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_test_split_needs_medcli_eval_first(trained):
    run, _ = trained
    with pytest.raises(MedcliError, match="medcli eval"):
        explain_run(run, split="test")


def test_cli(trained):
    run, _ = trained
    runner = CliRunner()
    res = runner.invoke(app, ["gradcam", run, "--split", "val", "--n", "2"])
    assert res.exit_code == 0, res.output
    assert os.path.join(run, "gradcam", "val") in res.output and "faithfulness" in res.output
    res = runner.invoke(app, ["gradcam", run, "--split", "val", "--method", "magic"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "gradcam++" in lines[0]
