from __future__ import annotations

import logging
import socket
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from medcli.errors import MedcliError
from medcli.models import (
    cached_weights_path,
    create_model,
    download_weights,
    get_backbone,
    is_cached,
    list_backbones,
    list_heads,
    load_model,
    load_trunk_weights,
    save_model,
)

NUM_CLASSES = 3


def build(name: str, **kwargs):
    # ViT is built for a fixed size: 32 px gives a 2x2 patch grid and keeps the tests fast.
    if get_backbone(name).fixed_size:
        kwargs.setdefault("img_size", 32)
    return create_model(name, NUM_CLASSES, **kwargs)


def image_size(name: str) -> int:
    return 32 if get_backbone(name).fixed_size else 64


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No test may reach the network, and every test starts with an empty torch hub cache."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network access is disabled in the tests")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def torchvision_state(name: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).state_dict()


# --- registry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_builds_and_classifies(name, channels):
    model = build(name, in_channels=channels).eval()
    size = image_size(name)
    x = torch.randn(2, channels, size, size)

    captured = []
    handle = model.cam_target_layer().register_forward_hook(lambda m, i, out: captured.append(out))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert logits.shape == (2, NUM_CLASSES)
    assert model.trunk(x).shape == (2, model.feature_dim)

    # Grad-CAM target: a module of this model whose (reshaped) output is a (B, C, h, w) feature map.
    assert any(m is model.cam_target_layer() for m in model.trunk.modules())
    fmap = captured[0] if model.cam_reshape_transform is None else model.cam_reshape_transform(captured[0])
    assert fmap.ndim == 4 and fmap.shape[0] == 2

    # Stages: non-empty, input to output, and together every trunk parameter exactly once.
    stages, params = model.stages(), model.stage_parameters()
    assert len(stages) >= 3 and all(stages) and all(params)
    ids = [id(p) for group in params for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.trunk.parameters()}
    assert model.trunk.get_submodule(model.input_conv).in_channels == channels


def test_the_small_image_resnet_keeps_a_4x4_map_at_28_px_where_torchvisions_has_1x1():
    maps = {}
    for name in ("resnet18_small", "resnet18"):
        model = build(name, in_channels=3).eval()
        captured = []
        model.cam_target_layer().register_forward_hook(lambda m, i, out: captured.append(out))
        with torch.no_grad():
            model(torch.randn(1, 3, 28, 28))
        maps[name] = tuple(captured[0].shape[-2:])
    assert maps == {"resnet18_small": (4, 4), "resnet18": (1, 1)}
    assert get_backbone("resnet18_small").imagenet_weights is None and get_backbone("resnet18_small").input_size == 28


def test_vit_tokens_become_a_square_grid():
    model = build("vit_b_16")
    tokens = torch.randn(2, 1 + 2 * 2, 768)
    assert model.cam_reshape_transform(tokens).shape == (2, 768, 2, 2)
    assert build("vit_b_16", img_size=48).eval()(torch.randn(1, 3, 48, 48)).shape == (1, NUM_CLASSES)
    with pytest.raises(MedcliError, match="img_size 40"):
        build("vit_b_16", img_size=40)


@pytest.mark.parametrize("name", [n for n in list_backbones() if get_backbone(n).family == "torchvision"])
def test_registry_metadata_matches_torchvision_weights(name):
    info = get_backbone(name)
    weights = torchvision.models.get_weight(info.imagenet_weights)
    transform = weights.transforms()
    assert transform.crop_size == [info.input_size]
    assert tuple(transform.mean) == info.mean and tuple(transform.std) == info.std
    assert transform.interpolation.value == info.interpolation


def test_unknown_names_list_the_choices():
    with pytest.raises(MedcliError, match="unknown backbone 'resnet5'.*customcnn.*resnet18"):
        create_model("resnet5", NUM_CLASSES)
    with pytest.raises(MedcliError, match="unknown head 'deep'.*linear, mlp"):
        create_model("customcnn", NUM_CLASSES, head="deep")
    assert list_heads() == ["linear", "mlp"]


