"""Find the images of a dataset in any of the common layouts and index them.

Layouts:
    ``imagefolder``  ``ROOT/<class>/<image>``
    ``presplit``     ``ROOT/{train,val|valid|validation,test}/<class>/<image>``
    ``csv``          a manifest ``path,label[,group][,split]`` (paths relative to the CSV file)
    ``npz``          MedMNIST-style arrays ``train_images, train_labels, val_*, test_*``

Indexing only lists files and their sizes; it decodes nothing (see :mod:`medcli.data.scan`).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MedcliError
from .classes import SPLIT_ORDER, reconcile_classes

log = logging.getLogger("medcli")

LAYOUTS = ("imagefolder", "presplit", "csv", "npz")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm"}
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``id`` is stable and human-readable: the image's path relative to the dataset root (posix), or
    ``<split>/<index>`` inside an ``.npz`` file. splits.json, prediction files and caches refer to images by it.
    """

    id: str
    path: str
    label: str
    raw_label: str
    split: str | None = None
    group: str | None = None
    size: int = -1
    mtime_ns: int = 0
    npz_index: int | None = None


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    class_mapping: dict[str, str]
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples if s.split}
        return [s for s in SPLIT_ORDER if s in present]

    def fingerprint(self) -> str:
        """A hash of what the dataset contains (ids, labels, splits, groups, byte sizes).

        Modification times are left out on purpose: copying a dataset to a cluster keeps its fingerprint.
        """
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.id):
            h.update(f"{s.id}\t{s.label}\t{s.split}\t{s.group}\t{s.size}\n".encode())
        return "sha256:" + h.hexdigest()

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def renamed_classes(self) -> dict[str, str]:
        """The class-name mapping entries that actually rename something (what users need to see)."""
        return {raw: can for raw, can in sorted(self.class_mapping.items()) if raw != can}


def detect_layout(path: Path) -> str:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return "csv"
        if suffix == ".npz":
            return "npz"
        raise MedcliError(f"{path}: a dataset file must be a .csv manifest or a .npz archive")
    if not path.is_dir():
        raise MedcliError(f"{path}: dataset not found (expected a folder, a .csv manifest or a .npz file)")
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(p.name.lower() in _SPLIT_NAMES for p in subdirs):
        return "presplit"
    return "imagefolder"


def load_dataset(path: str | os.PathLike, layout: str = "auto", aliases: dict[str, str] | None = None) -> Dataset:
    """Index the dataset at ``path``; class names are reconciled across splits (see :mod:`.classes`).

    Nothing is decoded or written: files are listed (id, path, byte size, mtime), labelled and sorted by id.

    Args:
        path: a folder (``imagefolder``: ``ROOT/<class>/<img>``; ``presplit``:
            ``ROOT/{train,val|valid|validation,test}/<class>/<img>``), a ``.csv`` manifest (``path,label[,group]
            [,split]``, paths relative to the CSV) or a MedMNIST-style ``.npz`` (``train_images``,
            ``train_labels``, ``val_*``, ``test_*``).
        layout: ``auto`` (detected from ``path``) or one of the layouts above.
        aliases: ``{raw folder/label name: class name}``, applied before the automatic prefix reconciliation.

    Returns:
        A :class:`Dataset`: ``samples`` (sorted by id; an id is the path relative to the root, posix, or
        ``<split>/<index>`` in an npz), sorted ``classes``, ``class_mapping`` (raw name -> class) and ``notes``
        (ignored files and empty folders, also logged).

    Raises:
        MedcliError: the path is missing or of the wrong kind, an unknown layout, no images, a malformed manifest
            or archive, a pre-split folder without ``train/``, class names that cannot be reconciled (two
            folders of one split mapping to one class, a val/test class without a train counterpart, a bad alias).
    """
    root = Path(path).expanduser().resolve()
    if layout == "auto":
        layout = detect_layout(root)
    loaders = {"imagefolder": _index_imagefolder, "presplit": _index_presplit, "csv": _index_csv, "npz": _index_npz}
    if layout not in loaders:
        raise MedcliError(f"--layout {layout!r} is not known; choose one of: auto, {', '.join(LAYOUTS)}")
    if not root.exists():
        raise MedcliError(f"{root}: dataset not found")
    raw_samples, notes = loaders[layout](root)
    if not raw_samples:
        raise MedcliError(f"{root}: no images found for layout {layout!r} (image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")

    names_by_split: dict[str | None, set[str]] = {}
    for s in raw_samples:
        names_by_split.setdefault(s.split, set()).add(s.raw_label)
    mapping = reconcile_classes(names_by_split, aliases)
    samples = [_with_label(s, mapping[s.raw_label]) for s in raw_samples]
    samples.sort(key=lambda s: s.id)
    classes = sorted({s.label for s in samples})
    dataset = Dataset(root=root, layout=layout, classes=classes, class_mapping=mapping, samples=samples, notes=notes)
    for raw, canonical in dataset.renamed_classes().items():
        log.info("class %r -> %r", raw, canonical)
    for note in notes:
        log.warning("%s", note)
    return dataset


