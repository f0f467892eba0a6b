"""Find the images of a dataset in any of the common layouts and index them.

Layouts:
    ``imagefolder``  ``ROOT/<class>/<image>``
    ``presplit``     ``ROOT/{train,val|valid|validation,test}/<class>/<image>``
    ``csv``          a manifest ``path,label[,group][,split]`` (paths relative to the CSV file)
    ``npz``          MedMNIST-style arrays ``train_images, train_labels, val_*, test_*``

Files are found by content, not by name: in a class folder, files with an image or DICOM extension are taken
(a broken one is reported unreadable by the scan), known non-image files (``.txt``, ``.csv``, ``.json``,
``Thumbs.db``, ``.DS_Store``, hidden files, ...) are ignored, and every other file (``.jfif``, no extension, a
DICOM without ``.dcm``) is taken when its first bytes are an image header or the DICOM preamble
(:func:`medcli.data.decode.sniff_format`). Ignored files, files that are not images and symbolic links that were
not followed (dangling, or leading to a folder already read: a cycle) are listed in ``Dataset.notes``. Symlinked
folders inside a class folder are followed.

Indexing lists files and their sizes and sniffs the headers of files without an image extension; it decodes
no pixels (see :mod:`medcli.data.scan`). With ``group_by`` it reads the DICOM headers (not the pixels) for the
patient or study identifier, which is kept only as a salted keyed hash (:func:`id_salt`).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..errors import MedcliError
from .classes import SPLIT_ORDER, reconcile_classes
from .decode import DecodeOptions

log = logging.getLogger("medcli")

LAYOUTS = ("imagefolder", "presplit", "csv", "npz")
GROUP_BY = ("patient", "study")
#: Files with these extensions are always taken as images (a broken one is reported unreadable by the scan).
IMAGE_EXTENSIONS = {
    ".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm",
    ".dcm", ".dicom",
}
#: Files that are known not to be images: ignored (and counted in the notes) without opening them.
NON_IMAGE_EXTENSIONS = {
    ".txt", ".csv", ".tsv", ".json", ".xml", ".yaml", ".yml", ".md", ".rst", ".html", ".htm", ".pdf", ".log",
    ".ini", ".cfg", ".doc", ".docx", ".xls", ".xlsx", ".zip", ".gz", ".tar", ".7z", ".py", ".ipynb", ".npy", ".npz",
}
NON_IMAGE_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
NPZ_SHAPES = "(N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3"
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
    """An indexed dataset. ``decode`` (how its files are decoded) travels with it to the scan, the image store
    and Grad-CAM; ``group_by`` says the samples' groups are hashed DICOM identifiers (``patient``/``study``);
    ``cache_dir`` is the cache root it was loaded with (scan records and content hashes live there)."""

    root: Path
    layout: str
    classes: list[str]
    class_mapping: dict[str, str]
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    group_by: str | None = None
    cache_dir: str | None = None  # where its scan records and content hashes are cached (None: the default)

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples if s.split}
        return [s for s in SPLIT_ORDER if s in present]

    def fingerprint(self, like: str | None = None) -> str:
        """A hash of what the dataset contains: ids, labels, splits, groups and every image's content
        (:func:`medcli.data.scan.fingerprint`, ``content-sha256:...``).

        Modification times and the location are left out on purpose: copying a dataset to a cluster keeps its
        fingerprint. So are groups read from DICOM headers (``group_by``): they are salted hashes of the files' own
        content, and the salt differs between machines. ``like``: a fingerprint recorded earlier; when it is of the
        older kind (``sha256:...``: ids, labels, splits, groups and byte sizes, no content) that kind is returned,
        so the two can be compared.
        """
        from .scan import FINGERPRINT_PREFIX, fingerprint, index_fingerprint

        if like is not None and not like.startswith(FINGERPRINT_PREFIX):
            return index_fingerprint(self)
        return fingerprint(self)

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


def load_dataset(
    path: str | os.PathLike,
    layout: str = "auto",
    aliases: dict[str, str] | None = None,
    *,
    decode: DecodeOptions | None = None,
    group_by: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Index the dataset at ``path``; class names are reconciled across splits (see :mod:`.classes`).

    Nothing is decoded or written (except the identifier salt, below): files are listed (id, path, byte size,
    mtime), labelled and sorted by id.

    Args:
        path: a folder (``imagefolder``: ``ROOT/<class>/<img>``; ``presplit``:
            ``ROOT/{train,val|valid|validation,test}/<class>/<img>``), a ``.csv`` manifest (``path,label[,group]
            [,split]``, paths relative to the CSV; ``dir\\file.png`` written on Windows is read as ``dir/file.png``)
            or a MedMNIST-style ``.npz`` (``train_images``, ``train_labels``, ``val_*``, ``test_*``; images
            ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)`` with C 1 or 3, any integer or float dtype).
        layout: ``auto`` (detected from ``path``) or one of the layouts above.
        aliases: ``{raw folder/label name: class name}``, applied before the automatic prefix reconciliation.
        decode: how the files are decoded (DICOM window, frame of multi-frame files); kept as ``Dataset.decode``.
        group_by: ``patient`` or ``study``: every sample's ``group`` (the unit a split never divides) becomes
            ``hmac(salt, PatientID or StudyInstanceUID, sha256)[:16]`` read from its DICOM header. Identifiers
            never leave this function in clear.
        cache_dir: cache root holding the identifier salt ``<cache>/id-salt`` (see :func:`id_salt`), the scan
            records and the content hashes; kept as ``Dataset.cache_dir``.

    Returns:
        A :class:`Dataset`: ``samples`` (sorted by id; an id is the path relative to the root, posix, or
        ``<split>/<index>`` in an npz), sorted ``classes``, ``class_mapping`` (raw name -> class), ``notes``
        (ignored files, files that are not images, links not followed, empty folders, missing manifest paths
        with their likely cause; also logged), ``decode`` and ``group_by``.

    Raises:
        MedcliError: the path is missing or of the wrong kind, an unknown layout, no images, a class folder
            whose files are all non-images, a malformed manifest or archive (an npz image array of another shape,
            e.g. 3-D volumes, names the key and the shape), a manifest whose files are all missing, a pre-split
            folder without ``train/``, class names that cannot be reconciled, invalid decode options, ``group_by``
            on non-DICOM data or a DICOM without the identifier (naming the file and the tag).
    """
    decode = (decode or DecodeOptions()).validate()
    if group_by is not None and group_by not in GROUP_BY:
        raise MedcliError(f"--group-by {group_by!r}: choose one of {', '.join(GROUP_BY)}")
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
        raise MedcliError(f"{root}: no images found for layout {layout!r} (files are recognised by content: PNG, JPEG, TIFF, BMP, GIF, WebP, PPM, DICOM, ...)")
    if group_by is not None:
        raw_samples = _group_by_identifier(root, layout, raw_samples, group_by, cache_dir, notes)

    names_by_split: dict[str | None, set[str]] = {}
    for s in raw_samples:
        names_by_split.setdefault(s.split, set()).add(s.raw_label)
    mapping = reconcile_classes(names_by_split, aliases)
    samples = [_with_label(s, mapping[s.raw_label]) for s in raw_samples]
    samples.sort(key=lambda s: s.id)
    classes = sorted({s.label for s in samples})
    dataset = Dataset(root=root, layout=layout, classes=classes, class_mapping=mapping, samples=samples, notes=notes,
                      decode=decode, group_by=group_by, cache_dir=str(cache_dir) if cache_dir else None)
    for raw, canonical in dataset.renamed_classes().items():
        log.info("class %r -> %r", raw, canonical)
    for note in notes:
        log.warning("%s", note)
    return dataset


