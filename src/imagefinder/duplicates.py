"""Duplicates: group an index's images into exact duplicates, near-duplicates and similar images.

Three tiers, each a list of groups (connected components, union-find), reported separately:

- exact: identical file content (the id table's sha256) - no model involved;
- near: the same picture again - resized, re-encoded, lightly cropped or recoloured copies:
  cosine >= NEAR (in the index's own space: unit vectors, after any PCA);
- similar: another photo of the same object or scene: NEAR > cosine >= SIMILAR.

Pairs come from the ANN index itself - each image's top `neighbours` results, kept if above
the tier's threshold - so the cost is n searches (milliseconds each, IVF on large indexes),
never all n^2 pairs. Groups are formed by complete linkage over those pairs (strongest pair
first; two groups merge only if every cross pair reaches the threshold), because plain
connected components chain unrelated images through one borderline lookalike (near-duplicate
links confirmed by the pixel check are the exception: copies of copies are copies, so those
chain). Near groups
grow from exact groups and similar groups from near groups, so the tiers nest; a group with
the same members as one of a stricter tier is reported only there.

The thresholds were calibrated on measured score distributions (benchmarks/duplicates.py, on a
labelled set built from UKBench groups 0-124: byte copies, JPEG q=30 re-encodes, 50% resizes,
80% crops, other photos of the same object, unrelated objects; measured on groups 125-249):
each is the F1-optimal cut between its positives and everything else. Global cosines of copies
and of other photos of the same object overlap (copies 0.79-0.95, same object 0.61-0.93 for
efficientnet-lite0), so by default a near-duplicate is decided by `PixelCheck` (aligned
thumbnails, normalised cross-correlation >= NEAR_NCC) on candidate pairs above SIMILAR; the
cosine NEAR threshold is the fallback without OpenCV, or when given explicitly. Scores depend
on the model, so models get their own values in CALIBRATED, else lite0's with a warning.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .embed import l2_normalize
from .index import Store, transform

log = logging.getLogger(__name__)

# model spec -> (near, similar) cosine thresholds, measured by benchmarks/duplicates.py
CALIBRATED: dict[str, tuple[float, float]] = {
    "efficientnet-lite0": (0.801, 0.704),  # GeM p=2, the default
    "efficientnet-lite0@avg": (0.767, 0.666),
}
DEFAULT_NEAR, DEFAULT_SIMILAR = CALIBRATED["efficientnet-lite0"]
NEAR_NCC = 0.898  # pixel-check threshold for near-duplicates (see PixelCheck), calibrated likewise
TIERS = ("exact", "near", "similar")


@dataclass
class Group:
    tier: str
    ids: list[int]
    sources: list[str]
    score: float  # the lowest cosine between two members (1.0 for exact)

    def to_dict(self) -> dict:
        return asdict(self)


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for x in list(self.parent):
            out[self.find(x)].append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def thresholds_for(model: str, near: float | None = None, similar: float | None = None) -> tuple[float, float]:
    """(near, similar) for an index's model: given values win, else calibrated ones, else defaults."""
    base = CALIBRATED.get(model)
    if base is None and (near is None or similar is None):
        log.warning("no calibrated duplicate thresholds for %s: using those of efficientnet-lite0 "
                    "(pass --threshold to override)", model)
        base = (DEFAULT_NEAR, DEFAULT_SIMILAR)
    near = base[0] if near is None else near
    similar = base[1] if similar is None else similar
    similar = min(similar, near)
    return near, similar


