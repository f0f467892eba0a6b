"""``medcli gradcam``: CAM overlays, per-class galleries and faithfulness scores for a trained run."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import paths, runs
from .._io import publish_dir, staging_dir, write_json
from ..errors import MedcliError
from .cams import compute_cam_maps, get_method, model_device
from .faithfulness import TOP_FRACTION, confidence_drops
from .render import Tile, save_gallery, save_pair

log = logging.getLogger("medcli")

INDEX_FORMAT = "medcli.gradcam/1"
SPLITS = ("test", "val")
TARGETS = ("pred", "true")
NORMALIZATION = "per-image min-max"
FAITHFULNESS_DEFINITION = (
    "M = the top 20% CAM pixels of each image; keep = x*M, remove = x*(1-M) in normalised input space "
    "(blanked pixels = 0, the preprocessing mean); p = softmax probability of the explained class; "
    "drop_keep_top20 = p(x) - p(keep), drop_remove_top20 = p(x) - p(remove); "
    "score = drop_remove_top20 - drop_keep_top20 (higher = more faithful)"
)


def output_dir(run_dir: str | os.PathLike, split: str) -> str:
    """``<run>/gradcam/<split>``: overlays, galleries and ``index.json`` of one split."""
    return paths.gradcam_dir(run_dir, split)


def read_predictions(path: str | os.PathLike, classes: list[str]) -> pd.DataFrame:
    """A predictions CSV (:func:`medcli.runs.read_predictions`) that has the ``path`` and ``pred`` columns and at
    least one row (MedcliError naming the file otherwise)."""
    frame = runs.read_predictions(path, classes)
    missing = [col for col in ("path", "pred") if col not in frame.columns]
    if missing:
        raise MedcliError(f"{path}: column(s) {', '.join(missing)} missing; re-create it with `medcli train` / `medcli eval`")
    if frame.empty:
        raise MedcliError(f"{path}: no predictions to explain")
    return frame


def select_samples(frame: pd.DataFrame, classes: list[str], n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows per true class, half correctly and half wrongly predicted where possible.

    When one group is too small the other fills the gap. Within a group the rows are sorted by id and drawn
    with a generator seeded by ``(seed, class index)``, so the choice does not depend on row order or on the
    other classes. The result lists classes in the run's order, then correct before wrong rows, each by id.
    """
    if n < 1:
        raise MedcliError(f"--n {n}: use at least 1 image per class")
    chosen = []
    for k, cls in enumerate(classes):
        rows = frame[frame["label"] == cls].sort_values("id", kind="stable")
        if rows.empty:
            continue
        correct, wrong = rows[rows["pred"] == cls], rows[rows["pred"] != cls]
        n_wrong = min(len(wrong), n // 2)
        n_correct = min(len(correct), n - n_wrong)
        n_wrong = min(len(wrong), n - n_correct)
        rng = np.random.default_rng([seed, k])
        for group, count in ((correct, n_correct), (wrong, n_wrong)):
            picks = np.sort(rng.choice(len(group), size=count, replace=False)) if count else []
            chosen.append(group.iloc[picks])
    return pd.concat(chosen, ignore_index=True)


def load_pixels(doc: dict, ids: list[str], cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The run's model-input images for ``ids``: ``(N, H, W, C)`` uint8, exactly as the image store holds them.

    Each file is decoded and resized with the run's recorded preprocessing, by the same functions that
    :func:`medcli.data.store.materialize` uses, so only the requested images are decoded. ``cache_dir``: the
    reader's cache (None: the default), never the one the run recorded.
    """
    from ..data.decode import DecodeError, resize, to_channels
    from ..data.scan import load_image

    cfg, pre = doc["config"], doc["preprocess"]
    dataset = runs.load_run_dataset({**cfg, "cache_dir": None if cache_dir is None else str(cache_dir)})
    recorded = doc.get("data_fingerprint")
    if recorded and dataset.fingerprint(like=recorded) != recorded:
        raise MedcliError(
            f"the dataset at {cfg['data']} changed since this run was trained (fingerprint differs); "
            "explanations would not show the images the model was scored on"
        )
    by_id = dataset.by_id()
    size, channels = int(pre["img_size"]), int(pre["channels"])
    out = np.empty((len(ids), size, size, channels), np.uint8)
    for row, sample_id in enumerate(ids):
        sample = by_id.get(sample_id)
        if sample is None:
            raise MedcliError(f"image {sample_id!r} from the predictions is not in the dataset at {cfg['data']}")
        try:
            img, _, _ = load_image(sample, dataset.decode)
        except DecodeError as exc:
            raise MedcliError(f"{sample.path}: {exc}") from None
        arr = np.asarray(resize(to_channels(img, channels), size, pre["resize"], pre["interpolation"]), dtype=np.uint8)
        out[row] = arr[..., None] if arr.ndim == 2 else arr
    return out


def _check_arguments(split: str, n: int, method: str, target: str, batch_size: int) -> None:
    if split not in SPLITS:
        raise MedcliError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if target not in TARGETS:
        raise MedcliError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    if n < 1:
        raise MedcliError(f"--n {n}: use at least 1 image per class")
    if batch_size < 1:
        raise MedcliError(f"--batch-size {batch_size}: use at least 1")
    get_method(method)


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _summary(entries: list[dict]) -> dict:
    """Means over the images with a non-empty CAM (``n`` of them); ``n_empty`` images are left out."""
    scored = [e for e in entries if not e.get("empty_cam")]
    return {
        "n": len(scored),
        "n_empty": len(entries) - len(scored),
        "mean_drop_keep_top20": _mean(e["faithfulness"]["drop_keep_top20"] for e in scored),
        "mean_drop_remove_top20": _mean(e["faithfulness"]["drop_remove_top20"] for e in scored),
        "mean_score": _mean(e["faithfulness"]["score"] for e in scored),
    }


def explain_run(
    run_dir: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 16,
    method: str = "gradcam",
    target: str = "pred",
    batch_size: int = 16,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Explain a run's predictions on ``split`` with CAMs; write overlays, galleries and ``index.json``.

    Args:
        run_dir: a run folder written by ``medcli train``.
        split: ``test`` (needs ``predictions/test.csv`` from ``medcli eval``) or ``val``.
        n: images per true class (see :func:`select_samples`).
        method: a CAM method (see :func:`medcli.gradcam.list_methods`).
        target: explain the predicted class (``pred``) or the true class (``true``).
        batch_size: images per CAM chunk.
        seed: seed of the image selection.
        cache_dir: the cache for reading the run's dataset (None: the default cache; never the run's recorded one).

    Returns the ``index.json`` document plus ``folder`` (where the outputs went).

    Writes ``<run>/gradcam/<split>/`` (:func:`medcli.paths.gradcam_dir`): one ``<class>/<correct|wrong>/<image>.png``
    overlay per explained image (original | overlay, at least 256 px per half), one ``gallery_<class>.png`` per
    true class present, and ``index.json`` (``medcli.gradcam/1``; see :mod:`medcli.gradcam`). Maps that are
    constant before normalisation are flagged (``empty_cam``), captioned "empty CAM" in the gallery and left out
    of the faithfulness means (``faithfulness.n_empty`` counts them). The whole folder is built beside the old one
    and swapped in at the end (:func:`medcli._io.publish_dir` with ``replace=True``), so it never mixes two
    explanations.

    ``index.json`` records the model's ``run_id``.

    Raises :class:`MedcliError` for an unknown split, target or method, ``n`` or ``batch_size`` below 1, a folder
    that is not a run (or whose ``model.pt`` is not the model ``config.json`` describes), missing or unreadable
    predictions (``test`` needs ``medcli eval`` first), test predictions of another model (``metrics/test.json``'s
    ``run_id`` is not the run's), or a dataset that changed since training.
    """
    from ..preprocess import to_model_input

    _check_arguments(split, n, method, target, batch_size)
    run = runs.open_run(run_dir)
    classes, pre, doc = run.classes, run.preprocess, run.doc
    index = {c: k for k, c in enumerate(classes)}
    if split != "val":  # eval's predictions: they must be of this model (val.csv is written with it by training)
        _check_eval_outputs(run, split)
    chosen = select_samples(read_predictions(paths.predictions_file(run.path, split), classes), classes, n, seed)
    pixels = load_pixels(doc, list(chosen["id"]), cache_dir)

    model = run.load_model(runs.inference_device())
    device = model_device(model)
    mean, std = torch.tensor(pre["mean"], device=device), torch.tensor(pre["std"], device=device)
    inputs = to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device), mean, std)
    explained = [index[c] for c in chosen["pred" if target == "pred" else "label"]]
    log.info("%s on %d %s images of %s (%s)", method, len(chosen), split, run.path, model.backbone)
    maps = compute_cam_maps(model, inputs, explained, method=method, batch_size=batch_size)
    cams = maps.cams
    drops = confidence_drops(model, inputs, cams, explained, fraction=TOP_FRACTION, batch_size=batch_size)
    if maps.n_empty:
        log.warning("%s gave %d empty (constant) map(s) of %d: flagged in index.json, left out of the faithfulness means",
                    method, maps.n_empty, len(cams))

    final = Path(output_dir(run.path, split))
    staging = staging_dir(final)
    try:
        entries, tiles = _write_overlays(staging, chosen, classes, pixels, cams, drops, explained, maps.empty)
        galleries = _write_galleries(staging, entries, tiles, classes, method=method, split=split, target=target)
        document = {
            "format": INDEX_FORMAT,
            "run": run.coordinates(),
            "run_id": run.run_id,
            "method": method,
            "target": target,
            "split": split,
            "normalization": NORMALIZATION,
            "n_per_class": n,
            "seed": seed,
            "target_layer": model.info.cam_layer,
            "classes": classes,
            "galleries": galleries,
            "images": entries,
            "faithfulness": {
                "definition": FAITHFULNESS_DEFINITION,
                "fraction": TOP_FRACTION,
                **_summary(entries),
                "per_class": {cls: _summary([e for e in entries if e["label"] == cls]) for cls in galleries},
            },
        }
        write_json(staging / paths.GRADCAM_INDEX, document)  # the staging folder becomes paths.gradcam_dir
        publish_dir(staging, final, replace=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**document, "folder": str(final)}


