"""The backbone registry: one :class:`BackboneInfo` per supported network.

An entry says how to build the trunk (the network without its final classification layer) and describes its
structure by dotted names relative to the trunk:

* ``stages``: groups of modules (or loose parameters such as ViT's class token) from input to output. Together
  they must hold every trunk parameter exactly once; partial fine-tuning unfreezes the last N groups and
  discriminative learning rates give each group its own rate.
* ``cam_layer``: the module whose activations and gradients Grad-CAM uses.
* ``classifier``: (torchvision) the final layer that is replaced by ``Identity``, which leaves the trunk
  returning the pooled (pre-logit) features. Its keys are skipped when loading a full torchvision state dict.

Adding a backbone is one :func:`register_backbone` call; the registry-driven tests pick it up.

Names that are not registered here are looked up in timm (PyTorch Image Models): ``convnext_tiny.fb_in22k``
(architecture + pretrained tag), a bare architecture (its default tag) or ``hf-hub:ORG/NAME``. Their entries
(``family="timm"``) are derived from timm's own metadata on first use and cached; see
:mod:`medcli.models.timm_backbones`. medcli's names win: ``convnext_tiny`` is torchvision's, and
``convnext_tiny.fb_in1k`` timm's. :func:`register_timm_backbone` registers a timm architecture under a medcli
name with fixed constructor arguments (e.g. a small configuration for tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..registry import Registry
from .customcnn import CustomCNN
from .small_resnet import resnet18_small

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vit_tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """ViT token sequence ``(B, 1 + h*w, C)`` -> feature map ``(B, C, h, w)`` for Grad-CAM.

    Drops the class token and lays the patch tokens out on their square grid, so CAM code written for
    convolutional feature maps works unchanged.
    """
    patches = tokens[:, 1:, :]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def nhwc_to_nchw(fmap: torch.Tensor) -> torch.Tensor:
    """Channels-last feature map ``(B, h, w, C)`` (timm Swin stages) -> ``(B, C, h, w)`` for Grad-CAM."""
    return fmap.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class BackboneInfo:
    """Everything medcli needs to know about one backbone.

    Attributes:
        name: registry name, e.g. ``"resnet50"``, or a timm name such as ``"convnext_tiny.fb_in22k"``.
        family: ``"custom"`` (built here), ``"torchvision"`` (``torchvision.models.get_model(name)``) or
            ``"timm"`` (``timm.create_model(timm_name, **timm_kwargs)``).
        input_size: default input size in pixels.
        mean, std: normalisation statistics the weights were trained with.
        interpolation: resize interpolation of the weights' reference transform.
        imagenet_weights: where the pretrained weights (``--weights imagenet`` / ``pretrained``) come from, or
            None when there are none: a torchvision weights enum entry (``"ResNet50_Weights.IMAGENET1K_V2"``);
            for timm the Hub repository (``"hf-hub:timm/convnext_tiny.fb_in22k"``) or URL of the pretrained
            tag, whatever it was pretrained on (ImageNet-21k, LVD-142M for DINOv2, ...).
        stages: dotted trunk names grouped into stages, input to output (see the module docstring).
        cam_layer: dotted trunk name of the Grad-CAM target module.
        classifier: dotted name of the final layer that is dropped (torchvision; timm: the pretrained cfg's
            ``classifier``); None for custom trunks.
        cam_reshape_transform: turns the CAM layer's output into ``(B, C, h, w)`` when it is not one already.
        fixed_size: the model is built for one input size (torchvision: ``image_size=`` is passed on; timm:
            ``img_size=``, which resizes the position embeddings).
        build: custom family only: ``(in_channels) -> trunk``; the trunk has an ``out_features`` attribute.
        timm_name: timm family only: the name given to ``timm.create_model`` (``arch.tag``, ``hf-hub:...``).
        timm_kwargs: timm family only: fixed constructor arguments, as ``(name, value)`` pairs.
        cam_layout: layout of the CAM layer's output when ``cam_reshape_transform`` is None: ``"nchw"``,
            ``"nhwc"`` (permuted) or ``"tokens"`` (``(B, prefix + h*w, C)``: the model's ``num_prefix_tokens``
            class/register tokens are dropped and the rest laid out on the patch grid of the input).
        crop_pct: centre-crop fraction of the weights' reference evaluation transform (timm ``crop_pct``),
            None where not recorded. medcli resizes whole images and does not crop; recorded for reference.
        pretrained_tag: timm pretrained tag (``"fb_in22k"``), None otherwise.
        license: licence of the pretrained weights as timm records it, None if unknown.
    """

    name: str
    family: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    imagenet_weights: str | None
    stages: tuple[tuple[str, ...], ...]
    cam_layer: str
    classifier: str | None = None
    cam_reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    fixed_size: bool = False
    build: Callable[[int], nn.Module] | None = None
    timm_name: str | None = None
    timm_kwargs: tuple[tuple[str, object], ...] = ()
    cam_layout: str = "nchw"
    crop_pct: float | None = None
    pretrained_tag: str | None = None
    license: str | None = None


_BACKBONES: Registry[BackboneInfo] = Registry("backbone")


def register_backbone(info: BackboneInfo, *, overwrite: bool = False) -> BackboneInfo:
    """Add a backbone (``overwrite=True`` replaces an existing entry of that name)."""
    if info.family not in ("custom", "torchvision", "timm"):
        raise ValueError(f"backbone {info.name!r}: family must be 'custom', 'torchvision' or 'timm', not {info.family!r}")
    if info.family == "timm" and not info.timm_name:
        raise ValueError(f"backbone {info.name!r}: a timm backbone needs timm_name")
    if info.cam_layout not in ("nchw", "nhwc", "tokens"):
        raise ValueError(f"backbone {info.name!r}: cam_layout must be 'nchw', 'nhwc' or 'tokens', not {info.cam_layout!r}")
    if info.family == "custom" and info.build is None:
        raise ValueError(f"backbone {info.name!r}: a custom backbone needs a build function")
    if info.family == "torchvision" and not info.classifier:
        raise ValueError(f"backbone {info.name!r}: a torchvision backbone must name its final layer (classifier)")
    if not info.stages or not all(info.stages):
        raise ValueError(f"backbone {info.name!r}: stages must be non-empty groups of names")
    return _BACKBONES.add(info.name, info, overwrite=overwrite)


def register_timm_backbone(name: str, model: str, *, overwrite: bool = False, **model_kwargs) -> BackboneInfo:
    """Register timm model ``model`` (``arch``, ``arch.tag`` or ``hf-hub:ORG/NAME``) under the medcli name
    ``name``, built with ``model_kwargs`` (e.g. ``depth=2, embed_dim=32`` for a small test configuration).

    The entry (stages, Grad-CAM layer, data config) is derived from timm as for on-demand names. Raises
    :class:`MedcliError` for an unknown timm name.
    """
    from .timm_backbones import timm_backbone_info

    info = timm_backbone_info(model, medcli_name=name, model_kwargs=model_kwargs)
    return register_backbone(info, overwrite=overwrite)


def list_backbones() -> list[str]:
    """medcli's registered backbone names (timm names resolve on demand and are not listed here)."""
    return _BACKBONES.names()