def neighbour_pairs(store: Store, min_score: float, neighbours: int = 20, batch: int = 1024
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cosine) for a < b among each image's top `neighbours` results with cosine >= min_score."""
    ids = np.array(sorted(store.ids_by_source().values()), np.int64)
    if store.index is None or len(ids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    k = min(neighbours + 1, store.index.ntotal)
    out_a, out_b, out_s = [], [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        vectors = l2_normalize(np.asarray(store.embeddings[chunk], np.float32))
        scores, found = store.index.search(vectors, k)
        a = np.repeat(chunk, k)
        b, s = found.ravel(), scores.ravel()
        keep = (b >= 0) & (b != a) & (s >= min_score)
        out_a.append(np.minimum(a[keep], b[keep]))
        out_b.append(np.maximum(a[keep], b[keep]))
        out_s.append(s[keep])
    a, b, s = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)
    if len(a):  # each pair once, with its best score (search is symmetric up to ANN error)
        order = np.lexsort((-s, b, a))
        a, b, s = a[order], b[order], s[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, s = a[first], b[first], s[first]
    return a, b, s


def pair_scores(store: Store, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Cosine in the index's space for given id pairs (for calibration and tests)."""
    if not pairs:
        return np.zeros(0, np.float32)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    va = transform(store.index, l2_normalize(np.asarray(store.embeddings[a], np.float32)))
    vb = transform(store.index, l2_normalize(np.asarray(store.embeddings[b], np.float32)))
    return np.einsum("ij,ij->i", l2_normalize(va), l2_normalize(vb))


class Clusters:
    """Complete-linkage clustering over candidate edges: two groups merge only if *every* pair
    across them reaches the threshold, so one borderline link cannot chain unrelated groups
    (single linkage - plain union-find - merges whole families through one lookalike)."""

    def __init__(self, vectors: dict[int, np.ndarray], start: list[list[int]] | None = None) -> None:
        self.vectors = vectors
        self.of: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}
        for group in start or []:
            root = group[0]
            self.members[root] = list(group)
            for x in group:
                self.of[x] = root

    def _cluster(self, x: int) -> int:
        if x not in self.of:
            self.of[x] = x
            self.members[x] = [x]
        return self.of[x]

    def link(self, a: int, b: int, threshold: float, pair_score=None) -> float | None:
        """Merge the groups of a and b if all cross pairs reach `threshold`; returns the weakest pair.

        Pairs are scored by cosine, or by `pair_score(x, y)` (e.g. the pixel check) if given."""
        ca, cb = self._cluster(a), self._cluster(b)
        if ca == cb:
            return None
        if pair_score is None:
            va = np.stack([self.vectors[x] for x in self.members[ca]])
            vb = np.stack([self.vectors[x] for x in self.members[cb]])
            weakest = float((va @ vb.T).min())
        else:
            weakest = 1.0
            for x in self.members[ca]:
                for y in self.members[cb]:
                    weakest = min(weakest, pair_score(x, y))
                    if weakest < threshold:
                        return None
        if weakest < threshold:
            return None
        keep, gone = min(ca, cb), max(ca, cb)
        for x in self.members[gone]:
            self.of[x] = keep
        self.members[keep] += self.members.pop(gone)
        return weakest

    def groups(self) -> list[list[int]]:
        return [sorted(m) for m in self.members.values() if len(m) > 1]


class PixelCheck:
    """Are two images the same picture? Align B onto A (ORB matches + RANSAC homography on the
    index's thumbnails) and correlate the pixels of the overlap (normalised cross-correlation).

    A resized, re-encoded or cropped copy aligns almost perfectly (NCC median 0.98 measured on
    UKBench copies), another photo of the same object does not (median 0.74: viewpoint, light,
    parallax), which global descriptors alone separate poorly (their cosines overlap).
    """

    def __init__(self, store: Store) -> None:
        import cv2

        self.cv2, self.store = cv2, store
        self.orb = cv2.ORB_create(1000)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self._features: dict[int, tuple] = {}
        self._scores: dict[tuple[int, int], float] = {}

    def _feat(self, i: int) -> tuple:
        if i not in self._features:
            gray = self.cv2.imread(str(self.store.thumbnail_path(i)), self.cv2.IMREAD_GRAYSCALE)
            if gray is None:
                self._features[i] = (None, None, None)
            else:
                kps, desc = self.orb.detectAndCompute(gray, None)
                pts = np.float32([k.pt for k in kps]) if kps else np.zeros((0, 2), np.float32)
                self._features[i] = (gray, pts, desc)
        return self._features[i]

    def __call__(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self._scores:
            self._scores[key] = self._ncc(*key)
        return self._scores[key]

    def _ncc(self, a: int, b: int) -> float:
        cv2 = self.cv2
        ga, ka, da = self._feat(a)
        gb, kb, db = self._feat(b)
        if da is None or db is None:
            return 0.0
        matches = self.matcher.match(da, db)
        if len(matches) < 8:
            return 0.0
        pa = ka[[m.queryIdx for m in matches]]
        pb = kb[[m.trainIdx for m in matches]]
        try:
            h, _ = cv2.findHomography(pb, pa, cv2.USAC_MAGSAC, 4.0)
        except cv2.error:
            return 0.0
        if h is None:
            return 0.0
        size = (ga.shape[1], ga.shape[0])
        warped = cv2.warpPerspective(gb, h, size, flags=cv2.INTER_LINEAR, borderValue=0)
        valid = cv2.warpPerspective(np.ones_like(gb), h, size) > 0
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if valid.sum() < 0.2 * valid.size:  # too little overlap to call it the same picture
            return 0.0
        u = ga[valid].astype(np.float32)
        v = warped[valid].astype(np.float32)
        u -= u.mean()
        v -= v.mean()
        return float((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum() + 1e-6))


def pixel_check_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("cv2") is not None


def find_duplicates(store: Store, near: float | None = None, similar: float | None = None,
                    neighbours: int = 20, tiers: tuple[str, ...] = TIERS, verify: bool | None = None,
                    ncc: float = NEAR_NCC) -> dict:
    """{'thresholds': {...}, 'exact': [Group], 'near': [Group], 'similar': [Group]} for one index.

    verify (default: when OpenCV is installed and no `near` cosine threshold is given): near
    duplicates are candidate pairs (cosine >= similar) whose pixel check reaches `ncc`;
    otherwise they are pairs with cosine >= near.
    """
    if verify is None:
        verify = near is None and pixel_check_available()
    near, similar = thresholds_for(store.manifest.model, near, similar)
    ids = sorted(store.ids_by_source().values())
    records = store.records(ids) if ids else {}
    source = {i: r["source"] for i, r in records.items()}
    exact_uf = UnionFind()
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in records.items():
        if r.get("sha256"):
            by_hash[r["sha256"]].append(i)
    for members in by_hash.values():
        for other in members[1:]:
            exact_uf.union(members[0], other)
    exact_groups = exact_uf.groups()
    tier_groups: dict[str, list[tuple[list[int], float]]] = {"exact": [(g, 1.0) for g in exact_groups]}
    if "near" in tiers or "similar" in tiers:
        a, b, s = neighbour_pairs(store, similar if "similar" in tiers else near, neighbours)
        order = np.argsort(-s, kind="stable")
        a, b, s = a[order], b[order], s[order]
        involved = sorted(set(a.tolist()) | set(b.tolist()) | {x for g in exact_groups for x in g})
        vectors = {}
        if involved:
            v = l2_normalize(transform(store.index, l2_normalize(np.asarray(store.embeddings[involved], np.float32))))
            vectors = dict(zip(involved, v))
        start = exact_groups
        check = PixelCheck(store) if verify else None
        for tier, threshold in (("near", ncc if verify else near), ("similar", similar)):
            clusters = Clusters(vectors, start)
            weakest: dict[int, float] = {}
            for x, y, score in zip(a.tolist(), b.tolist(), s.tolist()):
                if tier == "near" and verify:
                    # Copies of copies are copies: verified links chain (single linkage); the
                    # pixel check is precise enough that chaining does not merge other pictures.
                    w = check(x, y)
                    w = clusters.link(x, y, -2.0) if w >= threshold else None
                elif score >= threshold:
                    w = clusters.link(x, y, threshold)
                else:
                    w = None
                if w is not None:
                    root = clusters.of[x]
                    weakest[root] = min(weakest.get(root, 1.0), w)
            groups = clusters.groups()
            tier_groups[tier] = [(g, round(min([weakest.get(clusters.of[g[0]], 1.0)]), 4)) for g in groups]
            start = groups
    result: dict = {"thresholds": {"near": near, "similar": similar, "neighbours": neighbours,
                                   "near_by": f"pixel check NCC >= {ncc}" if verify else f"cosine >= {near}"},
                    "model": store.manifest.model}
    seen: set[tuple[int, ...]] = set()
    for tier in TIERS:
        if tier not in tiers:
            continue
        # A group that a stricter tier already reports with the same members says nothing new.
        groups = [Group(tier, g, [source.get(i, "") for i in g], score)
                  for g, score in tier_groups.get(tier, []) if tuple(g) not in seen]
        seen.update(tuple(grp.ids) for grp in groups)
        groups.sort(key=lambda grp: (-len(grp.ids), grp.ids[0]))
        result[tier] = groups
    return result


def duplicates_of_path(path: Path | str, **kwargs) -> dict:
    """find_duplicates on an index directory."""
    store = Store(path)
    try:
        return find_duplicates(store, **kwargs)
    finally:
        store.close()
