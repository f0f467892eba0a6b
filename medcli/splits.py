"""Persisted, deterministic, leak-free cross-validation splits (``splits.json``).

* Test set: the dataset's own test split when it has one, else a stratified group holdout. Test images that
  duplicate development images are reported, and dropped on request.
* Development pool (train + val): ``K`` folds by ``StratifiedGroupKFold`` whose groups are the manifest's
  groups (patients) merged with duplicate clusters (exact and near), so a duplicate never straddles folds.
  ``K = 0`` keeps the dataset's own train/val split (reporting duplicates across it).
* The file records classes, the class-name mapping, file ids, folds, the data fingerprint and every image's
  content hash; it is validated whenever it is loaded, and a changed, missing or added image is named. The format (``medcli.splits/1``) is documented in docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from ._io import read_json, write_json
from .data.duplicates import DuplicateReport
from .data.layouts import Dataset
from .data.scan import FINGERPRINT_PREFIX, content_hashes
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
    content: dict[str, str | None] | None = None,
    excluded: list[dict] | None = None,
    allow_missing_classes: bool = False,
    advice: "Advice | None" = None,
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
        content: ``{id: content hash}`` of the full dataset (:func:`medcli.data.scan.content_hashes`); default:
            ``dataset``'s.
        excluded: ``{"id", "reason"}`` for files left out (unreadable).
        allow_missing_classes: accept a fold whose training or validation part, or a test holdout, lacks a class
            of its pool (patient groups holding several classes can force it): it is logged as a warning and
            recorded in ``missing_classes``. Default: refused, since a score over a part without a class
            (early stopping, the cross-validated mean) is not comparable with the others.
        advice: how error hints name their fixes (:class:`Advice`; default: options of ``medcli split``).

    Returns:
        The ``medcli.splits/1`` document: ``format``, ``medcli_version``, ``created`` (UTC, ISO 8601),
        ``dataset`` (root, layout, fingerprint, ``n_images`` including excluded files, ``content_hashes``: id ->
        BLAKE2b-128 of the file), ``settings``, ``classes``,
        ``class_mapping``, ``labels`` (id -> class for every kept image), ``groups`` (id -> ``g<n>`` for images
        sharing a group), ``test_source`` (``dataset`` or ``holdout``), ``test`` (sorted ids), ``folds`` (``fold``,
        sorted ``train`` and ``val`` ids, and with ``folds=0`` a ``source``), ``excluded`` and ``leakage``; only
        when ``allow_missing_classes`` accepted a part without some class: ``settings.allow_missing_classes``
        (true) and ``missing_classes`` (``[{part: test|train|val, fold: n or null, class}]``).

    Raises:
        MedcliError: fewer than two classes; ``folds`` 1 or negative; ``test_fraction`` outside (0, 1) when a
            holdout is needed; a class with fewer independent image groups than the folds (or holdout parts)
            need; a fold (or holdout) part without images of some class, unless ``allow_missing_classes``. Each
            message names the class, the fold and the options of the command that fix it.
    """
    advice = advice or Advice()
    _check_settings(dataset, folds)
    samples = sorted(dataset.samples, key=lambda s: s.id)
    ids = [s.id for s in samples]
    labels = {s.id: str(s.label) for s in samples}
    groups = _groups(samples, dups)
    plan = _Plan(folds, seed, test_fraction, val_fraction, allow_missing_classes, advice, "test" in dataset.splits, "val" in dataset.splits, ids, labels, groups)
    dev, test, test_source = _test_split(dataset, samples, plan)
    test, leaking, dropped = _test_leakage(test, dev, groups, drop_test_duplicates)
    fold_list = _dev_folds(dataset, dev, plan)
    straddling = _val_leakage(fold_list, groups)
    sizes = Counter(groups.values())
    largest = max(sizes.values())
    _warn_large_group(Counter(groups[i] for i in dev), folds, len(dev))
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
            "content_hashes": dict(sorted((content if content is not None else content_hashes(dataset)).items())),
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
    if plan.missing:
        doc["settings"]["allow_missing_classes"] = True
        doc["missing_classes"] = plan.missing
    check_splits(doc)
    return doc


