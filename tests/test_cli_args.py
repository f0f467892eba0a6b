"""Each command hands its library function exactly the arguments the user typed, converted and defaulted as documented.

The library functions are replaced by recorders, so these tests run in milliseconds and say nothing about what the
functions do (their own tests do that); they catch a CLI that drops an option, swaps two, keeps a string where the
library wants a mapping, or defaults differently from its help text.

The recorders replace the library function (``medcli.evaluation.runner.evaluate_run`` ...) wherever a ``medcli``
module holds that same function object, so they keep working when a CLI file is renamed or imports the function
from its package instead of its module. ``medcli train`` is tested in test_training.py / test_feature_cache.py.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medcli.cli import app
from medcli.data.decode import DecodeOptions


class Recorder:
    """Stands in for one library function: records each call's arguments, bound to the real signature."""

    def __init__(self, real, returns) -> None:
        self.signature = inspect.signature(real)
        self.returns = returns
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)  # a TypeError here: the CLI passes an argument the function lacks
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        return self.returns(*args, **kwargs) if callable(self.returns) else self.returns

    @property
    def only_call(self) -> dict:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def fake(monkeypatch):
    """``fake("medcli.splits:split_data", returns=...)`` -> a :class:`Recorder` patched in everywhere."""

    def patch(target: str, returns=None) -> Recorder:
        module_name, attr = target.split(":")
        real = getattr(importlib.import_module(module_name), attr)
        recorder = Recorder(real, returns)
        patched = 0
        for name, module in list(sys.modules.items()):
            if (name == "medcli" or name.startswith("medcli.")) and getattr(module, attr, None) is real:
                monkeypatch.setattr(module, attr, recorder)
                patched += 1
        assert patched, target
        return recorder

    return patch


runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------------------------------------------- medcli split


def test_split_defaults(fake, tmp_path):
    split = fake("medcli.splits:split_data", returns={})
    fake("medcli.splits:summarize", returns="")
    out = invoke("split", str(tmp_path / "data"))
    assert split.only_call == {
        "path": tmp_path / "data", "out": Path("results", "data", "splits.json"), "layout": "auto", "aliases": {}, "folds": 5, "seed": 0,
        "test_fraction": 0.2, "val_fraction": 0.2, "drop_test_duplicates": False, "skip_bad": False,
        "near_threshold": None, "cache_dir": None, "workers": None, "allow_missing_classes": False, "advice": None,
        "decode": DecodeOptions(), "group_by": None, "exclusive": False,
    }
    assert isinstance(split.only_call["path"], Path)
    assert "splits written to results/data/splits.json" in out  # where medcli train looks by default


def test_split_every_option(fake, tmp_path):
    split = fake("medcli.splits:split_data", returns={"folds": []})
    summarize = fake("medcli.splits:summarize", returns="SUMMARY LINE")
    out = invoke("split", str(tmp_path / "data.csv"), "-o", str(tmp_path / "s.json"), "-k", "3", "--seed", "7",
                 "--test-fraction", "0.25", "--val-fraction", "0.1", "--drop-test-duplicates", "--layout", "csv",
                 "--alias", "adeno_left=adeno", "--alias", " B = b ", "--skip-bad", "--near-threshold", "12",
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "2", "--allow-missing-classes", "--window", "lung",
                 "--frame", "2", "--group-by", "patient")
    assert split.only_call == {
        "path": tmp_path / "data.csv", "out": tmp_path / "s.json", "layout": "csv", "aliases": {"adeno_left": "adeno", "B": "b"},
        "folds": 3, "seed": 7, "test_fraction": 0.25, "val_fraction": 0.1, "drop_test_duplicates": True, "skip_bad": True,
        "near_threshold": 12, "cache_dir": tmp_path / "cache", "workers": 2, "allow_missing_classes": True, "advice": None,
        "decode": DecodeOptions(window="lung", frame=2), "group_by": "patient", "exclusive": False,
    }
    assert summarize.only_call == {"doc": {"folds": []}}  # the summary printed is that of the splits just made
    assert "SUMMARY LINE" in out


def test_a_malformed_alias_is_one_line_error_and_calls_nothing(fake, tmp_path):
    split = fake("medcli.splits:split_data", returns={})
    result = runner.invoke(app, ["split", str(tmp_path), "--alias", "no-equals-sign"])
    assert result.exit_code == 1 and "RAW_NAME=CLASS_NAME" in result.output
    assert split.calls == []


