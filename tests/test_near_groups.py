"""Near-duplicate groups use complete linkage: a group never chains images that are not near each other."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from PIL import Image

from medcli.data import load_dataset, scan_dataset
from medcli.data.duplicates import (
    CANDIDATE_THRESHOLD,
    _hash256_array,
    find_duplicates,
    hamming256,
    near_pairs,
    threshold_sweep,
)
from medcli.data.inspect import duplicates_of
from medcli.data.synth import make_synthetic


def _hex(bits: set[int]) -> str:
    """A 256-bit hash (64 hex digits) with exactly these bits set."""
    return f"{sum(1 << b for b in bits):064x}"


def test_a_chain_does_not_group_its_far_ends():
    ids, labels, pixel = ["a", "b", "c"], ["x", "x", "y"], ["p1", "p2", "p3"]
    ph256 = [_hex(set()), _hex(set(range(30))), _hex(set(range(10, 30)) | set(range(56, 81)))]
    fine = _hash256_array(ph256)
    d = lambda i, j: int(hamming256(fine[[i]], fine[[j]])[0])  # noqa: E731
    assert (d(0, 1), d(1, 2), d(0, 2)) == (30, 35, 45)  # A~B~C within 40, A and C 45 apart
    rep = find_duplicates(ids, labels, pixel, [0, 0, 0], ph256, threshold=40)
    assert [g.ids for g in rep.near] == [["a", "b"]]  # B joins its nearer neighbour; C stays alone
    assert rep.clusters["a"] == rep.clusters["b"] != rep.clusters["c"]
    assert rep.pairs_between_groups == 1  # the close pair B-C, left between groups, is counted
    assert rep.conflicts == []  # no label conflict made up through the chain (a: x, c: y)
    # the old transitive grouping would have chained all three (the failure of issue 14, item 8)
    assert find_duplicates(ids, labels, pixel, [0, 0, 0], ph256, threshold=45).near[0].ids == ["a", "b", "c"]


def _reference_complete_linkage(fine: np.ndarray, edges: list[tuple[int, int]], t: int) -> list[list[int]]:
    """Naive agglomerative complete linkage over groups joined by an edge: the specification."""
    groups = {x: [x] for e in edges for x in e}
    linked = {frozenset(e) for e in edges}
    dist = lambda i, j: int(hamming256(fine[[i]], fine[[j]])[0])  # noqa: E731
    while True:
        best = None
        for a, b in itertools.combinations(sorted(groups), 2):
            if not any(frozenset((x, y)) in linked for x in groups[a] for y in groups[b]):
                continue
            d = max(dist(x, y) for x in groups[a] for y in groups[b])
            if d <= t and (best is None or (d, a, b) < best):
                best = (d, a, b)
        if best is None:
            return sorted(sorted(g) for g in groups.values() if len(g) > 1)
        _, a, b = best
        groups[a] = groups[a] + groups.pop(b)


@pytest.mark.parametrize("seed", range(6))
def test_groups_equal_naive_complete_linkage_and_every_pair_is_near(seed):
    rng = np.random.default_rng(seed)
    n, t = 28, 40
    centres = rng.integers(0, 2**63, (4, 4)).astype(np.uint64)
    fine = np.zeros((n, 4), np.uint64)
    for i in range(n):
        row = centres[i % 4].copy()
        for b in rng.choice(256, int(rng.integers(0, 30)), replace=False):
            row[b // 64] ^= np.uint64(1 << int(b % 64))
        fine[i] = row
    hexes = [b"".join(int(x).to_bytes(8, "big") for x in r).hex() for r in fine]
    # seeds 0-2: every pair is a candidate; seeds 3-5: 64-bit hashes that leave some close pairs out
    ph64 = [0] * n if seed < 3 else [int(x) for x in rng.integers(0, 2, n) * np.uint64(0xFF)]
    ids = [f"i{k:02d}" for k in range(n)]
    rep = find_duplicates(ids, ["x"] * n, ids, ph64, hexes, threshold=t)
    cand = near_pairs(np.array(ph64, dtype=np.uint64), CANDIDATE_THRESHOLD)
    edges = [(a, b) for a, b in cand.tolist() if hamming256(fine[[a]], fine[[b]])[0] <= t]
    expected = _reference_complete_linkage(fine, edges, t)
    assert sorted(sorted(int(i[1:]) for i in g.ids) for g in rep.near) == expected
    for g in rep.near:
        idx = [int(i[1:]) for i in g.ids]
        for x, y in itertools.combinations(idx, 2):
            assert hamming256(fine[[x]], fine[[y]])[0] <= t


def _single_linkage(ids, dataset_records, threshold):
    """The old grouping (transitive closure of close candidate pairs and exact copies), as a reference."""
    from medcli.data.duplicates import _UnionFind

    recs = [dataset_records[i] for i in ids]
    uf = _UnionFind(len(ids))
    first: dict[str, int] = {}
    for k, r in enumerate(recs):
        uf.union(first.setdefault(r.pixel_hash, k), k)
    pairs = near_pairs(np.array([r.phash for r in recs], dtype=np.uint64), CANDIDATE_THRESHOLD)
    fine = _hash256_array([r.phash256 for r in recs])
    for a, b in pairs.tolist():
        if hamming256(fine[[a]], fine[[b]])[0] <= threshold:
            uf.union(a, b)
    return sorted(sorted(ids[k] for k in g) for g in uf.groups())


def test_sets_of_copies_group_exactly_as_before(tmp_path):
    """Without chains (every close pair's component is all within the threshold) the clusters, which make
    the splits, are those of the old transitive grouping."""
    root = make_synthetic(tmp_path / "d", per_class=20, size=48)
    for k, src in enumerate(sorted((root / "disk").glob("*.png"))[:5]):
        shutil.copy(src, root / "disk" / f"exact{k}.png")
        Image.open(src).resize((44, 44)).save(root / "disk" / f"near{k}.jpg", quality=92)
        Image.open(src).resize((40, 40)).save(root / "disk" / f"near{k}b.jpg", quality=85)
    ds = load_dataset(root)
    records = scan_dataset(ds)
    rep = duplicates_of(ds, records)
    ids = [s.id for s in ds.samples]
    by_cluster: dict[int, list[str]] = {}
    for i in ids:
        by_cluster.setdefault(rep.clusters[i], []).append(i)
    assert sorted(sorted(v) for v in by_cluster.values()) == _single_linkage(ids, records, rep.threshold)
    assert len(rep.near) == 5 and all(len(g.ids) == 4 for g in rep.near)
    assert rep.pairs_between_groups == 0


def test_threshold_sweep_counts_groups_images_and_test_leaks():
    # a, b exact copies in train; c near a (10 bits) in test; d 30 bits from a in test; e far, alone
    ids = list("abcde")
    splits = ["train", "train", "test", "test", "train"]
    pixel = ["p", "p", "c", "d", "e"]
    ph256 = [_hex(set()), _hex(set()), _hex(set(range(10))), _hex(set(range(100, 130))), _hex(set(range(200, 256)))]
    rows = threshold_sweep(ids, ["x", "x", "x", "y", "x"], pixel, [0] * 5, ph256, splits, [40, 16, 24])
    assert [r["threshold"] for r in rows] == [16, 24, 40]
    t16, t24, t40 = rows
    assert (t16["n_near_groups"], t16["n_images_in_groups"], t16["n_test_duplicating_dev"]) == (1, 3, 1)
    assert t16["n_label_conflicts"] == 0 and t16["n_cross_split_groups"] == 1
    assert t24 == {**t16, "threshold": 24}
    # at 40, d joins (30 from a and b, 40 from c): 4 images, 2 test leaks, and d's label conflicts
    assert (t40["n_near_groups"], t40["n_images_in_groups"], t40["n_test_duplicating_dev"], t40["n_label_conflicts"]) == (1, 4, 2, 1)
    assert threshold_sweep(ids, ["x"] * 5, pixel, [0] * 5, ph256, ["train"] * 5, [16])[0]["n_test_duplicating_dev"] is None
