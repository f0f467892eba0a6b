"""A full disk or a read-only folder: one `error:` line naming the file or folder, exit 1, before the work where it
can be known before, and no half-written outputs.

Read-only folders are real: a read-only bind mount as root (where ``chmod`` does not stop root), ``chmod 0o555``
otherwise. Full disks are small tmpfs mounts, so those tests need root (they skip without it).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medcli import _io
from medcli.cli import app
from medcli.cli._app import _MedcliGroup

ROOT = os.geteuid() == 0


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def read_only(folder: Path):
    """``folder`` (created if missing, with what is in it) made read-only for this process while in the block."""
    folder.mkdir(parents=True, exist_ok=True)
    if ROOT:
        if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,bind,ro", str(folder))):
            subprocess.run(["umount", str(folder)], capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@contextmanager
def small_disk(folder: Path, size: str, *, fill: bool = False):
    """A tmpfs of ``size`` at ``folder``; with ``fill``, filled up (empty files can still be made)."""
    if not ROOT:
        pytest.skip("a small disk needs root (tmpfs mount)")
    folder.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here")
    try:
        if fill:
            with open(folder / ".filler", "wb", buffering=0) as fh:
                with pytest.raises(OSError) as full:
                    while True:
                        fh.write(b"\0" * 65536)
                assert full.value.errno == errno.ENOSPC
        yield folder
    finally:  # lazily: a failed torch.save's traceback may still hold its file open
        subprocess.run(["umount", "-l", str(folder)], check=True)


def one_error_line(result, *names: str, after_log: bool = False) -> str:
    """The command's only stderr line (``after_log``: the only one besides medcli's INFO log of the work done
    before): an `error:` naming each of ``names``; exit 1 without a traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an OSError with its traceback
    lines = result.stderr.strip().splitlines()
    if after_log:
        lines = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert str(name) in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from medcli.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("faults") / "d", layout="presplit", n_classes=2, per_class=8, size=32)


def no_work(monkeypatch, module: str, *names: str) -> None:
    """Make the library functions a command hands its work to fail the test if they are ever called."""
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail(f"{module}.{name} ran although its output folder is read-only"))


# --- read-only folders: refused before the work --------------------------------------------------------------------


def test_train_into_a_read_only_folder_is_refused_before_any_data_is_read(tmp_path, data):
    cache = tmp_path / "cache"
    args = ["train", "--data", str(data), "--backbone", "customcnn", "--strategy", "scratch", "--epochs", "2", "--batch-size", "8",
            "--img-size", "32", "--channels", "1", "--cache-dir", str(cache), "--results", str(tmp_path / "results")]
    with read_only(tmp_path / "ro") as ro:
        result = CliRunner().invoke(app, [*args, "--out", str(ro / "run"), "--work", str(tmp_path / "work")])
        line = one_error_line(result, ro / "run", "read-only" if ROOT else "permission denied", "--out")
        result = CliRunner().invoke(app, [*args, "--work", str(ro / "work")])
        one_error_line(result, ro / "work", "--work")
        result = CliRunner().invoke(app, [*args, "--results", str(ro / "results")])  # the default run folder and splits file
        one_error_line(result, ro / "results", "--results")
        result = CliRunner().invoke(app, [*args, "--track", "tensorboard", "--track-dir", str(ro / "tb")])
        one_error_line(result, ro / "tb", "--track-dir")
    (tmp_path / "a-file").write_text("x")
    one_error_line(CliRunner().invoke(app, [*args, "--track", "tensorboard", "--track-dir", str(tmp_path / "a-file")]), "a-file",
                   "is a file, not a folder")
    one_error_line(CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--track", "mlflow", "--track-dir",
                                            str(tmp_path / "run" / "mlruns")]), "inside the run folder")
    assert "epoch" not in line
    assert not cache.exists() and not (tmp_path / "results").exists()  # no scan, no image store, no splits: no work


def test_several_cells_are_refused_before_any_cell_trains(tmp_path, data):
    import yaml

    cells = tmp_path / "cells.yaml"
    common = dict(data=str(data), backbone="customcnn", strategy="scratch", epochs=1, img_size=32, channels=1,
                  cache_dir=str(tmp_path / "cache"), results=str(tmp_path / "results"), work=str(tmp_path / "work"))
    with read_only(tmp_path / "ro") as ro:
        cells.write_text(yaml.safe_dump([{**common, "seed": 0}, {**common, "seed": 2, "weights": str(tmp_path / "missing.pt")},
                                         {**common, "seed": 1, "out": str(ro / "run")}]))
        one_error_line(CliRunner().invoke(app, ["train", "--cells", str(cells)]), ro / "run")
    assert not (tmp_path / "results").exists()  # the first cell did not train either


@pytest.mark.parametrize("command", ["split", "inspect", "report"])
def test_split_inspect_and_report_refuse_a_read_only_output_before_the_work(tmp_path, data, monkeypatch, command):
    no_work(monkeypatch, "medcli.splits", "split_data")
    no_work(monkeypatch, "medcli.data", "inspect_data")
    no_work(monkeypatch, "medcli.report.build", "write_report")
    (tmp_path / "results").mkdir()
    with read_only(tmp_path / "ro") as ro:
        args = {"split": ["split", str(data), "--out", str(ro / "splits.json")],
                "inspect": ["data", "inspect", str(data), "--json", str(ro / "inspect.json")],
                "report": ["report", str(tmp_path / "results"), "--out", str(ro / "summary.md")]}[command]
        one_error_line(CliRunner().invoke(app, args), ro, args[-2])


def test_report_on_a_read_only_results_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    no_work(monkeypatch, "medcli.report.build", "write_report")
    with read_only(tmp_path / "results") as results:
        one_error_line(CliRunner().invoke(app, ["report", str(results)]), results, "results folder")