# ----------------------------------------------------------------------------------------------------- medcli eval


def test_eval_defaults(fake, tmp_path):
    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns={"test": {}})
    render = fake("medcli.evaluation.runner:render")
    invoke("eval", str(tmp_path / "run"))
    assert evaluate.only_call == {
        "run_dir": tmp_path / "run", "split": "test", "tta": False, "data": None, "name": None, "aliases": {},
        "skip_bad": False, "n_bootstrap": 1000, "seed": 0, "figures": True, "cache_dir": None,
    }
    assert render.only_call["results"] == {"test": {}}


def test_eval_external_data_with_every_option(fake, tmp_path):
    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns={})
    fake("medcli.evaluation.runner:render")
    invoke("eval", str(tmp_path / "run"), "--split", "all", "--tta", "--data", str(tmp_path / "site b"), "--name", "site-b",
           "--alias", "NA=normal", "--skip-bad", "--bootstrap", "0", "--seed", "3", "--no-figures", "--cache-dir", str(tmp_path / "c"))
    assert evaluate.only_call == {
        "run_dir": tmp_path / "run", "split": "all", "tta": True, "data": tmp_path / "site b", "name": "site-b",
        "aliases": {"NA": "normal"}, "skip_bad": True, "n_bootstrap": 0, "seed": 3, "figures": False, "cache_dir": tmp_path / "c",
    }
    assert isinstance(evaluate.only_call["data"], Path)


def test_eval_several_runs_calls_evaluate_run_once_per_run_with_the_same_options(fake, tmp_path):
    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns=lambda run_dir, **_: {"test": {"run": str(run_dir)}})
    render = fake("medcli.evaluation.runner:render")
    a, b = tmp_path / "cnn__full" / "seed0" / "fold1", tmp_path / "cnn__full" / "seed0" / "fold2"
    out = invoke("eval", str(a), str(b), "--split", "all", "--bootstrap", "0", "--seed", "3", "--no-figures", "--alias", "NA=normal")
    options = {"split": "all", "tta": False, "data": None, "name": None, "aliases": {"NA": "normal"}, "skip_bad": False,
               "n_bootstrap": 0, "seed": 3, "figures": False, "cache_dir": None}
    assert evaluate.calls == [{"run_dir": a, **options}, {"run_dir": b, **options}]
    assert [c["results"] for c in render.calls] == [{"test": {"run": str(a)}}, {"test": {"run": str(b)}}]
    assert out.index(f"== {a}") < out.index(f"written under {a}") < out.index(f"== {b}") < out.index(f"written under {b}")


def test_eval_figures_for_draws_figures_for_the_runs_named_only(fake, tmp_path):
    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns={})
    fake("medcli.evaluation.runner:render")
    a, b, c = (tmp_path / "cfg" / "seed-0" / f"fold-{k}" for k in range(3))
    invoke("eval", str(a), str(b), str(c), "--split", "all", "--figures-for", str(b))
    assert [(call["run_dir"], call["figures"]) for call in evaluate.calls] == [(a, False), (b, True), (c, False)]
    evaluate.calls.clear()
    invoke("eval", str(a), str(b), "--no-figures", "--figures-for", str(b))  # --no-figures wins
    assert [call["figures"] for call in evaluate.calls] == [False, False]
    evaluate.calls.clear()
    invoke("eval", str(a), "--figures-for", str(b))  # one run, not named: no figures
    assert [call["figures"] for call in evaluate.calls] == [False]


def test_eval_several_runs_a_failing_run_does_not_stop_the_others(fake, tmp_path):
    from medcli.errors import MedcliError

    def outcome(run_dir, **_):
        if run_dir.name == "bad":
            raise MedcliError(f"{run_dir}: not a run folder")
        if run_dir.name == "bug":
            raise ZeroDivisionError("division by zero")
        return {"test": {}}

    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns=outcome)
    render = fake("medcli.evaluation.runner:render")
    bad, good, bug = tmp_path / "bad", tmp_path / "good", tmp_path / "bug"
    result = runner.invoke(app, ["eval", str(bad), str(good), str(bug), "--bootstrap", "0"])
    assert result.exit_code == 1, result.output
    assert [c["run_dir"] for c in evaluate.calls] == [bad, good, bug] and len(render.calls) == 1
    lines = result.output.splitlines()
    assert f"error: {bad}: not a run folder" in lines
    assert f"error: {bug}: unexpected ZeroDivisionError: division by zero (traceback in the log)" in lines
    assert f"error: 2 of 3 runs failed: {bad}, {bug}" == lines[-1]
    assert f"metrics and predictions written under {good}" in lines
    # the bug's traceback is in the log (stderr, the SLURM log), once; the expected error has none
    assert result.output.count("Traceback (most recent call last)") == 1
    assert f"{bug}: evaluation failed with an unexpected error" in result.output


