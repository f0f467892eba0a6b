"""``medcli eval RUN [RUN...]``: several runs in one process give what one process per run gives, and one failing
run neither stops the others nor goes unreported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import synthetic_fold_data
from medcli import paths
from medcli.cli import app
from medcli.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

OUTPUTS = ("metrics/test.json", "metrics/val.json", "predictions/test.csv", "predictions/val.csv",
           "predictions/test.calibrated.csv", "predictions/val.calibrated.csv")


def _remove_outputs(run: Path) -> None:
    """Delete what eval writes, except predictions/val.csv: training wrote it and eval reads it."""
    for name in OUTPUTS:
        if name != "predictions/val.csv":
            (run / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two tiny trained runs (folds 0 and 1 of one synthetic dataset)."""
    root = tmp_path_factory.mktemp("several")
    data, splits = synthetic_fold_data(root, per_class=12, folds=2, n_classes=2)
    out = []
    for fold in (0, 1):
        cfg = TrainConfig(data=str(data), splits=str(splits), backbone="customcnn", strategy="scratch", epochs=2, batch_size=16,
                          img_size=32, channels=1, fold=fold, results=str(root / "results"), work=str(root / "work"),
                          cache_dir=str(root / "cache"), progress=False)
        out.append(Path(train(cfg)["out"]))
    assert out[0] != out[1]
    return out


def _eval(*args: str):
    return CliRunner().invoke(app, ["eval", *args, "--split", "all", "--bootstrap", "0", "--no-figures"])


def _outputs(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in OUTPUTS}


def test_one_invocation_writes_what_separate_invocations_write(two_runs, tmp_path):
    a, b = two_runs
    separate = {}
    for run in (a, b):
        res = _eval(str(run))
        assert res.exit_code == 0, res.output
        assert "==" not in res.output  # one run: the output of before, without a header
        separate[run] = _outputs(run)
        _remove_outputs(run)
    res = _eval(str(a), str(b))
    assert res.exit_code == 0, res.output
    for run in (a, b):
        assert _outputs(run) == separate[run], run
        assert f"== {run}" in res.output and f"metrics and predictions written under {run}" in res.output
    assert res.output.index(f"== {a}") < res.output.index(f"== {b}")


def test_a_folder_that_is_not_a_run_is_reported_and_the_good_run_still_evaluated(two_runs, tmp_path):
    good = two_runs[0]
    bad = tmp_path / "not-a-run"
    bad.mkdir()
    _remove_outputs(good)
    res = _eval(str(bad), str(good))
    assert res.exit_code == 1, res.output
    assert all((good / name).is_file() for name in OUTPUTS)
    lines = res.output.splitlines()
    assert any(line.startswith(f"error: {bad}: not a run folder") for line in lines), res.output
    assert lines[-1] == f"error: 1 of 2 runs failed: {bad}"
    assert "Traceback" not in res.output