@dataclass(frozen=True)
class Advice:
    """How an error hint names its fixes, true for the command the user ran.

    ``medcli split`` (the default): as its options (``--folds 3``). When ``medcli train`` makes the splits itself
    (``train=True``; it has no ``--folds``/``--test-fraction``), as the ``medcli split`` command to run first,
    with ``data`` (the dataset argument) and ``out`` (where train reads the splits).
    """

    train: bool = False
    data: str | None = None
    out: str | None = None

    def fix(self, options: list, other: list[str] | None = None) -> str:
        """One clause naming the fixes: ``options`` (alternative option settings, each ``"--flag value"`` or
        ``("--flag value", "note")``) and ``other`` remedies (plain text)."""
        opts = [o if isinstance(o, tuple) else (o, "") for o in options]
        other = list(other or [])
        if not self.train:
            alternatives = [f"use {flag}" + (f" {note}" if note else "") for flag, note in opts] + other
        else:
            data = _quote(self.data or "DATA")
            out = f" --out {_quote(self.out)}" if self.out else ""
            commands = [f"`medcli split {data} {flag if flag.startswith('--folds') else '--folds 0 ' + flag}{out}`" for flag, _ in opts]
            alternatives = []
            if commands:
                alternatives.append(
                    "medcli train made these splits itself (like medcli split --folds 0) and has no such option: run "
                    + " or ".join(commands) + " first (train then reads that file)"
                )
            alternatives += other
        if not alternatives:
            return ""
        return "fix: " + (alternatives[0] if len(alternatives) == 1 else ", or ".join([", ".join(alternatives[:-1]), alternatives[-1]]))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


@dataclass
class _Plan:
    """The settings and facts every step of :func:`make_splits` needs to split and to explain a refusal."""

    folds: int
    seed: int
    test_fraction: float
    val_fraction: float
    allow_missing: bool
    advice: Advice
    own_test: bool
    own_val: bool
    ids: list[str]
    labels: dict[str, str]
    groups: dict[str, int]

    def __post_init__(self) -> None:
        self.missing: list[dict] = []

    def n_groups(self, ids: list[str], cls: str) -> int:
        return len({self.groups[i] for i in ids if self.labels[i] == cls})


def _check_settings(dataset: Dataset, folds: int) -> None:
    if not dataset.samples:
        raise MedcliError(f"{dataset.root}: no images to split")
    if len(dataset.classes) < 2:
        raise MedcliError(f"{dataset.root}: only one class ({', '.join(map(str, dataset.classes))}) was found; classification needs at least two")
    if folds == 1 or folds < 0:
        raise MedcliError(f"--folds {folds}: use 0 (the dataset's own train/val split) or at least 2")


def _test_split(dataset: Dataset, samples, plan: _Plan) -> tuple[list[str], list[str], str]:
    """``(development ids, test ids, test source)``: the dataset's own test split, else a stratified group holdout."""
    if plan.own_test:
        return [s.id for s in samples if s.split != "test"], [s.id for s in samples if s.split == "test"], "dataset"
    if not 0 < plan.test_fraction < 1:
        raise MedcliError(f"--test-fraction {plan.test_fraction}: must be between 0 and 1")
    dev, test = _group_holdout([s.id for s in samples], plan, "test")
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


def _dev_folds(dataset: Dataset, dev: list[str], plan: _Plan) -> list[dict]:
    """``folds`` grouped, stratified folds of the development pool; with ``folds=0`` one fold: the dataset's own
    train/val split, or a stratified group holdout of ``val_fraction`` when it has no val split."""
    if plan.folds != 0:
        return _kfold(dev, plan)
    by_id = dataset.by_id()
    if any(by_id[i].split == "val" for i in dev):
        train = [i for i in dev if by_id[i].split == "train"]
        val = [i for i in dev if by_id[i].split == "val"]
        fold = {"fold": 0, "train": train, "val": val, "source": "dataset"}
        _check_parts(plan, "--folds 0 keeps the dataset's own train/val split", _missing(plan, dev, [fold]),
                     lambda: _fold_fixes(dev, plan, (5, 4, 3, 2), seeds=False))
        return [fold]
    train, val = _group_holdout(dev, plan, "val")
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