def test_eval_several_runs_a_bad_option_fails_once_before_any_run(fake, tmp_path):
    evaluate = fake("medcli.evaluation.runner:evaluate_run", returns={})
    result = runner.invoke(app, ["eval", str(tmp_path / "a"), str(tmp_path / "b"), "--split", "train"])
    assert result.exit_code == 1 and result.output.count("--split 'train'") == 1 and evaluate.calls == []


# -------------------------------------------------------------------------------------------------- medcli gradcam


def test_gradcam_defaults_and_options(fake, tmp_path):
    explain = fake("medcli.gradcam.run:explain_run", returns={"n": 0})
    summarize = fake("medcli.gradcam.run:summarize", returns="CAM SUMMARY")
    invoke("gradcam", str(tmp_path / "run"))
    assert explain.only_call == {"run_dir": tmp_path / "run", "split": "test", "n": 16, "method": "gradcam", "target": "pred",
                                 "batch_size": 16, "seed": 0, "cache_dir": None}
    explain.calls.clear()
    out = invoke("gradcam", str(tmp_path / "run"), "--split", "val", "--n", "4", "--method", "gradcam++", "--target", "true",
                 "--batch-size", "2", "--seed", "9", "--cache-dir", str(tmp_path / "c"))
    assert explain.only_call == {"run_dir": tmp_path / "run", "split": "val", "n": 4, "method": "gradcam++", "target": "true",
                                 "batch_size": 2, "seed": 9, "cache_dir": tmp_path / "c"}
    assert summarize.calls[-1] == {"result": {"n": 0}} and "CAM SUMMARY" in out


# ------------------------------------------------------------------------------------------------- medcli ensemble


def test_ensemble_defaults_take_every_configuration_of_the_seed(fake):
    members = fake("medcli.ensemble:member_configs", returns=["customcnn__scratch", "resnet18__full"])
    build = fake("medcli.ensemble:build_ensemble", returns={"statement": "STATEMENT"})
    out = invoke("ensemble", "--dataset", "demo")
    assert members.only_call == {"results": Path("results"), "dataset": "demo", "seed": 0}
    assert build.only_call == {"results": Path("results"), "dataset": "demo", "members": ["customcnn__scratch", "resnet18__full"],
                               "method": "greedy", "seed": 0, "name": "all", "n_bootstrap": 1000}
    assert "all__greedy seed 0: STATEMENT" in out


def test_ensemble_repeated_options_give_one_ensemble_per_seed_and_method(fake, tmp_path):
    members = fake("medcli.ensemble:member_configs", returns=["unused"])
    build = fake("medcli.ensemble:build_ensemble", returns={"statement": "s"})
    invoke("ensemble", "--dataset", "chest ct", "-m", "resnet18__linear", "--members", "resnet18__full", "--method", "mean",
           "--method", "stacking", "--seed", "1", "--seed", "2", "--name", "pair", "--results", str(tmp_path / "res"),
           "--bootstrap", "10")
    assert members.calls == []  # the members were given
    common = {"results": tmp_path / "res", "dataset": "chest ct", "members": ["resnet18__linear", "resnet18__full"], "name": "pair",
              "n_bootstrap": 10}
    assert build.calls == [{**common, "method": m, "seed": s} for s in (1, 2) for m in ("mean", "stacking")]


# --------------------------------------------------------------------------------------------------- medcli report


