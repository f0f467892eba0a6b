"""Training inputs: the fast sampling grid and the fused normalization compute what the textbook formulas do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medcli.training.batches import AugmentSettings, affine_grid, random_affine, to_model_input


def _reference(pixels, mean, std, augment=None, generator=None):
    """The straightforward version: scale to 0..1, F.affine_grid + grid_sample, then (x - mean) / std."""
    x = pixels.float() / 255
    if augment is not None:
        theta = random_affine(x.shape[0], augment, generator)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


@pytest.mark.parametrize("size", [(4, 1, 32, 32), (3, 3, 24, 40), (2, 3, 1, 5)])
def test_affine_grid_matches_torch(size):
    theta = random_affine(size[0], AugmentSettings(rotate=30, zoom=0.3, shift=0.2), torch.Generator().manual_seed(1))
    expected = F.affine_grid(theta, list(size), align_corners=False)
    assert torch.allclose(affine_grid(theta, list(size)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_model_input_matches_the_reference(channels):
    nhwc = torch.randint(0, 256, (6, 48, 40, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels = nhwc.permute(0, 3, 1, 2)  # as ImageSet.pixels returns them
    mean, std = torch.rand(channels) * 0.5 + 0.2, torch.rand(channels) * 0.2 + 0.1
    plain = to_model_input(pixels, mean, std)
    assert torch.allclose(plain, _reference(pixels, mean, std), atol=1e-5, rtol=0)
    aug = AugmentSettings()
    got = to_model_input(pixels, mean, std, augment=aug, generator=torch.Generator().manual_seed(5))
    want = _reference(pixels, mean, std, augment=aug, generator=torch.Generator().manual_seed(5))
    assert got.shape == want.shape == (6, channels, 48, 40)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    # the padding outside the image is black (0 before normalization), as before: nothing darker
    assert (got >= (-mean / std).view(1, -1, 1, 1) - 1e-4).all()
    assert pixels.dtype == torch.uint8  # the input is left alone


def test_channels_last_output():
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    x = to_model_input(pixels, torch.zeros(3), torch.ones(3), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, pixels.float() / 255)


def test_an_image_set_moved_to_a_device_gathers_batches_there_and_the_cpu_keeps_its_own():
    from medcli.training.batches import ImageSet, keep_on_device

    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    part = ImageSet(images, rows=np.array([4, 1, 3]), labels=np.array([0, 1, 0]), ids=["e", "b", "d"])
    want = torch.from_numpy(images[[3, 4]]).permute(0, 3, 1, 2)
    assert torch.equal(part.pixels(torch.tensor([2, 0])), want) and part.device.type == "cpu"
    assert not keep_on_device(part, torch.device("cpu"))  # only a GPU is worth it
    part.to(torch.device("meta"))  # a device other than the CPU (no GPU here): batches are gathered on it
    got = part.pixels(torch.tensor([2, 0]))
    assert got.device.type == "meta" and got.shape == want.shape and got.dtype == torch.uint8
