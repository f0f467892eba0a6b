"""``medcli export``: one trained run as an ONNX or TorchScript network plus its preprocessing contract.

What is written in ``--out`` (names from :mod:`medcli.paths`), all or nothing (built in a private folder and
renamed into place with :func:`medcli._io.publish_dir`):

* ``model.onnx`` (``--format onnx``) or ``model.ts`` (``--format torchscript``): the best-epoch network, fp32,
  input ``input`` float32 ``(batch, channels, img_size, img_size)`` (already normalised, below), output
  ``logits`` float32 ``(batch, n_classes)``: **raw logits**, classes in ``preprocess.json``'s ``classes`` order.
  The batch axis is dynamic. Calibrated probabilities are ``softmax(logits / temperature)``.
* ``preprocess.json`` (``medcli.export/1``, :func:`sidecar`): everything needed to feed the network without
  medcli (decode rules, channels, resize mode and Pillow resampling, mean/std), the class names, the
  temperature and binary threshold that ``medcli eval`` fitted on the run's validation fold (or a note that eval
  has not been run), the versions, the training data fingerprint, the run's coordinates and the parity check.
* ``model_card.md``: a copy of the model card (:mod:`medcli.model_card`), which is also written into the run
  folder.

ONNX export. ``torch.onnx.export(..., dynamo=True)`` (torch.export-based, needs ``onnxscript``) is tried first:
it is the exporter PyTorch supports from 2.9 on, and the TorchScript-based one (``dynamo=False``) warns that it
will be removed. It exported every kind of medcli backbone tried (customcnn, resnet18_small, torchvision
resnet/efficientnet/vit, timm resnet/convnext/vit) with outputs equal to PyTorch's within 4e-7. When it fails
(an older torch without it, ``onnxscript`` missing, a model ``torch.export`` cannot capture) the
TorchScript-based exporter is used instead; both are held to the same parity check, and ``preprocess.json``
says which one wrote the file.

Parity check (:func:`check_parity`): a few images of the run's own validation fold, decoded with medcli's
loader (:func:`medcli.data.load_image`, the run's channels and resize), or seeded random images when the data
is gone, go through the PyTorch model and the exported file (onnxruntime on the CPU, or ``torch.jit.load``) at
batch sizes N and 1; the largest absolute difference in probability must be at most :data:`PARITY_TOLERANCE`.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, paths, runs
from ._io import publish_dir, read_json, staging_dir, write_json, write_text
from .errors import MedcliError, one_line

log = logging.getLogger("medcli")

FORMATS = tuple(paths.EXPORT_MODEL_FILES)
SIDECAR_FORMAT = "medcli.export/1"
#: Largest accepted absolute difference between PyTorch's and the exported model's class probabilities.
PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_EXAMPLE_BATCH = 2  # the traced example's batch size; 1 would let torch.export specialise the batch axis to 1

#: How each resize mode maps an image of ``(w, h)`` to ``S`` x ``S`` with Pillow (``medcli.data.decode.resize``).
RESIZE_RULES = {
    "squash": "img.resize((S, S), resample, reducing_gap=3.0)",
    "pad": ("scale = S / max(w, h); nw, nh = max(1, round(w * scale)), max(1, round(h * scale)); "
            "inner = img.resize((nw, nh), resample, reducing_gap=3.0); canvas = Image.new(img.mode, (S, S)) (black); "
            "canvas.paste(inner, ((S - nw) // 2, (S - nh) // 2))"),
    "crop": ("scale = S / min(w, h); nw, nh = max(S, round(w * scale)), max(S, round(h * scale)); "
             "inner = img.resize((nw, nh), resample, reducing_gap=3.0); left, top = (nw - S) // 2, (nh - S) // 2; "
             "inner.crop((left, top, left + S, top + S))"),
}
DECODE_RULES = [
    "open with Pillow and apply the EXIF orientation (ImageOps.exif_transpose)",
    "8-bit 'L' and 'RGB' images are used as they are",
    "16-bit, 32-bit integer and float images: min-max scaled per image to 0..255 and rounded (a constant image becomes 0), mode 'L'",
    "images with transparency (RGBA, LA, PA, palette with transparency): composited on black (LA stays gray)",
    "1-bit images: convert('L'); palette, CMYK and other modes: convert('RGB')",
    "then convert('L') for 1 channel (ITU-R 601-2 luma, as Pillow does) or convert('RGB') for 3, before resizing",
    "multi-frame files: only the frame in decode.frame is used (none: such files were refused in training)",
    "DICOM files cannot be reproduced with Pillow alone: medcli reads them with pydicom (modality LUT, then the window in "
    "decode.window, else the file's VOI LUT or first Window Center/Width, else the full range; MONOCHROME1 inverted), "
    "see medcli.data.dicom.read_dicom",
]


def export_model(model_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, *, n_images: int = 8) -> dict:
    """Export a run folder's network, its preprocessing contract and its model card.

    Args:
        model_dir: a run folder written by ``medcli train`` (``config.json``, ``model.pt``); ``medcli eval`` on it
            beforehand records the temperature and binary threshold that the sidecar carries.
        fmt: ``onnx`` or ``torchscript``.
        out: the folder to write (created; an earlier export there is replaced; any other non-empty folder is
            refused).
        n_images: validation images for the parity check.

    Returns ``{out, model_file, sidecar_file, model_card, run_card, exporter, parity, calibration, warnings}``
    (``parity``: ``{inputs, n_images, ids, batch_sizes, max_abs_prob_diff, max_abs_logit_diff, tolerance,
    runtime}``; ``warnings``: lines for the user, e.g. eval not run).

    Writes ``out/{model.onnx|model.ts, preprocess.json, model_card.md}`` atomically, then
    ``model_dir/model_card.md``.

    Raises :class:`MedcliError` (one line) for an unknown ``fmt``, a folder that is not a run (an ensemble output
    or a configuration folder is named as such), an ``out`` that is a file or a non-empty folder other than an
    earlier export, an export that fails, or a parity difference above :data:`PARITY_TOLERANCE`.
    """
    if fmt not in FORMATS:
        raise MedcliError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run = open_exportable(model_dir)
    out = Path(out)
    _check_out(out, run.path)
    from . import model_card

    model = run.load_model().float().eval()
    calibration = fitted_calibration(run)
    warn = [calibration["note"]] if calibration.get("note") else []
    for line in warn:
        log.warning("%s", line)
    x, ids, source = parity_inputs(run, n_images)
    tmp = staging_dir(out)
    tmp.mkdir()
    try:
        model_path = Path(paths.export_model_file(tmp, fmt))
        exporter = export_onnx(model, model_path, x.shape) if fmt == "onnx" else export_torchscript(model, model_path, x.shape)
        parity = check_parity(model, fmt, model_path, x)
        parity.update(inputs=source, ids=ids)
        doc = sidecar(run, fmt, exporter, calibration, parity)
        write_json(paths.export_sidecar_file(tmp), doc)
        card = model_card.render_model_card(run, doc)
        write_text(paths.model_card_file(tmp), card)
        publish_dir(tmp, out, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    run_card = write_text(paths.model_card_file(run.path), card)
    return {"out": str(out), "model_file": paths.export_model_file(out, fmt), "sidecar_file": paths.export_sidecar_file(out),
            "model_card": paths.model_card_file(out), "run_card": str(run_card), "exporter": exporter, "parity": parity,
            "calibration": calibration, "warnings": warn}


def open_exportable(path: str | os.PathLike) -> runs.Run:
    """The run folder at ``path`` (:func:`medcli.runs.open_run`); an ensemble output or a configuration's folder
    of folds/seeds is refused with a one-line :class:`MedcliError` that says to export one run folder."""
    path = Path(path)
    if path.is_dir() and not Path(paths.config_file(path)).exists():
        if Path(paths.ensemble_file(path)).exists():
            raise MedcliError(f"{path}: an ensemble output combines several models and cannot be exported as one network; "
                              f"export one run folder (<dataset>/runs/<backbone>__<strategy>/seed-<s>/fold-<k>/)")
        several = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith(("fold-", "seed-")))
        if several:
            raise MedcliError(f"{path}: holds several runs ({', '.join(several[:4])}{', …' if len(several) > 4 else ''}); export one "
                              f"run folder, e.g. {Path(path, several[0])}{'/fold-0' if several[0].startswith('seed-') else ''}")
    return runs.open_run(path)


def _check_out(out: Path, run_dir: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MedcliError(f"--out {out}: is a file; give a folder for the exported model")
    if out.resolve() == run_dir.resolve():
        raise MedcliError(f"--out {out}: is the run folder itself; give another folder")
    if out.is_dir() and any(out.iterdir()):
        sidecar_path = Path(paths.export_sidecar_file(out))
        try:
            earlier = read_json(sidecar_path).get("format") == SIDECAR_FORMAT if sidecar_path.is_file() else False
        except (MedcliError, AttributeError):
            earlier = False
        if not earlier:
            raise MedcliError(f"--out {out}: a non-empty folder that is not a medcli export; give a new or empty folder")


def fitted_calibration(run: runs.Run) -> dict:
    """The temperature and (binary tasks) decision threshold ``medcli eval`` fitted on the run's validation fold.

    Read from ``metrics/val.json``, else ``metrics/test.json`` (both carry the same validation fits). Returns
    ``{temperature, threshold, positive_class, source, tta, note}``; ``temperature`` and ``threshold`` are None
    (and ``note`` says why) when eval has not been run, ``threshold`` also for multi-class tasks.
    """
    for split in ("val", "test"):
        path = Path(paths.metrics_file(run.path, split))
        if not path.is_file():
            continue
        doc = runs.read_metrics(path)
        cal = doc.get("calibration") or {}
        thr = doc.get("threshold") or {}
        note = None
        if doc.get("tta"):
            note = ("fitted on flip-averaged (TTA) validation scores, while the exported network scores one image: "
                    "the temperature and threshold may fit its scores slightly less well")
        elif len(run.classes) == 2 and thr.get("value") is None:
            note = "no threshold: the validation fold lacks one of the two classes; decide by the arg-max"
        return {"temperature": cal.get("temperature"), "threshold": thr.get("value"), "positive_class": thr.get("positive_class"),
                "source": os.path.relpath(path, run.path), "tta": bool(doc.get("tta")), "note": note}
    return {"temperature": None, "threshold": None, "positive_class": None, "source": None, "tta": False,
            "note": (f"`medcli eval` has not been run on {run.path}: no temperature or threshold were fitted, so probabilities "
                     f"are uncalibrated (T = 1) and decisions are the arg-max; run `medcli eval {run.path} --split all` and export again")}


# --- inputs for the parity check ----------------------------------------------------------------------------


def parity_inputs(run: runs.Run, n: int) -> tuple[np.ndarray, list[str], str]:
    """``(x, ids, source)``: up to ``n`` of the run's validation images as model input ``(n, C, S, S)`` float32.

    Images come from ``predictions/val.csv``, a few per class in turn, decoded by medcli's loader with the run's
    decode options, channels and resize (the image store's path), normalised by :func:`medcli.preprocess.to_model_input`.
    When none can be read (data moved or deleted), ``n`` seeded random images stand in and ``source`` says so.
    """
    import torch

    from .preprocess import to_model_input

    pre = run.preprocess
    pixels, ids = _validation_pixels(run, n)
    source = f"{len(ids)} validation images (fold {run.config.get('fold')}) read with medcli's loader"
    if not ids:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (max(n, 2), pre["img_size"], pre["img_size"], pre["channels"]), dtype=np.uint8)
        source = f"{len(pixels)} random images (the run's validation images could not be read)"
        log.warning("parity check: the run's validation images could not be read; using random images")
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2),
                       torch.tensor(pre["mean"], dtype=torch.float32), torch.tensor(pre["std"], dtype=torch.float32))
    return x.contiguous().numpy(), ids, source


def _validation_pixels(run: runs.Run, n: int) -> tuple[np.ndarray, list[str]]:
    from .data import Sample, load_image
    from .data.decode import DecodeError, resize, to_channels

    pre = run.preprocess
    try:
        frame = runs.read_predictions(paths.predictions_file(run.path, "val"), run.classes)
    except MedcliError:
        return np.zeros(0), []
    rows = frame.assign(_k=frame.groupby("label").cumcount()).sort_values(["_k", "label"], kind="stable")
    samples = []
    if any(str(p).endswith(".npz") for p in rows["path"]):
        try:
            by_id = {s.id: s for s in run.load_dataset().samples}
        except (MedcliError, OSError):
            return np.zeros(0), []
        samples = [by_id[i] for i in rows["id"] if i in by_id]
    else:
        samples = [Sample(id=i, path=p, label=y, raw_label=y) for i, p, y in zip(rows["id"], rows["path"], rows["label"]) if os.path.isfile(p)]
    out, ids = [], []
    for s in samples:
        if len(ids) == n:
            break
        try:
            img, _, _ = load_image(s, run.decode_options())
        except DecodeError:
            continue
        arr = np.asarray(resize(to_channels(img, pre["channels"]), pre["img_size"], pre["resize"], pre["interpolation"]), dtype=np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
        ids.append(s.id)
    return (np.stack(out) if out else np.zeros(0)), ids


# --- export -------------------------------------------------------------------------------------------------


def export_onnx(model, path: Path, input_shape: tuple[int, ...]) -> str:
    """Write ``model`` (eval mode, CPU, fp32) to ``path`` as ONNX with a dynamic batch axis; return the exporter used.

    Input ``input`` ``(batch, C, S, S)``, output ``logits`` ``(batch, n_classes)``. The torch.export-based exporter
    first, the TorchScript-based one if it fails (see the module docstring). Raises :class:`MedcliError` when
    both fail, naming both reasons.
    """
    import torch

    example = torch.zeros((_EXAMPLE_BATCH, *input_shape[1:]), dtype=torch.float32)
    params = inspect.signature(torch.onnx.export).parameters
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    failures = []
    if "dynamo" in params:
        extra = {"external_data": False} if "external_data" in params else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  verbose=False, **names, **extra)
            return f"torch.onnx.export(dynamo=True), torch {torch.__version__}"
        except Exception as exc:  # torch.export cannot capture every model; the older exporter may still work
            failures.append(f"dynamo exporter: {type(exc).__name__}: {one_line(exc, 200)}")
            log.info("the torch.export-based ONNX exporter failed (%s); using the TorchScript-based one", failures[-1])
    legacy = {"dynamo": False} if "dynamo" in params else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=17, **names, **legacy)
        return f"torch.onnx.export(dynamo=False) (TorchScript-based), torch {torch.__version__}"
    except Exception as exc:
        failures.append(f"TorchScript-based exporter: {type(exc).__name__}: {one_line(exc, 200)}")
    raise MedcliError(f"ONNX export failed: {'; '.join(failures)}; try --format torchscript")


def export_torchscript(model, path: Path, input_shape: tuple[int, ...]) -> str:
    """Write ``model`` traced with ``torch.jit.trace`` to ``path`` (``torch.jit.load`` reads it; any batch size).

    TorchScript is deprecated in recent PyTorch releases (its warnings are silenced here); ONNX is the format
    to prefer. Raises :class:`MedcliError` when tracing fails.
    """
    import torch

    example = torch.zeros((_EXAMPLE_BATCH, *input_shape[1:]), dtype=torch.float32)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example)
            traced.save(str(path))
    except Exception as exc:
        raise MedcliError(f"TorchScript export failed ({type(exc).__name__}: {one_line(exc, 200)}); try --format onnx") from None
    return f"torch.jit.trace, torch {torch.__version__}"


def run_exported(fmt: str, path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Logits ``(N, n_classes)`` of an exported file for input ``x`` ``(N, C, S, S)`` float32, on the CPU
    (onnxruntime's CPU provider for ONNX, ``torch.jit.load`` for TorchScript)."""
    import torch

    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def check_parity(model, fmt: str, path: Path, x: np.ndarray) -> dict:
    """Compare the exported file with the PyTorch ``model`` on ``x`` at batch sizes ``len(x)`` and 1.

    Returns ``{n_images, batch_sizes, max_abs_prob_diff, max_abs_logit_diff, tolerance, runtime}`` (probabilities
    are the softmax of the logits). Raises :class:`MedcliError` when the exported file cannot be run, gives
    the wrong shape, or differs by more than :data:`PARITY_TOLERANCE` in probability.
    """
    import torch

    from .evaluation.calibration import softmax

    with torch.no_grad():
        reference = model(torch.from_numpy(x)).double().numpy()
    try:
        got = {len(x): run_exported(fmt, path, x), 1: run_exported(fmt, path, x[:1])}
    except Exception as exc:
        raise MedcliError(f"the exported {fmt} model could not be run ({type(exc).__name__}: {one_line(exc, 200)})") from None
    prob_diff = logit_diff = 0.0
    for batch, logits in got.items():
        if logits.shape != (batch, reference.shape[1]):
            raise MedcliError(f"the exported {fmt} model gave logits of shape {logits.shape} for a batch of {batch}, "
                              f"expected {(batch, reference.shape[1])}")
        ref = reference[:batch]
        prob_diff = max(prob_diff, float(np.abs(softmax(logits.astype(np.float64)) - softmax(ref)).max()))
        logit_diff = max(logit_diff, float(np.abs(logits.astype(np.float64) - ref).max()))
    if fmt == "onnx":
        import onnxruntime as ort

        runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    else:
        runtime = f"torch.jit.load, torch {torch.__version__} (CPU)"
    result = {"n_images": int(len(x)), "batch_sizes": sorted(got, reverse=True), "max_abs_prob_diff": prob_diff,
              "max_abs_logit_diff": logit_diff, "tolerance": PARITY_TOLERANCE, "runtime": runtime}
    if not prob_diff <= PARITY_TOLERANCE:
        raise MedcliError(f"parity check failed: the exported {fmt} model's probabilities differ from PyTorch's by up to "
                          f"{prob_diff:.2e} (> {PARITY_TOLERANCE:g}) on {len(x)} images; nothing was written")
    return result


# --- the sidecar --------------------------------------------------------------------------------------------


def sidecar(run: runs.Run, fmt: str, exporter: str, calibration: dict, parity: dict) -> dict:
    """The ``preprocess.json`` document (``medcli.export/1``): the exported network's input/output contract,
    preprocessing, classes, calibration, decision rule, provenance and parity (keys in docs/architecture.md, "Export")."""
    pre = run.preprocess
    classes = run.classes
    size, channels = pre["img_size"], pre["channels"]
    temperature = calibration["temperature"]
    binary = len(classes) == 2
    if binary and calibration["threshold"] is not None:
        decision = {"rule": "threshold", "positive_class": classes[1], "threshold": calibration["threshold"],
                    "how": f"predict {classes[1]!r} iff softmax(logits)[:, 1] >= threshold (the uncalibrated probability, as "
                           "`medcli eval` chose it by Youden's J on the validation fold), else " + repr(classes[0])}
    else:
        decision = {"rule": "argmax", "how": "the class with the largest logit (temperature scaling does not change it)"}
    doc = {
        "format": SIDECAR_FORMAT,
        "model_file": Path(paths.export_model_file(".", fmt)).name,
        "model_format": fmt,
        "exporter": exporter,
        "input": {"name": INPUT_NAME, "shape": ["batch", channels, size, size], "dtype": "float32", "layout": "NCHW",
                  "value": "(pixel / 255 - mean[c]) / std[c] for each channel c of the uint8 image after decoding and resizing"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(classes)], "dtype": "float32",
                   "value": "raw logits (no softmax), one column per class in `classes` order"},
        "classes": classes,
        "preprocess": {
            "img_size": size, "channels": channels, "color_mode": "L" if channels == 1 else "RGB",
            "resize": pre["resize"], "resize_rule": RESIZE_RULES.get(pre["resize"]),
            "interpolation": pre["interpolation"], "pillow_resample": f"Image.Resampling.{pre['interpolation'].upper()}",
            "reducing_gap": 3.0,
            "mean": list(pre["mean"]), "std": list(pre["std"]),
            "steps": ["decode (rules in decode.rules)", f"convert to {'L' if channels == 1 else 'RGB'}",
                      f"resize to {size} x {size} ({pre['resize']}, Pillow {pre['interpolation']}, reducing_gap=3.0)",
                      "uint8 -> float32, / 255, minus mean, divided by std (per channel)", "HWC -> CHW, add the batch axis"],
        },
        "decode": {"window": run.config.get("window"), "frame": run.config.get("frame"), "rules": DECODE_RULES},
        "calibration": {
            "temperature": temperature,
            "probabilities": "softmax(logits / temperature)" if temperature is not None else "softmax(logits) (no temperature fitted)",
            "fitted_on": "the run's validation fold (predictions/val.csv), by `medcli eval`" if temperature is not None else None,
            "source": calibration["source"], "note": calibration.get("note"),
        },
        "decision": decision,
        "training": {
            "run": run.coordinates(), "run_dir": str(run.path.resolve()), "data": run.config.get("data"),
            "data_fingerprint": run.doc.get("data_fingerprint"), "splits_file": run.doc.get("splits_file"),
            "splits_fingerprint": run.doc.get("splits_fingerprint"),
            "best_epoch": (run.doc.get("summary") or {}).get("best_epoch"),
            "medcli_version": (run.doc.get("versions") or {}).get("medcli"), "git_revision": run.doc.get("git_revision"),
        },
        "medcli_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _export_versions(fmt),
        "parity": parity,
    }
    return runs.json_safe(doc)


def _export_versions(fmt: str) -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", *(("onnx", "onnxscript", "onnxruntime") if fmt == "onnx" else ())):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def summarize(result: dict) -> str:
    """Lines for the terminal: what was written, the exporter, the parity figure and any warning."""
    p = result["parity"]
    lines = [f"exported {result['model_file']} ({result['exporter']})",
             f"parity ({p['runtime']}, {p['inputs']}, batches {p['batch_sizes']}): max |probability difference| = "
             f"{p['max_abs_prob_diff']:.2e} (tolerance {p['tolerance']:g})",
             f"preprocessing contract: {result['sidecar_file']}",
             f"model card: {result['run_card']} (copy in {result['model_card']})"]
    t = result["calibration"]["temperature"]
    if t is not None:
        lines.append(f"calibrated probabilities: softmax(logits / {t:.4g})"
                     + (f"; decision threshold {result['calibration']['threshold']:.4g}" if result["calibration"]["threshold"] is not None else ""))
    return "\n".join(lines)
