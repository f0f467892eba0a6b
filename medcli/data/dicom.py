"""DICOM images to 8-bit ``L``/``RGB`` pictures, the way a viewer displays them.

The pixel pipeline follows the grayscale display pipeline of DICOM PS3.4 N.2.1.1 (and pydicom's
``pydicom.pixels`` functions, which cite it):

1. **Decode** the stored values with pydicom (``pydicom.pixels.pixel_array``; compressed transfer syntaxes
   through the plugins pydicom documents: python-gdcm, pylibjpeg with pylibjpeg-openjpeg / pylibjpeg-rle).
   Big-endian dtypes are made native. pydicom 3 already converts YBR_FULL / YBR_FULL_422 to RGB (and the JPEG
   2000 decoders return RGB for YBR_ICT / YBR_RCT), so colour is not converted a second time.
2. **Modality LUT** (PS3.3 C.11.1: Rescale Slope/Intercept or a Modality LUT Sequence;
   ``pydicom.pixels.apply_modality_lut``): stored values become modality units, e.g. Hounsfield units for CT.
   Enhanced multi-frame objects keep the rescale of a frame in the Shared/Per-frame Functional Groups
   (PS3.3 C.7.6.16.2.9), which pydicom does not read; medcli reads it there for the chosen frame.
3. **VOI LUT or window** (PS3.3 C.11.2), in this order of preference:
   the dataset's ``window`` option (a preset name from :data:`WINDOW_PRESETS` or ``"C,W"`` in modality units);
   else the file's first VOI LUT (``VOILUTSequence``, via ``pydicom.pixels.apply_voi_lut``; its output range is
   taken from the LUT's own first and last data values); else the file's first Window Center/Width (of the
   chosen frame for enhanced objects); else the full range (minimum to maximum) of the modality-LUT output.
   A window is applied by medcli, not by pydicom, in modality units::

       out = clip((x - (c - w / 2)) / w, 0, 1) * 255    (rounded to uint8)

4. **MONOCHROME1** (PS3.3 C.7.6.3.1.2: the lowest value is white) is inverted (``255 - out``); pydicom does not
   invert it.
5. **PALETTE COLOR** (PS3.3 C.7.6.3.1.5) is expanded with ``pydicom.pixels.apply_color_lut``; 16-bit palette
   entries are reduced to 8 bits by keeping their high byte.
   16-bit RGB is scaled by its Bits Stored (``v * 255 / (2**bits - 1)``).

Files are recognised by content (the 128-byte preamble followed by ``DICM``, PS3.10 7.1;
``pydicom.misc.is_dicom``), never with ``force=True``.

Window presets (centre C / width W in Hounsfield units) are OHIF Viewers' CT presets,
github.com/OHIF/Viewers, ``extensions/cornerstone/src/components/WindowLevelActionMenu/defaultWindowLevelPresets.ts``;
OHIF has no "mediastinum" entry, so ``mediastinum`` uses OHIF's "Soft tissue" values (the usual mediastinal
window). Other viewers use slightly different numbers (3D Slicer: lung -500/1400, bone 400/1000); give
``"C,W"`` for those.

=============  ======  ======
preset         C (HU)  W (HU)
=============  ======  ======
lung           -600    1500
mediastinum    40      400
soft-tissue    40      400
bone           480     2500
brain          40      80
liver          90      150
=============  ======  ======
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import one_line
from .decode import DecodeError, MultiFrameError

#: ``name -> (centre, width)`` in Hounsfield units, from OHIF Viewers (see the module docstring).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "soft-tissue": (40.0, 400.0),
    "bone": (480.0, 2500.0),
    "brain": (40.0, 80.0),
    "liver": (90.0, 150.0),
}
WINDOW_SOURCE = "OHIF Viewers CT presets (extensions/cornerstone/.../defaultWindowLevelPresets.ts)"

#: Packages (pip names) that decode each compressed transfer syntax, named in "unreadable" errors.
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "python-gdcm or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "python-gdcm or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "python-gdcm or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "python-gdcm, pyjpegls or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "python-gdcm, pyjpegls or pylibjpeg + pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "python-gdcm or pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "python-gdcm or pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg + pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg + pylibjpeg-rle (or pydicom alone)",
}

#: ``group_by`` value -> DICOM keyword and tag of the identifier it reads.
IDENTIFIERS = {"patient": ("PatientID", "(0010,0020)"), "study": ("StudyInstanceUID", "(0020,000D)")}


@dataclass(frozen=True)
class DicomFacts:
    """What a DICOM file is, as ``medcli data inspect`` reports it (no identifiers)."""

    modality: str | None
    photometric: str | None
    bits_stored: int | None
    transfer_syntax: str | None
    window: str | None  # "C,W", "file VOI LUT", "full range", or None for colour images
    frames: int


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOM Part 10 file: 128-byte preamble + ``DICM`` (PS3.10 7.1; ``pydicom.misc.is_dicom``).

    Reads 132 bytes. Files without the preamble (old ACR-NEMA dumps) are not recognised: medcli never parses
    arbitrary bytes with ``force=True``.
    """
    from pydicom.misc import is_dicom

    try:
        return is_dicom(path)
    except (OSError, ValueError):
        return False


