"""Decode any image file to a consistent uint8 array, as a viewer shows it.

Before anything else (hashes, duplicate search, the image store) a picture is put the way a viewer shows it:
    * the EXIF Orientation tag (0x0112) is applied (``PIL.ImageOps.exif_transpose``): a phone photo stored
      sideways decodes upright;
    * a file holding several frames (TIFF pages, GIF/WebP/APNG frames, multi-frame DICOM) is refused with
      :class:`MultiFrameError` unless the dataset's :class:`DecodeOptions` names a ``frame`` (0-based); it is never
      silently reduced to its first frame. MPO files (phone JPEGs with an embedded preview, CIPA DC-007) are
      read as their first, primary image, as viewers do.

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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import MedcliError

Image.MAX_IMAGE_PIXELS = 20000 * 20000  # medical images can be large; still guard against decompression bombs
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_MODES = ("squash", "pad", "crop")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
_EXT_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".jpe": "JPEG", ".dcm": "DICOM", ".dicom": "DICOM", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".gif": "GIF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM",
}


class DecodeError(Exception):
    """The file is not a readable image (zero bytes, truncated, not an image at all)."""


class MultiFrameError(DecodeError):
    """The file holds several frames and no (valid) ``frame`` was chosen; ``frames`` is how many it holds."""

    def __init__(self, frames: int, message: str) -> None:
        super().__init__(message)
        self.frames = frames


@dataclass(frozen=True)
class DecodeOptions:
    """How a dataset's files are decoded; travels with the dataset (``Dataset.decode``).

    Attributes:
        window: DICOM grayscale window: ``None`` (the file's own VOI LUT or window, else the full range), a
            preset name (``lung``, ``mediastinum``, ``soft-tissue``, ``bone``, ``brain``, ``liver``; values and
            source in :mod:`medcli.data.dicom`) or ``"C,W"``: centre and width in modality-LUT units (HU for CT).
            Non-DICOM files ignore it.
        frame: 0-based frame read from multi-frame files (DICOM, TIFF pages, GIF/WebP/APNG frames); ``None``
            refuses them. Single-frame files are read as they are whatever ``frame`` is.
    """

    window: str | None = None
    frame: int | None = None

    def validate(self) -> "DecodeOptions":
        """Return ``self`` if valid; otherwise raise a one-line MedcliError naming the option and the fix."""
        if self.window is not None:
            from .dicom import parse_window

            try:
                parse_window(self.window)
            except ValueError as exc:
                raise MedcliError(f"--{exc}") from None
        if self.frame is not None and (isinstance(self.frame, bool) or not isinstance(self.frame, int) or self.frame < 0):
            raise MedcliError(f"--frame {self.frame!r}: give a frame index 0, 1, 2, ... (0-based)")
        return self

    def key(self) -> str:
        """What changes the pixels, as a canonical string for cache keys; ``""`` for the defaults.

        Presets are resolved to their numbers (``lung`` and ``-600,1500`` give the same key). Empty for the
        default options, so caches of datasets decoded with the defaults keep their keys.
        """
        parts = []
        if self.window is not None:
            from .dicom import parse_window

            parts.append(f"window={parse_window(self.window)[0]}")
        if self.frame is not None:
            parts.append(f"frame={self.frame}")
        return ";".join(parts)


def open_image(path: str | os.PathLike, draft_size: int | None = None, frame: int | None = None) -> tuple[Image.Image, str, str]:
    """Open and fully decode ``path``; return ``(image, original_mode, format)``.

    The EXIF orientation is applied (see the module docstring). ``draft_size`` lets JPEG decoding skip detail
    that a later downscale would throw away (much faster). ``frame`` picks the frame of a multi-frame file.

    Raises:
        MultiFrameError: several frames and ``frame`` is None or out of range.
        DecodeError: empty, missing, truncated or not an image.
    """
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(path)
            fmt = img.format or "unknown"
            frames = getattr(img, "n_frames", 1) if fmt != "MPO" else 1
            if frames > 1:
                if frame is None:
                    raise MultiFrameError(frames, f"multi-frame {fmt} with {frames} frames; medcli does not pick one silently: choose one with --frame N (0-based)")
                if not 0 <= frame < frames:
                    raise MultiFrameError(frames, f"--frame {frame} is out of range: this {fmt} has {frames} frames (0..{frames - 1})")
                img.seek(frame)
            mode = img.mode
            if draft_size and fmt == "JPEG":
                img.draft(img.mode, (draft_size, draft_size))
            img.load()
            if img.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
                img = ImageOps.exif_transpose(img)
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None
    return img, mode, fmt


def sniff_format(path: str | os.PathLike) -> str | None:
    """The image format of ``path`` read from its first bytes, or None when it is not an image.

    ``"DICOM"`` for a DICOM Part 10 file (preamble + ``DICM``), else PIL's format name from the header
    (``Image.open`` parses only the header; nothing is decoded). Unreadable files give None.
    """
    from .dicom import is_dicom_file

    try:
        if os.path.getsize(path) == 0:
            return None
    except OSError:
        return None
    if is_dicom_file(path):
        return "DICOM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.format or None
    except Exception:
        return None


def array_to_image(arr: np.ndarray) -> tuple[Image.Image, str]:
    """One image of an array archive as an ``L``/``RGB`` PIL image; return ``(image, original dtype)``.

    ``arr`` is ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` (channels last). Rules, per image:
        * uint8: as is;
        * bool and every other integer dtype: min-max scaled to 0..255, as 16-bit image files are
          (:func:`normalize_mode`; a constant image becomes 0);
        * float: values already in [0, 1] are multiplied by 255 (the common convention for normalised images,
          which keeps brightness comparable between images); any other range is min-max scaled.
    Values are rounded, never truncated. RGB arrays are scaled with one range over all three channels.

    Raises:
        DecodeError: NaN or infinite values, or a dtype that is not a number.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise DecodeError(f"array image of shape {arr.shape}: expected (H, W), (H, W, 1) or (H, W, 3)")
    dtype = str(arr.dtype)
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise DecodeError(f"array image ({dtype}) holds NaN or infinite values")
            lo, hi = float(arr.min()), float(arr.max())
            arr = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8) if lo >= 0.0 and hi <= 1.0 else _minmax_uint8(arr)
        elif arr.dtype.kind in "biu":
            arr = _minmax_uint8(arr)
        else:
            raise DecodeError(f"array images of dtype {dtype} are not numbers")
    return Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB"), dtype


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling to 0..255 (rounded); a constant image becomes 0."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


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
        return Image.fromarray(_minmax_uint8(np.asarray(img)), "L")
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
