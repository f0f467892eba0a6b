"""The model every medcli experiment trains: a backbone trunk followed by a classification head.

``Classifier.trunk`` maps an image batch ``(B, C, H, W)`` to pooled features ``(B, F)``; ``Classifier.head`` maps
those to logits ``(B, num_classes)``. The trunk of a torchvision backbone is the torchvision model itself with
its final layer replaced by ``Identity``, so trunk parameter names are the torchvision names (``conv1.weight``,
``layer4.1.bn2.bias``...) and a plain torchvision state dict loads into it once its final layer's keys are
dropped. The trunk of a timm backbone is the timm model with ``num_classes=0`` (classifier ``Identity``,
output the pooled pre-logits features), so its names are timm's (see :mod:`medcli.models.timm_backbones`).
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from torch import nn

from ..errors import MedcliError
from ._registry import BackboneInfo, get_backbone, nhwc_to_nchw
from .heads import build_head, get_head

log = logging.getLogger("medcli")


def find_input_conv(trunk: nn.Module, in_channels: int = 3) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` (in module order) that reads ``in_channels`` channels: the image-facing conv.

    This holds for every registered backbone (ResNet ``conv1``, DenseNet ``features.conv0``, EfficientNet /
    MobileNet / ConvNeXt ``features.0.0``, ViT ``conv_proj``, the custom CNN's first block).
    """
    for name, module in trunk.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_channels:
            return name, module
    raise ValueError(f"no Conv2d with {in_channels} input channels in {type(trunk).__name__}")


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _single_channel_copy(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1-channel version of ``conv`` that keeps the network's own initialisation scheme.

    The new filters are the old filters' first input channel (not their sum): without pretrained weights there
    is nothing to preserve, and slicing keeps the weight distribution the architecture was designed with.
    """
    new = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, :1])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _build_trunk(info: BackboneInfo, in_channels: int, img_size: int) -> tuple[nn.Module, int]:
    """Build the randomly initialised trunk and return it with its feature dimension."""
    if info.family == "custom":
        trunk = info.build(in_channels)
        return trunk, int(trunk.out_features)
    import torchvision  # here, not at the top: `import torchvision` costs ~1.5 s (its ops import torch._dynamo), and the custom and timm backbones never use it

    kwargs = {"image_size": img_size} if info.fixed_size else {}
    try:
        net = torchvision.models.get_model(info.name, weights=None, **kwargs)
    except (AssertionError, ValueError) as exc:  # e.g. ViT: image size not a multiple of the patch size
        raise MedcliError(f"{info.name} cannot be built for img_size {img_size}: {exc}") from None
    final = net.get_submodule(info.classifier)
    if not isinstance(final, nn.Linear):
        kind = type(final).__name__
        raise TypeError(f"{info.name}: the registered classifier {info.classifier!r} is a {kind}, not a Linear")
    replace_module(net, info.classifier, nn.Identity())
    if in_channels != 3:
        name, conv = find_input_conv(net, 3)
        replace_module(net, name, _single_channel_copy(conv))
    return net, final.in_features


class Classifier(nn.Module):
    """``forward(x) = head(trunk(x))`` plus the structure strategies and Grad-CAM need.

    Attributes:
        backbone: registry name of the backbone; ``info`` is its :class:`BackboneInfo`.
        feature_dim: size of the trunk's feature vector.
        input_conv: dotted trunk name of the image-facing convolution.
        config: the constructor arguments needed to rebuild the model (stored in checkpoints).
    """

    def __init__(
        self,
        info: BackboneInfo,
        trunk: nn.Module,
        head: nn.Module,
        *,
        feature_dim: int,
        num_classes: int,
        in_channels: int,
        head_name: str,
        img_size: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.info = info
        self.backbone = info.name
        self.feature_dim = feature_dim
        self.input_conv = find_input_conv(trunk, in_channels)[0]
        self._token_grid = None  # timm token models: the Grad-CAM reshape, made on first use
        self.config = {
            "backbone": info.name,
            "head": head_name,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "img_size": img_size,
            "hidden": hidden,
            "dropout": dropout,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def _resolve(self, name: str) -> nn.Module | nn.Parameter:
        try:
            return self.trunk.get_submodule(name)
        except AttributeError:
            return self.trunk.get_parameter(name)

    def stages(self) -> list[list[nn.Module]]:
        """Trunk modules grouped into stages, ordered from input to output.

        Loose parameters named by a stage (ViT's class token and position embedding) are not modules and are
        left out here; :meth:`stage_parameters` includes them.
        """
        return [[m for m in map(self._resolve, group) if isinstance(m, nn.Module)] for group in self.info.stages]

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Every trunk parameter, grouped by stage (input to output); each parameter appears exactly once."""
        groups = []
        for group in self.info.stages:
            params: list[nn.Parameter] = []
            for obj in map(self._resolve, group):
                params.extend(obj.parameters() if isinstance(obj, nn.Module) else [obj])
            groups.append(params)
        return groups

    def cam_target_layer(self) -> nn.Module:
        return self.trunk.get_submodule(self.info.cam_layer)

    @property
    def cam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Turns the CAM layer's output into ``(B, C, h, w)``; None when it is one already.

        The registered transform if any; else by ``info.cam_layout``: NHWC maps permuted, token sequences
        (timm ViT/DeiT/DINOv2) without their ``num_prefix_tokens`` class/register tokens on the patch grid of
        the trunk's last input (a forward pre-hook on the trunk, registered on first use, records its H x W).
        """
        if self.info.cam_reshape_transform is not None:
            return self.info.cam_reshape_transform
        if self.info.cam_layout == "nhwc":
            return nhwc_to_nchw
        if self.info.cam_layout == "tokens":
            if self._token_grid is None:
                from .timm_backbones import TokenGrid

                self._token_grid = TokenGrid(self.trunk)
                self.trunk.register_forward_pre_hook(self._token_grid.record_input)
            return self._token_grid
        return None


def create_model(
    backbone: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    head: str = "linear",
    weights: str | os.PathLike | None = None,
    dropout: float = 0.5,
    hidden: int = 256,
    img_size: int | None = None,
) -> Classifier:
    """Build a classifier, optionally initialising its trunk from pretrained weights.

    Args:
        backbone: a registered backbone name (see :func:`list_backbones`) or a timm name (``arch.tag``, ``arch``,
            ``hf-hub:ORG/NAME``; see :func:`get_backbone`).
        num_classes: number of output logits.
        in_channels: 1 (grey scale) or 3. Pretrained 3-channel input filters are summed over RGB for 1-channel
            input (as timm does), which gives the same response to a grey image as the RGB network.
        head: a registered head name (see :func:`list_heads`).
        weights: None / ``"none"`` (random), ``"imagenet"`` (alias ``"pretrained"``: the backbone's pretrained
            weights; for timm its tag's, from the Hugging Face cache), or the path of a weights file (see
            :mod:`medcli.models.weights`). The head is always freshly initialised.
        dropout, hidden: ``mlp`` head settings.
        img_size: training input size, default the backbone's ``input_size``. Only fixed-size backbones
            (ViT, Swin) are built for it: their pretrained position embeddings, made for 224 px, are bicubically
            interpolated to the new patch grid; for torchvision's ViT the size must be a multiple of the patch
            size (16). Convolutional backbones accept any size and only record it.

    Raises :class:`MedcliError` for unknown names, bad arguments, weights that are missing, not cached and not
    downloadable (with the ``medcli weights download`` command to run), gated, or that do not fit.
    """
    from .weights import imagenet_state_dict, is_medcli_checkpoint, load_trunk_weights, read_weights_file, resolve_weights

    info = get_backbone(backbone)
    get_head(head)
    if int(num_classes) < 2:
        raise MedcliError(f"num_classes {num_classes}: a classifier needs at least 2 classes")
    if in_channels not in (1, 3):
        raise MedcliError(f"in_channels {in_channels}: use 1 (grey scale) or 3 (RGB)")
    if not 0 <= dropout < 1:
        raise MedcliError(f"dropout {dropout}: use a probability in [0, 1)")
    if int(hidden) < 1:
        raise MedcliError(f"hidden {hidden}: the mlp head needs at least 1 hidden unit")
    img_size = info.input_size if img_size is None else int(img_size)
    if img_size < 1:
        raise MedcliError(f"img_size {img_size}: use a positive number of pixels")
    source = resolve_weights(info, weights)  # fail on a bad weights argument before building anything

    load_file = source is not None and source != "imagenet"
    if info.family == "timm":
        from .timm_backbones import build_timm_trunk, read_timm_weights_file

        state = None
        if load_file and not is_medcli_checkpoint(source):
            state = read_timm_weights_file(source, info.name)
            load_file = False  # loaded by timm, with its in_chans / position-embedding adaptation
        trunk, feature_dim = build_timm_trunk(
            info, in_channels, img_size, pretrained=source == "imagenet", state_dict=state,
            source=None if state is None else str(source),
        )
        source = source if load_file else None
    else:
        trunk, feature_dim = _build_trunk(info, in_channels, img_size)
    model = Classifier(
        info,
        trunk,
        build_head(head, feature_dim, int(num_classes), dropout=float(dropout), hidden=int(hidden)),
        feature_dim=feature_dim,
        num_classes=int(num_classes),
        in_channels=in_channels,
        head_name=head,
        img_size=img_size,
        hidden=int(hidden),
        dropout=float(dropout),
    )
    if source == "imagenet":
        load_trunk_weights(model, imagenet_state_dict(info.name), f"ImageNet weights for {info.name}")
    elif source is not None:
        load_trunk_weights(model, read_weights_file(source, backbone=info.name), str(source))
    return model