def _warn_large_group(dev_sizes: Counter, folds: int, n_dev: int) -> None:
    """Warns when a group's development images exceed half of one part of the development pool (both counts
    over the development pool: the group's test images are not counted)."""
    largest = max(dev_sizes.values(), default=0)
    if largest > n_dev / (2 * max(folds, 2)):
        log.warning(
            "the largest group of duplicates/patients holds %d of the %d development images: folds cannot be balanced well; "
            "check it with `medcli data inspect` (or lower --near-threshold)", largest, n_dev
        )


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


def _check_enough(ids: list[str], plan: _Plan, n_splits: int, what: str, pool: str, fixes) -> None:
    """Every class needs at least ``n_splits`` independent groups in ``ids``, or some part would lack it entirely.

    ``fixes(cls, m)`` gives ``(options, other remedies)`` that are true for a class with ``m`` groups there.
    """
    per_class: dict[str, set[int]] = {}
    for i in ids:
        per_class.setdefault(plan.labels[i], set()).add(plan.groups[i])
    cls, members = min(sorted(per_class.items()), key=lambda kv: len(kv[1]))
    m = len(members)
    if m < n_splits:
        options, other = fixes(cls, m)
        raise MedcliError(
            f"cannot make {what}: class '{cls}' has only {m} independent image group(s) in {pool} "
            f"(duplicates and patients merged), fewer than the {n_splits} needed; "
            + plan.advice.fix(options, other + [f"add images of class '{cls}' (from other patients)"])
        )


def _dev_pool_note(plan: _Plan, need: int) -> list[str]:
    """A smaller test holdout leaves more groups for development: suggested only when the test set is a
    holdout and a smaller ``--test-fraction`` (with this seed) is verified to leave every class ``need`` groups."""
    if plan.own_test:
        return []
    classes = _classes(plan, plan.ids)
    fewest = min(plan.n_groups(plan.ids, c) for c in classes)
    for parts in range(max(2, round(1 / plan.test_fraction)) + 1, min(fewest, 20) + 1):
        dev, test = _holdout_ids(plan.ids, plan, 1 / parts, plan.seed)
        if _classes(plan, test) == classes and all(plan.n_groups(dev, c) >= need for c in classes):
            return [(f"--test-fraction {1 / parts:.2g}", "(a smaller test holdout leaves more groups for development)")]
    return []


def _kfold(dev: list[str], plan: _Plan) -> list[dict]:
    k = plan.folds

    def fixes(cls: str, m: int):
        options = [f"--folds {m}"] if m >= 2 else []
        if plan.own_val:
            options.append(("--folds 0", "(the dataset's own train/val split)"))
        elif m >= max(2, round(1 / plan.val_fraction)):
            options.append(("--folds 0", "(one validation holdout)"))
        return options + _dev_pool_note(plan, k), []

    _check_enough(dev, plan, k, f"{k} folds", "the development pool", fixes)
    out = _sgkf_folds(dev, plan, k, plan.seed)
    _check_parts(plan, f"{k} folds", _missing(plan, dev, out), lambda: _fold_fixes(dev, plan, range(k - 1, 1, -1), seeds=True))
    return out


def _sgkf_folds(dev: list[str], plan: _Plan, k: int, seed: int) -> list[dict]:
    y = np.array([plan.labels[i] for i in dev])
    g = np.array([plan.groups[i] for i in dev])
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members": we check
        for fold, (tr, va) in enumerate(_sgkf(k, seed).split(np.zeros(len(dev)), y, g)):
            out.append({"fold": fold, "train": [dev[i] for i in tr], "val": [dev[i] for i in va]})
    return out


def _classes(plan: _Plan, ids: list[str]) -> set[str]:
    return {plan.labels[i] for i in ids}


