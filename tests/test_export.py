"""``medcli export``: ONNX and TorchScript files that score like the PyTorch model, a sidecar that alone reproduces
the preprocessing, the model card, and one-line errors that write nothing."""

from __future__ import annotations

import functools
import json
import logging
import re
import warnings
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medcli import paths, runs
from medcli.cli import app
from medcli.errors import MedcliError
from medcli.export import PARITY_TOLERANCE, export_model, parity_inputs, run_exported

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, *, n_classes: int, image_channels: int, channels: int, resize: str) -> Path:
    from medcli.data.synth import make_synthetic
    from medcli.evaluation.runner import evaluate_run
    from medcli.splits import split_data
    from medcli.training import TrainConfig, train

    # 40 px images into a 32 px model: the resize matters; the image mode differs from the model's channels
    data = make_synthetic(root / "d", layout="presplit", n_classes=n_classes, per_class=12, size=40, channels=image_channels, noise=0.1)
    split_data(data, root / "splits.json", folds=2, seed=0)
    cfg = TrainConfig(data=str(data), splits=str(root / "splits.json"), backbone="customcnn", strategy="scratch", epochs=2,
                      batch_size=16, img_size=32, channels=channels, resize=resize, fold=0, results=str(root / "results"),
                      work=str(root / "work"), cache_dir=str(root / "cache"), progress=False)
    run = Path(train(cfg)["out"])
    evaluate_run(run, split="all", n_bootstrap=50, figures=False)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two tiny evaluated runs: binary (RGB images, 1-channel model, squash) and 3-class (gray images, RGB model, pad)."""
    root = tmp_path_factory.mktemp("export")
    return {"binary": _train(root / "b", n_classes=2, image_channels=3, channels=1, resize="squash"),
            "3-class": _train(root / "m", n_classes=3, image_channels=1, channels=3, resize="pad")}


@pytest.fixture(scope="module")
def onnx_exports(trained, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("onnx")
    return {kind: (root / kind, export_model(run, "onnx", root / kind)) for kind, run in trained.items()}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _torch_probs(run: Path, x: np.ndarray) -> np.ndarray:
    import torch

    model = runs.open_run(run).load_model().eval()
    with torch.no_grad():
        return _softmax(model(torch.from_numpy(x)).double().numpy())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "3-class"])
def test_onnx_export_scores_like_pytorch_at_any_batch_size(trained, onnx_exports, kind):
    run = trained[kind]
    out, result = onnx_exports[kind]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model_card.md", "preprocess.json"]
    side = json.loads((out / "preprocess.json").read_text())
    parity = side["parity"]
    print(f"{kind}: {result['exporter']}; parity max |dprob| = {parity['max_abs_prob_diff']:.2e} on {parity['inputs']}")
    assert parity["max_abs_prob_diff"] <= PARITY_TOLERANCE and "validation images" in parity["inputs"]
    assert parity["n_images"] == 8 and parity["batch_sizes"] == [8, 1]
    x, _, _ = parity_inputs(runs.open_run(run), 5)
    for batch in (1, 5):
        got = _softmax(run_exported("onnx", out / "model.onnx", x[:batch]))
        assert got.shape == (batch, len(side["classes"]))
        assert np.abs(got - _torch_probs(run, x[:batch])).max() <= PARITY_TOLERANCE
    val = json.loads(Path(paths.metrics_file(run, "val")).read_text())
    assert side["classes"] == val["classes"]
    assert side["calibration"]["temperature"] == val["calibration"]["temperature"]
    if kind == "binary":
        assert side["decision"]["rule"] == "threshold" and side["decision"]["threshold"] == val["threshold"]["value"]
    else:
        assert side["decision"]["rule"] == "argmax"
    assert side["training"]["data_fingerprint"] == runs.open_run(run).doc["data_fingerprint"]
    assert side["training"]["run"]["fold"] == 0 and side["input"]["shape"] == ["batch", 1 if kind == "binary" else 3, 32, 32]


@pytest.mark.slow
def test_torchscript_export_loads_with_torch_jit_and_matches(trained, tmp_path):
    import torch

    run = trained["3-class"]
    result = export_model(run, "torchscript", tmp_path / "ts")
    assert result["parity"]["max_abs_prob_diff"] <= PARITY_TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in recent torch
        module = torch.jit.load(str(tmp_path / "ts" / "model.ts"))
    x, _, _ = parity_inputs(runs.open_run(run), 5)
    with torch.no_grad():
        got = _softmax(module(torch.from_numpy(x)).numpy())
    assert np.abs(got - _torch_probs(run, x)).max() <= PARITY_TOLERANCE
    assert json.loads((tmp_path / "ts" / "preprocess.json").read_text())["model_file"] == "model.ts"


# --- the sidecar alone: onnxruntime + Pillow + numpy, no medcli (the README's snippet) ------------------------


def _resize_per_sidecar(img: Image.Image, pre: dict) -> Image.Image:
    """``preprocess.json``'s ``resize_rule`` for each mode, written with Pillow only."""
    size, resample = pre["img_size"], getattr(Image.Resampling, pre["interpolation"].upper())
    w, h = img.size
    if pre["resize"] == "squash":
        return img.resize((size, size), resample, reducing_gap=pre["reducing_gap"])
    if pre["resize"] == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(img.mode, (size, size))
        canvas.paste(img.resize((nw, nh), resample, reducing_gap=pre["reducing_gap"]), ((size - nw) // 2, (size - nh) // 2))
        return canvas
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.resize((nw, nh), resample, reducing_gap=pre["reducing_gap"]).crop((left, top, left + size, top + size))


def _sidecar_only_probs(export_dir: Path, image_paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    from PIL import ImageOps

    side = json.loads((export_dir / "preprocess.json").read_text())
    pre = side["preprocess"]

    def load(path):
        img = ImageOps.exif_transpose(Image.open(path)).convert(pre["color_mode"])
        x = np.asarray(_resize_per_sidecar(img, pre), np.float32).reshape(pre["img_size"], pre["img_size"], -1) / 255.0
        return ((x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)).transpose(2, 0, 1)

    session = ort.InferenceSession(str(export_dir / side["model_file"]), providers=["CPUExecutionProvider"])
    logits = session.run(None, {side["input"]["name"]: np.stack([load(p) for p in image_paths])})[0]
    return _softmax(logits), _softmax(logits / side["calibration"]["temperature"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "3-class"])
def test_the_sidecar_alone_reproduces_medcli_eval_predictions(trained, onnx_exports, kind):
    run = trained[kind]
    classes = runs.open_run(run).classes
    test = runs.read_predictions(paths.predictions_file(run, "test"), classes)
    calibrated = runs.read_predictions(paths.calibrated_file(paths.predictions_file(run, "test")), classes)
    probs, cal = _sidecar_only_probs(onnx_exports[kind][0], list(test["path"]))
    diff = np.abs(probs - runs.probabilities(test, classes)).max()
    print(f"{kind}: sidecar-only onnxruntime vs medcli eval, {len(test)} test images: max |dprob| = {diff:.2e}")
    assert diff <= 1e-4
    assert np.abs(cal - runs.probabilities(calibrated, classes)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_the_sidecar_resize_rules_are_medcli_resize(mode):
    from medcli.data.decode import resize

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8), "RGB")
    pre = {"img_size": 24, "interpolation": "bicubic", "resize": mode, "reducing_gap": 3.0}
    assert np.array_equal(np.asarray(_resize_per_sidecar(img, pre)), np.asarray(resize(img, 24, mode, "bicubic")))


def _readme_snippet() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Export and model card"):]
    return section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 9)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "3-class"])
