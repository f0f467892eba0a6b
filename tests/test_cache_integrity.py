"""Caches are checked when opened and rebuilt when damaged; a full cache disk is one error with nothing left
behind; runs started together make one splits file."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medcli.data import load_dataset
from medcli.data import store as store_mod
from medcli.data.store import StoreSettings, materialize, open_store
from medcli.data.synth import make_synthetic
from medcli.errors import MedcliError
from medcli.splits import split_data, splits_fingerprint
from tests.conftest import REPO

from .test_feature_cache import _linear, builds, weights  # noqa: F401  (fixtures)
from .test_training import dataset  # noqa: F401  (a fixture)

SETTINGS = StoreSettings(img_size=16, channels=1)


def _fresh_pixels(root: Path) -> np.ndarray:
    """What a correct store holds: decoded from the files into a store of its own."""
    return np.array(materialize(load_dataset(root), SETTINGS, cache_dir=root.parent / "reference-cache").images)


def test_store_written_to_after_it_was_built_is_rebuilt(tmp_path, caplog):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    first = materialize(load_dataset(root), SETTINGS)
    damaged = np.load(first.path / "images.npy", mmap_mode="r+")
    damaged[:] = 255 - damaged  # same size, other pixels
    damaged.flush()
    del damaged
    with caplog.at_level(logging.WARNING, logger="medcli"):
        again = materialize(load_dataset(root), SETTINGS)
    assert again.path == first.path
    assert np.array_equal(np.asarray(again.images), _fresh_pixels(root))
    assert any("images.npy was changed after the cache was built" in r.getMessage() for r in caplog.records)
    assert materialize(load_dataset(root), SETTINGS).path == first.path  # the rebuilt store is trusted again


def test_store_without_meta_json_is_replaced_not_a_crash(tmp_path, caplog):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    first = materialize(load_dataset(root), SETTINGS)
    (first.path / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="medcli"):
        again = materialize(load_dataset(root), SETTINGS)
    assert np.array_equal(np.asarray(again.images), _fresh_pixels(root))
    assert any("incomplete (no meta.json)" in r.getMessage() for r in caplog.records)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # nothing left aside


def test_store_from_an_older_medcli_is_rebuilt_and_open_store_refuses_damage(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    first = materialize(load_dataset(root), SETTINGS)
    meta = json.loads((first.path / "meta.json").read_text())
    del meta["files"]
    (first.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(MedcliError, match="image store unusable .*cannot be checked.*delete the folder"):
        open_store(first.path)
    assert store_mod.store_problem(materialize(load_dataset(root), SETTINGS).path) is None


def test_private_folders_of_dead_builders_are_removed(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    store_dir = tmp_path / "cache" / "store"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    left = [store_dir / f".abc.tmp-{dead.pid}", store_dir / f".abc.tmp-{dead.pid}@{host}", store_dir / f".abc.bad-{dead.pid}@{host}"]
    kept = [store_dir / f".abc.tmp-{os.getpid()}-x", store_dir / f".abc.tmp-{dead.pid}@another-node", store_dir / f".abc.tmp-{os.getppid()}"]
    for folder in left + kept:
        (folder).mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"x")
    materialize(load_dataset(root), SETTINGS, cache_dir=tmp_path / "cache")
    assert [p.exists() for p in left] == [False] * len(left)
    assert [p.exists() for p in kept] == [True] * len(kept)  # live processes, other hosts, other names


def test_no_room_for_the_store_is_one_error_naming_the_cache_and_leaves_nothing(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "d", per_class=4, size=32)
    cache = tmp_path / "cache"

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(MedcliError) as err:
        materialize(load_dataset(root), SETTINGS, cache_dir=cache)
    msg = str(err.value)
    assert msg.startswith(f"{cache}: no space left") and "--cache-dir" in msg and "\n" not in msg
    assert list((cache / "store").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_tmpfs_cache_is_an_error_not_sigbus(tmp_path):
    root = make_synthetic(tmp_path / "d", per_class=12, size=32)
    cache = tmp_path / "cache"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        split_data(root, tmp_path / "s.json", folds=2, cache_dir=tmp_path / "scan-cache")
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDCLI_CACHE": str(cache)}
        code = (  # the free-space check passes, so the array is written: preallocation must catch the full disk
            "import sys; from medcli.data import store; store.check_space = lambda *a: None; "
            "from medcli.cli import main; sys.argv = ['medcli'] + sys.argv[1:]; main()"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, "train", "--data", str(root), "--splits", str(tmp_path / "s.json"), "--backbone",
             "customcnn", "--strategy", "scratch", "--epochs", "1", "--img-size", "256", "--channels", "3", "--results",
             str(tmp_path / "res"), "--work", str(tmp_path / "work"), "--no-progress"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {cache}: no space left"), proc.stderr
        assert [p.name for p in (cache / "store").iterdir()] == []
    finally:
        subprocess.run(["umount", str(cache)], check=False)


def test_feature_cache_changed_after_it_was_built_is_rebuilt(dataset, tmp_path, weights, builds, caplog, one_thread):  # noqa: F811
    from medcli.training import train

    first = train(_linear(dataset, tmp_path / "a", weights, epochs=1))
    folder = Path(first["feature_cache"]["dir"])
    good = np.load(folder / "features.npy")
    np.save(folder / "features.npy", np.zeros_like(good))  # same size, every value wrong
    with caplog.at_level(logging.WARNING, logger="medcli"):
        again = train(_linear(dataset, tmp_path / "b", weights, epochs=1))
    assert builds == [len(good), len(good)] and again["feature_cache"]["built"]
    assert np.array_equal(np.load(folder / "features.npy"), good)
    assert any("checksum differs" in r.getMessage() for r in caplog.records)
    (folder / "meta.json").unlink()  # an incomplete folder is replaced too
    train(_linear(dataset, tmp_path / "c", weights, epochs=1))
    assert len(builds) == 3 and np.array_equal(np.load(folder / "features.npy"), good)


@pytest.mark.slow
def test_two_trains_started_together_share_one_splits_file(tmp_path):
    data = make_synthetic(tmp_path / "flat", layout="imagefolder", n_classes=2, per_class=12, size=32)  # no val split
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "medcli", "train", "--data", str(data), "--seed", str(seed), "--backbone", "customcnn",
             "--strategy", "scratch", "--epochs", "1", "--img-size", "16", "--channels", "1", "--results", str(tmp_path / "res"),
             "--work", str(tmp_path / f"work{seed}"), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for seed in (1, 2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    configs = sorted((tmp_path / "res").rglob("config.json"))
    assert len(configs) == 2
    recorded = {json.loads(c.read_text())["splits_fingerprint"] for c in configs}
    on_disk = splits_fingerprint(json.loads((tmp_path / "res" / "flat" / "splits.json").read_text()))
    assert recorded == {on_disk}
    assert not [p for p in (tmp_path / "res" / "flat").iterdir() if p.name.startswith(".")]


def test_splits_made_meanwhile_by_another_process_are_kept(tmp_path, monkeypatch):
    import medcli.splits as splits_mod

    data = make_synthetic(tmp_path / "flat", layout="imagefolder", n_classes=2, per_class=12, size=32)
    out = tmp_path / "splits.json"
    theirs = split_data(data, tmp_path / "theirs.json", folds=0, seed=1)
    real = splits_mod.make_splits

    ours = []

    def racing(*args, **kwargs):  # the other run publishes while this one is still computing
        ours.append(real(*args, **kwargs))
        out.write_text((tmp_path / "theirs.json").read_text())
        return ours[-1]

    monkeypatch.setattr(splits_mod, "make_splits", racing)
    got = split_data(data, out, folds=0, seed=2, exclusive=True)
    assert splits_fingerprint(ours[0]) != splits_fingerprint(theirs)  # seed 2 alone would have split otherwise
    assert splits_fingerprint(got) == splits_fingerprint(theirs) == splits_fingerprint(json.loads(out.read_text()))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["splits.json", "theirs.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_cache_made_read_only_or_copied_with_its_times_is_still_used(tmp_path):
    """chmod (sharing a cache read-only) and cp -a (to a node's local disk) change the files' change time only."""
    import shutil

    from medcli.data import _cachedir

    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "images.npy").write_bytes(b"\0" * 64)
    recorded = {"images.npy": _cachedir.stamp(folder / "images.npy")}
    os.chmod(folder / "images.npy", 0o444)
    assert _cachedir.stamp_problem(folder, recorded) is None
    shutil.copytree(folder, tmp_path / "copy", copy_function=shutil.copy2)
    assert _cachedir.stamp_problem(tmp_path / "copy", recorded) is None
    (folder / "images.npy").chmod(0o644)
    (folder / "images.npy").write_bytes(b"\1" * 64)  # same size, new contents
    assert "changed after the cache was built" in _cachedir.stamp_problem(folder, recorded)
