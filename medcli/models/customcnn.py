"""The from-scratch baseline CNN.

Many published notebooks on small medical-imaging datasets compare transfer learning against a small CNN
trained from scratch: a few blocks of 3x3 convolution, ReLU, batch normalisation and 2x2 max-pooling with a
doubling number of filters. :class:`CustomCNN` is that network as a trunk (image batch -> pooled feature
vector), so it plugs into the same heads, strategies and Grad-CAM code as the torchvision backbones.

Global average pooling (instead of the notebooks' ``Flatten``) makes it independent of the input size: any
size from 32 px up works, and a trunk trained at one size can be evaluated at another.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

DEFAULT_WIDTHS = (32, 64, 128, 256)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Named children (conv/relu/bn/pool) keep state-dict keys readable ("blocks.0.conv.weight") and let the
    # registry point Grad-CAM at the last block's pre-pooling activation ("blocks.3.bn").
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            # Not in-place: Grad-CAM hooks read this block's activations, and an in-place ReLU would
            # rewrite a tensor autograd still needs.
            relu=nn.ReLU(),
            bn=nn.BatchNorm2d(out_channels),
            pool=nn.MaxPool2d(kernel_size=2),
        )
    )


class CustomCNN(nn.Module):
    """Conv3x3 -> ReLU -> BatchNorm -> MaxPool blocks, then global average pooling.

    Args:
        in_channels: image channels (1 for grey scale, 3 for RGB).
        widths: filters per block; the default 32 -> 64 -> 128 -> 256 halves the resolution four times,
            so a 32 px input ends as a 2x2 map before pooling.
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(*(_block(a, b) for a, b in zip(channels[:-1], channels[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(x)), 1)
