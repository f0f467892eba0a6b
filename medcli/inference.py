"""One inference loop, shared by training (validation logits), evaluation and the feature cache.

:func:`infer` runs a model in eval mode, without gradients, batch by batch, and puts every output row at the
position it belongs to. What a batch is (positions from an Accelerate data loader, or consecutive rows of an
image store), how its input is made and which autocast it runs under are the caller's; the loop itself, the
optional test-time flip and the reordering are written once here. It depends on torch alone, so every stage
can use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch


@torch.no_grad()
def infer(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    inputs: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    tta: bool = False,
    gather: Callable[[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Outputs ``(n, ...)`` float32 on the CPU; row ``i`` is the output for position ``i``.

    * ``model``: a module (switched to eval mode here and left there) or any callable on a batch.
    * ``batches``: 1-D long tensors of positions in ``0..n-1``, e.g. :func:`row_batches` or a data loader's
      index batches (a ``(positions,)`` tuple, as a ``TensorDataset`` gives, is unpacked). Every position must
      come exactly once, in any order.
    * ``inputs(positions)``: the model's input for those positions, on the model's device.
    * ``autocast``: a zero-argument function returning the context the forward pass runs in (e.g.
      ``accelerator.autocast``); the default runs in full precision.
    * ``tta``: also run the horizontally flipped input (last axis) and return the log of the mean of the two
      softmaxes (computed in log space, so a saturated softmax never gives ``log(0)``): log-probabilities, not
      logits.
    * ``gather``: applied to ``(positions, outputs)`` of each batch, e.g. Accelerate's ``gather_for_metrics``,
      so that every process returns every position.

    Raises ``ValueError`` when the batches do not cover ``n`` positions. With ``n == 0`` and no batch the
    result has shape ``(0, 0)``.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    out: torch.Tensor | None = None
    seen = 0
    for idx in batches:
        if isinstance(idx, (tuple, list)):
            (idx,) = idx
        x = inputs(idx)
        with autocast():
            y = model(x).float()
            if tta:
                flipped = model(torch.flip(x, dims=[3])).float()
                both = torch.stack([torch.log_softmax(y, 1), torch.log_softmax(flipped, 1)])
                y = torch.logsumexp(both, 0) - math.log(2)
        if gather is not None:
            idx, y = gather((idx.to(y.device), y))
        if out is None:
            out = torch.empty((n, *y.shape[1:]), dtype=torch.float32)
        out[idx.cpu()] = y.cpu()
        seen += len(idx)
    if seen != n:
        raise ValueError(f"inference covered {seen} positions, expected {n}")
    return out if out is not None else torch.empty((0, 0), dtype=torch.float32)


def row_batches(rows: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Positions ``0..len(rows)-1`` in consecutive chunks of ``batch_size`` (the last one shorter), each chunk
    ordered by its row number, so that a memory-mapped image store is read front to back within a batch.

    Which images share a batch depends only on the positions, never on the row numbers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rows = np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        yield torch.from_numpy(start + np.argsort(chunk, kind="stable"))


def store_pixels(images: np.ndarray, rows: np.ndarray, device) -> torch.Tensor:
    """``images[rows]`` (a store's N x H x W x C uint8 array) as an ``(N, C, H, W)`` uint8 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2).to(device)