def parse_window(spec: str) -> tuple[str, float, float]:
    """``(label, centre, width)`` for a preset name (:data:`WINDOW_PRESETS`, case-insensitive) or ``"C,W"``.

    Centre and width are in modality-LUT units (Hounsfield units for CT); the width must be positive.

    Raises:
        ValueError: an unknown preset name or a malformed ``"C,W"`` (the message is one line naming the value
            and what is accepted).
    """
    text = str(spec).strip()
    preset = WINDOW_PRESETS.get(text.lower())
    if preset is not None:
        c, w = preset
    else:
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            c, w = float(parts[0]), float(parts[1])
            if not (np.isfinite(c) and np.isfinite(w)):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"window {spec!r}: give a preset ({', '.join(WINDOW_PRESETS)}) or CENTER,WIDTH in modality units "
                "(HU for CT), e.g. -600,1500"
            ) from None
        if w <= 0:
            raise ValueError(f"window {spec!r}: the width must be positive")
    return f"{c:g},{w:g}", float(c), float(w)


def window_to_uint8(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """``clip((values - (centre - width/2)) / width, 0, 1) * 255``, rounded to uint8 (values in modality units)."""
    x = (np.asarray(values, dtype=np.float64) - (centre - width / 2.0)) / width
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _range_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    x = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_header(path: str | os.PathLike):
    """The DICOM header of ``path`` without its pixel data (``dcmread(stop_before_pixels=True)``).

    Raises:
        DecodeError: not a DICOM Part 10 file, or a header pydicom cannot parse.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise DecodeError(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None


def read_identifier(path: str | os.PathLike, group_by: str) -> str:
    """The clear-text identifier ``group_by`` (``patient``: PatientID; ``study``: StudyInstanceUID) of ``path``.

    Only the header is read. The caller must hash the value before it goes anywhere (see
    :func:`medcli.data.layouts.load_dataset`).

    Raises:
        DecodeError: the file is not DICOM or the tag is absent or empty (the message names the tag).
    """
    keyword, tag = IDENTIFIERS[group_by]
    ds = read_header(path)
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise DecodeError(f"has no {keyword} {tag}, needed by --group-by {group_by}")
    return value


def read_dicom(path: str | os.PathLike, window: str | None = None, frame: int | None = None):
    """Decode the DICOM file ``path`` to an 8-bit picture (the pipeline of the module docstring).

    Args:
        path: a DICOM Part 10 file.
        window: ``None`` (the file's own VOI LUT or window, else the full range), a preset name or ``"C,W"``.
        frame: for multi-frame files (Number of Frames (0028,0008) > 1), the 0-based frame to read; single-frame
            files are read as they are whatever ``frame`` is.

    Returns:
        ``(image, facts)``: a PIL image in mode ``L`` (MONOCHROME1/2) or ``RGB`` (RGB, YBR_*, PALETTE COLOR),
        ``rows x columns``, and :class:`DicomFacts` (no identifiers).

    Raises:
        MultiFrameError: a multi-frame file without ``frame``, or ``frame`` out of range.
        DecodeError: not DICOM, no pixel data, a transfer syntax whose decoder is not installed (naming the
            transfer syntax and the packages that decode it), corrupt or truncated pixel data, an unsupported
            photometric interpretation.
    """
    import pydicom
    from PIL import Image
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except InvalidDicomError as exc:
        raise DecodeError(f"not a DICOM file ({exc})") from None
    except Exception as exc:
        raise DecodeError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None

    if "PixelData" not in ds:
        kind = "float pixel data (FloatPixelData/DoubleFloatPixelData), which medcli does not read" if (
            "FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no pixel data (7FE0,0010)"
        raise DecodeError(f"DICOM object with {kind}")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        raise DecodeError("DICOM file without a Transfer Syntax UID (0002,0010) in its file meta information")
    ts_name = ts.name if ts.is_valid else str(ts)
    try:
        from pydicom.pixels.utils import get_nr_frames

        frames = int(get_nr_frames(ds, warn=False))
    except Exception as exc:
        raise DecodeError(f"unreadable Number of Frames (0028,0008) ({exc})") from None
    if frames > 1 and frame is None:
        raise MultiFrameError(frames, f"multi-frame DICOM with {frames} frames; medcli does not pick one silently: choose one with --frame N (0-based)")
    if frames > 1 and not 0 <= frame < frames:
        raise MultiFrameError(frames, f"--frame {frame} is out of range: this DICOM has {frames} frames (0..{frames - 1})")
    index = frame if frames > 1 else None

    arr = _decode_pixels(ds, ts, ts_name, index)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    bits_stored = int(ds.BitsStored) if ds.get("BitsStored") is not None else None
    facts = dict(modality=str(ds.get("Modality", "") or "") or None, photometric=photometric or None,
                 bits_stored=bits_stored, transfer_syntax=ts_name, frames=frames)

    if photometric in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
        out, applied = _grayscale(arr, ds, window, index)
        if photometric == "MONOCHROME1":
            out = 255 - out
        return Image.fromarray(out, "L"), DicomFacts(window=applied, **facts)
    if photometric == "PALETTE COLOR" and arr.ndim == 2:
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:
            raise DecodeError(f"unreadable palette (PALETTE COLOR lookup tables): {type(exc).__name__}: {exc}") from None
        rgb = (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 else rgb.astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB"), DicomFacts(window=None, **facts)
    if arr.ndim == 3 and arr.shape[-1] == 3 and (photometric == "RGB" or photometric.startswith("YBR")):
        if arr.dtype != np.uint8:
            top = float(2 ** (bits_stored or 8 * arr.dtype.itemsize) - 1)
            arr = _range_to_uint8(arr, 0.0, top)
        return Image.fromarray(np.ascontiguousarray(arr), "RGB"), DicomFacts(window=None, **facts)
    raise DecodeError(
        f"photometric interpretation {photometric or 'missing'!r} with pixel array shape {arr.shape} is not supported "
        "(medcli reads MONOCHROME1/2, RGB, YBR_* and PALETTE COLOR)"
    )


def _decode_pixels(ds, ts, ts_name: str, index: int | None) -> np.ndarray:
    """The stored values of one frame (or the only frame); every decoding failure is one DecodeError."""
    from pydicom.pixels import get_decoder, pixel_array

    packages = _DECODER_PACKAGES.get(str(ts))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DecodeError(f"unreadable: no decoder exists for the transfer syntax {ts_name!r} ({ts})") from None
    if not decoder.is_available:
        need = packages or "; ".join(decoder.missing_dependencies)
        raise DecodeError(f"unreadable: pixel data in {ts_name!r} needs a decoder that is not installed; install {need}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(pixel_array(ds, index=index))
    except Exception as exc:  # RuntimeError (all plugins failed), ValueError (truncated), AttributeError (missing tags)
        hint = f"; decoders for it: {packages}" if packages else ""
        raise DecodeError(f"unreadable pixel data ({ts_name}): {type(exc).__name__}: {one_line(exc)}{hint}") from None


def _frame_item(ds, index: int | None, sequence: str):
    """The first item of ``sequence`` for frame ``index`` from the Per-frame, else the Shared Functional Groups."""
    for groups, pick in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or pick is None or pick >= len(seq):
            continue
        inner = seq[pick].get(sequence)
        if inner:
            return inner[0]
    return None


def _first(value) -> float | None:
    """The first number of a DS value that may hold several (VM > 1), or None."""
    if value is None:
        return None
    try:
        items = [value] if isinstance(value, (str, bytes)) else list(value)
    except TypeError:
        items = [value]
    try:
        return float(items[0])
    except (TypeError, ValueError, IndexError):
        return None


def _grayscale(arr: np.ndarray, ds, window: str | None, index: int | None) -> tuple[np.ndarray, str]:
    """Modality LUT, then the window: ``(uint8 array, window label)``."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    rescale = _frame_item(ds, index if index is not None else 0, "PixelValueTransformationSequence")
    try:
        if rescale is not None and "RescaleSlope" in rescale and "RescaleSlope" not in ds:
            values = arr * float(rescale.RescaleSlope) + float(rescale.get("RescaleIntercept", 0.0))
        else:
            values = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise DecodeError(f"unreadable modality LUT / rescale: {type(exc).__name__}: {one_line(exc)}") from None
    values = np.asarray(values, dtype=np.float64)

    if window is not None:
        label, c, w = parse_window(window)
        return window_to_uint8(values, c, w), label
    if "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            lut = np.asarray(item.LUTData, dtype=np.float64).ravel()
            # a LUT is indexed by whole modality values: round the (float) modality-LUT output before the lookup
            indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            voi = apply_voi_lut(indices, ds, index=0, prefer_lut=True)
            return _range_to_uint8(np.asarray(voi, np.float64), float(lut.min()), float(lut.max())), "file VOI LUT"
        except Exception:
            pass  # a malformed VOI LUT: fall back to the window or the full range
    voi_item = _frame_item(ds, index if index is not None else 0, "FrameVOILUTSequence")
    source = voi_item if voi_item is not None and "WindowCenter" in voi_item else ds
    c, w = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    if c is not None and w is not None and np.isfinite(c) and np.isfinite(w) and w > 0:
        return window_to_uint8(values, c, w), f"{c:g},{w:g}"
    return _range_to_uint8(values, float(values.min()), float(values.max())), "full range"