def get_backbone(name: str) -> BackboneInfo:
    """The entry of backbone ``name``: a registered medcli name first, else a timm / Hugging Face Hub name.

    Raises :class:`MedcliError` naming the closest known names for an unknown name (difflib over medcli's
    names and ``timm.list_models()``), and for ``hf-hub:`` names whose config is neither cached nor
    downloadable (the message names ``medcli weights download``).
    """
    known = _BACKBONES.names()
    if name in known:
        return _BACKBONES.get(name)
    from .timm_backbones import timm_backbone_info

    return timm_backbone_info(name, known=known)


def _torchvision(
    name: str,
    weights: str,
    stages: list[list[str]],
    cam_layer: str,
    classifier: str,
    *,
    interpolation: str = "bilinear",
    **extra,
) -> BackboneInfo:
    """Entry for a torchvision classification model with ImageNet statistics and 224 px crops."""
    return register_backbone(
        BackboneInfo(
            name=name,
            family="torchvision",
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation=interpolation,
            imagenet_weights=weights,
            stages=tuple(tuple(group) for group in stages),
            cam_layer=cam_layer,
            classifier=classifier,
            **extra,
        )
    )


def _features(*indices: int) -> list[str]:
    return [f"features.{i}" for i in indices]


register_backbone(
    BackboneInfo(
        name="customcnn",
        family="custom",
        input_size=64,
        # Trained from scratch on data in [0, 1]: centring on 0.5 is the neutral choice.
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        imagenet_weights=None,
        stages=tuple((f"blocks.{i}",) for i in range(4)),
        cam_layer="blocks.3.bn",  # last block before its max-pool: twice the resolution of the block output
        build=CustomCNN,
    )
)

