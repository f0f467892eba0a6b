"""Does an external dataset hold copies of the run's own images? Overlap of ``medcli eval --data`` with the run.

External validation is only external when the images are new to the model. Each readable external image is
compared with the run's *development pool* (train + val of every fold of its splits file: every image that
trained or early-stopped any model of the run's splits) and, separately, with its *test set*:

* **exact**: the same decoded pixels (``ScanRecord.pixel_hash``; a gray picture stored as RGB counts as the same,
  as in :mod:`medcli.data.duplicates`);
* **near**: not exact, but within ``threshold`` bits of the 256-bit perceptual hash of some pool image (resized,
  re-encoded or slightly edited copies). Candidates come from the same multi-index search over 64-bit hashes as
  ``medcli data inspect`` (:func:`medcli.data.duplicates.candidate_pairs`: 64-bit hashes within
  :data:`~medcli.data.duplicates.CANDIDATE_THRESHOLD` bits); the 256-bit distance decides. The threshold is the
  run's splits file's ``settings.near_duplicate_threshold`` (default 40 of 256), so "near" means what it meant when
  the folds were made.
  Only direct pairs count: an external image is never linked to a pool image through a third image.

The check only reports: nothing is dropped, refitted or re-weighted.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..data.duplicates import DEFAULT_NEAR_THRESHOLD, candidate_pairs
from ..data.scan import ScanRecord

#: Kinds of overlap, in the order they are reported.
KINDS = ("exact_dev", "near_dev", "exact_test", "near_test")
#: At most this many external ids are listed per kind (the counts are always complete).
MAX_IDS = 100


def development_pool(splits_doc: dict) -> list[str]:
    """Sorted ids of train + val of every fold of a ``splits.json`` document."""
    return sorted({i for fold in splits_doc.get("folds", []) for part in ("train", "val") for i in fold.get(part, [])})


def near_threshold(splits_doc: dict) -> int:
    """The splits file's ``settings.near_duplicate_threshold`` (bits of 256), else the default (40)."""
    value = (splits_doc.get("settings") or {}).get("near_duplicate_threshold")
    return DEFAULT_NEAR_THRESHOLD if value is None else int(value)


def external_overlap(external: Mapping[str, ScanRecord], own: Mapping[str, ScanRecord], dev_ids: Iterable[str],
                     test_ids: Iterable[str], threshold: int = DEFAULT_NEAR_THRESHOLD) -> dict:
    """Count the external images that duplicate the run's development pool or its test set.

    Args:
        external: ``{id: ScanRecord}`` of the external images scored (unreadable records are ignored).
        own: ``{id: ScanRecord}`` of the run's own dataset (from :func:`medcli.data.scan.scan_dataset`).
        dev_ids, test_ids: the development pool and test set of the run's splits file (ids of ``own``; ids
            without a readable record are ignored).
        threshold: near-duplicate distance in bits of the 256-bit perceptual hash (0-256).

    Returns ``{exact_dev, near_dev, exact_test, near_test}`` (numbers of external images; an image counts once
    per pool, as exact if it is an exact copy of any pool image, else as near), ``n_external``, ``n_dev``,
    ``n_test`` (readable images compared), ``threshold_bits`` and ``ids`` (``{kind: sorted external ids}``, at
    most :data:`MAX_IDS` each; ``ids_truncated`` lists the kinds that were cut). Nothing is written or raised.
    """
    ext = [r for r in external.values() if r.ok and r.pixel_hash is not None]
    pools = {name: [own[i] for i in ids if i in own and own[i].ok and own[i].pixel_hash is not None]
             for name, ids in (("dev", dev_ids), ("test", test_ids))}
    found: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pool in pools.items():
        hashes = {r.pixel_hash for r in pool}
        exact = {r.id for r in ext if r.pixel_hash in hashes}
        found[f"exact_{name}"] = exact
        found[f"near_{name}"] = _near(ext, pool, threshold) - exact
    ids = {kind: sorted(found[kind]) for kind in KINDS}
    out: dict = {kind: len(found[kind]) for kind in KINDS}
    out.update(n_external=len(ext), n_dev=len(pools["dev"]), n_test=len(pools["test"]), threshold_bits=int(threshold),
               ids={kind: v[:MAX_IDS] for kind, v in ids.items()})
    truncated = [kind for kind, v in ids.items() if len(v) > MAX_IDS]
    if truncated:
        out["ids_truncated"] = truncated
    return out


def _near(ext: list[ScanRecord], pool: list[ScanRecord], threshold: int) -> set[str]:
    """External ids with a pool image within ``threshold`` bits (256-bit hash) among the 64-bit candidates."""
    if not ext or not pool:
        return set()
    records = ext + pool
    pairs, dists, _ = candidate_pairs([r.phash for r in records], [r.phash256 for r in records])
    # i < j, so a cross pair has i external and j in the pool
    close = pairs[(pairs[:, 0] < len(ext)) & (pairs[:, 1] >= len(ext)) & (dists <= threshold)]
    return {ext[i].id for i in close[:, 0].tolist()}


def any_overlap(overlap: dict | None) -> bool:
    return bool(overlap) and any(overlap.get(kind) for kind in KINDS)


def overlap_warning(overlap: dict | None) -> str | None:
    """One line for the terminal when external images duplicate the run's own images; None otherwise.

    ``12 of 40 external images duplicate development images of this run (8 exact, 4 near): these metrics are
    not external``, followed by the test-set overlap when there is one.
    """
    if not any_overlap(overlap):
        return None
    n = overlap["n_external"]
    dev = overlap["exact_dev"] + overlap["near_dev"]
    test = overlap["exact_test"] + overlap["near_test"]
    parts = []
    if dev:
        parts.append(f"{dev} of {n} external images duplicate development images of this run ({overlap['exact_dev']} exact, "
                     f"{overlap['near_dev']} near): these metrics are not external")
    if test:
        what = f"{test} duplicate" if dev else f"{test} of {n} external images duplicate"
        parts.append(f"{what} its test images ({overlap['exact_test']} exact, {overlap['near_test']} near): "
                     "these results and the test results are not independent")
    return "; ".join(parts) + f" (near: within {overlap['threshold_bits']} of 256 bits; ids in metrics.json `overlap`)"
