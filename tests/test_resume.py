"""Resume state: the checkpoint keeps its format and keys, refuses other settings or trunks, and a head-only
checkpoint is completed with the rebuilt trunk."""

from __future__ import annotations

import torch

from medcli.models import create_model
from medcli.training import TrainConfig
from medcli.training.early_stopping import EarlyStopping
from medcli.training.features import trunk_fingerprint
from medcli.training.resume import CHECKPOINT_FORMAT, head_part, load_checkpoint, resume_state, save_checkpoint

KEYS = {"format", "key", "epoch", "model", "trunk_sha256", "optimizer", "scheduler", "best_state", "best_score",
        "best_epoch", "bad_epochs", "history", "ema"}


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("customcnn", 3, in_channels=1)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    optimizer.step()
    scheduler.step()
    stopper = EarlyStopping("max", patience=3)
    stopper.update(0.75, 0, model)
    stopper.update(0.5, 1, model)
    return model, optimizer, scheduler, stopper


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="/data/x", backbone="customcnn", strategy="scratch", epochs=5, **kw)


def test_full_checkpoint_round_trip(tmp_path):
    model, optimizer, scheduler, stopper = _setup()
    path = str(tmp_path / "checkpoint.pt")
    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.6}]
    average = {k: v + 1 for k, v in model.state_dict().items()}  # the weight average's tensors
    save_checkpoint(path, _cfg(), 2, model, optimizer, scheduler, stopper, history, average=average)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == KEYS and raw["format"] == CHECKPOINT_FORMAT == "medcli.checkpoint/3"
    state = resume_state(path, _cfg(), model)
    assert state["epoch"] == 2 and state["history"] == history and state["trunk_sha256"] is None
    assert (state["best_score"], state["best_epoch"], state["bad_epochs"]) == (0.75, 0, 1)
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["scheduler"]["last_epoch"] == 1 and state["optimizer"]["state"]
    assert all(torch.equal(state["ema"][k], v) for k, v in average.items())


def test_other_settings_a_damaged_file_or_no_file_start_over(tmp_path):
    model, optimizer, scheduler, stopper = _setup()
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, _cfg(), 1, model, optimizer, scheduler, stopper, [])
    assert load_checkpoint(path, _cfg()) is not None
    assert load_checkpoint(path, _cfg(lr=0.5)) is None  # another learning rate: another run
    assert load_checkpoint(path, _cfg(), frozen_trunk="abc") is None  # saved without a frozen trunk
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert load_checkpoint(str(tmp_path / "bad.pt"), _cfg()) is None
    assert resume_state(str(tmp_path / "missing.pt"), _cfg(), model) is None


def test_head_only_checkpoint_holds_the_head_and_is_completed_with_the_rebuilt_trunk(tmp_path):
    model, optimizer, scheduler, stopper = _setup()
    sha = trunk_fingerprint(model.trunk)
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, _cfg(), 2, model, optimizer, scheduler, stopper, [], frozen_trunk=sha)
    raw = torch.load(path, weights_only=True)
    assert raw["trunk_sha256"] == sha and set(raw) == KEYS
    assert raw["model"] and not any(k.startswith("trunk.") for k in (*raw["model"], *raw["best_state"]))
    assert load_checkpoint(path, _cfg(), frozen_trunk="another trunk") is None

    rebuilt, *_ = _setup()  # same seed: the same trunk, as a resumed run rebuilds it from the weights
    state = resume_state(path, _cfg(), rebuilt, sha)
    assert set(state["model"]) == set(model.state_dict()) == set(state["best_state"])
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    rebuilt.load_state_dict(state["model"])
    assert head_part(None) is None


def test_a_checkpoint_of_the_format_before_weight_averaging_starts_over(tmp_path, caplog):
    """Format 2 had no weight average: resuming it under averaging would restart the average from the current
    weights and silently change the result, so it is not resumed (even under a matching key)."""
    model, optimizer, scheduler, stopper = _setup()
    path = str(tmp_path / "old.pt")
    torch.save({"format": "medcli.checkpoint/2", "key": _cfg().key(), "epoch": 3, "model": model.state_dict(), "trunk_sha256": None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_state": stopper.best_state,
                "best_score": 0.75, "best_epoch": 0, "bad_epochs": 1, "history": []}, path)
    with caplog.at_level("INFO", logger="medcli"):
        assert resume_state(path, _cfg(), model) is None
    assert "starting over" in caplog.text
