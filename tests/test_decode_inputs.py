"""Every image a user hands over is read as a viewer shows it, or refused clearly (issue 14, failures 1-5, and
files found by content, manifests written on another OS)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from medcli.data import DecodeOptions, inspect_data, load_dataset, require_readable, scan_dataset
from medcli.data.decode import DecodeError, array_to_image, normalize_mode, open_image
from medcli.data.scan import load_image
from medcli.errors import MedcliError
from tests.conftest import blob, save_image


def _upright() -> np.ndarray:
    """A 32 wide x 48 tall picture with structure everywhere (and no symmetry)."""
    return np.asarray(Image.fromarray(blob(3, 64)).resize((32, 48), Image.Resampling.BILINEAR))


def _save_sideways(path, upright: np.ndarray) -> None:
    """What a phone does: store the pixels rotated and say in EXIF Orientation=6 how to turn them back."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 48 wide x 32 tall; 6 = turn 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=95)


# ---- 1. EXIF orientation ----------------------------------------------------------------------------------------


def test_exif_orientation_is_applied_before_anything_else(tmp_path):
    upright = _upright()
    (tmp_path / "d" / "disk").mkdir(parents=True)
    Image.fromarray(upright).save(tmp_path / "d" / "disk" / "upright.jpg", quality=95)
    _save_sideways(tmp_path / "d" / "square" / "phone.jpg", upright)
    img, _, _ = open_image(tmp_path / "d" / "square" / "phone.jpg")
    assert img.size == (32, 48)  # as every viewer shows it, not the stored 48 x 32
    diff = np.abs(np.asarray(normalize_mode(img), int) - np.asarray(Image.open(tmp_path / "d" / "disk" / "upright.jpg"), int))
    assert diff.mean() < 8
    report = inspect_data(tmp_path / "d")  # the recipe: the copy must be found, with its label conflict
    assert report["duplicates"]["n_label_conflicts"] == 1
    assert report["duplicates"]["n_exact_groups"] + report["duplicates"]["n_near_groups"] == 1


# ---- 2. and 3. arrays -------------------------------------------------------------------------------------------


def _npz(path, images, labels=None, **extra):
    labels = np.arange(len(images)) % 2 if labels is None else labels
    np.savez(path, train_images=images, train_labels=labels.reshape(-1, 1), **extra)
    return path


