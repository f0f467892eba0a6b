"""ResNet-18 for small images: the CIFAR-style stem (He et al., "Deep residual learning for image recognition",
CVPR 2016, section 4.2), as the MedMNIST v2 benchmark's "ResNet-18 (28)" (``MedMNIST/experiments/MedMNIST2D/
models.py``, adapted from kuangliu/pytorch-cifar).

torchvision's ImageNet ResNet-18 starts with a 7x7 stride-2 convolution and a stride-2 max-pooling: a 28 px image
is 7 x 7 after the stem and 1 x 1 in the last stage. This variant keeps the same four stages of basic blocks but
starts with a 3x3 stride-1 convolution and no max-pooling, so a 28 px image is 28 x 28 in the first stage and
4 x 4 in the last: about 20x the compute of torchvision's network at 28 px, and what small-image benchmarks
report. It has no pretrained weights (the stem differs from ImageNet's); train it from scratch.
"""

from __future__ import annotations

from torch import nn


def resnet18_small(in_channels: int) -> nn.Module:
    """The trunk ``(B, in_channels, H, W) -> (B, 512)``: torchvision's ResNet-18 with a 3x3 stride-1 stem
    convolution, no max-pooling and no classification layer; ``out_features`` is 512."""
    from torchvision.models import resnet18

    trunk = resnet18(weights=None)
    trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    trunk.maxpool = nn.Identity()
    trunk.fc = nn.Identity()
    trunk.out_features = 512
    return trunk