def _check_eval_outputs(run: runs.Run, split: str) -> None:
    """``predictions/<split>.csv`` is written by ``medcli eval`` together with ``metrics/<split>.json``, which records
    the model it scored: refuse predictions of another model (runs written before ``run_id`` are not checked)."""
    if run.run_id is None:
        return
    fix = f"re-run `medcli eval {run.path} --split {split}`"
    metrics = paths.metrics_file(run.path, split)
    if not os.path.isfile(metrics):
        raise MedcliError(f"{metrics}: not found, so {paths.predictions_file(run.path, split)} cannot be tied to this model; {fix}")
    runs.check_derived(run.doc, runs.read_metrics(metrics), metrics, fix)


def _write_overlays(folder: Path, chosen: pd.DataFrame, classes: list[str], pixels: np.ndarray, cams: np.ndarray,
                    drops: dict[str, np.ndarray], explained: list[int], empty: np.ndarray) -> tuple[list[dict], list[Tile]]:
    """Overlay PNGs and index entries. An empty map's keep/remove values are null: its "top 20 %" region is an
    arbitrary block of pixels (ties broken in row-major order), so no faithfulness can be read from it."""
    entries, tiles = [], []
    for i, row in enumerate(chosen.to_dict("records")):
        label, pred = row["label"], row["pred"]
        correct = label == pred
        prob = float(row[f"prob_{pred}"])
        overlay = Path(paths.gradcam_overlay_name(label, correct, row["id"]))
        (folder / overlay).parent.mkdir(parents=True, exist_ok=True)
        save_pair(folder / overlay, pixels[i], cams[i])
        is_empty = bool(empty[i])
        faithfulness = {
            "prob": float(drops["prob"][i]),
            **{key: None if is_empty else float(drops[source][i]) for key, source in (
                ("prob_keep_top20", "prob_keep"), ("prob_remove_top20", "prob_remove"), ("drop_keep_top20", "drop_keep"),
                ("drop_remove_top20", "drop_remove"), ("score", "score"))},
        }
        entries.append({
            "id": row["id"],
            "path": row["path"],
            "label": label,
            "pred": pred,
            "prob": prob,
            "correct": bool(correct),
            "explained_class": classes[explained[i]],
            "overlay": overlay.as_posix(),
            "empty_cam": is_empty,
            "faithfulness": faithfulness,
        })
        caption = f"true: {_short(label)}\npred: {_short(pred)} ({prob:.2f}) {'correct' if correct else 'wrong'}"
        if is_empty:
            caption += "\nempty CAM (constant map; no score)"
        tiles.append(Tile(pixels[i], cams[i], caption, bool(correct)))
    return entries, tiles


