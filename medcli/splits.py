"""Persisted, deterministic, leak-free cross-validation splits (``splits.json``).

* Test set: the dataset's own test split when it has one, else a stratified group holdout. Test images that
  duplicate development images are reported, and dropped on request.
* Development pool (train + val): ``K`` folds by ``StratifiedGroupKFold`` whose groups are the manifest's
  groups (patients) merged with duplicate clusters (exact and near), so a duplicate never straddles folds.
  ``K = 0`` keeps the dataset's own train/val split (reporting duplicates across it).
* The file records classes, the class-name mapping, file ids, folds and the data fingerprint; it is validated
  whenever it is loaded. The format (``medcli.splits/1``) is documented in docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from ._io import read_json, write_json
from .data.duplicates import DuplicateReport
from .data.layouts import Dataset
from .errors import MedcliError

SPLITS_FORMAT = "medcli.splits/1"
log = logging.getLogger("medcli")


def make_splits(
    dataset: Dataset,
    dups: DuplicateReport,
    *,
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    drop_test_duplicates: bool = False,
    fingerprint: str | None = None,
    excluded: list[dict] | None = None,
) -> dict:
    """Build the splits document for the (readable) samples of ``dataset``; nothing is written (see
    :func:`split_data` and :func:`save_splits`).

    Steps: images are grouped (manifest groups and duplicate clusters, merged transitively); the test set is the
    dataset's own test split or a stratified group holdout; test images that duplicate development images are
    reported (and dropped on request); the development pool is split into folds; leakage and fold balance are
    reported; the document is assembled and checked (:func:`check_splits`).

    Args:
        dataset: the dataset, unreadable files already removed.
        dups: duplicate clusters of those samples (see :func:`medcli.data.inspect.duplicates_of`); its
            ``threshold`` (bits of a 256-bit perceptual hash) is recorded.
        folds: number of cross-validation folds (``StratifiedGroupKFold``, shuffled with ``seed``); 0 keeps the
            dataset's own train/val split, or, without a val split, makes one stratified group holdout.
        seed: seed of every random split (test holdout, folds, validation holdout).
        test_fraction: share of images (0 < f < 1) held out as the test set when the dataset has no test split;
            used as one fold of a ``round(1 / test_fraction)``-fold grouped split, so the share is approximate.
        val_fraction: likewise for the validation holdout with ``folds=0`` and no val split.
        drop_test_duplicates: drop test images that duplicate development images (recorded in ``excluded``);
            otherwise they are kept and reported.
        fingerprint: fingerprint of the full dataset (before unreadable files were dropped); default: ``dataset``'s.
        excluded: ``{"id", "reason"}`` for files left out (unreadable).

    Returns:
        The ``medcli.splits/1`` document: ``format``, ``medcli_version``, ``created`` (UTC, ISO 8601),
        ``dataset`` (root, layout, fingerprint, ``n_images`` including excluded files), ``settings``, ``classes``,
        ``class_mapping``, ``labels`` (id -> class for every kept image), ``groups`` (id -> ``g<n>`` for images
        sharing a group), ``test_source`` (``dataset`` or ``holdout``), ``test`` (sorted ids), ``folds`` (``fold``,
        sorted ``train`` and ``val`` ids, and with ``folds=0`` a ``source``), ``excluded`` and ``leakage``.

    Raises:
        MedcliError: fewer than two classes; ``folds`` 1 or negative; ``test_fraction`` outside (0, 1) when a
            holdout is needed; a class with fewer independent image groups than the folds (or holdout parts)
            need; a fold without training images of some class.
    """
    _check_settings(dataset, folds)
    samples = sorted(dataset.samples, key=lambda s: s.id)
    ids = [s.id for s in samples]
    labels = {s.id: s.label for s in samples}
    groups = _groups(samples, dups)
    dev, test, test_source = _test_split(dataset, samples, labels, groups, test_fraction, seed)
    test, leaking, dropped = _test_leakage(test, dev, groups, drop_test_duplicates)
    fold_list = _dev_folds(dataset, dev, labels, groups, folds, val_fraction, seed)
    straddling = _val_leakage(fold_list, groups)
    sizes = Counter(groups.values())
    largest = _warn_large_group(sizes, folds, len(dev))
    kept = set(dev) | set(test)
    doc = {
        "format": SPLITS_FORMAT,
        "medcli_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "root": str(dataset.root),
            "layout": dataset.layout,
            "fingerprint": fingerprint or dataset.fingerprint(),
            "n_images": len(ids) + len(excluded or []),
        },
        "settings": {
            "folds": folds,
            "seed": seed,
            "test_fraction": test_fraction if test_source == "holdout" else None,
            "val_fraction": val_fraction if folds == 0 and fold_list[0]["source"] == "holdout" else None,
            "near_duplicate_threshold": dups.threshold,
            "drop_test_duplicates": drop_test_duplicates,
        },
        "classes": dataset.classes,
        "class_mapping": dict(sorted(dataset.class_mapping.items())),
        "labels": {i: labels[i] for i in ids if i in kept},
        "groups": {i: f"g{groups[i]}" for i in ids if sizes[groups[i]] > 1},
        "test_source": test_source,
        "test": sorted(test),
        "folds": [{k: (sorted(v) if isinstance(v, list) else v) for k, v in f.items()} for f in fold_list],
        "excluded": list(excluded or []) + [{"id": i, "reason": "test image duplicates a development image"} for i in dropped],
        "leakage": {
            "test_duplicating_dev": leaking,
            "test_duplicates_dropped": bool(dropped),
            "val_duplicating_train": sorted(set(straddling)),
            "n_label_conflicts": len(dups.conflicts),
            "largest_group": largest,
        },
    }
    check_splits(doc)
    return doc


def _check_settings(dataset: Dataset, folds: int) -> None:
    if len(dataset.classes) < 2:
        raise MedcliError(f"{dataset.root}: only one class ({', '.join(dataset.classes)}) was found; classification needs at least two")
    if folds == 1 or folds < 0:
        raise MedcliError(f"--folds {folds}: use 0 (the dataset's own train/val split) or at least 2")


def _test_split(dataset: Dataset, samples, labels: dict[str, str], groups: dict[str, int], test_fraction: float, seed: int) -> tuple[list[str], list[str], str]:
    """``(development ids, test ids, test source)``: the dataset's own test split, else a stratified group holdout."""
    if "test" in dataset.splits:
        return [s.id for s in samples if s.split != "test"], [s.id for s in samples if s.split == "test"], "dataset"
    if not 0 < test_fraction < 1:
        raise MedcliError(f"--test-fraction {test_fraction}: must be between 0 and 1")
    dev, test = _group_holdout([s.id for s in samples], labels, groups, test_fraction, seed, what="test set")
    return dev, test, "holdout"