def id_salt(cache_dir: str | os.PathLike | None = None) -> bytes:
    """The secret salt of identifier hashes: ``$MEDCLI_ID_SALT`` if set, else ``<cache>/id-salt``.

    The file is created once (32 random bytes as hex, mode 0600, written atomically so concurrent jobs agree)
    and reused. Keep it (or the variable) private and stable: the same salt gives the same groups, so splits
    made on one machine can be re-made on another only with the same salt. An unsalted hash of a PatientID
    can be reversed by enumeration (see DICOM PS3.15 Annex E for de-identification).
    """
    import secrets

    env = os.environ.get("MEDCLI_ID_SALT")
    if env:
        return env.encode()
    from ..paths import default_cache_dir

    path = Path(cache_dir) if cache_dir else default_cache_dir()
    file = Path(paths.id_salt_file(path))
    if not file.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
            tmp = path / f".id-salt.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
            finally:
                os.close(fd)
            try:
                os.link(tmp, file)  # atomic; a concurrent creator that won keeps its salt
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise MedcliError(f"{file}: cannot create the identifier salt ({exc.strerror}); set MEDCLI_ID_SALT or --cache-dir") from None
    try:
        salt = file.read_bytes().strip()
    except OSError as exc:
        raise MedcliError(f"{file}: cannot read the identifier salt ({exc.strerror}); set MEDCLI_ID_SALT") from None
    if not salt:
        raise MedcliError(f"{file}: the identifier salt is empty; delete the file to make a new one")
    return salt


