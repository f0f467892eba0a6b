"""External validation on copies of the run's own images is reported (issue 14, item 10).

``medcli eval RUN --data OTHER`` checks OTHER against the run's development pool (train + val of every fold) and
its test set, for exact (same decoded pixels) and near duplicates (256-bit perceptual hash within the splits
file's threshold), and reports the overlap beside the metrics, on the console and in the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.data.scan import ScanRecord
from medcli.data.synth import make_synthetic
from medcli.evaluation.overlap import KINDS, development_pool, external_overlap, overlap_warning
from medcli.evaluation.runner import evaluate_run
from medcli.splits import load_splits, split_data
from medcli.training import TrainConfig, train


def _hex256(bits: range) -> str:
    value = sum(1 << b for b in bits)
    return f"{value:064x}"


def _record(id_: str, pixels: str, bits: range, phash: int = 0) -> ScanRecord:
    return ScanRecord(id_, True, format="PNG", mode="L", width=8, height=8, pixel_hash=pixels, phash=phash,
                      phash256=_hex256(bits))


def test_overlap_counts_direct_pairs_only_and_respects_the_threshold():
    own = {"dev/c": _record("dev/c", "c", range(0)), "dev/e": _record("dev/e", "e", range(200, 256)),
           "test/t": _record("test/t", "t", range(100, 145))}
    external = {
        "b": _record("b", "b", range(0, 30)),  # 30 bits from dev/c: near
        "a": _record("a", "a", range(0, 60)),  # 60 bits from dev/c, 30 from b: not near (no chaining through b)
        "e": _record("e", "e", range(200, 256)),  # same pixels as dev/e: exact (not also near)
        "t": _record("t", "t2", range(100, 150)),  # 5 bits from the test image, 50 from dev/c
        "far": _record("far", "far", range(0, 30), phash=(1 << 64) - 1),  # 256-bit close, but not a 64-bit candidate
        "bad": ScanRecord("bad", False, error="truncated"),
    }
    overlap = external_overlap(external, own, ["dev/c", "dev/e", "missing"], ["test/t"], threshold=40)
    assert {k: overlap[k] for k in KINDS} == {"exact_dev": 1, "near_dev": 1, "exact_test": 0, "near_test": 1}
    assert overlap["ids"] == {"exact_dev": ["e"], "near_dev": ["b"], "exact_test": [], "near_test": ["t"]}
    assert (overlap["n_external"], overlap["n_dev"], overlap["n_test"], overlap["threshold_bits"]) == (5, 2, 1, 40)
    strict = external_overlap(external, own, ["dev/c", "dev/e"], ["test/t"], threshold=20)
    assert (strict["near_dev"], strict["near_test"]) == (0, 1)
    line = overlap_warning(overlap)
    assert line.startswith("2 of 5 external images duplicate development images of this run (1 exact, 1 near): "
                           "these metrics are not external; 1 duplicate its test images (0 exact, 1 near)")
    assert overlap_warning(external_overlap({"a": external["a"]}, own, [], [], 40)) is None


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("overlap")
    data = make_synthetic(root / "d", layout="presplit", n_classes=2, per_class=30, size=32, noise=0.2)
    split_data(data, root / "splits.json", folds=2)
    cfg = TrainConfig(data=str(data), splits=str(root / "splits.json"), backbone="customcnn", strategy="scratch", epochs=1,
                      batch_size=16, img_size=32, channels=1, results=str(root / "results"), work=str(root / "work"),
                      cache_dir=str(root / "cache"), workers=1, progress=False)
    run = Path(train(cfg)["out"])
    splits = load_splits(root / "splits.json")
    dev, test = development_pool(splits), sorted(splits["test"])

    new = make_synthetic(root / "new", n_classes=2, per_class=6, size=32, seed=5)
    ext = root / "external"
    new_ids = []
    for path in sorted(new.glob("*/*.png")):
        target = ext / path.parent.name / f"new_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        new_ids.append(target.relative_to(ext).as_posix())

    def label(i):
        return splits["labels"][i]

    exact_ids = []
    for k, i in enumerate(dev[:3]):  # byte copies of development images
        target = ext / label(i) / f"copy{k}.png"
        shutil.copyfile(data / i, target)
        exact_ids.append(target.relative_to(ext).as_posix())
    near_ids = []
    resized, reencoded = dev[10], dev[20]
    Image.open(data / resized).resize((40, 40), Image.Resampling.BICUBIC).save(ext / label(resized) / "resized.png")
    Image.open(data / reencoded).convert("L").save(ext / label(reencoded) / "reencoded.jpg", quality=85)
    near_ids += [f"{label(resized)}/resized.png", f"{label(reencoded)}/reencoded.jpg"]
    shutil.copyfile(data / test[0], ext / label(test[0]) / "from_test.png")
    return {"run": run, "ext": ext, "new": new_ids, "exact": exact_ids, "near": near_ids,
            "test_copy": f"{label(test[0])}/from_test.png", "root": root}


def test_external_copies_of_development_and_test_images_are_reported(setup):
    doc = evaluate_run(setup["run"], data=setup["ext"], name="site", n_bootstrap=0, figures=False)["site"]
    overlap = doc["overlap"]
    assert overlap["exact_dev"] == 3 and sorted(overlap["ids"]["exact_dev"]) == sorted(setup["exact"])
    assert overlap["near_dev"] >= 1 and set(overlap["ids"]["near_dev"]) <= set(setup["near"])
    assert overlap["exact_test"] == 1 and overlap["ids"]["exact_test"] == [setup["test_copy"]]
    flagged = {i for kind in KINDS for i in overlap["ids"][kind]}
    assert not flagged & set(setup["new"])  # no false positive among the new images
    assert overlap["threshold_bits"] == 40 and overlap["n_external"] == doc["n"] == len(setup["new"]) + 6
    written = json.loads(Path(paths.external_metrics_file(setup["run"], "site")).read_text())
    assert written["overlap"] == overlap and list(written).index("overlap") == list(written).index("external") + 1


def test_the_console_warns_once_and_own_splits_get_no_overlap_key(setup):
    res = CliRunner().invoke(app, ["eval", str(setup["run"]), "--data", str(setup["ext"]), "--name", "site-cli",
                                   "--bootstrap", "0", "--no-figures"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.output.splitlines() if "duplicate development images" in line]
    n = len(setup["new"]) + 6
    assert len(warnings) == 1, res.output
    assert f"of {n} external images duplicate development images of this run (3 exact, " in warnings[0]
    assert "these metrics are not external" in warnings[0] and "1 duplicate its test images (1 exact, 0 near)" in warnings[0]

    own = evaluate_run(setup["run"], split="test", n_bootstrap=0, figures=False)["test"]
    assert "overlap" not in own and "overlap" not in json.loads(Path(paths.metrics_file(setup["run"], "test")).read_text())


def test_new_images_only_give_zero_overlap_and_no_warning(setup):
    clean = setup["root"] / "clean"
    for rel in setup["new"]:
        (clean / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(setup["ext"] / rel, clean / rel)
    res = CliRunner().invoke(app, ["eval", str(setup["run"]), "--data", str(clean), "--bootstrap", "0", "--no-figures"])
    assert res.exit_code == 0, res.output
    assert "duplicate" not in res.output
    doc = json.loads(Path(paths.external_metrics_file(setup["run"], "clean")).read_text())
    assert {k: doc["overlap"][k] for k in KINDS} == dict.fromkeys(KINDS, 0)
    assert doc["overlap"]["n_dev"] > 0 and doc["overlap"]["n_test"] > 0
