"""Datasets in every layout are indexed the same way; class names are reconciled or refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from medcli.data import load_dataset
from medcli.data.classes import parse_aliases, reconcile_classes
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from tests.conftest import blob, save_image


@pytest.mark.parametrize("layout", ["imagefolder", "presplit", "csv", "npz"])
def test_every_layout_indexes_the_same_classes(tmp_path, layout):
    path = make_synthetic(tmp_path / layout, layout=layout, n_classes=3, per_class=10, size=32)
    ds = load_dataset(path)  # layout detected automatically
    assert ds.layout == layout
    assert ds.classes == ["disk", "square", "triangle"] or ds.classes == ["0", "1", "2"]
    assert len(ds.samples) == 30
    assert len({s.id for s in ds.samples}) == 30
    if layout != "imagefolder":
        assert set(ds.splits) == {"train", "val", "test"}


def test_csv_manifest_groups_and_relative_paths(tmp_path):
    path = make_synthetic(tmp_path / "d", layout="csv", per_class=6, per_group=3, size=32)
    ds = load_dataset(path)
    assert all(s.group for s in ds.samples)
    assert all(s.path.startswith(str(tmp_path)) for s in ds.samples)
    assert ds.samples[0].id.startswith("images/")


def test_file_names_with_spaces_parentheses_and_non_ascii(tmp_path):
    for k, name in enumerate(["a (1) - Copy.png", "ünïcødé 画像.png", "x y.png"]):
        save_image(tmp_path / "d" / "class a" / name, blob(k))
        save_image(tmp_path / "d" / "class b" / name, blob(10 + k))
    ds = load_dataset(tmp_path / "d")
    assert {s.id for s in ds.samples} >= {"class a/ünïcødé 画像.png", "class b/a (1) - Copy.png"}


def test_presplit_reconciles_chest_ct_style_names(tmp_path):
    long = {"adenocarcinoma": "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "normal": "normal", "large.cell.carcinoma": "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa"}
    for k, (short, full) in enumerate(long.items()):
        save_image(tmp_path / "d" / "train" / full / "a.png", blob(k))
        save_image(tmp_path / "d" / "valid" / full / "a.png", blob(10 + k))
        save_image(tmp_path / "d" / "test" / short / "a.png", blob(20 + k))
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["adenocarcinoma", "large.cell.carcinoma", "normal"]
    assert ds.renamed_classes() == {long["adenocarcinoma"]: "adenocarcinoma", long["large.cell.carcinoma"]: "large.cell.carcinoma"}
    assert {s.split for s in ds.samples} == {"train", "val", "test"}


def test_prefix_must_end_at_a_token_boundary():
    # "adeno" is not a token prefix of "adenocarcinoma": the test class matches nothing in train.
    with pytest.raises(MedcliError, match="matches no train class"):
        reconcile_classes({"train": {"adenocarcinoma", "normal"}, "test": {"adeno", "normal"}})


def test_ambiguous_names_are_refused():
    # Two train folders would both become "normal".
    with pytest.raises(MedcliError, match="ambiguous class names"):
        reconcile_classes({"train": {"normal_left", "normal_right"}, "test": {"normal"}})


def test_alias_map_resolves_what_matching_cannot():
    mapping = reconcile_classes(
        {"train": {"tumour", "healthy"}, "test": {"tumor", "healthy"}}, parse_aliases(["tumor=tumour"])
    )
    assert mapping["tumor"] == "tumour"
    with pytest.raises(MedcliError, match="not in the dataset"):
        reconcile_classes({"train": {"a", "b"}}, {"c": "a"})
    with pytest.raises(MedcliError, match="RAW_NAME=CLASS_NAME"):
        parse_aliases(["nonsense"])


def test_empty_class_folder_is_ignored_with_a_note(tmp_path):
    save_image(tmp_path / "d" / "a" / "1.png", blob(1))
    save_image(tmp_path / "d" / "b" / "1.png", blob(2))
    (tmp_path / "d" / "empty").mkdir()
    ds = load_dataset(tmp_path / "d")
    assert ds.classes == ["a", "b"]
    assert any("empty" in n and "no images" in n for n in ds.notes)


def test_fingerprint_changes_with_content_not_with_location(tmp_path):
    import shutil

    path = make_synthetic(tmp_path / "d", per_class=4, size=32)
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert load_dataset(path).fingerprint() == load_dataset(copy).fingerprint()
    save_image(copy / "disk" / "extra.png", blob(5))
    assert load_dataset(path).fingerprint() != load_dataset(copy).fingerprint()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "not found"),
        (lambda p: (p.mkdir(), (p / "a").mkdir()), "no images found"),
        (lambda p: (p.parent.mkdir(exist_ok=True), p.with_suffix(".csv").write_text("file,cls\nx.png,a\n")), "needs a 'path' column"),
        (lambda p: (p.mkdir(), (p / "test").mkdir(), save_image(p / "test" / "a" / "1.png", blob(0))), "needs a train/ folder"),
    ],
)
def test_bad_datasets_give_clear_errors(tmp_path, setup, message):
    target = tmp_path / "d"
    setup(target)
    path = target.with_suffix(".csv") if target.with_suffix(".csv").exists() else target
    with pytest.raises(MedcliError, match=message):
        load_dataset(path)


def test_npz_rgb_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", train_images=rng.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8), train_labels=np.array([[0], [1]] * 3),
             test_images=rng.integers(0, 255, (2, 28, 28, 3), dtype=np.uint8), test_labels=np.array([[0], [1]]))
    ds = load_dataset(tmp_path / "rgb.npz")
    assert ds.layout == "npz" and ds.splits == ["train", "test"] and ds.classes == ["0", "1"]
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(MedcliError, match="train_images"):
        load_dataset(tmp_path / "bad.npz")
