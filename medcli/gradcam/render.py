"""Pictures of CAMs: heat-map overlays, side-by-side PNGs per image and a gallery per class.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot), so nothing is left open and the
caller's matplotlib state and backend are untouched. File names derived from image ids and class names go
through :func:`medcli.paths.safe_name` / :func:`medcli.paths.image_file_name`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..paths import image_file_name, safe_name  # noqa: F401  (file names are part of the results layout)

CMAP = "jet"
ALPHA = 0.5
MIN_DISPLAY = 256  # per-image PNGs are enlarged (nearest neighbour) until each half is at least this wide


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 1 | 3)`` or ``(H, W)`` uint8 -> ``(H, W, 3)`` uint8."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def overlay(image: np.ndarray, cam: np.ndarray, *, alpha: float = ALPHA, cmap: str = CMAP) -> np.ndarray:
    """The CAM (values in [0, 1]) as a colour map blended over the image: ``(H, W, 3)`` uint8."""
    from matplotlib import colormaps

    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * as_rgb(image).astype(np.float64) + alpha * heat
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_pair(path: str | os.PathLike, image: np.ndarray, cam: np.ndarray) -> None:
    """Write ``original | overlay`` side by side as one PNG, enlarged for viewing (nearest neighbour)."""
    from PIL import Image

    left, right = as_rgb(image), overlay(image, cam)
    height, width = left.shape[:2]
    gap = np.full((height, max(1, width // 32), 3), 255, np.uint8)
    pair = np.concatenate([left, gap, right], axis=1)
    factor = max(1, math.ceil(MIN_DISPLAY / max(height, width)))
    if factor > 1:
        pair = pair.repeat(factor, axis=0).repeat(factor, axis=1)
    Image.fromarray(pair).save(path, format="PNG")


@dataclass(frozen=True)
class Tile:
    """One gallery entry: the model-input image (uint8), its CAM in [0, 1] and a caption."""

    image: np.ndarray
    cam: np.ndarray
    caption: str
    correct: bool


def save_gallery(path: str | os.PathLike, tiles: Sequence[Tile], title: str, *, columns: int = 4) -> None:
    """A grid of tiles, each the original image and its overlay, with a shared colour bar for CAM values."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not tiles:
        raise ValueError("a gallery needs at least one tile")
    import textwrap

    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    tile_w, tile_h = 3.0, 1.9  # inches
    # the title wrapped to the figure's width (8 pt text: about 15 characters per inch), never cut at its edges
    title = textwrap.fill(title, width=max(30, int((cols * tile_w + 0.9) * 15)))
    head = 0.65 + 0.18 * (title.count("\n") + 1)
    fig = Figure(figsize=(cols * tile_w + 0.9, rows * tile_h + head), dpi=110)
    height = rows * tile_h + head
    grid = fig.add_gridspec(rows, cols * 2, left=0.02, right=1 - 0.9 / (cols * tile_w + 0.9), bottom=0.2 / height,
                            top=1 - head / height, wspace=0.05, hspace=0.55)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        original, blended = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        if tile.image.ndim == 2 or tile.image.shape[-1] == 1:
            original.imshow(tile.image.reshape(tile.image.shape[:2]), cmap="gray", vmin=0, vmax=255)
        else:
            original.imshow(tile.image)
        blended.imshow(overlay(tile.image, tile.cam))
        for ax in (original, blended):
            ax.set_xticks([])
            ax.set_yticks([])
        original.set_title(tile.caption, fontsize=7, loc="left", color="tab:green" if tile.correct else "tab:red")
    colorbar_axes = fig.add_axes((1 - 0.75 / (cols * tile_w + 0.9), 0.2 / height + 0.05, 0.15 / (cols * tile_w + 0.9), 0.6))
    fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), cax=colorbar_axes).set_label("CAM (min-max per image)", fontsize=7)
    colorbar_axes.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=8, y=1 - 0.1 / height, va="top")
    fig.savefig(path, format="png")
