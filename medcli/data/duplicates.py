"""Find exact and near-duplicate images, and the label conflicts among them.

Exact duplicates share their decoded pixels (not merely their bytes: the same picture saved as PNG and as
RGBA counts). Near-duplicates are resized, re-encoded or slightly edited copies: their 256-bit perceptual
hashes differ in at most ``threshold`` bits (default 40 of 256).

The search is sub-quadratic. Candidates are pairs whose 64-bit hashes differ in at most
``CANDIDATE_THRESHOLD`` bits, found by multi-index hashing: each 64-bit hash is split into
``CANDIDATE_THRESHOLD + 1`` bands and, by the pigeonhole principle, two hashes that close agree exactly on at
least one band, so only images sharing a band value are compared (vectorised, in bounded blocks). The 256-bit
hashes of the candidates then decide. (Measured on the chest-CT set: copies with drawn-on marks or changed
contrast sit at 0-44 bits; different patients' slices that the 64-bit hash confused at 58-80; unrelated
synthetic images at 60 and above.)

Near groups use **complete linkage**: every two images of a near group are within ``threshold`` bits of each
other (256-bit hashes). A transitive closure of close pairs (single linkage) chains A~B~C into one group even
when A and C are far apart; on real datasets that put half of all images into a few giant "groups" of
visibly different pictures. Complete linkage (agglomerative, closest pair of groups first, ties broken by
the groups' first images) is the standard clustering whose every group has a diameter within the cut, and it
is deterministic. It is computed only over groups joined by a candidate pair, so it stays sub-quadratic:
the cost grows with the candidate pairs and the sizes of the groups they join, not with the dataset. Where a
transitive component already has every pair within the threshold (a clean set of copies), the group is the
same as before. Close pairs left between two groups (an image near members of two groups that are not near
each other) are counted (``pairs_between_groups``), never chained. Exact-duplicate groups are unchanged: copies
of one picture are collapsed to one representative before near grouping and come back as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import heapq
from collections import Counter

import numpy as np

DEFAULT_NEAR_THRESHOLD = 40  # of 256 bits
CANDIDATE_THRESHOLD = 6  # of 64 bits
_BLOCK = 2048


@dataclass
class DuplicateGroup:
    kind: str  # "exact" or "near"
    ids: list[str]
    labels: list[str]

    @property
    def conflicting(self) -> bool:
        return len(set(self.labels)) > 1

    def to_json(self, splits: dict[str, str | None] | None = None) -> dict:
        out: dict = {"kind": self.kind, "size": len(self.ids), "labels": sorted(set(self.labels)), "ids": self.ids}
        if splits is not None:
            out["splits"] = sorted({"all" if splits[i] is None else str(splits[i]) for i in self.ids})  # "all": no split folders
        return out


@dataclass
class DuplicateReport:
    threshold: int
    exact: list[DuplicateGroup] = field(default_factory=list)
    near: list[DuplicateGroup] = field(default_factory=list)
    clusters: dict[str, int] = field(default_factory=dict)  # id -> cluster number (exact and near merged)
    pairs_between_groups: int = 0  # close pairs (<= threshold) whose images ended in different near groups

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        return [g for g in self.exact + self.near if g.conflicting]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(b, axis=-1).sum(axis=(-1, -2))


def near_pairs(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, whose 64-bit hashes differ in at most ``threshold`` bits.

    Returns an ``(M, 2)`` int64 array sorted by ``i`` then ``j``.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or threshold < 0:
        return np.empty((0, 2), np.int64)
    n_bands = min(threshold + 1, 64)
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    found: list[np.ndarray] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends):
            if e - s >= 2:
                found.append(_pairs_within(hashes, np.sort(order[s:e]), threshold))
    if not found:
        return np.empty((0, 2), np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1)


def _pairs_within(hashes: np.ndarray, members: np.ndarray, threshold: int) -> np.ndarray:
    """Close pairs inside one bucket as codes ``i * n + j``; blocks keep a huge bucket from needing a huge matrix."""
    n = len(hashes)
    h = hashes[members]
    out = []
    for a in range(0, len(members), _BLOCK):
        dist = popcount64(h[a : a + _BLOCK, None] ^ h[None, a:])
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii  # columns are offset by ``a`` like the rows, so this keeps each pair once
        out.append(members[ii[keep] + a] * n + members[jj[keep] + a])
    return np.concatenate(out)


def hamming256(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distances between rows of two ``(M, 4)`` uint64 arrays of 256-bit hashes."""
    return popcount64(a ^ b).sum(axis=1)