def _test_leakage(test: list[str], dev: list[str], groups: dict[str, int], drop: bool) -> tuple[list[str], list[str], list[str]]:
    """``(test ids kept, test ids duplicating development images, test ids dropped)``; warns about the leak."""
    dev_clusters = {groups[i] for i in dev}
    leaking = sorted(i for i in test if groups[i] in dev_clusters)
    if not leaking:
        return test, leaking, []
    action = "dropped" if drop else "kept (pass --drop-test-duplicates to drop them)"
    log.warning("%d test image(s) duplicate development images; %s", len(leaking), action)
    if not drop:
        return test, leaking, []
    leaking_set = set(leaking)
    return [i for i in test if i not in leaking_set], leaking, leaking


def _dev_folds(dataset: Dataset, dev: list[str], labels: dict[str, str], groups: dict[str, int], folds: int, val_fraction: float, seed: int) -> list[dict]:
    """``folds`` grouped, stratified folds of the development pool; with ``folds=0`` one fold: the dataset's own
    train/val split, or a stratified group holdout of ``val_fraction`` when it has no val split."""
    if folds != 0:
        return _kfold(dev, labels, groups, folds, seed)
    by_id = dataset.by_id()
    if any(by_id[i].split == "val" for i in dev):
        train = [i for i in dev if by_id[i].split == "train"]
        val = [i for i in dev if by_id[i].split == "val"]
        return [{"fold": 0, "train": train, "val": val, "source": "dataset"}]
    train, val = _group_holdout(dev, labels, groups, val_fraction, seed, what="validation set")
    return [{"fold": 0, "train": train, "val": val, "source": "holdout"}]


def _val_leakage(fold_list: list[dict], groups: dict[str, int]) -> list[str]:
    """Validation ids sharing a group with their fold's training ids (possible only with the dataset's own split)."""
    straddling = []
    for f in fold_list:
        train_clusters = {groups[i] for i in f["train"]}
        straddling += [i for i in f["val"] if groups[i] in train_clusters]
    if straddling:
        log.warning("%d validation image(s) duplicate training images of the dataset's own split (kept: --folds 0 keeps that split as given)", len(straddling))
    return straddling


