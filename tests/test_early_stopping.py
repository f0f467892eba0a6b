"""Early stopping keeps the best epoch's weights (a real copy), waits for the last phase, survives a checkpoint."""

from __future__ import annotations

import pytest
import torch

from medcli.training.early_stopping import EarlyStopping


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def test_best_state_is_a_copy_not_a_reference_to_the_live_weights():
    model = _model()
    stopper = EarlyStopping("max", patience=2)
    assert stopper.update(0.5, 0, model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)  # training goes on after the best epoch
        model[1].running_mean.add_(1.0)
    assert all(torch.equal(stopper.best_state[k], snapshot[k]) for k in snapshot)
    assert all(v.device.type == "cpu" for v in stopper.best_state.values())


def test_only_strict_improvements_count_in_either_direction():
    model = _model()
    up = EarlyStopping("max", patience=3)
    assert [up.update(s, e, model) for e, s in enumerate([0.5, 0.5, 0.7, 0.6])] == [True, False, True, False]
    assert (up.best_score, up.best_epoch, up.bad_epochs) == (0.7, 2, 1)
    down = EarlyStopping("min", patience=3)
    assert [down.update(s, e, model) for e, s in enumerate([1.0, 0.8, 0.9, 0.8])] == [True, True, False, False]
    assert (down.best_score, down.best_epoch, down.bad_epochs) == (0.8, 1, 2)
    with pytest.raises(ValueError):
        EarlyStopping("maximum", patience=1)


def test_never_stops_before_the_last_phase_has_started():
    model = _model()
    stopper = EarlyStopping("max", patience=1)
    stopper.update(0.9, 0, model)  # two-phase: head only for epochs 0-2, then everything from epoch 3
    stopped = []
    for epoch, score in [(1, 0.1), (2, 0.1), (3, 0.1), (4, 0.1)]:
        stopper.update(score, epoch, model)
        stopped.append(stopper.should_stop(epoch, last_phase_start=3, epochs=10))
    assert stopped == [False, False, True, True]
    assert stopper.best_epoch == 0  # an improvement in the first phase is still the best epoch
    assert not stopper.should_stop(9, last_phase_start=3, epochs=10)  # nothing to stop after the last epoch


def test_patience_counts_epochs_without_improvement():
    model = _model()
    stopper = EarlyStopping("max", patience=3)
    stopper.update(0.5, 0, model)
    decisions = []
    for epoch in range(1, 5):
        stopper.update(0.4, epoch, model)
        decisions.append(stopper.should_stop(epoch, last_phase_start=0, epochs=10))
    assert decisions == [False, False, True, True]


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    model = _model()
    stopper = EarlyStopping("min", patience=4)
    stopper.update(0.7, 0, model)
    stopper.update(0.9, 1, model)
    path = tmp_path / "state.pt"
    torch.save(stopper.state_dict(), path)
    again = EarlyStopping("min", patience=4)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert (again.best_score, again.best_epoch, again.bad_epochs) == (0.7, 0, 1)
    assert all(torch.equal(again.best_state[k], stopper.best_state[k]) for k in stopper.best_state)
    assert set(stopper.state_dict()) == {"best_state", "best_score", "best_epoch", "bad_epochs"}  # the checkpoint's keys
    assert not again.update(0.7, 2, model) and again.bad_epochs == 2  # continues where it left off