def _missing(plan: _Plan, pool: list[str], folds: list[dict]) -> list[dict]:
    """``{part, fold, class}`` for every fold part (``train``, ``val``) lacking a class of ``pool``."""
    classes = _classes(plan, pool)
    return [
        {"part": part, "fold": f["fold"], "class": cls}
        for f in folds
        for part in ("train", "val")
        for cls in sorted(classes - _classes(plan, f[part]))
    ]


_SEED_TRIES = 20


def _fold_fixes(dev: list[str], plan: _Plan, fold_counts, seeds: bool) -> list[str]:
    """Settings verified to give every fold part every class: the next working ``--seed`` (when ``seeds``), and
    the largest working fold count of ``fold_counts``."""
    options = []
    k = plan.folds
    if seeds:
        for seed in range(plan.seed + 1, plan.seed + 1 + _SEED_TRIES):
            if not _missing(plan, dev, _sgkf_folds(dev, plan, k, seed)):
                options.append(f"--seed {seed}")
                break
    fewest = min(plan.n_groups(dev, c) for c in _classes(plan, dev))
    for count in fold_counts:
        if 2 <= count <= fewest and not _missing(plan, dev, _sgkf_folds(dev, plan, count, plan.seed)):
            options.append(f"--folds {count}")
            break
    if not options:
        return []  # the caller's other remedies remain
    return options


def _holdout_seed(plan: _Plan, pool: list[str], fraction: float) -> list[str]:
    """The next ``--seed`` (verified) whose holdout of ``pool`` leaves every class on both sides."""
    for seed in range(plan.seed + 1, plan.seed + 1 + _SEED_TRIES):
        keep, hold = _holdout_ids(pool, plan, fraction, seed)
        if _classes(plan, keep) == _classes(plan, hold) == _classes(plan, pool):
            return [f"--seed {seed}"]
    return []


def _where(m: dict) -> str:
    if m["fold"] is None:
        return f"the {m['part']} set"
    return f"fold {m['fold']}'s {'validation' if m['part'] == 'val' else 'training'} part"


def _check_parts(plan: _Plan, what: str, found: list[dict], options) -> None:
    """Refuse a part lacking a class (one line naming the part, the class and ``options()``, verified fixes).

    A validation or test part may lack a class with ``allow_missing_classes``: then it is logged and recorded
    in ``plan.missing``. A training part (or development pool) never may: the model could not learn the class.
    """
    if not found:
        return
    hard = [m for m in found if m["part"] in ("train", "development")]
    if not hard and plan.allow_missing:
        for m in found:
            log.warning("%s has no image of class '%s' (accepted: allow_missing_classes); its scores leave that class out", _where(m), m["class"])
        plan.missing.extend(found)
        return
    first = (hard or found)[0]
    more = f" ({len(found) - 1} more part(s) lack a class)" if len(found) > 1 else ""
    escape = [] if hard else [("--allow-missing-classes", "to accept it")]
    raise MedcliError(
        f"{what}: {_where(first)} has no image of class '{first['class']}'{more} (patient groups holding several "
        f"classes can force this; scores over such a part are not comparable with the others); "
        + plan.advice.fix(options() + escape)
    )


