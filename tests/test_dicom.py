"""DICOM read as a viewer shows it, on the real files that ship inside pydicom, and DICOM datasets end to end
through indexing, scan, store and patient-grouped splits (issue 14: DICOM)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from medcli.data import DecodeOptions, load_dataset, scan_dataset  # noqa: E402
from medcli.data.decode import DecodeError, MultiFrameError  # noqa: E402
from medcli.data.dicom import WINDOW_PRESETS, is_dicom_file, parse_window, read_dicom  # noqa: E402
from medcli.data.inspect import duplicates_of  # noqa: E402
from medcli.data.store import StoreSettings, materialize  # noqa: E402
from medcli.errors import MedcliError  # noqa: E402
from tests.dicom_fixtures import make_dicom_dataset, patient_id, shipped, write_dicom  # noqa: E402


def _modality(name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(shipped(name))
    return np.asarray(apply_modality_lut(ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("=")), ds), np.float64)


def _window(values: np.ndarray, c: float, w: float) -> np.ndarray:
    return np.round(np.clip((values - (c - w / 2)) / w, 0, 1) * 255).astype(np.uint8)


def test_ct_without_window_uses_the_full_range_of_hounsfield_units():
    img, facts = read_dicom(shipped("CT_small.dcm"))
    hu = _modality("CT_small.dcm")
    assert img.mode == "L" and img.size == (128, 128)
    assert facts.window == "full range" and facts.modality == "CT" and facts.bits_stored == 16
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(img), expected)


def test_window_is_applied_in_hounsfield_units_after_the_modality_lut():
    hu = _modality("CT_small.dcm")  # intercept -1024: windowing raw stored values would be wrong
    img, facts = read_dicom(shipped("CT_small.dcm"), window="-600,1500")
    assert facts.window == "-600,1500"
    assert np.array_equal(np.asarray(img), _window(hu, -600, 1500))
    lung, _ = read_dicom(shipped("CT_small.dcm"), window="lung")
    assert np.array_equal(np.asarray(lung), np.asarray(img))
    brain, facts = read_dicom(shipped("CT_small.dcm"), window="Brain")
    assert facts.window == "40,80" and np.array_equal(np.asarray(brain), _window(hu, 40, 80))


def test_the_files_first_window_is_the_default():
    img, facts = read_dicom(shipped("MR_small.dcm"))  # WC 600 / WW 1600
    assert facts.window == "600,1600"
    assert np.array_equal(np.asarray(img), _window(_modality("MR_small.dcm"), 600, 1600))
    _, facts = read_dicom(shipped("examples_overlay.dcm"))  # two windows: the first one is used
    assert facts.window == "450,790"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_compressed_and_big_endian_files_decode_to_the_same_pixels(name):
    reference, _ = read_dicom(shipped("MR_small.dcm"))
    img, facts = read_dicom(shipped(name))
    assert np.array_equal(np.asarray(img), np.asarray(reference))
    assert facts.transfer_syntax == pydicom.dcmread(shipped(name)).file_meta.TransferSyntaxUID.name


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    mono2, _ = read_dicom(shipped("MR_small.dcm"))
    mono1, facts = read_dicom(path)
    assert facts.photometric == "MONOCHROME1"
    assert np.array_equal(np.asarray(mono1), 255 - np.asarray(mono2))


def test_ybr_jpeg_is_converted_to_rgb_once():
    img, facts = read_dicom(shipped("SC_rgb_jpeg_dcmtk.dcm"))
    assert img.mode == "RGB" and facts.photometric == "YBR_FULL" and facts.window is None
    rgb = pydicom.dcmread(shipped("SC_rgb_jpeg_dcmtk.dcm")).pixel_array  # pydicom 3 converts YBR to RGB
    assert np.array_equal(np.asarray(img), rgb)
    # the test picture has pure red, green and blue bands: a second YBR->RGB conversion would tint them
    arr = np.asarray(img).reshape(-1, 3).astype(int)
    assert (arr[:, 0] > 200).any() and ((arr[:, 0] > 200) & (arr[:, 1] < 40) & (arr[:, 2] < 40)).any()


def test_palette_colour_becomes_8_bit_rgb():
    from pydicom.pixels import apply_color_lut

    img, facts = read_dicom(shipped("examples_palette.dcm"))
    ds = pydicom.dcmread(shipped("examples_palette.dcm"))
    lut = apply_color_lut(ds.pixel_array, ds)
    assert img.mode == "RGB" and facts.photometric == "PALETTE COLOR"
    assert np.array_equal(np.asarray(img), (lut >> 8).astype(np.uint8))
    assert np.asarray(img).max() == 255


def test_multi_frame_is_refused_unless_a_frame_is_chosen():
    path = shipped("examples_ybr_color.dcm")  # 30 frames
    with pytest.raises(MultiFrameError, match="30 frames.*--frame N") as info:
        read_dicom(path)
    assert info.value.frames == 30 and "\n" not in str(info.value)
    img, facts = read_dicom(path, frame=5)
    assert img.mode == "RGB" and img.size == (320, 240) and facts.frames == 30
    frame5 = pydicom.pixels.pixel_array(path, index=5)
    assert np.array_equal(np.asarray(img), frame5)
    with pytest.raises(MultiFrameError, match="--frame 30 is out of range.*0..29"):
        read_dicom(path, frame=30)


def test_single_frame_files_ignore_the_frame_choice():
    a, _ = read_dicom(shipped("MR_small.dcm"))
    b, _ = read_dicom(shipped("MR_small.dcm"), frame=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_missing_decoder_names_the_transfer_syntax_and_package(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(DecodeError, match="unreadable.*JPEG 2000 Image Compression \\(Lossless Only\\).*pylibjpeg-openjpeg"):
        read_dicom(shipped("MR_small_jp2klossless.dcm"))


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_undecodable_pixel_data_is_one_unreadable_error(name):
    with pytest.raises(DecodeError, match="unreadable pixel data") as info:
        read_dicom(shipped(name))
    assert "\n" not in str(info.value)


def test_dicom_is_recognised_by_content_not_by_name(tmp_path):
    copy = tmp_path / "IM0001"
    shutil.copy(shipped("CT_small.dcm"), copy)
    assert is_dicom_file(copy)
    assert not is_dicom_file(shipped("no_meta.dcm"))  # no preamble: never parsed with force=True
    (tmp_path / "fake.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    assert not is_dicom_file(tmp_path / "fake.dcm")


def test_window_option_validation():
    assert parse_window("lung")[1:] == WINDOW_PRESETS["lung"]
    assert {"lung", "mediastinum", "bone", "brain"} <= set(WINDOW_PRESETS)
    for bad, message in (("lungs", "give a preset"), ("40", "CENTER,WIDTH"), ("40,0", "positive"), ("a,b", "CENTER,WIDTH")):
        with pytest.raises(MedcliError, match=message) as info:
            DecodeOptions(window=bad).validate()
        assert "\n" not in str(info.value)
    with pytest.raises(MedcliError, match="--frame"):
        DecodeOptions(frame=-1).validate()
    assert DecodeOptions().key() == ""
    assert DecodeOptions(window="lung").key() == DecodeOptions(window="-600,1500").key() != DecodeOptions(window="bone").key()
    with pytest.raises(MedcliError, match="--window"):  # checked before anything is read
        load_dataset("/nonexistent", decode=DecodeOptions(window="nope"))


# ---- DICOM datasets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["imagefolder", "csv"])
def test_dicom_dataset_with_and_without_extensions_is_indexed_and_scanned(tmp_path, layout):
    path = make_dicom_dataset(tmp_path / "d", patients=4, per_patient=3, layout=layout)
    ds = load_dataset(path)
    assert len(ds.samples) == 12 and ds.classes == ["disk", "square"]
    assert any(not s.id.endswith(".dcm") for s in ds.samples)
    records = scan_dataset(ds)
    assert all(r.ok for r in records.values()), [r.error for r in records.values() if not r.ok]
    r = records[ds.samples[0].id]
    assert (r.format, r.modality, r.photometric, r.bits_stored, r.transfer_syntax, r.window, r.frames) == (
        "DICOM", "CT", "MONOCHROME2", 16, "Explicit VR Little Endian", "full range", 1)
    lung = scan_dataset(load_dataset(path, decode=DecodeOptions(window="lung")))
    assert lung[r.id].window == "-600,1500" and lung[r.id].pixel_hash != r.pixel_hash


def test_non_dicom_records_have_no_dicom_facts(tmp_path):
    from medcli.data.synth import make_synthetic

    ds = load_dataset(make_synthetic(tmp_path / "s", per_class=2, size=32))
    r = next(iter(scan_dataset(ds).values()))
    assert (r.modality, r.photometric, r.bits_stored, r.transfer_syntax, r.window) == (None,) * 5 and r.frames == 1


def test_store_caches_dicom_and_the_window_gives_a_new_store(tmp_path):
    root = make_dicom_dataset(tmp_path / "d", patients=2, per_patient=2)
    ds = load_dataset(root)
    st = materialize(ds, StoreSettings(img_size=32, channels=1))
    assert st.images.shape == (4, 32, 32, 1) and st.images.max() > 0
    again = materialize(load_dataset(root), StoreSettings(img_size=32, channels=1))
    assert again.path == st.path
    windowed = materialize(load_dataset(root, decode=DecodeOptions(window="brain")), StoreSettings(img_size=32, channels=1))
    assert windowed.path != st.path and not np.array_equal(np.asarray(windowed.images), np.asarray(st.images))
    assert json.loads((windowed.path / "meta.json").read_text())["decode"] == {"window": "brain", "frame": None}


def test_multi_frame_dicom_in_a_dataset_needs_a_frame(tmp_path):
    from medcli.data import require_readable

    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        shutil.copy(shipped("examples_ybr_color.dcm"), tmp_path / "d" / cls / "cine.dcm")
    ds = load_dataset(tmp_path / "d")
    records = scan_dataset(ds)
    assert all(not r.ok and r.frames == 30 and "--frame" in r.error for r in records.values())
    with pytest.raises(MedcliError, match="cine.dcm.*30 frames"):
        require_readable(ds, records, skip_bad=False)
    framed = load_dataset(tmp_path / "d", decode=DecodeOptions(frame=0))
    assert all(r.ok for r in scan_dataset(framed).values())
    st = materialize(framed, StoreSettings(img_size=16, channels=3))
    assert st.images.shape == (2, 16, 16, 3)


# ---- identifiers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["imagefolder", "csv"])
def test_a_patient_never_straddles_folds_and_is_never_written_in_clear(tmp_path, layout):
    from medcli.splits import make_splits, save_splits

    path = make_dicom_dataset(tmp_path / "d", patients=8, per_patient=3, layout=layout)
    ds = load_dataset(path, group_by="patient")
    patient_of = {s.id: int(os.path.basename(s.id)[1:3]) for s in ds.samples}
    assert len({s.group for s in ds.samples}) == 8
    assert all(len(s.group) == 16 and "SECRET" not in s.group for s in ds.samples)
    records = scan_dataset(ds)
    doc = make_splits(ds, duplicates_of(ds, records), folds=3, seed=1, test_fraction=0.25)
    test_patients = {patient_of[i] for i in doc["test"]}
    for fold in doc["folds"]:
        train = {patient_of[i] for i in fold["train"]}
        val = {patient_of[i] for i in fold["val"]}
        assert not train & val and not (train | val) & test_patients
    out = tmp_path / "splits.json"
    save_splits(doc, out)
    text = out.read_text()
    assert "SECRET" not in text and "PAT0" not in text
    study = load_dataset(path, group_by="study")
    assert len({s.group for s in study.samples}) == 8


def test_group_hash_is_keyed_by_a_private_salt(tmp_path, monkeypatch):
    import hashlib
    import hmac

    root = make_dicom_dataset(tmp_path / "d", patients=2, per_patient=1)
    cache = tmp_path / "cache"
    monkeypatch.delenv("MEDCLI_ID_SALT", raising=False)
    first = load_dataset(root, group_by="patient", cache_dir=cache)
    salt_file = cache / "id-salt"
    assert salt_file.exists() and (salt_file.stat().st_mode & 0o777) == 0o600
    salt = salt_file.read_bytes().strip()
    expected = hmac.new(salt, patient_id(0).encode(), hashlib.sha256).hexdigest()[:16]
    assert first.samples[0].group == expected
    assert load_dataset(root, group_by="patient", cache_dir=cache).samples[0].group == expected  # stable
    monkeypatch.setenv("MEDCLI_ID_SALT", "another secret")
    other = load_dataset(root, group_by="patient", cache_dir=cache)
    assert other.samples[0].group != expected
    assert other.fingerprint() == first.fingerprint()  # the salt never changes the dataset fingerprint


def test_group_by_errors_name_the_file_and_tag_never_the_value(tmp_path):
    from tests.conftest import blob, save_image

    root = tmp_path / "d"
    write_dicom(root / "a" / "x.dcm", np.zeros((16, 16)), patient=None)
    write_dicom(root / "b" / "y.dcm", np.zeros((16, 16)), patient=patient_id(1))
    with pytest.raises(MedcliError, match=r"x\.dcm.*PatientID \(0010,0020\)") as info:
        load_dataset(root, group_by="patient")
    assert "SECRET" not in str(info.value)
    save_image(tmp_path / "p" / "a" / "1.png", blob(1))
    save_image(tmp_path / "p" / "b" / "1.png", blob(2))
    with pytest.raises(MedcliError, match="not a DICOM file"):
        load_dataset(tmp_path / "p", group_by="patient")
    with pytest.raises(MedcliError, match="--group-by 'series'"):
        load_dataset(root, group_by="series")


def test_the_files_voi_lut_wins_over_its_window(tmp_path):
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped("MR_small.dcm"))  # also has WC 600 / WW 1600
    item = DicomDataset()
    item.LUTDescriptor = [256, 0, 16]  # 256 entries for inputs 0..255, 16-bit output
    item.add_new("LUTData", "US", [int(v) for v in np.linspace(0, 4095, 256).round()])
    ds.VOILUTSequence = Sequence([item])
    path = tmp_path / "voilut.dcm"
    ds.save_as(path)
    img, facts = read_dicom(path)
    assert facts.window == "file VOI LUT"
    lut = np.asarray(item.LUTData, np.float64)
    stored = _modality("MR_small.dcm")
    expected = np.round(lut[np.clip(stored, 0, 255).astype(int)] / 4095 * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(img), expected)
