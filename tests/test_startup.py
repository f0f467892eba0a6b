"""medcli starts fast: importing the CLI and printing any command's help never imports torch or the other heavy
libraries (each command imports them when it runs). Checked in a fresh interpreter, where ``sys.modules`` is
not shared with the rest of the test session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "accelerate", "sklearn", "pandas", "matplotlib")
COMMANDS = {
    ("data",), ("data", "inspect"), ("data", "synth"), ("split",), ("train",), ("eval",), ("gradcam",),
    ("ensemble",), ("predict",), ("report",), ("weights",), ("weights", "download"), ("models",), ("recipes",),
    ("export",),
}

_PROBE = """
import json, sys
import typer
from typer.testing import CliRunner
from medcli.cli import app

after_import = sorted(m for m in {heavy!r} if m in sys.modules)

def walk(command, path=()):
    found = [path]
    for name, sub in getattr(command, "commands", {{}}).items():
        found += walk(sub, path + (name,))
    return found

paths = walk(typer.main.get_command(app))
failed = []
for path in paths:
    result = CliRunner().invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        failed.append([list(path), result.output[-500:]])
print(json.dumps({{
    "after_import": after_import,
    "after_help": sorted(m for m in {heavy!r} if m in sys.modules),
    "commands": [list(p) for p in paths if p],
    "failed": failed,
}}))
"""


def _probe() -> dict:
    # cwd = the repository root, so `python -c` imports this checkout's medcli (sys.path[0] is the cwd).
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_import_and_every_help_skip_torch_and_register_every_command():
    result = _probe()
    assert result["after_import"] == [], f"`import medcli.cli` imports {result['after_import']}: import them inside the command bodies"
    assert {tuple(c) for c in result["commands"]} == COMMANDS
    assert result["failed"] == []
    assert result["after_help"] == [], f"`--help` imports {result['after_help']}"


def test_python_m_medcli_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "medcli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("data", "split", "train", "eval", "gradcam", "ensemble", "report", "weights", "models", "recipes"):
        assert name in proc.stdout


# --- the training path -------------------------------------------------------------------------------------------
# Every `medcli train` process pays its imports before the first step. torch itself, and torch._dynamo (imported by
# torch.optim's first optimizer and by accelerate's prepare_model), are the irreducible part; the libraries below
# are not needed to train and validate a model whose backbone is not a torchvision or timm one.
NOT_FOR_TRAINING = ("torchvision", "timm", "sklearn", "pandas", "scipy", "matplotlib")

_TRAIN_PROBE = """
import json, sys
import numpy as np
import medcli.cli
from medcli.data import load_dataset
from medcli.data.store import materialize
from medcli.evaluation.bootstrap import balanced_accuracy, macro_f1_present, roc_auc_ovr
from medcli.inference import infer
from medcli.models import create_model, get_backbone
from medcli.preprocess import to_model_input
from medcli.splits import load_splits
from medcli.strategies import build_plan
from medcli.training import features, loop, outputs, resume

model = create_model("customcnn", 3, in_channels=1, img_size=32)
build_plan(model, "full", epochs=2, lr=1e-3)
rng = np.random.default_rng(0)
y, p = rng.integers(0, 3, 50), rng.dirichlet(np.ones(3), 50)
roc_auc_ovr(y, p), balanced_accuracy(y, p.argmax(1), 3), macro_f1_present(y, p.argmax(1), 3)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_training_modules_and_validation_scores_import_no_torchvision_sklearn_scipy_pandas():
    """What a training run imports to build a custom-backbone model and score its validation part (the numpy AUC,
    balanced accuracy and macro F1 of :mod:`medcli.evaluation.bootstrap`) leaves out torchvision (~1.5 s: imported
    where a torchvision backbone is built), scikit-learn, scipy and pandas (~1.5 s together: imported by the
    evaluation functions that call them)."""
    proc = subprocess.run([sys.executable, "-c", _TRAIN_PROBE.format(heavy=NOT_FOR_TRAINING)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert imported == [], f"the training path imports {imported}: import them where they are used"


_RUN_PROBE = """
import json, sys
from typer.testing import CliRunner
from medcli.cli import app

def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output[-3000:]
    return sorted(m for m in {heavy!r} if m in sys.modules)

data, splits, results = sys.argv[1:4]
after_train = invoke("train", "--data", data, "--splits", splits, "--results", results, "--backbone", "customcnn", "--epochs", "1",
                     "--img-size", "32", "--batch-size", "8", "--ema-epochs", "0")
run = next(p for p in __import__("pathlib").Path(results).rglob("model.pt")).parent
after_eval = invoke("eval", str(run), "--split", "val", "--bootstrap", "10", "--no-figures")
print(json.dumps({{"after_train": after_train, "after_eval": after_eval}}))
"""


@pytest.mark.slow
def test_a_tiny_custom_cnn_run_and_its_evaluation_never_import_torchvision(tmp_path):
    """A real 1-epoch run (custom CNN, no weight averaging: --ema-epochs imports timm, which imports torchvision)
    and its evaluation, in a fresh interpreter: torchvision and timm are never imported, matplotlib only for figures.
    The splits are made beforehand (making them imports sklearn's StratifiedGroupKFold)."""
    from tests.conftest import synthetic_fold_data

    data, splits = synthetic_fold_data(tmp_path, per_class=12, folds=0)
    proc = subprocess.run([sys.executable, "-c", _RUN_PROBE.format(heavy=NOT_FOR_TRAINING), str(data), str(splits), str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["after_train"] == [], f"training imports {result['after_train']}"
    assert not {"torchvision", "timm", "matplotlib"} & set(result["after_eval"]), f"evaluation imports {result['after_eval']}"


def test_numpy_scores_equal_the_libraries_they_stand_in_for():
    """The training process scores its validation part with numpy versions of scipy.stats.rankdata (in the AUC),
    sklearn's balanced_accuracy_score and f1_score (importing those libraries costs every run ~1.5 s): they
    must give the libraries' values exactly, ties, NaNs and classes absent from the labels or predictions included."""
    import warnings

    import numpy as np
    from scipy.stats import rankdata
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    from medcli.evaluation import bootstrap
    from medcli.training.loop import val_metrics

    rng = np.random.default_rng(0)
    for trial in range(100):
        n, c = int(rng.integers(1, 80)), int(rng.integers(2, 7))
        p = np.round(rng.random((n, c)), int(rng.integers(1, 4)))  # rounded: many ties
        if trial % 7 == 0:
            p[rng.integers(n), rng.integers(c)] = np.nan
        np.testing.assert_array_equal(bootstrap._average_ranks(p), rankdata(p, axis=0))
        y = rng.integers(0, c - int(trial % 3 == 0), n)  # every third trial: the last class never occurs
        pred = rng.integers(0, c, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn: "y_pred contains classes not in y_true"
            assert bootstrap.balanced_accuracy(y, pred, c) == balanced_accuracy_score(y, pred)
            assert bootstrap.macro_f1_present(y, pred, c) == f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)
            logits = rng.normal(size=(n, c)).astype(np.float32)
            scores = val_metrics(logits, y)
            pred = logits.argmax(1)
            assert scores["val_balanced_accuracy"] == balanced_accuracy_score(y, pred)
            assert scores["val_macro_f1"] == f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)
        if len(np.unique(y)) == 2 and c == 2:
            q = rng.dirichlet(np.ones(2), n).round(2)
            assert bootstrap.roc_auc_ovr(y, q) == pytest.approx(roc_auc_score(y, q[:, 1]), abs=1e-12)
