"""Decode any image file to a consistent uint8 array.

Every PIL mode ends as ``L`` (grayscale) or ``RGB``:
    * 16/32-bit integer and float images (``I;16``, ``I``, ``F``) are min-max scaled per image to 0..255;
    * transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is composited onto black,
      the background of CT, MR and X-ray images;
    * palette, CMYK, YCbCr, LAB, HSV and 1-bit images are converted by PIL.
The file's extension is never trusted: PIL reads the format from the bytes (a JPEG named ``.png`` decodes fine
and is reported). Truncated or non-image files raise :class:`DecodeError`.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
from PIL import Image, ImageFile

Image.MAX_IMAGE_PIXELS = 20000 * 20000  # medical images can be large; still guard against decompression bombs
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_MODES = ("squash", "pad", "crop")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
_EXT_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".gif": "GIF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM",
}


class DecodeError(Exception):
    """The file is not a readable image (zero bytes, truncated, not an image at all)."""


def open_image(path: str | os.PathLike, draft_size: int | None = None) -> tuple[Image.Image, str, str]:
    """Open and fully decode ``path``; return ``(image, original_mode, format)``.

    ``draft_size`` lets JPEG decoding skip detail that a later downscale would throw away (much faster).
    """
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            fmt = img.format or "unknown"
            mode = img.mode
            if draft_size and fmt == "JPEG":
                img.draft(img.mode, (draft_size, draft_size))
            img.load()
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None
    return img, mode, fmt


def extension_lies(path: str | os.PathLike, fmt: str) -> bool:
    """True when the file's extension names a different format than its bytes (e.g. a JPEG named .png)."""
    expected = _EXT_FORMATS.get(os.path.splitext(str(path))[1].lower())
    return expected is not None and fmt not in (expected, "MPO" if expected == "JPEG" else expected)


def normalize_mode(img: Image.Image) -> Image.Image:
    """Return ``img`` as ``L`` or ``RGB`` (see the module docstring for the rules)."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return Image.fromarray(scaled, "L")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return flat.convert("L") if mode in ("LA", "La") else flat
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert an ``L``/``RGB`` image to 1 or 3 channels (RGB to gray uses ITU-R 601-2 luma)."""
    if channels == 1:
        return img if img.mode == "L" else img.convert("L")
    if channels == 3:
        return img if img.mode == "RGB" else img.convert("RGB")
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def resize(img: Image.Image, size: int, mode: str = "squash", interpolation: str = "bilinear") -> Image.Image:
    """Resize to ``size`` x ``size``.

    ``squash`` stretches to the square (what Keras' ``flow_from_directory`` did in the notebooks); ``pad`` keeps
    the aspect ratio and pads with black; ``crop`` resizes the shorter side and crops the centre.
    """
    resample = INTERPOLATIONS[interpolation]
    w, h = img.size
    if mode == "squash":
        return img.resize((size, size), resample, reducing_gap=3.0)
    if mode == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = img.resize((nw, nh), resample, reducing_gap=3.0)
        canvas = Image.new(img.mode, (size, size))
        canvas.paste(inner, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    if mode == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        inner = img.resize((nw, nh), resample, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        return inner.crop((left, top, left + size, top + size))
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def pixel_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels, equal for the same picture stored as RGB, gray, RGBA or another format."""
    arr = np.asarray(img)
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = arr[..., 0]  # a gray picture stored as RGB is the same picture
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def perceptual_hashes(img: Image.Image) -> tuple[int, str]:
    """DCT perceptual hashes (pHash) of an image: a 64-bit one and a 256-bit one (as 64 hex digits).

    Both are robust to resizing, re-encoding and small edits. The 64-bit hash finds candidate pairs quickly;
    the 256-bit hash sees finer structure and decides, so that merely similar pictures (two CT slices of
    different patients) are not taken for copies.
    """
    from scipy.fft import dctn

    gray = img.convert("L")
    out = []
    for side, keep in ((32, 8), (64, 16)):
        small = np.asarray(gray.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.float64)
        low = dctn(small, norm="ortho")[:keep, :keep].ravel()
        out.append(np.packbits(low > np.median(low[1:])))  # the DC term only says how bright the image is
    return int(out[0].view(">u8")[0]), out[1].tobytes().hex()
