"""``medcli eval RUN [RUN...]``: several runs in one process give what one process per run gives, and one failing
run neither stops the others nor goes unreported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_runs
from medcli import paths
from medcli.cli import app

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
    _, out = tiny_runs(tmp_path_factory.mktemp("several"))
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

