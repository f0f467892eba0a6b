"""The workflow config is checked when the workflow is parsed: each problem one line naming the key and what is
allowed, before any job runs; optional sections get defaults. And the lock a killed snakemake leaves behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medcli import workflow as wf
from medcli.errors import MedcliError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """A user's config (ImageNet weights, one dataset folder with one image), run from ``tmp_path``."""
    from tests.conftest import blob, save_image

    save_image(tmp_path / "data" / "xray" / "normal" / "a.png", blob(0))
    monkeypatch.chdir(tmp_path)
    return {
        "datasets": {"xray": {"path": "data/xray", "folds": 2}},
        "weights": "imagenet",
        "backbones": {"resnet18": {}, "customcnn": {}},
        "strategies": {"scratch": {}, "linear": {}},
        "seeds": [0],
        "train": {"img_size": 32, "epochs": 1},
        "resources": {"default": {"threads": 1, "mem_mb": 1000, "runtime": 10}},
    }


def _problems(config) -> list[str]:
    with pytest.raises(MedcliError) as caught:
        wf.check_config(config)
    return str(caught.value).splitlines()


def test_a_dataset_path_that_does_not_exist_is_refused_naming_the_key(experiment):
    experiment["datasets"]["xray"]["path"] = "data/x-ray"
    [line] = _problems(experiment)
    assert line.startswith("config: datasets.xray.path: data/x-ray does not exist (relative to ")


@pytest.mark.parametrize("content", [[], ["README.txt", "labels.csv"]], ids=["empty", "no-images"])
def test_a_dataset_folder_without_images_is_refused(experiment, tmp_path, content):
    (tmp_path / "data" / "other" / "class").mkdir(parents=True)
    for name in content:
        (tmp_path / "data" / "other" / "class" / name).write_text("not an image")
    experiment["datasets"]["xray"]["path"] = "data/other"
    [line] = _problems(experiment)
    assert line.startswith("config: datasets.xray.path: data/other") and "holds no images" in line


def test_dicom_files_without_an_extension_count_as_images(experiment, tmp_path):
    import numpy as np

    from tests.dicom_fixtures import write_dicom

    write_dicom(tmp_path / "data" / "ct" / "tumour" / "IM0001", np.zeros((8, 8)), patient="p1")
    experiment["datasets"]["xray"]["path"] = "data/ct"
    assert wf.check_config(experiment)["datasets"]["xray"]["path"] == "data/ct"


def test_unknown_names_are_refused_with_the_registered_ones(experiment):
    experiment["backbones"]["resnet18"] = {"head": "mlpp"}
    experiment["strategies"]["fulll"] = {}
    lines = _problems(experiment)
    assert lines == ["config: strategies.fulll: unknown name; did you mean full? "
                     "(allowed: scratch, linear, partial, full, two-phase)"]
    del experiment["strategies"]["fulll"]
    assert _problems(experiment) == ["config: backbones.resnet18.head: unknown head 'mlpp' (allowed: linear, mlp)"]
    experiment["backbones"] = {"resnet181": {}}
    [line] = _problems(experiment)
    assert line.startswith("config: backbones.resnet181: ") and "resnet18" in line


def test_ensemble_members_and_methods_must_exist(experiment):
    experiment["ensembles"] = {"pair": {"members": ["resnet18__linear", "customcnn__scartch"], "methods": ["mean"]}}
    assert _problems(experiment) == ["config: ensembles.pair.members: customcnn__scartch not in this grid (allowed: "
                                     "customcnn__linear, customcnn__scratch, resnet18__linear, resnet18__scratch)"]
    experiment["ensembles"]["pair"] = {"members": "all", "methods": ["avg"]}
    [line] = _problems(experiment)
    assert line.startswith("config: ensembles.pair.methods[0]: 'avg' is not allowed (allowed: mean, weighted,")


