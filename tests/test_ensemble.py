"""Ensembles fitted on out-of-fold predictions: they help when members err differently, never trail the
best member on OOF data when fitted, and never look at test labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medcli.ensemble import METHODS, Member, fit_ensemble, fold_ensemble, log_loss
from medcli.errors import MedcliError


def _onehot(y, c):
    return np.eye(c)[y]


def _complementary(n=600, c=3, seed=0):
    """Two members, each reliable on a different half of the data and guessing on the other half."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    half = rng.random(n) < 0.5
    members = []
    for good in (half, ~half):
        noise = rng.dirichlet(np.ones(c), n)
        p = np.where(good[:, None], 0.75 * _onehot(y, c) + 0.25 * noise, noise)
        members.append(p / p.sum(1, keepdims=True))
    return y, members


def _accuracy(y, p):
    return float((p.argmax(1) == y).mean())


@pytest.mark.parametrize("method", ["mean", "weighted", "stacking"])
def test_complementary_members_are_beaten_by_the_ensemble(method):
    y, probs = _complementary(seed=1)
    y_test, probs_test = _complementary(seed=2)
    members = [Member(f"m{k}", p, pt) for k, (p, pt) in enumerate(zip(probs, probs_test))]
    fitted = fit_ensemble(method, members, y)
    ens = fitted.predict([m.test for m in members])
    assert np.allclose(ens.sum(1), 1)
    for m in members:
        assert _accuracy(y_test, ens) > _accuracy(y_test, m.test) + 0.1


@pytest.mark.parametrize("method", ["weighted", "greedy"])
def test_fitted_ensembles_never_trail_the_strong_member_on_oof(method):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    strong = 0.8 * _onehot(y, 4) + 0.2 * rng.dirichlet(np.ones(4), 400)
    noise = rng.dirichlet(np.ones(4), 400)
    members = [Member("noise", noise, noise), Member("strong", strong, strong)]
    fitted = fit_ensemble(method, members, y)
    ens = fitted.predict([m.oof for m in members])
    assert log_loss(y, ens) <= log_loss(y, strong) + 1e-9
    assert fitted.weights[1] > 0.9


@pytest.mark.parametrize("method", list(METHODS))
def test_test_labels_and_predictions_never_influence_the_fit(method):
    y, probs = _complementary(seed=4)
    rng = np.random.default_rng(5)
    a = [Member(f"m{k}", p, rng.dirichlet(np.ones(3), 50)) for k, p in enumerate(probs)]
    b = [Member(f"m{k}", p, rng.dirichlet(np.ones(3), 50)) for k, p in enumerate(probs)]  # other "test" data
    fa, fb = fit_ensemble(method, a, y), fit_ensemble(method, b, y)
    assert fa.weights == fb.weights and fa.selected == fb.selected
    assert np.allclose(fa.predict([m.oof for m in a]), fb.predict([m.oof for m in b]))


def test_vote_breaks_ties_by_mean_probability_deterministically():
    p1 = np.array([[0.6, 0.4], [0.9, 0.1]])
    p2 = np.array([[0.45, 0.55], [0.2, 0.8]])
    fitted = fit_ensemble("vote", [Member("a", p1, p1), Member("b", p2, p2)], np.array([0, 1]))
    out = fitted.predict([p1, p2])
    # row 0: one vote each; mean probs (0.525, 0.475) -> class 0. row 1: mean (0.55, 0.45) -> class 0.
    assert out.argmax(1).tolist() == [0, 0]
    assert np.array_equal(out, fitted.predict([p1, p2]))


def test_fold_ensemble_of_identical_models_equals_one_model():
    p = np.random.default_rng(0).dirichlet(np.ones(3), 20)
    assert np.allclose(fold_ensemble([p, p.copy(), p.copy()]), p)


def test_greedy_selects_with_replacement_and_starts_from_the_best():
    y, probs = _complementary(seed=6)
    weak = np.full_like(probs[0], 1 / 3)
    members = [Member("weak", weak, weak), Member("a", probs[0], probs[0]), Member("b", probs[1], probs[1])]
    fitted = fit_ensemble("greedy", members, y)
    losses = [log_loss(y, m.oof) for m in members]
    assert fitted.selected[0] == members[int(np.argmin(losses))].name
    assert "weak" not in fitted.selected
    assert abs(sum(fitted.weights) - 1) < 1e-9