def test_the_readme_snippet_gives_medcli_evals_calibrated_probabilities(trained, onnx_exports, kind, capsys):
    run = trained[kind]
    classes = runs.open_run(run).classes
    calibrated = runs.read_predictions(paths.calibrated_file(paths.predictions_file(run, "test")), classes)
    code = _readme_snippet()
    assert 'EXPORT, IMAGES = "export", ["a.png", "b.png"]' in code and "import medcli" not in code
    code = code.replace('EXPORT, IMAGES = "export", ["a.png", "b.png"]', f"EXPORT, IMAGES = {str(onnx_exports[kind][0])!r}, {list(calibrated['path'])!r}")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert np.abs(namespace["probs"] - runs.probabilities(calibrated, classes)).max() <= 1e-4


# --- model card ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_card_is_written_in_the_run_and_the_export(trained, onnx_exports):
    run = trained["binary"]
    out, result = onnx_exports["binary"]
    card = Path(paths.model_card_file(run)).read_text()
    assert card == (out / "model_card.md").read_text()
    for c in runs.open_run(run).classes:
        assert f"`{c}`" in card
    test = json.loads(Path(paths.metrics_file(run, "test")).read_text())
    ci = test["ci"]["balanced_accuracy"]
    assert f"{test['metrics']['balanced_accuracy']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in card
    assert "No external validation" in card and "not a medical device" in card
    assert f"temperature {test['calibration']['temperature']:.4f}" in card