def test_report_defaults_and_options(fake, tmp_path):
    write = fake("medcli.report.build:write_report", returns=tmp_path / "summary.md")
    out = invoke("report")
    assert write.only_call == {"results": Path("results"), "out": None, "primary": None, "reference": None, "n_bootstrap": 1000, "seed": 0}
    assert f"summary written to {tmp_path / 'summary.md'}" in out
    write.calls.clear()
    invoke("report", str(tmp_path / "res"), "-o", str(tmp_path / "r.md"), "--primary", "macro_f1", "--reference", "resnet18__full",
           "--bootstrap", "5")
    assert write.only_call == {"results": tmp_path / "res", "out": tmp_path / "r.md", "primary": "macro_f1",
                               "reference": "resnet18__full", "n_bootstrap": 5, "seed": 0}


# ---------------------------------------------------------------------------------------------- medcli data inspect


def test_data_inspect_defaults(fake, tmp_path):
    from medcli.data.duplicates import DEFAULT_NEAR_THRESHOLD

    inspect_ = fake("medcli.data:inspect_data", returns={"classes": []})
    render = fake("medcli.data.inspect:render_report")
    invoke("data", "inspect", str(tmp_path / "data"))
    assert inspect_.only_call == {"path": tmp_path / "data", "layout": "auto", "aliases": {}, "near_threshold": DEFAULT_NEAR_THRESHOLD,
                                  "cache_dir": None, "workers": None, "contact_sheet": None, "decode": DecodeOptions(), "group_by": None}
    assert DEFAULT_NEAR_THRESHOLD == 40  # the number the --near-threshold help text promises
    assert render.only_call["report"] == {"classes": []}


def test_data_inspect_every_option_and_the_json_report(fake, tmp_path):
    import json

    inspect_ = fake("medcli.data:inspect_data", returns={"classes": ["a", "b"], "n_images": 2})
    fake("medcli.data.inspect:render_report")
    invoke("data", "inspect", str(tmp_path / "m.npz"), "--json", str(tmp_path / "report.json"), "--layout", "npz",
           "--alias", "A=a", "--alias", "B=b", "--near-threshold", "0", "--cache-dir", str(tmp_path / "c"), "--workers", "1",
           "--contact-sheet", str(tmp_path / "sheet.png"), "--window", "40,400")
    assert inspect_.only_call == {"path": tmp_path / "m.npz", "layout": "npz", "aliases": {"A": "a", "B": "b"}, "near_threshold": 0,
                                  "cache_dir": tmp_path / "c", "workers": 1, "contact_sheet": tmp_path / "sheet.png",
                                  "decode": DecodeOptions(window="40,400"), "group_by": None}
    assert json.loads((tmp_path / "report.json").read_text()) == {"classes": ["a", "b"], "n_images": 2}  # the report, whole


# ------------------------------------------------------------------------------------------------ medcli data synth


def test_data_synth_defaults_and_options(fake, tmp_path):
    synth = fake("medcli.data.synth:make_synthetic", returns=tmp_path / "made")
    out = invoke("data", "synth", str(tmp_path / "s"))
    assert synth.only_call == {"out": tmp_path / "s", "layout": "imagefolder", "n_classes": 3, "per_class": 40, "size": 64, "channels": 1,
                               "signal": "mixed", "noise": 0.15, "seed": 0, "per_group": 1, "val_fraction": 0.15,
                               "test_fraction": 0.2, "overwrite": False}
    assert f"synthetic dataset written: {tmp_path / 'made'}" in out
    synth.calls.clear()
    invoke("data", "synth", str(tmp_path / "s"), "--layout", "csv", "--classes", "2", "--per-class", "5", "--size", "16",
           "--channels", "3", "--signal", "texture", "--noise", "0.5", "--per-group", "3", "--seed", "4", "--overwrite")
    assert synth.only_call == {"out": tmp_path / "s", "layout": "csv", "n_classes": 2, "per_class": 5, "size": 16, "channels": 3,
                               "signal": "texture", "noise": 0.5, "seed": 4, "per_group": 3, "val_fraction": 0.15,
                               "test_fraction": 0.2, "overwrite": True}


# ------------------------------------------------------------------------------------------ medcli weights download


def test_weights_download_passes_every_name_in_order(fake, tmp_path):
    download = fake("medcli.models.weights:download_weights", returns=[tmp_path / "a.pth", tmp_path / "b.pth"])
    out = invoke("weights", "download", "resnet50", "densenet121")
    assert download.only_call == {"names": ["resnet50", "densenet121"], "progress": True}
    assert f"cached: {tmp_path / 'a.pth'}" in out and f"cached: {tmp_path / 'b.pth'}" in out