def hash_identifier(value: str, salt: bytes) -> str:
    """``hmac.new(salt, value, sha256).hexdigest()[:16]``: the only form in which an identifier is kept."""
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:16]


def _group_by_identifier(root: Path, layout: str, samples: list[Sample], group_by: str, cache_dir, notes: list[str]) -> list[Sample]:
    from .decode import DecodeError
    from .dicom import IDENTIFIERS, is_dicom_file, read_identifier

    keyword, tag = IDENTIFIERS[group_by]
    if layout == "npz":
        raise MedcliError(f"--group-by {group_by} reads the DICOM {keyword} {tag}, but {root} is an npz archive; give groups in a CSV manifest's group column instead")
    salt = id_salt(cache_dir)
    out = []
    for s in samples:
        if not is_dicom_file(s.path):
            raise MedcliError(f"--group-by {group_by} reads the DICOM {keyword} {tag}, but {s.path} is not a DICOM file; give groups in a CSV manifest's group column instead")
        try:
            value = read_identifier(s.path, group_by)
        except DecodeError as exc:
            raise MedcliError(f"{s.path}: {exc}") from None
        out.append(Sample(s.id, s.path, s.label, s.raw_label, s.split, hash_identifier(value, salt), s.size, s.mtime_ns, s.npz_index))
    if any(s.group for s in samples):
        notes.append(f"--group-by {group_by}: the manifest's group column is replaced by the hashed DICOM {keyword}")
    return out


def _with_label(s: Sample, label: str) -> Sample:
    return Sample(s.id, s.path, label, s.raw_label, s.split, s.group, s.size, s.mtime_ns, s.npz_index)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, 0


def _walk(folder: Path, root: Path, notes: list[str], ignored: Counter) -> list[Path]:
    """Every regular file below ``folder`` (sorted), following symlinked folders once each (cycle guard on real
    paths); hidden entries are counted in ``ignored``, dangling links and links to a folder already read are
    noted."""
    files: list[Path] = []
    seen = {os.path.realpath(folder)}

    def rel(p: Path) -> str:
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            return str(p)

    def visit(d: Path) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            notes.append(f"cannot list folder {rel(d)} ({exc.strerror}); its files were left out")
            return
        for e in entries:
            p = Path(e.path)
            if e.name.startswith("."):
                ignored["hidden" if e.name.lower() not in NON_IMAGE_NAMES else e.name] += 1
                continue
            try:
                is_dir, is_file = e.is_dir(), e.is_file()
            except OSError:
                is_dir = is_file = False
            if e.is_symlink() and not (is_dir or is_file):
                notes.append(f"link {rel(p)} -> {os.readlink(p)} leads nowhere (dangling); skipped")
                continue
            if is_dir:
                real = os.path.realpath(p)
                if real in seen:
                    notes.append(f"link {rel(p)} leads to a folder already read ({real}: a cycle or a second link); not followed")
                    continue
                seen.add(real)
                visit(p)
            elif is_file:
                files.append(p)

    visit(folder)
    return files


def _scan_class_dirs(root: Path, base: Path, split: str | None, notes: list[str]) -> list[Sample]:
    from .decode import sniff_format

    samples: list[Sample] = []
    ignored: Counter = Counter()
    not_images: list[str] = []
    where = f"{split}/" if split else ""
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found, others = 0, []
        for file in _walk(class_dir, root, notes, ignored):
            rel = file.relative_to(root).as_posix()
            suffix = file.suffix.lower()
            if file.name.lower() in NON_IMAGE_NAMES or suffix in NON_IMAGE_EXTENSIONS:
                ignored[file.name if file.name.lower() in NON_IMAGE_NAMES else suffix] += 1
                others.append(rel)
                continue
            if suffix not in IMAGE_EXTENSIONS and sniff_format(file) is None:
                not_images.append(rel)
                others.append(rel)
                continue
            size, mtime = _stat(file)
            samples.append(Sample(rel, str(file), class_dir.name, class_dir.name, split, None, size, mtime))
            found += 1
        if not found and others:
            shown = ", ".join(others[:3]) + (f" (+{len(others) - 3} more)" if len(others) > 3 else "")
            raise MedcliError(
                f"class folder {where}{class_dir.name} holds {len(others)} file(s) but no image: {shown}; "
                "add its images, or move the folder out of the dataset"
            )
        if not found:
            notes.append(f"class folder {where}{class_dir.name} has no images; ignored")
    loose = [p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        notes.append(f"{len(loose)} images directly in {base} (outside any class folder) were ignored")
    if ignored:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(ignored.items()))
        notes.append(f"{sum(ignored.values())} known non-image file(s) under {base} were ignored ({kinds})")
    if not_images:
        shown = ", ".join(not_images[:10]) + (f" (+{len(not_images) - 10} more)" if len(not_images) > 10 else "")
        notes.append(f"{len(not_images)} file(s) under {base} are not images (content not recognised) and were left out: {shown}")
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
    missing: list[str] = []
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
        written = rel
        if "\\" in rel and not (base / rel).exists():
            rel = rel.replace("\\", "/")  # written on Windows
        file = (base / rel).resolve()
        try:
            sample_id = file.relative_to(base.resolve()).as_posix()
        except ValueError:
            sample_id = rel.replace(os.sep, "/")
        if sample_id in seen:
            raise MedcliError(f"{manifest}:{lineno}: {written!r} is listed twice")
        seen.add(sample_id)
        size, mtime = _stat(file)
        if size < 0:
            missing.append(f"line {lineno}: {written!r} ({_missing_cause(base, written, rel)})")
        samples.append(Sample(sample_id, str(file), label, label, split, row.get("group") or None, size, mtime))
    if samples and any(s.split for s in samples) and not all(s.split for s in samples):
        raise MedcliError(f"{manifest}: some rows have a split and some do not; fill the split column for every row or none")
    if missing and len(missing) == len(samples):
        raise MedcliError(f"{manifest}: none of the {len(samples)} listed files exists, e.g. {missing[0]}")
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        notes.append(f"{manifest.name}: {len(missing)} listed file(s) do not exist: {shown}")
    return samples, notes


