"""Training batches straight from the decoded-image store: uint8 in, augmented and normalized floats out.

The pixel-to-input transform (augmentation and normalization) is :func:`medcli.preprocess.to_model_input`,
shared with evaluation and Grad-CAM; this module holds what only training needs: the fold's images
(:class:`ImageSet`), the normalization statistics and the seeded batch order. No image file is decoded during
training.
"""

from __future__ import annotations

import numpy as np
import torch

from ..preprocess import AugmentSettings, affine_grid, random_affine, to_model_input  # noqa: F401  (shared with evaluation and gradcam)

PRELOAD_LIMIT_BYTES = 2 * 1024**3  # folds smaller than this are copied to RAM once; larger ones are read from the memory map
GPU_SHARE = 0.25  # a fold's images are kept on the GPU when they take at most this share of its free memory


class ImageSet:
    """The images and labels of one part of a fold (train or val), addressed by position."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.ids = list(ids)
        nbytes = len(self.rows) * int(np.prod(images.shape[1:]))
        if nbytes <= PRELOAD_LIMIT_BYTES:
            self._images: np.ndarray | torch.Tensor = torch.from_numpy(np.ascontiguousarray(images[np.sort(self.rows)]))
            order = np.argsort(np.argsort(self.rows))  # position of each row in the sorted copy
            self._images = self._images[torch.from_numpy(order)]
            self._mapped = False
        else:
            self._images = images
            self._mapped = True

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * int(np.prod(self._images.shape[1:]))

    def to(self, device: torch.device) -> "ImageSet":
        """Keep the images on ``device`` from now on (on a GPU, a batch is then gathered there, without a copy from
        the host per step); images read from the memory map stay where they are. Returns ``self``."""
        if not self._mapped:
            self._images = self._images.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self._mapped else self._images.device

    def pixels(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(B, C, H, W)`` at ``positions``, on :attr:`device`."""
        if not self._mapped:
            return self._images[positions.to(self._images.device)].permute(0, 3, 1, 2)
        rows = self.rows[positions.cpu().numpy()]
        order = np.argsort(rows)
        batch = np.empty((len(rows), *self._images.shape[1:]), np.uint8)
        batch[order] = self._images[rows[order]]  # sorted reads are sequential on disk
        return torch.from_numpy(batch).permute(0, 3, 1, 2)


def keep_on_device(images: ImageSet, device: torch.device) -> bool:
    """Move ``images`` to ``device`` when it is a GPU and they take at most :data:`GPU_SHARE` of its free memory
    (the training part of chest CT at 224 px, 92 MB, does on any GPU); whether they moved."""
    if device.type != "cuda" or images.device.type != "cpu" or images._mapped:
        return False
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes > GPU_SHARE * free:
        return False
    images.to(device)
    return True


def normalization(pretrained: bool, backbone_mean, backbone_std, channels: int, train_images: ImageSet | None = None) -> tuple[list[float], list[float]]:
    """Mean/std used to normalize inputs.

    Pretrained weights get the statistics they were trained with (ImageNet for torchvision models); for one
    channel, the average of the RGB values (the adapted first convolution sums the RGB filters). Random
    initialization gets the training fold's own per-channel statistics (never validation or test images).
    """
    if pretrained:
        mean, std = list(backbone_mean), list(backbone_std)
        if channels == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        return mean, std
    assert train_images is not None
    sums = np.zeros(channels)
    sq = np.zeros(channels)
    count = 0
    for start in range(0, len(train_images), 512):
        x = train_images.pixels(torch.arange(start, min(start + 512, len(train_images)))).double() / 255
        sums += x.sum(dim=(0, 2, 3)).numpy()
        sq += (x**2).sum(dim=(0, 2, 3)).numpy()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
    return [float(m) for m in mean], [float(max(s, 1e-3)) for s in std]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of ``range(n)`` that depends only on (seed, epoch): a resumed run sees the same order."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def index_loader(n: int, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool) -> torch.utils.data.DataLoader:
    """A DataLoader over positions ``0..n-1`` (the pixels are fetched from the :class:`ImageSet`)."""
    dataset = torch.utils.data.TensorDataset(torch.arange(n))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n, seed, shuffle), drop_last=drop_last)