# --- no eval, no data ---------------------------------------------------------------------------------------


def _bare_copy(run: Path, dest: Path) -> Path:
    """The files training wrote, without eval's outputs, in the same layout (…/runs/<b>__<s>/seed-0/fold-0)."""
    target = dest / "d" / "runs" / run.parent.parent.name / "seed-0" / "fold-0"
    for name in paths.training_outputs(run):
        rel = Path(name).relative_to(run)
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(name, target / rel)
    return target


@pytest.mark.slow
def test_a_run_without_eval_or_data_exports_with_a_warning(trained, tmp_path):
    run = _bare_copy(trained["binary"], tmp_path)
    val = Path(paths.predictions_file(run, "val"))
    frame = runs.read_predictions(val, runs.open_run(run).classes)
    frame["path"] = [str(tmp_path / "gone" / Path(p).name) for p in frame["path"]]  # the data moved away
    frame.to_csv(val, index=False)
    result = export_model(run, "onnx", tmp_path / "out")
    side = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert side["calibration"]["temperature"] is None and "has not been run" in side["calibration"]["note"]
    assert side["decision"]["rule"] == "argmax"
    assert any("medcli eval" in w for w in result["warnings"])
    assert "random images" in side["parity"]["inputs"] and side["parity"]["max_abs_prob_diff"] <= PARITY_TOLERANCE
    assert "Not evaluated" in Path(paths.model_card_file(run)).read_text()


# --- errors: one line, exit 1, nothing written ---------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(app, ["export", *map(str, args)])