def _missing_cause(base: Path, written: str, rel: str) -> str:
    """The likely reason a manifest path does not exist, in a few words."""
    if re.match(r"^([A-Za-z]:[\\/]|\\\\)", written):
        return f"an absolute Windows path; write paths relative to the CSV's folder {base}"
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    here = base
    for k, part in enumerate(parts):
        if part == "..":
            here = here.parent
            continue
        if (here / part).exists():
            here = here / part
            continue
        try:
            matches = [n for n in os.listdir(here) if n.casefold() == part.casefold()]
        except OSError:
            matches = []
        if len(matches) == 1:
            fixed = "/".join(parts[:k] + [matches[0]] + parts[k + 1:])
            return f"names are case-sensitive here; did you mean {fixed!r}?"
        if k < len(parts) - 1:
            return f"folder {(here / part)} does not exist; paths are read relative to the CSV's folder {base}"
        break
    if Path(rel).exists() and not Path(rel).is_absolute():
        return f"it exists relative to the current folder, but paths are read relative to the CSV's folder {base}"
    return f"not found; paths are read relative to the CSV's folder {base}"


def npz_layout(shape: tuple[int, ...]) -> str | None:
    """``NHW``, ``NHWC`` or ``NCHW`` for an image array's shape, or None when it is none of them.

    Channels last when the last axis is 1 or 3; channels first when the second axis is 1 or 3 and the last is
    not; (N, D, H, W) volumes with D not in {1, 3} (MedMNIST-3D) and 5-D arrays are not images.
    """
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        if shape[-1] in (1, 3):
            return "NHWC"
        if shape[1] in (1, 3):
            return "NCHW"
    return None


def _npz_header(archive: Path, data, key: str) -> tuple[tuple[int, ...], object]:
    """Shape and dtype of ``key`` read from its .npy header (without loading the array when possible)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(archive) as z, z.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is not None:
                shape, _, dtype = reader(fh)
                return tuple(shape), np.dtype(dtype)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    arr = data[key]
    return tuple(arr.shape), arr.dtype


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
                    shape, dtype = _npz_header(archive, data, f"{prefix}_images")
                    if npz_layout(shape) is None:
                        what = " (a stack of 3-D volumes?)" if len(shape) == 4 else ""
                        raise MedcliError(f"{archive}: {prefix}_images has shape {shape}{what}; medcli reads 2-D images: {NPZ_SHAPES}")
                    if getattr(dtype, "kind", "") not in "biuf":
                        raise MedcliError(f"{archive}: {prefix}_images has dtype {dtype}; medcli reads integer and float images")
                    labels = np.asarray(data[f"{prefix}_labels"]).reshape(len(data[f"{prefix}_labels"]), -1)
                    if labels.shape[1] != 1:
                        raise MedcliError(f"{archive}: {prefix}_labels has {labels.shape[1]} columns; only single-label tasks are supported")
                    if len(labels) != shape[0]:
                        raise MedcliError(f"{archive}: {prefix}_images holds {shape[0]} images but {prefix}_labels {len(labels)} labels")
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
