"""Does the model's confidence depend on the region a CAM highlights? Keep/remove tests on the top CAM pixels.

For an image ``x`` (normalised model input), its CAM and the explained class ``c``:

* ``M`` marks the ``k = max(1, round(fraction * H * W))`` pixels with the highest CAM values (exactly ``k``;
  ties go to the earlier pixel in row-major order), all channels;
* ``keep = x * M`` keeps only that region, ``remove = x * (1 - M)`` blanks it. Blanked pixels become 0 in
  normalised space, i.e. the preprocessing mean intensity: a neutral grey rather than black, so the test does
  not introduce an edge of extreme values;
* with ``p(.)`` the softmax probability of class ``c``: ``drop_keep = p(x) - p(keep)`` and
  ``drop_remove = p(x) - p(remove)`` (signed differences of probabilities, in [-1, 1]);
* ``score = drop_remove - drop_keep = p(keep) - p(remove)``: higher is more faithful. A CAM that points at
  what the model uses loses little confidence when only its region is kept and much when the region is removed.

This is a deletion/preservation test in the spirit of Petsiuk et al. (RISE, 2018) and the "Average Drop" of
Chattopadhay et al. (Grad-CAM++, 2018), reduced to one fixed fraction so that it costs two forward passes per
image. Its absolute values depend on the model and the data (blanking 80 % of an image is far out of
distribution); use it to compare methods and runs on the same images, not as an absolute quality grade.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cams import model_device, preserved_state

TOP_FRACTION = 0.2


def top_masks(cams: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean masks ``(N, H, W)`` of each map's ``max(1, round(fraction * H * W))`` highest pixels."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction}: use a value in (0, 1]")
    n, height, width = cams.shape
    k = max(1, int(round(fraction * height * width)))
    flat = cams.reshape(n, -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    masks = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(masks, top, True, axis=1)
    return masks.reshape(n, height, width)


def confidence_drops(
    model: nn.Module,
    inputs: torch.Tensor,
    cams: np.ndarray,
    classes: Sequence[int],
    *,
    fraction: float = TOP_FRACTION,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per-image keep/remove confidence drops (see the module docstring), as float arrays of length N.

    Keys: ``prob`` (of the explained class on the full image), ``prob_keep``, ``prob_remove``, ``drop_keep``,
    ``drop_remove``, ``score``.
    """
    if len(cams) != len(inputs) or len(classes) != len(inputs):
        raise ValueError(f"{len(inputs)} images, {len(cams)} CAMs and {len(classes)} classes: they must match")
    masks = torch.from_numpy(top_masks(cams, fraction)).unsqueeze(1)
    target = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    device = model_device(model)
    out = {key: np.zeros(len(inputs), dtype=np.float64) for key in ("prob", "prob_keep", "prob_remove")}
    with preserved_state(model, freeze=False), torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            x = inputs[start : start + batch_size].to(device, dtype=torch.float32)
            m = masks[start : start + batch_size].to(device, dtype=x.dtype)
            c = target[start : start + batch_size].to(device)
            rows = torch.arange(len(x), device=device)
            for key, variant in (("prob", x), ("prob_keep", x * m), ("prob_remove", x * (1 - m))):
                probs = torch.softmax(model(variant).float(), dim=1)[rows, c]
                out[key][start : start + len(x)] = probs.double().cpu().numpy()
    out["drop_keep"] = out["prob"] - out["prob_keep"]
    out["drop_remove"] = out["prob"] - out["prob_remove"]
    out["score"] = out["drop_remove"] - out["drop_keep"]
    return out
