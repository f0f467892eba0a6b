"""The feature cache of head-only training: built once, reused, invalidated by what changes the numbers, and
training on it gives what training through the frozen trunk gives."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from typer.testing import CliRunner

from medcli import paths
from medcli.cli import app
from medcli.data.store import open_store
from medcli.models import create_model, load_model
from medcli.preprocess import to_model_input
from medcli.strategies import build_plan, list_strategies
from medcli.training import features as features_mod
from medcli.training import loop as loop_mod
from medcli.training import resume as resume_mod
from medcli.training import resolve, train

from .test_training import _cfg, _history, dataset  # noqa: F401  (dataset is a fixture)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one CPU thread (conftest.py)


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """Counts feature computations: one entry (the number of images) per cache build."""
    calls: list[int] = []
    real = features_mod.extract_features

    def counting(model, images, rows, *args, **kwargs):
        calls.append(len(rows))
        return real(model, images, rows, *args, **kwargs)

    monkeypatch.setattr(features_mod, "extract_features", counting)
    return calls


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return _weights(tmp_path_factory.mktemp("weights"), seed=123)


def _weights(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path = folder / f"resnet18-{seed}.pt"
    torch.save(create_model("resnet18", 3, in_channels=1).trunk.state_dict(), path)
    return path


def _linear(dataset, tmp_path, weights, **kw):  # noqa: F811
    return _cfg(dataset, tmp_path, backbone="resnet18", strategy="linear", weights=str(weights), **kw)


def _logits(run: str) -> tuple[list[str], np.ndarray]:
    with open(paths.predictions_file(run, "val")) as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("logit_")]
    return [r["id"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])


def _state(run: str) -> dict[str, torch.Tensor]:
    return torch.load(paths.model_file(run), weights_only=True)["state_dict"]


def test_linear_defaults_to_no_augmentation(dataset, tmp_path, weights):  # noqa: F811
    assert resolve(_linear(dataset, tmp_path, weights)).augment is False
    assert resolve(_linear(dataset, tmp_path, weights, augment=True)).augment is True
    assert resolve(_cfg(dataset, tmp_path, strategy="full")).augment is True
    assert resolve(_cfg(dataset, tmp_path, strategy="two-phase", weights=str(weights), backbone="resnet18")).augment is True


def test_cli_switches_reach_the_config(dataset, tmp_path, monkeypatch):  # noqa: F811
    import medcli.training

    seen = []
    monkeypatch.setattr(medcli.training, "train", lambda cfg: seen.append(cfg) or {"main_process": False})
    data, _ = dataset
    runner = CliRunner()
    for extra, augment, cache in (([], None, True), (["--augment", "--no-feature-cache"], True, False), (["--no-augment"], False, True)):
        res = runner.invoke(app, ["train", "--data", str(data), "--strategy", "linear", *extra])
        assert res.exit_code == 0, res.output
        assert (seen[-1].augment, seen[-1].feature_cache) == (augment, cache)


def test_built_once_and_reused_across_folds_and_seeds(dataset, tmp_path, weights, builds):  # noqa: F811
    first = train(_linear(dataset, tmp_path / "a", weights, epochs=1))
    info = first["feature_cache"]
    npy = Path(info["dir"]) / "features.npy"
    mtime = npy.stat().st_mtime_ns
    assert info["used"] and info["built"] and builds == [info["n_images"]]
    assert info["n_images"] == first["n_train"] + first["n_val"]  # 3 folds: every dev image is in one val set
    others = [train(_linear(dataset, tmp_path / f"b{fold}{seed}", weights, epochs=1, fold=fold, seed=seed)) for fold, seed in ((1, 0), (0, 1))]
    assert len(builds) == 1
    assert all(o["feature_cache"]["key"] == info["key"] and not o["feature_cache"]["built"] for o in others)
    assert npy.stat().st_mtime_ns == mtime
    meta = json.loads((Path(info["dir"]) / "meta.json").read_text())
    assert meta["key"] == info["key"] and meta["key_parts"]["backbone"] == "resnet18" and len(meta["ids"]) == info["n_images"]
    doc = json.loads(Path(paths.config_file(first["out"])).read_text())  # the resolved settings are recorded
    assert doc["config"]["augment"] is False and doc["config"]["feature_cache"] is True
    assert doc["summary"]["feature_cache"]["key"] == info["key"]


def test_other_weights_or_image_size_invalidate_the_cache(dataset, tmp_path, weights, builds):  # noqa: F811
    base = train(_linear(dataset, tmp_path / "a", weights, epochs=1))["feature_cache"]
    copy = tmp_path / "copy-of-the-weights.pt"
    copy.write_bytes(Path(weights).read_bytes())
    same = train(_linear(dataset, tmp_path / "b", copy, epochs=1))["feature_cache"]
    assert same["key"] == base["key"] and len(builds) == 1  # the weights' content counts, not their file name
    other = train(_linear(dataset, tmp_path / "c", _weights(tmp_path, seed=7), epochs=1))["feature_cache"]
    bigger = train(_linear(dataset, tmp_path / "d", weights, epochs=1, img_size=40))["feature_cache"]
    assert len(builds) == 3 and len({base["key"], other["key"], bigger["key"]}) == 3
    assert other["built"] and bigger["built"]


def test_key_covers_every_setting_that_changes_the_numbers():
    model = create_model("resnet18", 3, in_channels=1)
    parts = dict(store_key="s", ids=["a", "b"], backbone="resnet18", trunk=features_mod.trunk_fingerprint(model.trunk),
                 mean=[0.45], std=[0.23], channels=1, precision="fp32")
    key = features_mod.feature_key(features_mod.key_parts(**parts))
    assert features_mod.feature_key(features_mod.key_parts(**{**parts, "ids": ["b", "a"]})) == key  # order does not matter
    for change in ({"store_key": "t"}, {"ids": ["a"]}, {"backbone": "resnet50"}, {"mean": [0.5]}, {"std": [0.2]}, {"channels": 3}, {"precision": "bf16"}):
        assert features_mod.feature_key(features_mod.key_parts(**{**parts, **change})) != key, change
    with torch.no_grad():
        model.trunk.layer4[1].bn2.running_var[0] += 1e-3  # a buffer, not only parameters
    assert features_mod.trunk_fingerprint(model.trunk) != parts["trunk"]


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_cached_features_train_the_same_head_as_the_frozen_trunk(dataset, tmp_path, weights, head):  # noqa: F811
    cached = train(_linear(dataset, tmp_path / "cached", weights, epochs=2, head=head, hidden=16))
    direct = train(_linear(dataset, tmp_path / "direct", weights, epochs=2, head=head, hidden=16, feature_cache=False))
    assert cached["feature_cache"]["used"] and not direct["feature_cache"]["used"]
    hc, hd = _history(cached["out"]), _history(direct["out"])
    assert [r["epoch"] for r in hc] == [r["epoch"] for r in hd] == ["1", "2"]
    for a, b in zip(hc, hd):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"):
            assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-4), (head, a["epoch"], k)
    assert cached["best_epoch"] == direct["best_epoch"]
    wc, wd = _state(cached["out"]), _state(direct["out"])
    pretrained = torch.load(weights, weights_only=True)
    for key, value in pretrained.items():  # trunk weights and BatchNorm statistics: bit-identical in both
        assert torch.equal(wc[f"trunk.{key}"], value) and torch.equal(wd[f"trunk.{key}"], value), key
    head_keys = [k for k in wc if k.startswith("head.")]
    assert head_keys and all(torch.allclose(wc[k].float(), wd[k].float(), atol=1e-4, rtol=1e-4) for k in head_keys)
    ids, logits = _logits(cached["out"])
    direct_ids, direct_logits = _logits(direct["out"])
    assert ids == direct_ids and np.allclose(logits, direct_logits, atol=1e-4)

    # The saved model (trunk + trained head) run on the images gives the logits computed from cached features.
    model, meta = load_model(paths.model_file(cached["out"]))
    doc = json.loads(Path(paths.config_file(cached["out"])).read_text())
    store = open_store(Path(cached["feature_cache"]["dir"]).parents[1] / "store" / doc["store_key"])
    pixels = torch.from_numpy(np.ascontiguousarray(store.images[store.rows(ids)])).permute(0, 3, 1, 2)
    pre = meta["preprocess"]
    with torch.no_grad():
        full = model(to_model_input(pixels, torch.tensor(pre["mean"]), torch.tensor(pre["std"]))).numpy()
    assert np.allclose(full, logits, atol=1e-4)


def test_augmentation_on_trains_through_the_trunk_and_says_why(dataset, tmp_path, weights, builds, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="medcli"):
        summary = train(_linear(dataset, tmp_path, weights, epochs=1, augment=True))
    assert builds == [] and summary["feature_cache"]["used"] is False
    assert "augmentation is on" in summary["feature_cache"]["reason"]
    lines = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(lines) == 1 and "--no-augment" in lines[0]
    assert not (Path(paths.default_cache_dir()) / "features").exists()


@pytest.mark.parametrize("strategy", list_strategies())
def test_only_plans_that_train_the_head_alone_can_use_the_cache(strategy):
    model = create_model("customcnn", 3)
    plan = build_plan(model, strategy, epochs=2, lr=0.1, freeze_epochs=1)
    assert features_mod.trains_head_only(model, plan) == (strategy == "linear")


def test_killed_cached_run_resumes_to_the_same_result(dataset, tmp_path, weights, monkeypatch, request):  # noqa: F811
    steps: list[int] = []  # optimizer steps, counted through torch's global hook
    request.addfinalizer(register_optimizer_step_post_hook(lambda *a: steps.append(1)).remove)
    whole = train(_linear(dataset, tmp_path / "whole", weights, epochs=2, head="mlp", hidden=16))
    whole_steps = len(steps)
    real_save = loop_mod.save_checkpoint

    def save_then_die(path, cfg, epoch, *args, **kwargs):
        real_save(path, cfg, epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    cfg = _linear(dataset, tmp_path / "killed", weights, epochs=2, head="mlp", hidden=16, checkpoint_every=0)
    monkeypatch.setattr(loop_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    # The frozen trunk is not rewritten every epoch: the checkpoint holds the head and the trunk's hash.
    resolved = resolve(cfg)
    ckpt = paths.checkpoint_file(paths.work_dir(resolved.work, "d", "resnet18", "linear", 0, 0))
    state = torch.load(ckpt, weights_only=True)
    assert state["model"] and not any(k.startswith("trunk.") for k in (*state["model"], *state["best_state"]))
    assert state["trunk_sha256"] == features_mod.trunk_fingerprint(create_model("resnet18", 3, in_channels=1, weights=weights).trunk)
    assert resume_mod.load_checkpoint(ckpt, resolved, "other weights") is None  # another trunk: start over
    monkeypatch.setattr(loop_mod, "save_checkpoint", real_save)
    steps.clear()
    resumed = train(cfg)
    assert 2 * len(steps) == whole_steps > 0  # it trained epoch 2 only: resumed, not started over
    assert resumed["feature_cache"]["used"] and not resumed["feature_cache"]["built"]
    assert _history(resumed["out"]) == _history(whole["out"])
    wa, wb = _state(resumed["out"]), _state(whole["out"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


_BOTH = """
import json, os, sys
from medcli.training import TrainConfig, train
base, out = json.loads(sys.argv[1]), sys.argv[2]
for name, cache in (("cached", True), ("direct", False)):
    s = train(TrainConfig(**base, feature_cache=cache, results=f"{out}/{name}/results", work=f"{out}/{name}/work"))
    with open(f"{out}/built-{name}-rank{os.environ['RANK']}.json", "w") as fh:  # one file each: stdout lines interleave
        json.dump(s["feature_cache"].get("built"), fh)