def _with_label(s: Sample, label: str) -> Sample:
    return Sample(s.id, s.path, label, s.raw_label, s.split, s.group, s.size, s.mtime_ns, s.npz_index)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, 0


def _scan_class_dirs(root: Path, base: Path, split: str | None, notes: list[str]) -> list[Sample]:
    samples: list[Sample] = []
    ignored = 0
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = 0
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                file = Path(dirpath) / name
                if file.suffix.lower() not in IMAGE_EXTENSIONS:
                    ignored += 1
                    continue
                size, mtime = _stat(file)
                rel = file.relative_to(root).as_posix()
                samples.append(Sample(rel, str(file), class_dir.name, class_dir.name, split, None, size, mtime))
                found += 1
        if not found:
            where = f"{split}/" if split else ""
            notes.append(f"class folder {where}{class_dir.name} has no images; ignored")
    loose = [p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        notes.append(f"{len(loose)} images directly in {base} (outside any class folder) were ignored")
    if ignored:
        notes.append(f"{ignored} files without an image extension under {base} were ignored")
    return samples


def _index_imagefolder(root: Path) -> tuple[list[Sample], list[str]]:
    notes: list[str] = []
    return _scan_class_dirs(root, root, None, notes), notes


def _index_presplit(root: Path) -> tuple[list[Sample], list[str]]:
    notes: list[str] = []
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = _SPLIT_NAMES.get(sub.name.lower())
        if split is None:
            notes.append(f"folder {sub.name} is not a split (train, val/valid, test); ignored")
            continue
        if split in seen:
            raise MedcliError(f"{root}: folders {seen[split]!r} and {sub.name!r} are both the {split} split; keep one")
        seen[split] = sub.name
        samples += _scan_class_dirs(root, sub, split, notes)
    if "train" not in seen:
        raise MedcliError(f"{root}: a pre-split dataset needs a train/ folder (found: {', '.join(seen.values()) or 'none'})")
    return samples, notes


def _index_csv(manifest: Path) -> tuple[list[Sample], list[str]]:
    notes: list[str] = []
    base = manifest.parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedcliError(f"{manifest}: cannot read the manifest ({exc})") from None
    for required in ("path", "label"):
        if required not in columns:
            raise MedcliError(f"{manifest}: the manifest needs a {required!r} column (columns: path,label[,group][,split]); found {columns}")
    samples: list[Sample] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        rel, label = row.get("path", ""), row.get("label", "")
        if not rel or not label:
            raise MedcliError(f"{manifest}:{lineno}: empty path or label")
        split = None
        if row.get("split"):
            split = _SPLIT_NAMES.get(row["split"].lower())
            if split is None:
                raise MedcliError(f"{manifest}:{lineno}: split {row['split']!r} is not one of train, val, test")
        file = (base / rel).resolve()
        try:
            sample_id = file.relative_to(base.resolve()).as_posix()
        except ValueError:
            sample_id = rel.replace(os.sep, "/")
        if sample_id in seen:
            raise MedcliError(f"{manifest}:{lineno}: {rel!r} is listed twice")
        seen.add(sample_id)
        size, mtime = _stat(file)
        samples.append(Sample(sample_id, str(file), label, label, split, row.get("group") or None, size, mtime))
    if samples and any(s.split for s in samples) and not all(s.split for s in samples):
        raise MedcliError(f"{manifest}: some rows have a split and some do not; fill the split column for every row or none")
    return samples, notes


def _index_npz(archive: Path) -> tuple[list[Sample], list[str]]:
    import numpy as np

    try:
        with np.load(archive, allow_pickle=False) as data:
            keys = set(data.files)
            labels_by_split = {}
            for prefix, split in (("train", "train"), ("val", "val"), ("test", "test")):
                if f"{prefix}_images" in keys:
                    if f"{prefix}_labels" not in keys:
                        raise MedcliError(f"{archive}: has {prefix}_images but no {prefix}_labels")
                    labels = np.asarray(data[f"{prefix}_labels"]).reshape(len(data[f"{prefix}_labels"]), -1)
                    if labels.shape[1] != 1:
                        raise MedcliError(f"{archive}: {prefix}_labels has {labels.shape[1]} columns; only single-label tasks are supported")
                    labels_by_split[split] = labels[:, 0]
    except (OSError, ValueError) as exc:
        raise MedcliError(f"{archive}: cannot read the .npz archive ({exc})") from None
    if "train" not in labels_by_split:
        raise MedcliError(f"{archive}: expected MedMNIST-style arrays train_images/train_labels (found: {', '.join(sorted(keys))})")
    size, mtime = _stat(archive)
    samples = []
    for split, labels in labels_by_split.items():
        width = len(str(len(labels)))
        for i, label in enumerate(labels):
            name = str(int(label))
            samples.append(Sample(f"{split}/{i:0{width}d}", str(archive), name, name, split, None, size, mtime, i))
    return samples, []