def test_schema_problems_are_one_line_each_naming_the_key_and_what_is_allowed(experiment):
    experiment["colour"] = "blue"
    experiment["datasets"]["xray"]["folds"] = 1
    experiment["eval"] = {"figures": "some"}
    experiment["seeds"] = "0"
    lines = _problems(experiment)
    assert lines == [
        "config: colour: unknown key (allowed: backbones, cache, datasets, ensembles, eval, gradcam, logs, pretrain, "
        "report, rerun_token, resources, results, retries, seeds, strategies, track, train, weights, work)",
        "config: datasets.xray.folds: 1 is not allowed (allowed: 0 (the dataset's own train/val split) or 2 and more "
        "cross-validation folds)",
        "config: eval.figures: 'some' is not allowed (allowed: first, all, none)",
        "config: seeds: '0' is not a list",
    ]


def test_a_dataset_needs_exactly_one_of_path_and_synth(experiment):
    experiment["datasets"]["xray"]["synth"] = {"classes": 2}
    [line] = _problems(experiment)
    assert line.startswith("config: datasets.xray: gives path and synth; keep one of them")
    experiment["datasets"]["xray"] = {"folds": 2}
    [line] = _problems(experiment)
    assert line.startswith("config: datasets.xray: needs one of path or synth")


def test_training_settings_are_checked_by_the_settings_schema(experiment):
    experiment["train"]["epoch"] = 3
    assert _problems(experiment) == ["config key train: unknown training setting 'epoch'; did you mean epochs, ema_epochs?"]
    del experiment["train"]["epoch"]
    experiment["train"]["lr"] = "1e-3"  # YAML 1.1 reads it as a string
    assert wf.check_config(experiment)["train"]["lr"] == 0.001


def test_many_problems_are_cut_short(experiment):
    experiment.update({f"key{i}": i for i in range(8)})
    lines = _problems(experiment)
    assert len(lines) == wf.MAX_PROBLEMS + 1 and lines[-1] == "config: and 3 more problem(s)"


def test_optional_sections_get_their_defaults_and_the_config_is_left_alone(experiment):
    del experiment["resources"]
    checked = wf.check_config(experiment)
    assert checked["resources"]["default"] == {"threads": 1, "mem_mb": 4000, "runtime": 30}
    assert checked["resources"]["cells_per_job"] == 15 and checked["resources"]["gpus_per_job"] == 0
    assert checked["eval"] == {"tta": False, "bootstrap": 1000, "figures": "first"}
    assert checked["report"] == {"primary_metric": "balanced_accuracy"}
    assert checked["datasets"]["xray"]["layout"] == "auto" and checked["results"] == "results"
    assert "resources" not in experiment and "eval" not in experiment
    experiment["resources"] = {"train": {"mem_mb": 16000}, "default": {"threads": 2}}
    res = wf.check_config(experiment)["resources"]
    assert res["default"] == {"threads": 2, "mem_mb": 4000, "runtime": 30} and res["train"] == {"mem_mb": 16000}


def test_the_readme_example_config_is_accepted(tmp_path, monkeypatch):
    """README, "Your data": the example (no resources block) passes as it is, once its dataset is there."""
    from tests.conftest import blob, save_image

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Your data"):]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    assert "resources" not in example
    for dataset in example["datasets"].values():
        save_image(tmp_path / dataset["path"] / "normal" / "a.png", blob(0))
    monkeypatch.chdir(tmp_path)
    checked = wf.check_config(example)
    assert checked["resources"]["default"]["runtime"] == 30


def test_jobs_skip_the_checks_of_inputs(experiment):
    """Jobs parse the workflow again (on compute nodes): the dataset and registry lookups are the main process's."""
    experiment["datasets"]["xray"]["path"] = "elsewhere"
    assert wf.check_config(experiment, check_inputs=False)["datasets"]["xray"]["path"] == "elsewhere"