"""


@pytest.mark.slow
def test_two_processes_train_on_cached_features_like_on_the_trunk(dataset, tmp_path, weights):  # noqa: F811
    """Data-parallel (torchrun, gloo on the CPU): each process takes its share of the feature batches."""
    import os
    import socket
    import subprocess
    import sys

    data, splits = dataset
    script = tmp_path / "both.py"
    script.write_text(_BOTH)
    base = dict(data=str(data), splits=str(splits), backbone="resnet18", strategy="linear", weights=str(weights), head="mlp",
                hidden=16, epochs=2, img_size=32, channels=1, batch_size=16, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           str(script), json.dumps(base), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = {p.stem[len("built-"):]: json.loads(p.read_text()) for p in tmp_path.glob("built-*.json")}
    assert built == {"cached-rank0": True, "cached-rank1": False, "direct-rank0": None, "direct-rank1": None}  # one build
    runs = {name: str(paths.run_dir(tmp_path / name / "results", "d", "resnet18", "linear", 0, 0)) for name in ("cached", "direct")}
    config = json.loads(Path(paths.config_file(runs["cached"])).read_text())
    assert config["summary"]["num_processes"] == 2 and config["summary"]["feature_cache"]["used"]
    hc, hd = _history(runs["cached"]), _history(runs["direct"])
    assert len(hc) == len(hd) == 2
    for a, b in zip(hc, hd):
        assert all(float(a[k]) == pytest.approx(float(b[k]), abs=1e-4) for k in a if k not in ("epoch", "phase")), (a, b)
    ids, logits = _logits(runs["cached"])
    direct_ids, direct_logits = _logits(runs["direct"])
    assert len(set(ids)) == len(ids) == config["summary"]["n_val"]
    assert ids == direct_ids and np.allclose(logits, direct_logits, atol=1e-4)