@pytest.mark.parametrize("command", ["eval", "gradcam"])
def test_eval_and_gradcam_refuse_a_read_only_run_folder_before_the_work(tmp_path, monkeypatch, command):
    no_work(monkeypatch, "medcli.evaluation.runner", "evaluate_run", "evaluate_runs")
    no_work(monkeypatch, "medcli.gradcam", "explain_run")
    run = tmp_path / "results" / "d" / "runs" / "customcnn__scratch" / "seed-0" / "fold-0"
    with read_only(run):
        line = one_error_line(CliRunner().invoke(app, [command, str(run)]), run, "run folder")
    assert "copy" in line  # the way out: work on a writable copy


def test_check_writable_probes_for_real_and_writes_nothing(tmp_path):
    from medcli import preflight

    out = tmp_path / "new" / "deeper" / "run"
    preflight.check_writable([preflight.Output(out, "--out")])
    assert list(tmp_path.iterdir()) == []  # neither the folders nor the probe file are left behind
    (tmp_path / "file").write_text("x")
    preflight.check_writable([preflight.Output(tmp_path / "file", "--json")])  # an existing file is replaced in its folder
    with pytest.raises(Exception, match="is a file, not a folder"):
        preflight.check_writable([preflight.Output(tmp_path / "file" / "run", "--out")])


# --- a full disk -------------------------------------------------------------------------------------------------


def test_a_model_that_does_not_fit_is_refused_before_training(tmp_path, data):
    # the 20 MB disk of the report: resnet18's model file alone is 45 MB
    with small_disk(tmp_path / "disk", "20m") as disk:
        result = CliRunner().invoke(app, ["train", "--data", str(data), "--backbone", "resnet18", "--strategy", "scratch", "--epochs", "1",
                                          "--img-size", "32", "--out", str(disk / "run"), "--work", str(disk / "work"),
                                          "--cache-dir", str(disk / "cache"), "--results", str(disk / "results")])
        line = one_error_line(result, disk / "run", "resnet18", "MB free")
        assert sorted(p.name for p in disk.iterdir()) == []  # nothing written: no splits, no cache, no partial run folder
    assert "free space there" in line


def test_save_torch_on_a_full_disk_raises_one_error_naming_the_file_and_leaves_nothing(tmp_path):
    import torch

    from medcli.errors import WriteError

    with small_disk(tmp_path / "disk", "1m") as disk:
        with pytest.raises(WriteError) as caught:
            _io.save_torch({"w": torch.zeros(1_000_000)}, disk / "model.pt")  # 4 MB on a 1 MB disk
        assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
        assert str(disk / "model.pt") in str(caught.value) and "no space left" in str(caught.value)
        assert list(disk.iterdir()) == []  # no model.pt, no temporary file


def test_torch_save_to_a_path_on_a_full_disk_is_one_error_naming_the_file(tmp_path):
    # resume checkpoints are torch.save-d to a path string: torch's C++ writer fails without an errno
    import torch

    from medcli.errors import WriteError

    with small_disk(tmp_path / "disk", "1m") as disk:
        with pytest.raises(WriteError, match="checkpoint.pt: cannot write: no space left"):
            with _io.atomic_path(disk / "checkpoint.pt") as tmp:
                torch.save({"w": torch.zeros(1_000_000)}, tmp)
        assert list(disk.iterdir()) == []


def test_a_late_write_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, data):
    # the probe (an empty file) still fits on a full disk; the splits file itself does not
    with small_disk(tmp_path / "disk", "1m", fill=True) as disk:
        result = CliRunner().invoke(app, ["split", str(data), "--out", str(disk / "splits.json"), "--cache-dir", str(tmp_path / "cache")])
        one_error_line(result, disk / "splits.json", "no space left", "--out", after_log=True)
        assert [p.name for p in disk.iterdir()] == [".filler"]


# --- what the CLI turns into one line, and what it leaves alone -----------------------------------------------------


def _raising(exc: BaseException) -> typer.Typer:
    test_app = typer.Typer(cls=_MedcliGroup)

    @test_app.command("go")
    def go() -> None:
        raise exc

    @test_app.command("other")
    def other() -> None:
        """A second command, so that the app is a group."""

    return test_app


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception:
            raise outer
    except Exception as exc:
        return exc


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/history.csv"), "/data/out/history.csv: cannot write: no space left"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run: cannot write: read-only file system"),
    (OSError(errno.EACCES, "Permission denied", "/srv/results"), "/srv/results: cannot write: permission denied"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (_chained(RuntimeError("unexpected pos 15902080 vs 15901976"), OSError(errno.ENOSPC, "No space left on device")), "no space left"),
])
def test_refused_writes_are_one_line(exc, expected):
    result = CliRunner().invoke(_raising(exc), ["go"])
    assert expected in one_error_line(result)


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOENT, "No such file or directory", "/x"),
    RuntimeError("basic_ios::clear: iostream error"),  # no errno and no path: nothing says it is the disk
    RuntimeError("shape mismatch"),
    ValueError("a bug"),
])
def test_other_errors_keep_their_traceback(exc):
    result = CliRunner().invoke(_raising(exc), ["go"])
    assert result.exception is exc


def test_a_refused_write_of_a_temporary_file_names_the_final_file(tmp_path):
    import errno as errno_mod

    from medcli.errors import write_error

    tmp = tmp_path / f".model.pt.tmp-{os.getpid()}.k3j9x2"  # what atomic_path and save_torch write first
    error = write_error(OSError(errno_mod.EROFS, "Read-only file system", str(tmp)), tmp_path / "model.pt")
    assert str(error).startswith(f"{tmp_path / 'model.pt'}: cannot write: read-only file system")