def _snakemake_dry_run(tmp_path: Path, config: dict) -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MEDCLI_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile", "config.yaml", "-n", "--cores", "1"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["datasets"]["xray"].update(path="data/missing"), "error: config: datasets.xray.path: data/missing does not exist"),
    (lambda c: c.update(colour="blue"), "error: config: colour: unknown key (allowed: backbones,"),
], ids=["missing-data", "unknown-key"])
def test_a_dry_run_stops_with_one_line_before_planning_any_job(experiment, tmp_path, edit, expected):
    edit(experiment)
    proc = _snakemake_dry_run(tmp_path, experiment)
    assert proc.returncode == 1
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "rror" in line or "Exception" in line]
    assert len(errors) == 1 and errors[0].startswith(expected), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Job stats" not in proc.stdout + proc.stderr and len((proc.stdout + proc.stderr).splitlines()) <= 3


# --- the lock of a killed snakemake ---------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(tmp_path: Path, *names: str) -> Path:
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    for name in names:
        (locks / name).write_text("results/x\n")
    return locks


def _note(locks: Path, *, pid: int, names, host: str | None = None, started: float = 1.0e9) -> None:
    import socket

    (locks / f"medcli-owner-x-{pid}.json").write_text(json.dumps(
        {"host": host or socket.gethostname(), "pid": pid, "started": started, "locks": list(names)}))


def test_the_lock_of_a_snakemake_that_no_longer_runs_is_removed(tmp_path):
    locks = _lock(tmp_path, "0.input.lock", "0.output.lock")
    pid = _dead_pid()
    _note(locks, pid=pid, names=["0.input.lock", "0.output.lock"])
    message = wf.clear_stale_lock(locks)
    assert message.startswith(f"removed the lock left by a snakemake that no longer runs (pid {pid} started ")
    assert list(locks.iterdir()) == []


def test_a_reused_pid_does_not_keep_a_dead_lock(tmp_path):
    locks = _lock(tmp_path, "0.input.lock")
    _note(locks, pid=os.getpid(), names=["0.input.lock"], started=1.0e9)  # this pid, but a process started in 2001
    assert wf.clear_stale_lock(locks) is not None and not (locks / "0.input.lock").exists()


@pytest.mark.parametrize("case", ["owner-alive", "unclaimed-lock", "other-host", "no-note"])
def test_a_lock_that_may_be_live_is_left_alone(tmp_path, case):
    import psutil

    locks = _lock(tmp_path, "0.input.lock", "0.output.lock", "1.output.lock")
    names = ["0.input.lock", "0.output.lock", "1.output.lock"]
    if case == "owner-alive":
        _note(locks, pid=os.getpid(), names=names, started=psutil.Process().create_time())
    elif case == "unclaimed-lock":  # another snakemake (without a note) holds 1.output.lock
        _note(locks, pid=_dead_pid(), names=names[:2])
    elif case == "other-host":
        _note(locks, pid=_dead_pid(), names=names, host="login-2")
    assert wf.clear_stale_lock(locks) is None
    assert {p.name for p in locks.iterdir()} >= set(names)


def test_the_owner_note_names_this_process_and_its_lock_files(tmp_path):
    import psutil

    locks = _lock(tmp_path, "0.input.lock")
    note = wf.note_lock_owner([str(locks / "0.input.lock")], locks)
    owner = json.loads(note.read_text())
    assert owner["pid"] == os.getpid() and owner["locks"] == ["0.input.lock"]
    assert owner["started"] == pytest.approx(psutil.Process().create_time())
    assert wf.clear_stale_lock(locks) is None  # its owner runs
    assert wf.note_lock_owner([], locks) is None


def test_a_seed_given_twice_is_one_line():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["seeds"] = [0, 0]
    with pytest.raises(MedcliError) as err:
        wf.check_config(config, check_inputs=False)
    assert str(err.value).splitlines()[0].startswith("config: seeds:")