def _hash256_array(hex_hashes: list[str]) -> np.ndarray:
    raw = np.frombuffer(bytes.fromhex("".join(hex_hashes)), dtype=">u8").astype(np.uint64)
    return raw.reshape(len(hex_hashes), 4)


def candidate_pairs(phashes: list[int], phashes256: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate candidates of a list of images and their fine distances.

    Returns ``(pairs, dists, fine)``: ``pairs`` ``(P, 2)`` index pairs ``i < j`` whose 64-bit hashes are within
    :data:`CANDIDATE_THRESHOLD` bits (multi-index search, :func:`near_pairs`), ``dists`` ``(P,)`` their distances in
    bits of the 256-bit hash (what decides), and ``fine`` the ``(N, 4)`` uint64 256-bit hashes.
    """
    pairs = near_pairs(np.array(phashes, dtype=np.uint64), CANDIDATE_THRESHOLD)
    fine = _hash256_array(list(phashes256)) if len(phashes256) else np.zeros((0, 4), np.uint64)
    dists = hamming256(fine[pairs[:, 0]], fine[pairs[:, 1]]) if len(pairs) else np.zeros(0, np.int64)
    return pairs, dists, fine


def find_duplicates(
    ids: list[str],
    labels: list[str],
    pixel_hashes: list[str],
    phashes: list[int],
    phashes256: list[str],
    threshold: int = DEFAULT_NEAR_THRESHOLD,
) -> DuplicateReport:
    """Group images into exact-duplicate and near-duplicate groups; every image gets a cluster number.

    The five lists are parallel, one entry per image (from :mod:`medcli.data.scan`):

    Args:
        ids: image ids.
        labels: class names (a group with several is a label conflict).
        pixel_hashes: hashes of the decoded pixels; equal hashes are exact duplicates.
        phashes: 64-bit DCT perceptual hashes (unsigned ints); pairs within :data:`CANDIDATE_THRESHOLD` (6) bits
            are the candidates for near duplicates.
        phashes256: 256-bit DCT perceptual hashes (64 hex digits each).
        threshold: near-duplicate distance, in bits of the 256-bit perceptual hash (0-256; default
            :data:`DEFAULT_NEAR_THRESHOLD` = 40): every two images of a near group differ in at most this many
            bits (complete linkage, see the module docstring). Raising it does not widen the 64-bit candidate
            search.

    Returns:
        A :class:`DuplicateReport`: ``exact`` and ``near`` groups (ids and labels, sorted by first id; near groups
        are found over distinct pictures, exact copies collapsed first, and list every file), ``clusters``
        (id -> cluster number: an image's near group, or its exact group, or itself; what must never be split
        across folds), ``pairs_between_groups`` and ``threshold``. Nothing is written; nothing is raised for
        well-formed input.
    """
    return _NearSearch(ids, labels, pixel_hashes, phashes, phashes256).report(threshold)


class _NearSearch:
    """Exact groups and the near-duplicate candidate pairs (with their 256-bit distances), computed once, so
    that several thresholds can be grouped from the same candidates (:func:`threshold_sweep`)."""

    def __init__(self, ids, labels, pixel_hashes, phashes, phashes256) -> None:
        self.ids, self.labels = [str(i) for i in ids], [str(c) for c in labels]  # plain strings, never numpy scalars, in reports
        n = len(self.ids)
        self.exact_uf = _UnionFind(n)
        first_of: dict[str, int] = {}
        self.reps: list[int] = []
        for i, h in enumerate(pixel_hashes):
            if h in first_of:
                self.exact_uf.union(first_of[h], i)
            else:
                first_of[h] = i
                self.reps.append(i)
        self.exact_members: dict[int, list[int]] = {}
        for i in range(n):
            self.exact_members.setdefault(self.exact_uf.find(i), []).append(i)  # keyed by the group's first index, its rep
        self.pairs, self.dists, self.fine = candidate_pairs([phashes[i] for i in self.reps], [phashes256[i] for i in self.reps])

    def near_groups(self, threshold: int) -> tuple[list[list[int]], int]:
        """Complete-linkage groups (lists of rep positions, size > 1) and the close pairs left between groups."""
        keep = self.dists <= threshold
        return _complete_linkage(self.pairs[keep], self.dists[keep], self.fine, threshold)

    def clusters(self, threshold: int) -> tuple[list[list[int]], list[list[int]], int]:
        """``(clusters as lists of image indices, near groups as lists of image indices, pairs between groups)``."""
        near, between = self.near_groups(threshold)
        uf = _UnionFind(len(self.ids))
        for i in range(len(self.ids)):
            uf.union(self.exact_uf.find(i), i)
        near_images = []
        for group in near:
            members = sorted(i for r in group for i in self.exact_members[self.reps[r]])
            for i in members[1:]:
                uf.union(members[0], i)
            near_images.append(members)
        return sorted(uf.groups(), key=min), near_images, between

    def report(self, threshold: int) -> DuplicateReport:
        ids, labels = self.ids, self.labels
        report = DuplicateReport(threshold=threshold)
        for members in self.exact_members.values():
            if len(members) > 1:
                report.exact.append(DuplicateGroup("exact", [ids[i] for i in members], [labels[i] for i in members]))
        clusters, near, report.pairs_between_groups = self.clusters(threshold)
        for members in near:
            report.near.append(DuplicateGroup("near", [ids[i] for i in members], [labels[i] for i in members]))
        for cluster, members in enumerate(clusters):
            for i in members:
                report.clusters[ids[i]] = cluster
        report.exact.sort(key=lambda g: g.ids[0])
        report.near.sort(key=lambda g: g.ids[0])
        return report


def _complete_linkage(pairs: np.ndarray, dists: np.ndarray, fine: np.ndarray, threshold: int) -> tuple[list[list[int]], int]:
    """Agglomerative complete linkage over the groups joined by ``pairs`` (each within ``threshold``).

    Starts from singletons; repeatedly merges the two groups whose largest pairwise 256-bit distance is the
    smallest (ties: the groups' smallest members), as long as it is at most ``threshold``. Only groups joined by
    at least one candidate pair are ever compared; the distance between two such groups is completed from the
    256-bit hashes (``fine``) where a pair was no candidate, and updated after a merge by the complete-linkage
    rule ``d(A+B, D) = max(d(A, D), d(B, D))``. A group pair beyond the threshold can never come back below
    it (merging only raises the maximum), so it is forgotten. Returns the groups of size > 1 (sorted lists of
    positions in ``fine``) and the number of input pairs whose ends ended in different groups.
    """
    # A connected component whose every pair is a close candidate pair is one group under any linkage: taken
    # as it is (most components: sets of copies); the agglomeration runs on the other components only.
    if len(pairs) == 0:
        return [], 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(fine)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    nodes = np.unique(pairs)
    size = np.bincount(comp[nodes], minlength=n)
    edges = np.bincount(comp[pairs[:, 0]], minlength=n)
    is_clique = (size > 1) & (edges == size * (size - 1) // 2)
    clique_nodes = nodes[is_clique[comp[nodes]]]
    groups: dict[int, list[int]] = {}
    for x, c in zip(clique_nodes.tolist(), comp[clique_nodes].tolist()):
        groups.setdefault(c, []).append(x)
    rest = ~is_clique[comp[pairs[:, 0]]]
    linked, between = _agglomerate(pairs[rest], dists[rest], fine, threshold)
    return sorted(list(groups.values()) + linked, key=min), between


def _agglomerate(pairs: np.ndarray, dists: np.ndarray, fine: np.ndarray, threshold: int) -> tuple[list[list[int]], int]:
    """The complete-linkage agglomeration of :func:`_complete_linkage` (no shortcut)."""
    members: dict[int, list[int]] = {}
    nbr: dict[int, dict[int, int]] = {}
    heap: list[tuple[int, int, int]] = []
    for (a, b), d in zip(pairs.tolist(), dists.tolist()):
        for x in (a, b):
            if x not in members:
                members[x], nbr[x] = [x], {}
        nbr[a][b] = nbr[b][a] = d
        heap.append((d, min(a, b), max(a, b)))
    heapq.heapify(heap)

    def block_max(xs: list[int], ys: list[int]) -> int:
        """Largest distance between the two groups, or the first block maximum past the threshold."""
        fy = fine[ys]
        step = max(1, _BLOCK * _BLOCK // (4 * len(ys)))
        worst = 0
        for k in range(0, len(xs), step):
            fx = fine[xs[k : k + step]]
            worst = max(worst, int(popcount64(fx[:, None, :] ^ fy[None, :, :]).sum(axis=2).max()))
            if worst > threshold:
                break
        return worst

    while heap:
        d, a, b = heapq.heappop(heap)
        if a not in members or b not in members or nbr[a].get(b) != d:
            continue  # stale: one side was merged, or the distance changed since
        # merge b into a (a < b: a group is named by its smallest member)
        na, nb = nbr.pop(a), nbr.pop(b)
        na.pop(b), nb.pop(a)
        merged: dict[int, int] = {}
        for other in sorted(set(na) | set(nb)):
            da, db = na.get(other), nb.get(other)
            dist_a = da if da is not None else block_max(members[a], members[other])
            dist_b = db if db is not None else block_max(members[b], members[other])
            nbr[other].pop(a, None)
            nbr[other].pop(b, None)
            new = max(dist_a, dist_b)
            if new <= threshold:
                merged[other] = nbr[other][a] = new
                heapq.heappush(heap, (new, min(a, other), max(a, other)))
        nbr[a] = merged
        members[a] = members[a] + members.pop(b)
    group_of = {x: g for g, xs in members.items() for x in xs}
    between = sum(1 for a, b in pairs.tolist() if group_of[a] != group_of[b])
    return [sorted(xs) for xs in sorted(members.values(), key=min) if len(xs) > 1], between


def threshold_sweep(
    ids: list[str],
    labels: list[str],
    pixel_hashes: list[str],
    phashes: list[int],
    phashes256: list[str],
    splits: list[str | None],
    thresholds: list[int],
) -> list[dict]:
    """What each near-duplicate threshold would give, from one candidate search (the lists as in
    :func:`find_duplicates`, plus each image's split).

    Returns one row per threshold (ascending): ``threshold`` (bits of 256), ``n_near_groups``,
    ``n_images_in_groups`` (distinct images in an exact or near group), ``n_cross_split_groups`` (clusters over
    more than one split), ``n_label_conflicts`` (clusters with more than one label) and
    ``n_test_duplicating_dev`` (test images whose cluster holds a train or val image; ``None`` when no image
    is in a ``test`` split).
    """
    search = _NearSearch(ids, labels, pixel_hashes, phashes, phashes256)
    has_test = any(s == "test" for s in splits)
    rows = []
    for t in sorted(set(thresholds)):
        clusters, near, _ = search.clusters(t)
        multi = [c for c in clusters if len(c) > 1]
        leaking = 0
        for c in multi:
            parts = [splits[i] for i in c]
            if any(p != "test" for p in parts):
                leaking += sum(p == "test" for p in parts)
        rows.append({
            "threshold": t,
            "n_near_groups": len(near),
            "n_images_in_groups": sum(len(c) for c in multi),
            "n_cross_split_groups": sum(len({str(splits[i]) for i in c}) > 1 for c in multi),
            "n_label_conflicts": sum(len({labels[i] for i in c}) > 1 for c in multi),
            "n_test_duplicating_dev": leaking if has_test else None,
        })
    return rows