def _write_galleries(folder: Path, entries: list[dict], tiles: list[Tile], classes: list[str], *, method: str, split: str,
                     target: str) -> dict[str, str]:
    """One gallery per true class present; returns ``{class: file name}``."""
    galleries = {}
    explaining = "predicted" if target == "pred" else "true"
    for cls in classes:
        mine = [i for i, e in enumerate(entries) if e["label"] == cls]
        if not mine:
            continue
        galleries[cls] = paths.gradcam_gallery_name(cls)
        means = _summary([entries[i] for i in mine])
        score = "n/a" if means["mean_score"] is None else f"{means['mean_score']:+.2f}"
        empties = f", {means['n_empty']} empty CAM(s) left out" if means["n_empty"] else ""
        title = (f"{method} | true class {cls} | {split} split | explaining the {explaining} class | "
                 f"mean faithfulness score {score} (top {TOP_FRACTION:.0%} kept vs removed{empties})\n"
                 "CAM values are min-max normalised per image (0 = lowest, 1 = highest within that image)")
        save_gallery(folder / galleries[cls], [tiles[i] for i in mine], title)
    return galleries


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(result: dict) -> str:
    """One line for the terminal: where the galleries went and the mean faithfulness."""
    faith = result["faithfulness"]
    n_empty = faith.get("n_empty") or 0
    n_images = faith["n"] + n_empty
    if faith["mean_score"] is None:
        scores = "no map to score"
    else:
        scores = (f"mean score {faith['mean_score']:+.3f} (confidence drop when kept {faith['mean_drop_keep_top20']:+.3f}, "
                  f"when removed {faith['mean_drop_remove_top20']:+.3f})")
    empties = f"; {n_empty} of {n_images} maps empty (constant), left out of the means" if n_empty else ""
    return (
        f"{result['method']} on {n_images} {result['split']} images ({len(result['galleries'])} galleries) written to "
        f"{result['folder']}; faithfulness (top {faith['fraction']:.0%} CAM region): {scores}{empties}"
    )