@pytest.mark.parametrize("shape", [(12, 28, 28, 28), (12, 28, 28, 28, 1), (12, 28)])
def test_volumes_in_an_npz_are_refused_by_name_before_any_scan(tmp_path, shape):
    path = _npz(tmp_path / "vol.npz", np.zeros(shape, np.uint8))
    with pytest.raises(MedcliError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "train_images" in message and str(shape) in message and "(N,H,W), (N,H,W,C) or (N,C,H,W)" in message
    assert "\n" not in message


def test_volumes_in_an_npz_are_a_one_line_cli_error(tmp_path):
    from typer.testing import CliRunner

    from medcli.cli import app

    path = _npz(tmp_path / "vol.npz", np.zeros((12, 28, 28, 28), np.uint8))
    for args in (["data", "inspect", str(path)], ["split", str(path), "--out", str(tmp_path / "s.json")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 1 and "Traceback" not in res.output and "(12, 28, 28, 28)" in res.output
    assert not (tmp_path / "s.json").exists()


def test_float_arrays_in_0_1_are_scaled_by_255_not_truncated(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(0.01, 0.99, (6, 8, 8)).astype(np.float32)
    ds = load_dataset(_npz(tmp_path / "f.npz", images))
    records = scan_dataset(ds)
    assert len({r.pixel_hash for r in records.values()}) == 6  # not one black "duplicate" group
    img, dtype, _ = load_image(ds.samples[0])
    assert dtype == "float32"
    assert np.array_equal(np.asarray(img), np.round(images[0].astype(np.float64) * 255).astype(np.uint8))


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "int64", "uint32", "int8", "float32", "float64", "bool"])
def test_every_integer_and_float_dtype_is_min_max_scaled(dtype):
    base = np.arange(64, dtype=np.float64).reshape(8, 8)
    arr = (base > 31) if dtype == "bool" else (base * 37 - 900).astype(dtype) if dtype.startswith(("int", "float")) else (base * 900).astype(dtype)
    img, _ = array_to_image(arr)
    out = np.asarray(img)
    assert img.mode == "L" and out.min() == 0 and out.max() == 255
    ref = np.asarray(arr, np.float64)
    assert np.array_equal(out, np.round((ref - ref.min()) * 255 / (ref.max() - ref.min())).astype(np.uint8))


def test_uint8_arrays_and_16bit_scaling_match_image_files(tmp_path):
    arr = (np.arange(64).reshape(8, 8) * 300 + 1000).astype(np.uint16)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    from_file = np.asarray(normalize_mode(open_image(path)[0]))
    assert np.array_equal(np.asarray(array_to_image(arr)[0]), from_file)
    u8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(np.asarray(array_to_image(u8)[0]), u8)


def test_non_finite_arrays_are_unreadable_with_the_reason():
    bad = np.ones((4, 4), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(DecodeError, match="NaN or infinite"):
        array_to_image(bad)


def test_channels_first_and_channels_last_arrays_give_the_same_images(tmp_path):
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 255, (4, 10, 12, 3), dtype=np.uint8)
    last = load_dataset(_npz(tmp_path / "last.npz", nhwc))
    first = load_dataset(_npz(tmp_path / "first.npz", np.ascontiguousarray(np.moveaxis(nhwc, -1, 1))))
    gray = load_dataset(_npz(tmp_path / "gray.npz", nhwc[..., :1].transpose(0, 3, 1, 2)))
    for k in range(4):
        a, b = load_image(last.samples[k])[0], load_image(first.samples[k])[0]
        assert a.mode == b.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
        g = load_image(gray.samples[k])[0]
        assert g.mode == "L" and np.array_equal(np.asarray(g), nhwc[k, ..., 0])


def test_npz_with_mismatched_labels_or_strings_is_refused(tmp_path):
    with pytest.raises(MedcliError, match="holds 4 images but train_labels 3"):
        load_dataset(_npz(tmp_path / "n.npz", np.zeros((4, 8, 8), np.uint8), np.arange(3)))
    with pytest.raises(MedcliError, match="dtype"):
        load_dataset(_npz(tmp_path / "s.npz", np.full((2, 8, 8), "a"), np.arange(2)))


# ---- 4. symlinked folders ---------------------------------------------------------------------------------------


def test_symlinked_folders_inside_a_class_are_followed_and_cycles_named(tmp_path):
    root = tmp_path / "d"
    for k in range(2):
        save_image(root / "train" / "disk" / f"{k}.png", blob(k))
        save_image(root / "train" / "square" / f"{k}.png", blob(10 + k))
    for k in range(3):
        save_image(tmp_path / "elsewhere" / "scans" / f"s{k}.png", blob(20 + k))
    (root / "train" / "disk" / "more_scans").symlink_to(tmp_path / "elsewhere" / "scans", target_is_directory=True)
    (root / "train" / "square" / "loop").symlink_to(root / "train" / "square", target_is_directory=True)
    (root / "train" / "square" / "gone").symlink_to(tmp_path / "nowhere")
    ds = load_dataset(root)
    disk = sorted(s.id for s in ds.samples if s.label == "disk")
    assert disk == ["train/disk/0.png", "train/disk/1.png", "train/disk/more_scans/s0.png",
                    "train/disk/more_scans/s1.png", "train/disk/more_scans/s2.png"]
    assert sum(s.label == "square" for s in ds.samples) == 2
    assert any("train/square/loop" in n and "already read" in n for n in ds.notes)
    assert any("train/square/gone" in n and "dangling" in n for n in ds.notes)
    assert all(r.ok for r in scan_dataset(ds).values())


# ---- 5. multi-frame files ---------------------------------------------------------------------------------------


def _frames(n=5):
    pages = [Image.fromarray(np.zeros((24, 24), np.uint8))]  # the first page is black
    pages += [Image.fromarray(blob(40 + k, 24)) for k in range(n - 1)]
    return pages


@pytest.mark.parametrize("fmt, ext", [("TIFF", ".tif"), ("GIF", ".gif"), ("WEBP", ".webp"), ("PNG", ".png")])
def test_multi_frame_files_are_refused_never_reduced_to_page_0(tmp_path, fmt, ext):
    pages = _frames()
    path = tmp_path / f"pages{ext}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    pages[0].save(path, format=fmt, save_all=True, append_images=pages[1:], **kwargs)
    with pytest.raises(DecodeError, match="5 frames.*--frame N"):
        open_image(path)
    img, _, _ = open_image(path, frame=2)
    assert np.abs(np.asarray(normalize_mode(img).convert("L"), int) - blob(41, 24).astype(int)).mean() < 4
    with pytest.raises(DecodeError, match="out of range"):
        open_image(path, frame=5)


def test_a_multi_page_tiff_in_a_dataset_is_reported_not_taken_as_a_black_duplicate(tmp_path):
    root = tmp_path / "d"
    pages = _frames()
    (root / "a").mkdir(parents=True)
    pages[0].save(root / "a" / "stack.tif", save_all=True, append_images=pages[1:])
    save_image(root / "a" / "black.png", np.zeros((24, 24), np.uint8))
    save_image(root / "b" / "x.png", blob(1))
    ds = load_dataset(root)
    rec = scan_dataset(ds)["a/stack.tif"]
    assert not rec.ok and rec.frames == 5 and "--frame" in rec.error
    report = inspect_data(root)
    assert report["duplicates"]["n_exact_groups"] == 0
    assert any(b["id"] == "a/stack.tif" for b in report["bad_files"])
    picked = load_dataset(root, decode=DecodeOptions(frame=1))
    assert scan_dataset(picked)["a/stack.tif"].ok


# ---- files found by content -------------------------------------------------------------------------------------


def test_images_are_found_by_content_whatever_their_extension(tmp_path):
    root = tmp_path / "d"
    save_image(root / "a" / "photo.jfif", blob(1), fmt="JPEG")
    save_image(root / "a" / "IMG0002", blob(2), fmt="PNG")
    save_image(root / "b" / "scan.png", blob(3))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "Thumbs.db").write_bytes(b"\0" * 64)
    (root / "a" / ".DS_Store").write_bytes(b"\0" * 64)
    save_image(root / "a" / ".preview.png", blob(4))
    (root / "b" / "payload.bin").write_bytes(os.urandom(256))
    ds = load_dataset(root)
    assert sorted(s.id for s in ds.samples) == ["a/IMG0002", "a/photo.jfif", "b/scan.png"]
    notes = " | ".join(ds.notes)
    assert "known non-image" in notes and ".txt" in notes and "Thumbs.db" in notes and ".DS_Store" in notes and "1 hidden" in notes
    assert "not images" in notes and "b/payload.bin" in notes
    records = scan_dataset(ds)
    assert records["a/IMG0002"].format == "PNG" and records["a/photo.jfif"].format == "JPEG"
    report = inspect_data(root)
    assert any("b/payload.bin" in n for n in report["notes"])


def test_a_class_that_loses_all_its_files_is_an_error_naming_the_folder(tmp_path):
    root = tmp_path / "d"
    save_image(root / "a" / "1.png", blob(1))
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("x")
    (root / "b" / "data.bin").write_bytes(b"not an image at all")
    with pytest.raises(MedcliError, match="class folder b holds 2 file\\(s\\) but no image"):
        load_dataset(root)


def test_skip_bad_that_empties_a_class_is_an_error(tmp_path):
    root = tmp_path / "d"
    save_image(root / "a" / "1.png", blob(1))
    (root / "b").mkdir()
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = load_dataset(root)
    with pytest.raises(MedcliError, match="class 'b' has no readable image left after --skip-bad.*broken.png"):
        require_readable(ds, scan_dataset(ds), skip_bad=True)


# ---- manifests written on another OS ----------------------------------------------------------------------------


def test_manifest_with_windows_separators_is_resolved(tmp_path):
    root = tmp_path / "d"
    save_image(root / "imgs" / "a" / "1.png", blob(1))
    save_image(root / "imgs" / "b" / "2.png", blob(2))
    (root / "m.csv").write_text("path,label\nimgs\\a\\1.png,a\nimgs\\b\\2.png,b\n")
    ds = load_dataset(root / "m.csv")
    assert [s.id for s in ds.samples] == ["imgs/a/1.png", "imgs/b/2.png"]
    assert all(r.ok for r in scan_dataset(ds).values())


def test_missing_manifest_paths_name_the_likely_cause(tmp_path):
    root = tmp_path / "d"
    save_image(root / "imgs" / "A.png", blob(1))
    save_image(root / "imgs" / "b.png", blob(2))
    (root / "m.csv").write_text("path,label\nimgs/a.png,x\nimgs/b.png,y\nC:\\data\\c.png,y\nother/d.png,x\n")
    ds = load_dataset(root / "m.csv")
    notes = " | ".join(ds.notes)
    assert "3 listed file(s) do not exist" in notes
    assert "did you mean 'imgs/A.png'" in notes
    assert "absolute Windows path" in notes
    assert "folder" in notes and "relative to the CSV's folder" in notes
    (root / "all.csv").write_text("path,label\nnope/a.png,x\nnope/b.png,y\n")
    with pytest.raises(MedcliError, match="none of the 2 listed files exists.*relative to the CSV's folder"):
        load_dataset(root / "all.csv")


# ---- existing PNG/JPEG datasets keep their pixels ---------------------------------------------------------------


def test_plain_images_decode_exactly_as_before(tmp_path):
    arr = blob(5, 40)
    png = save_image(tmp_path / "x.png", arr)
    jpg = save_image(tmp_path / "x.jpg", np.stack([arr] * 3, -1), fmt="JPEG")
    assert np.array_equal(np.asarray(open_image(png)[0]), arr)
    assert np.array_equal(np.asarray(open_image(jpg)[0]), np.asarray(Image.open(jpg).convert("RGB")))