def _error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_a_folder_that_is_not_a_run_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _error_line(_cli(tmp_path / "empty", "--out", tmp_path / "out"))
    assert "not a run folder" in line
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_ensemble_and_configuration_folders_are_refused(tmp_path):
    ens = tmp_path / "d" / "ensembles" / "e__mean" / "seed-0"
    ens.mkdir(parents=True)
    (ens / "ensemble.json").write_text("{}")
    assert "export one run folder" in _error_line(_cli(ens, "--out", tmp_path / "out"))
    config = tmp_path / "d" / "runs" / "customcnn__scratch"
    (config / "seed-0" / "fold-0").mkdir(parents=True)
    assert "export one run folder" in _error_line(_cli(config, "--out", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_unknown_format_is_one_line_and_writes_nothing(trained, tmp_path):
    run = _bare_copy(trained["3-class"], tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    line = _error_line(_cli(run, "--format", "tflite", "--out", tmp_path / "out"))
    assert "--format 'tflite'" in line and "onnx" in line and "torchscript" in line
    assert not (tmp_path / "out").exists() and sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.mark.slow
def test_out_must_be_new_empty_or_an_earlier_export(trained, tmp_path):
    run = trained["3-class"]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(MedcliError, match="not a medcli export"):
        export_model(run, "onnx", busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    export_model(run, "torchscript", tmp_path / "again")
    export_model(run, "onnx", tmp_path / "again")  # an earlier export is replaced, not mixed
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["model.onnx", "model_card.md", "preprocess.json"]


@pytest.mark.slow
def test_a_parity_failure_writes_nothing(trained, tmp_path, monkeypatch):
    import medcli.export as export

    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda fmt, path, x: real(fmt, path, x) * 1.5)
    with pytest.raises(MedcliError, match="parity check failed"):
        export_model(trained["3-class"], "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_torchscript_based_onnx_exporter_is_the_fallback(trained, tmp_path, monkeypatch):
    import torch

    real = torch.onnx.export

    @functools.wraps(real)
    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("torch.export cannot capture this model")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    monkeypatch.setattr(logging.getLogger("medcli"), "handlers", [])  # an earlier CLI test's handler may hold a closed stream
    result = export_model(trained["binary"], "onnx", tmp_path / "out")
    assert "dynamo=False" in result["exporter"] and result["parity"]["max_abs_prob_diff"] <= PARITY_TOLERANCE


def test_the_cli_hands_its_arguments_to_export_model(tmp_path, monkeypatch):
    import medcli.export as export

    calls = []
    monkeypatch.setattr(export, "export_model", lambda *args, **kwargs: calls.append((args, kwargs)) or {"x": 1})
    monkeypatch.setattr(export, "summarize", lambda result: f"SUMMARY {result}")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and "SUMMARY {'x': 1}" in res.output, res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(tmp_path / "o2")])
    assert calls == [((tmp_path / "run", "onnx", tmp_path / "out"), {}), ((tmp_path / "run", "torchscript", tmp_path / "o2"), {})]
    assert CliRunner().invoke(app, ["export", str(tmp_path / "run")]).exit_code == 2  # --out is required


@pytest.mark.slow
def test_the_summary_links_the_best_configurations_model_card(trained, onnx_exports, tmp_path):
    from medcli.report import write_report

    run = trained["binary"]  # exported by onnx_exports: its run folder holds model_card.md
    results = run.parents[4]
    md = write_report(results, out=tmp_path / "summary.md", n_bootstrap=20).read_text()
    target = re.search(r"\[model_card\.md\]\(([^)]+)\)", md)
    assert target and (tmp_path / target.group(1)).resolve() == Path(paths.model_card_file(run)).resolve(), md
    # from the summary to predictions on new images with the one command it prints
    command = re.search(r"`medcli predict (\S+) NEW_IMAGES/ --out predictions\.csv`", md)
    assert command and Path(command.group(1)).is_dir(), md
    images = json.loads(Path(paths.config_file(run)).read_text())["config"]["data"]
    res = CliRunner().invoke(app, ["predict", command.group(1), images, "--no-labels", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 10


@pytest.mark.slow
@pytest.mark.parametrize("backbone, channels", [("resnet18_small", 1), ("resnet10t", 3), ("vit_tiny_patch16_224", 3)])
def test_onnx_export_of_other_backbone_families(backbone, channels, tmp_path):
    """torchvision-style (BatchNorm), timm CNN and timm ViT trunks export with a dynamic batch and match PyTorch."""
    import torch

    from medcli.export import check_parity, export_onnx
    from medcli.models import create_model

    model = create_model(backbone, 3, in_channels=channels, weights=None, img_size=32).eval()
    x = torch.randn(5, channels, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    exporter = export_onnx(model, tmp_path / "model.onnx", x.shape)
    parity = check_parity(model, "onnx", tmp_path / "model.onnx", x)
    assert parity["batch_sizes"] == [5, 1] and parity["max_abs_prob_diff"] <= PARITY_TOLERANCE, (exporter, parity)