register_backbone(
    BackboneInfo(
        name="resnet18_small",  # MedMNIST v2's "ResNet-18 (28)": the CIFAR-style stem (models/small_resnet.py)
        family="custom",
        input_size=28,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),  # MedMNIST's Normalize(mean=[.5], std=[.5]); random init uses the training fold's own statistics
        interpolation="bilinear",
        imagenet_weights=None,
        stages=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
        cam_layer="layer4",
        build=resnet18_small,
    )
)

for _name, _weights in (("resnet18", "ResNet18_Weights.IMAGENET1K_V1"), ("resnet50", "ResNet50_Weights.IMAGENET1K_V2")):
    _torchvision(
        _name,
        _weights,
        [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]],
        cam_layer="layer4",
        classifier="fc",
    )

_torchvision(
    "densenet121",
    "DenseNet121_Weights.IMAGENET1K_V1",
    [
        ["features.conv0", "features.norm0"],
        *([f"features.denseblock{i}", f"features.transition{i}"] for i in (1, 2, 3)),
        ["features.denseblock4", "features.norm5"],
    ],
    # Not norm5: DenseNet applies an in-place ReLU to norm5's output, which breaks gradient hooks on it.
    cam_layer="features.denseblock4",
    classifier="classifier",
)

# EfficientNet / MobileNet: the flat `features` list grouped by output resolution (stride 2, 4, 8, 16, 32).
_torchvision(
    "efficientnet_b0",
    "EfficientNet_B0_Weights.IMAGENET1K_V1",
    [_features(0, 1), _features(2), _features(3), _features(4, 5), _features(6, 7, 8)],
    cam_layer="features.8",
    classifier="classifier.1",
    interpolation="bicubic",
)

_torchvision(
    "mobilenet_v3_large",
    "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
    # classifier.0 (960 -> 1280 pre-logits, pretrained) stays in the trunk; only classifier.3 is replaced.
    [
        _features(0, 1),
        _features(2, 3),
        _features(4, 5, 6),
        _features(*range(7, 13)),
        [*_features(*range(13, 17)), "classifier.0"],
    ],
    cam_layer="features.16",
    classifier="classifier.3",
)

_torchvision(
    "convnext_tiny",
    "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
    # Each downsampling layer opens its stage; the final LayerNorm (classifier.0) closes the last one.
    [_features(0, 1), _features(2, 3), _features(4, 5), [*_features(6, 7), "classifier.0"]],
    cam_layer="features.7",
    classifier="classifier.2",
)

_torchvision(
    "vit_b_16",
    "ViT_B_16_Weights.IMAGENET1K_V1",
    [
        ["conv_proj", "class_token", "encoder.pos_embedding"],
        *([f"encoder.layers.encoder_layer_{i}" for i in range(start, start + 3)] for start in (0, 3, 6)),
        [*(f"encoder.layers.encoder_layer_{i}" for i in (9, 10, 11)), "encoder.ln"],
    ],
    # The usual ViT Grad-CAM target: the last block's first LayerNorm, whose output still has one token per patch.
    cam_layer="encoder.layers.encoder_layer_11.ln_1",
    classifier="heads.head",
    cam_reshape_transform=vit_tokens_to_grid,
    fixed_size=True,
)
