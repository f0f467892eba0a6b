from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHEST_CT = REPO.parent / "shared" / "data" / "chest-ct"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-image cache, so tests never see each other's files."""
    monkeypatch.setenv("MEDCLI_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MEDCLI_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second CPU thread only adds synchronisation, a lot of it on a busy machine. Use it in a
    module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def chest_ct() -> Path:
    if not CHEST_CT.is_dir():
        pytest.skip(f"real chest-CT data not available at {CHEST_CT}")
    return CHEST_CT


def save_image(path: Path, arr: np.ndarray, mode: str | None = None, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(path, format=fmt)
    return path


def blob(seed: int, size: int = 48) -> np.ndarray:
    """A random, structured gray picture (distinct seeds give perceptually distinct pictures)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def synthetic_fold_data(root: Path, *, per_class: int, folds: int, n_classes: int = 3, size: int = 32) -> tuple[Path, Path]:
    """``(data, splits.json)``: a small presplit synthetic dataset under ``root`` and its splits (seed 0), for
    tests that train real (tiny) runs."""
    from medcli.data.synth import make_synthetic
    from medcli.splits import split_data

    data = make_synthetic(root / "d", layout="presplit", n_classes=n_classes, per_class=per_class, size=size, noise=0.1)
    split_data(data, root / "splits.json", folds=folds, seed=0)
    return data, root / "splits.json"


def tiny_runs(root: Path, *, folds: tuple[int, ...] = (0, 1), n_classes: int = 2) -> tuple[Path, list[Path]]:
    """``(data, run folders)``: tiny customcnn runs (2 epochs, 32 px grayscale) of the given folds of one synthetic
    dataset under ``root``, for tests that evaluate or apply real runs."""
    from medcli.training import TrainConfig, train

    data, splits = synthetic_fold_data(root, per_class=12, folds=max(folds) + 1, n_classes=n_classes)
    runs = []
    for fold in folds:
        cfg = TrainConfig(data=str(data), splits=str(splits), backbone="customcnn", strategy="scratch", epochs=2, batch_size=16,
                          img_size=32, channels=1, fold=fold, results=str(root / "results"), work=str(root / "work"),
                          cache_dir=str(root / "cache"), progress=False)
        runs.append(Path(train(cfg)["out"]))
    return Path(data), runs