def _warn_large_group(sizes: Counter, folds: int, n_dev: int) -> int:
    """The largest group's size; warns when it exceeds half of one part of the development pool."""
    largest = max(sizes.values())
    if largest > n_dev / (2 * max(folds, 2)):
        log.warning(
            "the largest group of duplicates/patients holds %d of %d development images: folds cannot be balanced well; "
            "check it with `medcli data inspect` (or lower --near-threshold)", largest, n_dev
        )
    return largest


def _groups(samples, dups: DuplicateReport) -> dict[str, int]:
    """One integer group per image: manifest groups and duplicate clusters, merged transitively."""
    from .data.duplicates import _UnionFind

    index = {s.id: k for k, s in enumerate(samples)}
    uf = _UnionFind(len(samples))
    by_manifest: dict[str, int] = {}
    for k, s in enumerate(samples):
        if s.group is not None:
            uf.union(by_manifest.setdefault(s.group, k), k)
    by_cluster: dict[int, int] = {}
    for sid, cluster in dups.clusters.items():
        if sid in index:
            uf.union(by_cluster.setdefault(cluster, index[sid]), index[sid])
    return {s.id: uf.find(k) for k, s in enumerate(samples)}


def _sgkf(n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _check_enough(ids: list[str], labels: dict[str, str], groups: dict[str, int], n_splits: int, what: str) -> None:
    """Every class needs at least ``n_splits`` independent groups, or some fold would lack it entirely."""
    per_class: dict[str, set[int]] = {}
    for i in ids:
        per_class.setdefault(labels[i], set()).add(groups[i])
    cls, members = min(per_class.items(), key=lambda kv: len(kv[1]))
    if len(members) < n_splits:
        raise MedcliError(
            f"cannot make {what}: class {cls!r} has only {len(members)} independent image group(s) "
            f"(duplicates and patients merged), fewer than the {n_splits} needed; use fewer --folds or a larger fraction"
        )


def _kfold(dev: list[str], labels: dict[str, str], groups: dict[str, int], k: int, seed: int) -> list[dict]:
    _check_enough(dev, labels, groups, k, f"{k} folds")
    y = np.array([labels[i] for i in dev])
    g = np.array([groups[i] for i in dev])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members": we check below
        for fold, (tr, va) in enumerate(_sgkf(k, seed).split(np.zeros(len(dev)), y, g)):
            out.append({"fold": fold, "train": [dev[i] for i in tr], "val": [dev[i] for i in va]})
    for f in out:
        missing = sorted(set(y) - {labels[i] for i in f["train"]})
        if missing:
            raise MedcliError(f"fold {f['fold']} would have no training images of class {missing[0]!r}; use fewer --folds")
    return out


def _group_holdout(ids: list[str], labels: dict[str, str], groups: dict[str, int], fraction: float, seed: int, what: str) -> tuple[list[str], list[str]]:
    """A stratified holdout that keeps groups whole: one fold of a ``round(1/fraction)``-fold grouped split."""
    n_splits = max(2, round(1 / fraction))
    _check_enough(ids, labels, groups, n_splits, what)
    y = np.array([labels[i] for i in ids])
    g = np.array([groups[i] for i in ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        keep, hold = next(_sgkf(n_splits, seed).split(np.zeros(len(ids)), y, g))
    return [ids[i] for i in keep], [ids[i] for i in hold]


def check_splits(doc: dict, source: str = "splits.json") -> None:
    """Structural checks: known format, no overlap within a fold, test disjoint from development."""
    if doc.get("format") != SPLITS_FORMAT:
        raise MedcliError(f"{source}: not a medcli splits file (format {doc.get('format')!r}, expected {SPLITS_FORMAT!r})")
    for key in ("classes", "labels", "test", "folds", "dataset"):
        if key not in doc:
            raise MedcliError(f"{source}: missing key {key!r}; regenerate it with `medcli split`")
    test = set(doc["test"])
    for f in doc["folds"]:
        train, val = set(f["train"]), set(f["val"])
        for name, a, b in (("train and val", train, val), ("train and test", train, test), ("val and test", val, test)):
            both = a & b
            if both:
                raise MedcliError(f"{source}: fold {f['fold']} has {len(both)} image(s) in both {name}, e.g. {sorted(both)[0]!r}")
        unknown = (train | val) - set(doc["labels"])
        if unknown:
            raise MedcliError(f"{source}: fold {f['fold']} lists {sorted(unknown)[0]!r}, which has no label")


def save_splits(doc: dict, path: str | os.PathLike) -> Path:
    return write_json(path, doc)


def load_splits(path: str | os.PathLike, dataset: Dataset | None = None) -> dict:
    """Read and validate ``splits.json``; with ``dataset``, also check that it describes that very data.

    Raises:
        MedcliError: bad format, overlapping sets, a listed file that no longer exists, or a different fingerprint.
    """
    doc = read_json(path)
    check_splits(doc, str(path))
    if dataset is not None:
        if doc["dataset"]["fingerprint"] != dataset.fingerprint():
            raise MedcliError(
                f"{path}: the dataset at {dataset.root} changed since these splits were made (fingerprint differs); "
                f"re-run `medcli split` to make new splits"
            )
        by_id = dataset.by_id()
        listed = set(doc["test"]).union(*(set(f["train"]) | set(f["val"]) for f in doc["folds"]))
        missing = sorted(i for i in listed if i not in by_id or not os.path.exists(by_id[i].path))
        if missing:
            raise MedcliError(f"{path}: {len(missing)} listed image(s) no longer exist, e.g. {missing[0]!r}; re-run `medcli split`")
    return doc


def split_data(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    aliases: dict[str, str] | None = None,
    folds: int = 5,
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    drop_test_duplicates: bool = False,
    skip_bad: bool = False,
    near_threshold: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict:
    """Index and check the dataset at ``path``, make its splits and write them to ``out`` (atomically)."""
    from .data import DEFAULT_NEAR_THRESHOLD, load_dataset, require_readable, scan_dataset
    from .data.inspect import duplicates_of
    from .data.scan import bad_files

    dataset = load_dataset(path, layout, aliases)
    records = scan_dataset(dataset, cache_dir, workers)
    excluded = [{"id": s.id, "reason": f"unreadable: {why}"} for s, why in bad_files(dataset, records)]
    readable = require_readable(dataset, records, skip_bad)
    threshold = DEFAULT_NEAR_THRESHOLD if near_threshold is None else near_threshold
    dups = duplicates_of(readable, records, threshold)
    doc = make_splits(
        readable,
        dups,
        folds=folds,
        seed=seed,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        drop_test_duplicates=drop_test_duplicates,
        fingerprint=dataset.fingerprint(),
        excluded=excluded,
    )
    save_splits(doc, out)
    return doc


def summarize(doc: dict) -> str:
    """A few plain lines for the terminal and logs: mapping, sizes, and what was done about leakage."""
    lines = []
    renamed = {raw: can for raw, can in doc["class_mapping"].items() if raw != can}
    for raw, can in renamed.items():
        lines.append(f"class {raw!r} -> {can!r}")
    lines.append(f"classes: {', '.join(doc['classes'])}")
    lines.append(f"test: {len(doc['test'])} images ({'the dataset' + chr(39) + 's own test split' if doc['test_source'] == 'dataset' else 'stratified group holdout'})")
    for f in doc["folds"]:
        lines.append(f"fold {f['fold']}: train {len(f['train'])}, val {len(f['val'])}")
    leak = doc["leakage"]
    lines.append(
        f"duplicates: {len(doc['groups'])} images in groups kept within one fold; "
        f"{len(leak['test_duplicating_dev'])} test image(s) duplicate development images"
        + (" (dropped)" if leak["test_duplicates_dropped"] else (" (kept; --drop-test-duplicates drops them)" if leak["test_duplicating_dev"] else ""))
    )
    if leak["val_duplicating_train"]:
        lines.append(f"warning: {len(leak['val_duplicating_train'])} val image(s) duplicate train images of the dataset's own split")
    if leak["n_label_conflicts"]:
        lines.append(f"warning: {leak['n_label_conflicts']} duplicate group(s) carry conflicting labels (see medcli data inspect)")
    if doc["excluded"]:
        lines.append(f"excluded: {len(doc['excluded'])} image(s) (see 'excluded' in the file)")
    return "\n".join(lines)


def splits_fingerprint(doc: dict) -> str:
    """A hash of what the splits say (labels, test set, folds), independent of when they were written."""
    import hashlib
    import json

    payload = {"labels": doc["labels"], "test": doc["test"], "folds": [{"train": f["train"], "val": f["val"]} for f in doc["folds"]]}
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