def _holdout_ids(ids: list[str], plan: _Plan, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    n_splits = max(2, round(1 / fraction))
    y = np.array([plan.labels[i] for i in ids])
    g = np.array([plan.groups[i] for i in ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        keep, hold = next(_sgkf(n_splits, seed).split(np.zeros(len(ids)), y, g))
    return [ids[i] for i in keep], [ids[i] for i in hold]


def _group_holdout(ids: list[str], plan: _Plan, kind: str) -> tuple[list[str], list[str]]:
    """A stratified holdout that keeps groups whole: one fold of a ``round(1/fraction)``-fold grouped split.
    ``kind``: ``test`` (the test set, from the whole dataset) or ``val`` (with ``folds=0``, from development)."""
    fraction = plan.test_fraction if kind == "test" else plan.val_fraction
    n_splits = max(2, round(1 / fraction))
    option = "--test-fraction" if kind == "test" else "--val-fraction"

    def fixes(cls: str, m: int):
        options = [f"{option} {_fraction_for(m)}"] if m >= 2 else []
        if kind == "test":
            return options, ["give the dataset its own test split (a test folder, or a split column in the manifest)"]
        if m >= 2:
            options.append(f"--folds {m}")
        return options + _dev_pool_note(plan, n_splits), ["give the dataset its own val split"]

    what = f"{'the test set' if kind == 'test' else 'the validation set'} (a {fraction:g} holdout: one of {n_splits} grouped parts)"
    _check_enough(ids, plan, n_splits, what, "the dataset" if kind == "test" else "the development pool", fixes)
    keep, hold = _holdout_ids(ids, plan, fraction, plan.seed)
    classes = _classes(plan, ids)
    if kind == "test":
        found = [{"part": part, "fold": None, "class": c} for part, got in (("development", keep), ("test", hold)) for c in sorted(classes - _classes(plan, got))]
        _check_parts(plan, f"the test holdout ({option} {fraction:g})", found, lambda: _holdout_seed(plan, ids, fraction))
    else:
        found = _missing(plan, ids, [{"fold": 0, "train": keep, "val": hold}])
        _check_parts(plan, f"the validation holdout ({option} {fraction:g})", found, lambda: _holdout_seed(plan, ids, fraction))
    return keep, hold


def _fraction_for(m: int) -> str:
    """The largest share (two decimals) whose ``round(1/share)`` grouped parts need at most ``m`` groups."""
    import math

    return f"{math.ceil(100 / m) / 100:g}"


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


def save_splits(doc: dict, path: str | os.PathLike, *, exclusive: bool = False) -> bool:
    """Write ``doc`` to ``path`` atomically; return whether it was written.

    ``exclusive``: create ``path`` only if it does not exist yet, atomically (written aside, then hard-linked into
    place, which fails when another process created it first); False when another process did, and its file is
    left as it is.
    """
    if not exclusive:
        write_json(path, doc)
        return True
    path = Path(path)
    # complete before it gets the name; a kill leaves a temporary name the next training removes (medcli._cleanup)
    mine = write_json(path.parent / f".{path.name}.tmp-{os.getpid()}.new", doc)
    try:
        os.link(mine, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: claim the name, then move ours onto it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        os.replace(mine, path)
    finally:
        mine.unlink(missing_ok=True)
    return True


_LEGACY_WARNED: set[str] = set()


def load_splits(path: str | os.PathLike, dataset: Dataset | None = None) -> dict:
    """Read and validate ``splits.json``; with ``dataset``, also check that it describes that very data.

    The dataset check compares fingerprints (:meth:`Dataset.fingerprint`: ids, labels, splits, groups and every
    image's content). When they differ, the images that changed, went missing or were added are named (from the
    per-image ``content_hashes`` the file records). A file made before content hashes were recorded (fingerprint
    ``sha256:...``) is checked the old way (ids, labels, sizes) and accepted with a warning that pixels were not
    checked, since they cannot be: nothing records what they were.

    Raises:
        MedcliError: bad format, overlapping sets, a listed file that no longer exists, or a dataset that changed
            (naming the first images of each kind and their counts).
    """
    doc = read_json(path)
    check_splits(doc, str(path))
    if dataset is not None:
        recorded = doc["dataset"]["fingerprint"]
        if dataset.fingerprint(like=recorded) != recorded:
            changes = dataset_changes(doc, dataset)
            raise MedcliError(
                f"{path}: the dataset at {dataset.root} changed since these splits were made: "
                + (", ".join(changes) if changes else "its fingerprint differs (labels, splits or groups)")
                + "; restore the images, or re-run `medcli split` to make new splits (and train again on them)"
            )
        by_id = dataset.by_id()
        listed = set(doc["test"]).union(*(set(f["train"]) | set(f["val"]) for f in doc["folds"]))
        missing = sorted(i for i in listed if i not in by_id or not os.path.exists(by_id[i].path))
        if missing:
            raise MedcliError(f"{path}: {len(missing)} listed image(s) no longer exist: {_some(missing)}; re-run `medcli split`")
        if not recorded.startswith(FINGERPRINT_PREFIX) and str(path) not in _LEGACY_WARNED:
            _LEGACY_WARNED.add(str(path))
            log.warning(
                "%s was made by an older medcli that recorded no content hashes: image names, labels and byte sizes "
                "were checked, the pixels could not be; re-run `medcli split` with the same settings to record them "
                "(the splits come out the same)", path
            )
    return doc


def dataset_changes(doc: dict, dataset: Dataset) -> list[str]:
    """What differs between the images a splits document recorded and ``dataset``, as short phrases: images whose
    content changed, that are missing, that were added, whose label changed (first few ids and the count of
    each). Empty when nothing can be named (e.g. only groups changed)."""
    recorded = doc["dataset"].get("content_hashes")
    by_id = dataset.by_id()
    if recorded is None:  # an older file: only the images it lists are known
        known = set(doc["labels"]) | {e["id"] for e in doc.get("excluded", [])}
        now = {i: (by_id[i] if os.path.exists(by_id[i].path) else None) for i in by_id}
        missing = sorted(i for i in known if now.get(i) is None)
        added = sorted(i for i in now if i not in known)
        changed: list[str] = []
    else:
        current = content_hashes(dataset)
        missing = sorted(i for i in recorded if current.get(i) is None)
        added = sorted(i for i in current if i not in recorded and current[i] is not None)
        changed = sorted(i for i in recorded if current.get(i) is not None and current[i] != recorded[i])
    relabelled = sorted(i for i, label in doc["labels"].items() if i in by_id and by_id[i].label != label)
    out = []
    for ids, what in ((changed, "with other content"), (missing, "missing"), (added, "added"), (relabelled, "with another label")):
        if ids:
            out.append(f"{len(ids)} image{'s' if len(ids) > 1 else ''} {what} ({_some(ids)})")
    return out


def _some(ids: list[str], k: int = 5) -> str:
    shown = ", ".join(ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "")


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
    allow_missing_classes: bool = False,
    advice: Advice | None = None,
    decode=None,
    group_by: str | None = None,
    exclusive: bool = False,
) -> dict:
    """Index and check the dataset at ``path``, make its splits and write them to ``out`` (atomically).

    ``exclusive``: only create ``out`` if no other process has by the time ours is ready (see
    :func:`save_splits`); the document returned is then the one in ``out``, whoever wrote it. Two runs started
    together that both make the splits thus both train on the same file.

    ``decode`` (:class:`~medcli.data.decode.DecodeOptions`: DICOM window, frame) decides the pixels that duplicates
    are found on; ``group_by`` (``"patient"``/``"study"``) makes each DICOM patient or study one split group
    (:func:`~medcli.data.load_dataset`). Both are recorded in ``settings`` when given, and ``medcli train`` reads
    ``group_by`` back. The other settings are those of :func:`make_splits`; ``advice`` says how error hints name their fixes (pass
    ``Advice(train=True, data=..., out=...)`` when ``medcli train`` makes the splits). Nothing is written when
    a :class:`MedcliError` is raised (unreadable files without ``skip_bad``, no readable image left, a class
    whose every file is unreadable, or any refusal of :func:`make_splits`).
    """
    from .data import DEFAULT_NEAR_THRESHOLD, load_dataset, require_readable, scan_dataset
    from .data.inspect import duplicates_of
    from .data.scan import bad_files

    dataset = load_dataset(path, layout, aliases, decode=decode, group_by=group_by, cache_dir=cache_dir)
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
        content=content_hashes(dataset),
        excluded=excluded,
        allow_missing_classes=allow_missing_classes,
        advice=advice,
    )
    if group_by:
        doc["settings"]["group_by"] = group_by
    if decode is not None and decode.key():
        doc["settings"]["decode"] = {"window": decode.window, "frame": decode.frame}
    if not save_splits(doc, out, exclusive=exclusive):
        log.info("%s was made meanwhile by another process; using it", out)
        return read_json(out)
    if exclusive:
        log.info("splits written to %s", out)
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
        f"duplicate clusters and patient groups: {len(doc['groups'])} images kept together (never split across folds); "
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