def test_unknown_method_is_refused():
    with pytest.raises(MedcliError, match="unknown ensemble method 'best'"):
        fit_ensemble("best", [Member("a", np.eye(2), np.eye(2))], np.array([0, 1]))


def _write_runs(results, y_dev, y_test, members, seed=0, folds=2):
    """Run folders holding only what ensembles read: val/test predictions, plus splits.json."""
    import csv
    import json
    from pathlib import Path

    from medcli import paths

    classes = ["a", "b", "c"]
    dev_ids = [f"d{i:03d}" for i in range(len(y_dev))]
    test_ids = [f"t{i:03d}" for i in range(len(y_test))]
    fold_of = np.arange(len(y_dev)) % folds
    Path(paths.splits_file(results, "ds")).parent.mkdir(parents=True, exist_ok=True)
    Path(paths.splits_file(results, "ds")).write_text(json.dumps({"classes": classes, "folds": [
        {"fold": k, "train": [i for i, f in zip(dev_ids, fold_of) if f != k], "val": [i for i, f in zip(dev_ids, fold_of) if f == k]} for k in range(folds)]}))
    for config, (oof, test) in members.items():
        backbone, strategy = config.split("__")
        for k in range(folds):
            run = paths.run_dir(results, "ds", backbone, strategy, seed, k)
            for split, ids, y, p in (("val", [i for i, f in zip(dev_ids, fold_of) if f == k], y_dev[fold_of == k], oof[fold_of == k]), ("test", test_ids, y_test, test)):
                path = Path(paths.predictions_file(run, split))
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(["id", "path", "label", *(f"prob_{c}" for c in classes)])
                    for i, label, row in zip(ids, y, p):
                        w.writerow([i, f"/x/{i}.png", classes[label], *row])


def test_build_ensemble_from_run_folders_writes_eval_format_and_the_oof_check(tmp_path):
    import json

    from medcli import paths
    from medcli.ensemble import build_ensemble

    y_dev, (p1, p2) = _complementary(n=120, seed=7)
    y_test, (t1, t2) = _complementary(n=60, seed=8)
    _write_runs(tmp_path, y_dev, y_test, {"r__full": (p1, t1), "c__scratch": (p2, t2)})
    summary = build_ensemble(tmp_path, "ds", ["r__full", "c__scratch"], "greedy", 0, name="pair", n_bootstrap=50)
    out = paths.ensemble_dir(tmp_path, "ds", "pair", "greedy", 0)
    doc = json.loads(open(paths.metrics_file(out, "test")).read())
    assert doc["format"] == "medcli.metrics/1" and doc["n"] == 60 and "balanced_accuracy" in doc["ci"]
    assert summary["oof"]["ensemble"]["log_loss"] <= min(m["log_loss"] for m in summary["oof"]["members"].values()) + 0.05
    assert "vs best member" in summary["statement"]
    with pytest.raises(MedcliError, match="missing predictions"):
        build_ensemble(tmp_path, "ds", ["r__full", "nope__linear"], "mean", 0)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_stacking_ensemble_applies_from_its_recorded_stacker_alone(n_classes):
    """ensemble.json's ``details`` are enough to apply the stacker to new predictions (medcli predict), exactly."""
    from medcli.ensemble import fit_stacking, stacking_combine

    rng = np.random.default_rng(3)
    y = rng.integers(0, n_classes, 80)
    members = [rng.dirichlet(np.ones(n_classes), 80) for _ in range(2)]
    members = [0.5 * m + 0.5 * np.eye(n_classes)[y] for m in members]  # informative members
    fitted = fit_stacking(members, y, ["a", "b"])
    new = [rng.dirichlet(np.ones(n_classes), 17) for _ in range(2)]
    details = json.loads(json.dumps(fitted.details))  # as written to ensemble.json
    assert np.abs(stacking_combine(details, n_classes)(new) - fitted.predict(new)).max() < 1e-12
