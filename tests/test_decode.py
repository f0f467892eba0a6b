"""Every image mode decodes to a consistent array; broken files are recognised, not crashed on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medcli.data.decode import DecodeError, extension_lies, normalize_mode, open_image, perceptual_hashes, pixel_hash, resize, to_channels

GRAY = np.arange(32 * 40, dtype=np.uint8).reshape(32, 40)


def _decoded(path, channels=3):
    img, mode, fmt = open_image(path)
    return np.asarray(to_channels(normalize_mode(img), channels)), mode, fmt


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "CMYK", "I;16", "I", "1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_uint8_with_requested_channels(tmp_path, mode, channels):
    img = Image.fromarray(GRAY).convert(mode) if mode not in ("I;16", "I") else Image.fromarray(GRAY.astype(np.uint16) * 200)
    if mode == "I":
        img = img.convert("I")
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode in ("I;16", "I") else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    arr, original, _ = _decoded(path, channels)
    assert arr.dtype == np.uint8
    assert arr.shape == ((32, 40) if channels == 1 else (32, 40, 3))
    assert original == img.mode


def test_16bit_is_scaled_to_full_range(tmp_path):
    path = tmp_path / "ct.png"
    Image.fromarray(GRAY.astype(np.uint16) * 3 + 1000).save(path)
    arr, mode, _ = _decoded(path, 1)
    assert mode.startswith("I")
    assert arr.min() == 0 and arr.max() == 255  # min-max scaled, not truncated to the low byte


def test_transparency_is_composited_on_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, ..., 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    arr, _, _ = _decoded(path, 3)
    assert (arr[:4] == 200).all() and (arr[4:] == 0).all()


def test_palette_with_transparency(tmp_path):
    img = Image.fromarray(GRAY).convert("P")
    img.info["transparency"] = int(np.asarray(img)[0, 0])
    path = tmp_path / "p.png"
    img.save(path, transparency=img.info["transparency"])
    arr, mode, _ = _decoded(path, 1)
    assert mode == "P" and arr[0, 0] == 0


def test_lying_extension_decodes_and_is_flagged(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    Image.fromarray(GRAY).save(path, format="JPEG")
    arr, _, fmt = _decoded(path, 1)
    assert fmt == "JPEG" and arr.shape == (32, 40)
    assert extension_lies(path, fmt)
    assert not extension_lies(tmp_path / "x.jpeg", "JPEG")


@pytest.mark.parametrize("content", [b"", b"this is not an image", "truncated"])
def test_broken_files_raise_decode_error(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(DecodeError):
        open_image(path)


def test_pixel_hash_ignores_storage_mode_but_not_content():
    gray = Image.fromarray(GRAY)
    assert pixel_hash(gray) == pixel_hash(gray.convert("RGB"))
    changed = GRAY.copy()
    changed[0, 0] ^= 1
    assert pixel_hash(gray) != pixel_hash(Image.fromarray(changed))


def test_perceptual_hash_survives_resize_and_reencoding():
    from tests.conftest import blob

    a = Image.fromarray(blob(1, 128))
    small = a.resize((64, 64))
    other = Image.fromarray(blob(2, 128))
    def dist(x, y):
        (h1, f1), (h2, f2) = perceptual_hashes(x), perceptual_hashes(y)
        return bin(h1 ^ h2).count("1"), bin(int(f1, 16) ^ int(f2, 16)).count("1")

    assert dist(a, small)[0] <= 4 and dist(a, small)[1] <= 40
    assert dist(a, other)[0] > 10 and dist(a, other)[1] > 60


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_resize_gives_square(mode):
    out = resize(Image.fromarray(GRAY), 16, mode)
    assert out.size == (16, 16)


def test_pad_keeps_aspect_ratio_with_black_bars():
    wide = Image.fromarray(np.full((10, 40), 255, np.uint8))
    arr = np.asarray(resize(wide, 40, "pad"))
    assert (arr[:10] == 0).all() and (arr[20] == 255).all()