def test_bad_arguments_are_refused():
    with pytest.raises(MedcliError, match="in_channels 2"):
        create_model("customcnn", NUM_CLASSES, in_channels=2)
    with pytest.raises(MedcliError, match="num_classes 1"):
        create_model("customcnn", 1)


def test_mlp_head_layout():
    model = create_model("customcnn", NUM_CLASSES, head="mlp", hidden=16, dropout=0.3)
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert model.head[0].num_features == model.feature_dim == 256
    assert model.head[1].out_features == 16 and model.head[3].p == 0.3
    assert model.train()(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    assert isinstance(create_model("customcnn", NUM_CLASSES).head, nn.Linear)


# --- weights ----------------------------------------------------------------------------------------------


def test_one_channel_model_sums_the_rgb_filters_of_a_weights_file(tmp_path, caplog):
    state = torchvision_state()
    state["conv1.weight"] = torch.randn_like(state["conv1.weight"])
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    with caplog.at_level(logging.INFO, logger="medcli"):
        model = create_model("resnet18", NUM_CLASSES, in_channels=1, weights=path)
    assert "summed the RGB filters of conv1" in caplog.text

    trunk = model.trunk.state_dict()
    assert trunk["conv1.weight"].shape == (64, 1, 7, 7)
    assert torch.equal(trunk["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for key, value in trunk.items():
        if key != "conv1.weight":
            assert torch.equal(value, state[key]), key
    assert not torch.equal(model.head.weight, state["fc.weight"][:NUM_CLASSES])

    # A grey image gives the same features as its 3-channel copy through the original RGB network.
    rgb = create_model("resnet18", NUM_CLASSES, weights=path).eval()
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().trunk(grey), rgb.trunk(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_weights_that_do_not_fit_are_refused_by_name(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_state(), path)
    with pytest.raises(MedcliError, match=r"resnet18\.pth does not fit the resnet50 trunk: .*wrong shape"):
        create_model("resnet50", NUM_CLASSES, weights=path)

    partial = torchvision_state()
    del partial["layer4.1.conv2.weight"]
    torch.save(partial, path)
    with pytest.raises(MedcliError, match="missing layer4.1.conv2.weight"):
        create_model("resnet18", NUM_CLASSES, weights=path)


class NotAStateDict:
    pass


def test_unreadable_weights_files_give_one_line_errors(tmp_path):
    with pytest.raises(MedcliError, match="not found"):
        create_model("resnet18", NUM_CLASSES, weights=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MedcliError, match="garbage.pth is not a PyTorch weights file"):
        create_model("resnet18", NUM_CLASSES, weights=garbage)
    pickled = tmp_path / "object.pth"
    torch.save({"model": NotAStateDict()}, pickled)
    with pytest.raises(MedcliError, match="object.pth: refused to load"):
        create_model("resnet18", NUM_CLASSES, weights=pickled)
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "model": torchvision_state()}, nested)
    with pytest.raises(MedcliError, match="nested.pth is neither a state dict"):
        create_model("resnet18", NUM_CLASSES, weights=nested)
    with pytest.raises(MedcliError, match="customcnn has no ImageNet weights"):
        create_model("customcnn", NUM_CLASSES, weights="imagenet")


def test_imagenet_weights_offline_explain_how_to_prefetch():
    assert not is_cached("resnet18")
    with pytest.raises(MedcliError, match=r"ImageNet weights for resnet18 could not be downloaded.*no internet.*"
                                          r"`medcli weights download resnet18`.*TORCH_HOME"):
        create_model("resnet18", NUM_CLASSES, weights="imagenet")
    with pytest.raises(MedcliError, match="medcli weights download resnet18"):
        download_weights(["resnet18"])
    cache = cached_weights_path("resnet18").parent
    assert not cache.exists() or not any(cache.iterdir())  # no partial download left behind


def test_cached_imagenet_weights_load_without_network():
    path = cached_weights_path("resnet18")
    assert path.name == "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    state = torchvision_state(seed=1)
    torch.save(state, path)
    assert is_cached("resnet18")
    assert download_weights(["resnet18", "resnet18"]) == [path]

    model = create_model("resnet18", NUM_CLASSES, weights="imagenet")
    for key, value in model.trunk.state_dict().items():
        assert torch.equal(value, state[key]), key

    path.write_bytes(b"truncated")
    with pytest.raises(MedcliError, match="cannot be read.*delete the file"):
        create_model("resnet18", NUM_CLASSES, weights="IMAGENET")


def test_vit_position_embeddings_are_interpolated_to_the_patch_grid(caplog):
    small = build("vit_b_16", img_size=32)  # 2x2 patches
    large = build("vit_b_16", img_size=64)  # 4x4 patches
    with caplog.at_level(logging.INFO, logger="medcli"):
        load_trunk_weights(large, small.trunk.state_dict(), "vit32")
    assert "4x4 patch grid" in caplog.text
    pos = large.trunk.encoder.pos_embedding
    assert pos.shape == (1, 17, 768)
    assert torch.equal(pos[:, 0], small.trunk.encoder.pos_embedding[:, 0])  # class token position kept
    assert torch.equal(large.trunk.conv_proj.weight, small.trunk.conv_proj.weight)


# --- model files ------------------------------------------------------------------------------------------


def trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-default running statistics, so a round trip that loses buffers is caught."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, model.config["in_channels"], 32, 32))
    return model.eval()


def test_model_file_round_trip(tmp_path):
    model = trained_like(create_model("resnet18", NUM_CLASSES, head="mlp", hidden=32, in_channels=1))
    extra = {"fold": 2, "metrics": {"auc": np.float64(0.9)}, "mean": (np.float32(0.5),)}
    path = save_model(tmp_path / "out" / "model.pt", model, classes=["a", "b", "c"], extra=extra)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # the temporary file was renamed

    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "medcli.model/1"
    expected = {"backbone": "resnet18", "head": "mlp", "num_classes": 3, "in_channels": 1, "img_size": 224,
                "hidden": 32, "dropout": 0.5, "classes": ["a", "b", "c"], "fold": 2}
    assert {k: raw[k] for k in expected} == expected

    loaded, meta = load_model(path)
    assert meta["classes"] == ["a", "b", "c"] and "state_dict" not in meta
    assert meta["metrics"] == {"auc": 0.9} and type(meta["metrics"]["auc"]) is float and meta["mean"] == (0.5,)
    assert not loaded.training
    x = torch.randn(2, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_model_file_initialises_a_new_model_trunk_only(tmp_path):
    model = trained_like(create_model("resnet18", NUM_CLASSES))
    path = save_model(tmp_path / "model.pt", model, classes=["a", "b", "c"])

    fresh = create_model("resnet18", 5, head="mlp", weights=path)
    for key, value in fresh.trunk.state_dict().items():
        assert torch.equal(value, model.trunk.state_dict()[key]), key
    grey = create_model("resnet18", 5, in_channels=1, weights=path)
    assert torch.equal(grey.trunk.conv1.weight, model.trunk.conv1.weight.sum(dim=1, keepdim=True))
    with pytest.raises(MedcliError, match="is a resnet18 model checkpoint; it cannot initialise densenet121"):
        create_model("densenet121", NUM_CLASSES, weights=path)


def test_model_file_errors(tmp_path):
    with pytest.raises(MedcliError, match="not found"):
        load_model(tmp_path / "none.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(MedcliError, match="other.pt is not a medcli.model/1 model file"):
        load_model(other)
    model = create_model("customcnn", NUM_CLASSES)
    with pytest.raises(ValueError, match="state_dict"):
        save_model(tmp_path / "m.pt", model, classes=["a", "b", "c"], extra={"state_dict": {}})
    with pytest.raises(TypeError, match="extra\\['when'\\]"):
        save_model(tmp_path / "m.pt", model, classes=["a", "b", "c"], extra={"when": object()})
    assert list(tmp_path.iterdir()) == [other]
