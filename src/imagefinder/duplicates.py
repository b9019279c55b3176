"""Duplicates: group an index's images into exact duplicates, near-duplicates and similar images.

Three tiers, each a list of groups, reported separately:

- exact: identical file content (the id table's sha256) - no model involved;
- near: the same picture again - resized, re-encoded, cropped, turned, straightened, mirrored,
  recoloured, captioned or logo-stamped copies: decided by `PixelCheck` (thumbnails aligned,
  tile correlations of the overlap >= NEAR_NCC), or by cosine >= NEAR without OpenCV / when a
  cosine threshold is given;
- similar: another photo of the same object or scene: cosine >= SIMILAR.

Pairs come from the ANN index itself - each image's top `neighbours` results, kept if above
the similar threshold - so the cost is n searches, never all n^2 pairs; copies turned by 90
degrees, which the model does not place near their original, get candidates from tiny
thumbnails (`turned_pairs`). Groups never chain through one borderline lookalike: similar
groups are complete-linkage (two groups merge only if every cross pair reaches the threshold),
near groups are anchored (a member must pass the pixel check against its group's anchor, the
largest image, as well as against the member it was linked through). Near groups grow from
exact groups and similar groups from near groups, so the tiers nest; a group with the same
members as one of a stricter tier is reported only there. A group's scores are those of its
weakest pair among *all* its pairs.

Thresholds are calibrated on measured score distributions (benchmarks/duplicates.py): the
cosine ones on UKBench copies and second photos, NEAR_NCC on the calibration half of a labelled
set of paris266 landmark photos with ten kinds of edit (measured on the other half). Global
cosines of copies and of other photos of the same object overlap, hence the pixel check. Scores
depend on the model, so models get their own values in CALIBRATED, else lite0's with a warning.
"""

from __future__ import annotations

import hashlib
import itertools
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
# The pixel check's cut (see PixelCheck). benchmarks/duplicates.py puts it at 0.925 on its calibration half
# (copies vs their originals >= 0.956, unrelated photos <= 0.893); re-photographs of flat objects
# (UKBench 00000-00002, a puzzle: homography-aligned, same light) score 0.91-0.945, so it is raised
# to 0.95, still below every (original, copy) score of that half.
NEAR_NCC = 0.95
TILES, DROP = 6, 0.3  # the pixel check's grid, and the share of worst-correlating tiles it ignores
MIN_MATCHES = 8  # ORB matches / RANSAC inliers below which two thumbnails are not aligned at all
MIN_OVERLAP = 0.2  # share of the compared frame the other image must cover
SIGNATURE, TURNED_MIN = 16, 0.8  # turned-copy candidates: tiny-thumbnail side, correlation to be checked
TIERS = ("exact", "near", "similar")


@dataclass
class Group:
    tier: str
    ids: list[int]
    sources: list[str]
    score: float  # the lowest cosine between any two members (1.0 for exact)
    check: float | None = None  # near tier, pixel-checked: the lowest pixel-check score between any two members

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _View:
    gray: np.ndarray
    pts: np.ndarray
    desc: np.ndarray | None


@dataclass
class _Thumb:
    key: bytes  # content hash: fixes the order a pair is aligned in, whatever the ids
    views: list[_View]  # as it is, mirrored


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
    fallback = base or (DEFAULT_NEAR, DEFAULT_SIMILAR)
    near = fallback[0] if near is None else near
    similar = fallback[1] if similar is None else similar
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


def turned_pairs(store: Store, ids: list[int], min_score: float = TURNED_MIN, neighbours: int = 5
                 ) -> set[tuple[int, int]]:
    """(a, b) with a < b where b looks like a turned by 90, 180 or 270 degrees, from tiny thumbnails.

    The model's embedding is not rotation-invariant (a copy turned by 90 degrees is rarely among
    an image's 20 neighbours), so turned copies get their own candidates: each thumbnail shrunk
    to SIGNATURE x SIGNATURE grey levels (squashed square, so turning commutes with the shrink),
    centred and normalised; every image's three turned signatures are searched among the
    upright ones (inner product = correlation), and pairs correlating >= min_score go on to the
    pixel check, which decides. Costs one thumbnail read per image and 3n searches.
    """
    import cv2
    import faiss

    signatures = np.zeros((len(ids), SIGNATURE * SIGNATURE), np.float32)
    for row, i in enumerate(ids):
        gray = cv2.imread(str(store.thumbnail_path(i)), cv2.IMREAD_GRAYSCALE)
        if gray is not None:
            t = cv2.resize(gray, (SIGNATURE, SIGNATURE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            t -= t.mean()
            signatures[row] = t / (np.linalg.norm(t) + 1e-6)
    if len(ids) < 2:
        return set()
    flat = faiss.IndexFlatIP(signatures.shape[1])
    index = flat if len(ids) <= 50_000 else faiss.IndexHNSWFlat(signatures.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(signatures)
    squares = signatures.reshape(-1, SIGNATURE, SIGNATURE)
    out: set[tuple[int, int]] = set()
    ids_arr = np.asarray(ids, np.int64)
    for turns in (1, 2, 3):
        queries = np.ascontiguousarray(np.rot90(squares, turns, axes=(1, 2)).reshape(len(ids), -1))
        scores, found = index.search(queries, min(neighbours, len(ids)))
        rows, cols = np.nonzero((scores >= min_score) & (found >= 0))
        for r, c in zip(rows.tolist(), found[rows, cols].tolist()):
            if r != c:
                x, y = int(ids_arr[r]), int(ids_arr[c])
                out.add((min(x, y), max(x, y)))
    return out


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
        self.anchors: dict[int, int] = {}  # root -> anchor, for link_anchored (default: the root)
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

    def link_anchored(self, a: int, b: int, threshold: float, pair_score, rank) -> bool:
        """Merge the groups of a and b if (a, b) *and the two groups' anchors* pass `pair_score`.

        Every member is thus verified against its group's anchor - the best-ranked member, e.g.
        the largest original - so a lookalike that passes against one copy cannot chain in, while
        two copies need not pass against each other (a crop and a captioned copy overlap less)."""
        ca, cb = self._cluster(a), self._cluster(b)
        if ca == cb:
            return False
        xa, xb = self.anchors.get(ca, ca), self.anchors.get(cb, cb)
        if pair_score(a, b) < threshold or pair_score(xa, xb) < threshold:
            return False
        keep, gone = min(ca, cb), max(ca, cb)
        for x in self.members[gone]:
            self.of[x] = keep
        self.members[keep] += self.members.pop(gone)
        self.anchors.pop(gone, None)
        self.anchors[keep] = max((xa, xb), key=lambda x: (rank(x), -x))
        return True

    def groups(self) -> list[list[int]]:
        return [sorted(m) for m in self.members.values() if len(m) > 1]


MIN_ORB_SIDE = 32  # px


class PixelCheck:
    """Are two images the same picture? Align them (ORB matches + RANSAC homography on the index's
    thumbnails, the second image also tried mirrored) and correlate the pixels of the overlap.

    A resized, re-encoded, cropped, turned, mirrored or recoloured copy aligns almost perfectly;
    another photo of the same landmark does not (viewpoint, light, parallax), which global
    descriptors alone separate poorly (their cosines overlap). The score is symmetric: the
    homography is estimated in an order fixed by the thumbnails' content (not their ids), and
    the pixels are compared in the frame of whichever image has fewer pixels for the shared
    content (the other is warped down onto it, never blown up). It is robust to local overlays
    (a caption box, a logo): the overlap is cut in TILES x TILES tiles, the DROP share of tiles
    that correlate worst is left out, and the rest is correlated as one (see `tiled_ncc`).
    """

    def __init__(self, store: Store) -> None:
        import cv2

        self.cv2, self.store = cv2, store
        self.orb = cv2.ORB.create(1000)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self._thumbs: dict[int, _Thumb | None] = {}
        self._scores: dict[tuple[int, int], float] = {}

    def _thumb(self, i: int) -> _Thumb | None:
        if i not in self._thumbs:
            gray = self.cv2.imread(str(self.store.thumbnail_path(i)), self.cv2.IMREAD_GRAYSCALE)
            self._thumbs[i] = None if gray is None else _Thumb(
                hashlib.blake2b(gray.tobytes() + repr(gray.shape).encode(), digest_size=16).digest(),
                [self._view(gray), self._view(self.cv2.flip(gray, 1))])
        return self._thumbs[i]

    def _view(self, gray: np.ndarray) -> _View:
        # ORB's image pyramid cannot shrink a thumbnail of a few pixels (cv2.error in resize): no points
        kps, desc = self.orb.detectAndCompute(gray, None) if min(gray.shape[:2]) >= MIN_ORB_SIDE else ((), None)
        pts = np.array([k.pt for k in kps], np.float32) if kps else np.zeros((0, 2), np.float32)
        return _View(gray, pts, desc)

    def __call__(self, a: int, b: int) -> float:
        key = (min(a, b), max(a, b))
        if key not in self._scores:
            ta, tb = self._thumb(a), self._thumb(b)
            if ta is None or tb is None:
                self._scores[key] = 0.0
            else:
                first, second = sorted((ta, tb), key=lambda t: t.key)
                self._scores[key] = self.score(first, second)
        return self._scores[key]

    def score(self, a: _Thumb, b: _Thumb) -> float:
        """The better of b as it is and b mirrored, aligned onto a."""
        best = self._aligned(a.views[0], b.views[0])
        if best < 0.99:  # a mirrored copy only aligns once flipped back
            best = max(best, self._aligned(a.views[0], b.views[1]))
        return best

    def _aligned(self, a: _View, b: _View) -> float:
        cv2 = self.cv2
        if a.desc is None or b.desc is None:
            return 0.0
        matches = self.matcher.match(a.desc, b.desc)
        if len(matches) < MIN_MATCHES:
            return 0.0
        pa = a.pts[[m.queryIdx for m in matches]]
        pb = b.pts[[m.trainIdx for m in matches]]
        try:
            h, inliers = cv2.findHomography(pb, pa, cv2.USAC_MAGSAC, 4.0)  # b -> a
        except cv2.error:
            return 0.0
        if h is None or inliers is None or int(inliers.sum()) < MIN_MATCHES:
            return 0.0
        det = float(np.linalg.det(h[:2, :2] / h[2, 2]))
        if not 1 / 25 < abs(det) < 25:  # a degenerate fit, not a copy at another scale
            return 0.0
        # compare in the coarser frame: the finer image is warped down, never blown up
        fixed, moving, m = (a.gray, b.gray, h) if abs(det) <= 1 else (b.gray, a.gray, np.linalg.inv(h))
        size = (fixed.shape[1], fixed.shape[0])
        warped = cv2.warpPerspective(moving, m, size, flags=cv2.INTER_LINEAR, borderValue=0)
        valid = cv2.warpPerspective(np.ones_like(moving), m, size, flags=cv2.INTER_NEAREST) > 0
        valid = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if valid.sum() < MIN_OVERLAP * valid.size:  # too little overlap to call it the same picture
            return 0.0
        # a light blur evens out JPEG blocks and resampling, which differ between the two
        u = cv2.GaussianBlur(fixed.astype(np.float32), (0, 0), 1.0)
        v = cv2.GaussianBlur(warped.astype(np.float32), (0, 0), 1.0)
        return tiled_ncc(u, v, valid)


def tiled_ncc(u: np.ndarray, v: np.ndarray, valid: np.ndarray, tiles: int = TILES, drop: float = DROP) -> float:
    """Mean normalised cross-correlation of the tiles of u and v over `valid`, the worst `drop` share left out.

    A caption box or a logo over a copy ruins the few tiles it covers, not the others, so those
    are dropped. Tiles (each correlated around its own mean) rather than one global NCC, because
    another photo of the same building, aligned on its facade, still correlates globally through
    the large shapes (sky above, building below) while its fine detail differs tile by tile:
    measured on the calibration half of benchmarks/duplicates.py, lookalikes reach 0.96 with a
    global NCC of the kept tiles, 0.89 with this mean, while copies stay above 0.90."""
    h, w = u.shape
    ys = np.linspace(0, h, tiles + 1).astype(int)
    xs = np.linspace(0, w, tiles + 1).astype(int)
    scores = []
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            m = valid[y0:y1, x0:x1]
            if m.mean() >= 0.5:  # tiles mostly outside the overlap say nothing
                scores.append(_ncc(u[y0:y1, x0:x1][m], v[y0:y1, x0:x1][m]))
    if len(scores) < 4:
        return 0.0
    scores.sort()
    return float(np.mean(scores[int(len(scores) * drop):]))


def _ncc(u: np.ndarray, v: np.ndarray) -> float:
    u = u - u.mean()
    v = v - v.mean()
    return float((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum() + 1e-6))


def _lowest(group: list[int], score) -> float:
    """The weakest pair of a group - every pair, those a stricter tier joined included."""
    return round(min(score(x, y) for i, x in enumerate(group) for y in group[i + 1:]), 4)


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
    tier_groups: dict[str, list[tuple[list[int], float, float | None]]] = {
        "exact": [(g, 1.0, None) for g in exact_groups]}
    if "near" in tiers or "similar" in tiers:
        a, b, s = neighbour_pairs(store, similar if "similar" in tiers or verify else near, neighbours)
        order = np.argsort(-s, kind="stable")
        a, b, s = a[order], b[order], s[order]
        # a turned copy is no neighbour in the model's space: its candidates come from the thumbnails
        near_pairs = set(zip(a.tolist(), b.tolist())) | (turned_pairs(store, ids) if verify else set())
        involved = sorted({x for pair in near_pairs for x in pair} | {x for g in exact_groups for x in g})
        vectors = {}
        if involved:
            v = l2_normalize(transform(store.index, l2_normalize(np.asarray(store.embeddings[involved], np.float32))))
            vectors = dict(zip(involved, v))
        start = exact_groups
        check = PixelCheck(store) if verify else None
        for tier, threshold in (("near", ncc if verify else near), ("similar", similar)):
            clusters = Clusters(vectors, start)
            if tier == "near" and check is not None:
                # strongest verified pair first; a member must also pass against its group's anchor
                # (the largest image), so a lookalike that passes against one copy does not chain in
                def pixels(i: int) -> int:
                    return (records[i].get("width") or 0) * (records[i].get("height") or 0) if i in records else 0

                scored = sorted(((check(x, y), x, y) for x, y in near_pairs), key=lambda t: (-t[0], t[1], t[2]))
                for score, x, y in scored:
                    if score < threshold:
                        break
                    clusters.link_anchored(x, y, threshold, check, pixels)
            else:
                for x, y, score in zip(a.tolist(), b.tolist(), s.tolist()):
                    if score >= threshold:
                        clusters.link(x, y, threshold)
            groups = clusters.groups()
            tier_groups[tier] = [(g, _lowest(g, lambda x, y: float(vectors[x] @ vectors[y])),
                                  _lowest(g, check) if tier == "near" and check is not None else None)
                                 for g in groups]
            start = groups
    result: dict = {"thresholds": {"near": near, "similar": similar, "neighbours": neighbours,
                                   "near_by": f"pixel check NCC >= {ncc}" if verify else f"cosine >= {near}"},
                    "model": store.manifest.model}
    seen: set[tuple[int, ...]] = set()
    for tier in TIERS:
        if tier not in tiers:
            continue
        # A group that a stricter tier already reports with the same members says nothing new.
        reported = [Group(tier, g, [source.get(i, "") for i in g], score, pixels)
                    for g, score, pixels in tier_groups.get(tier, []) if tuple(g) not in seen]
        seen.update(tuple(grp.ids) for grp in reported)
        reported.sort(key=lambda grp: (-len(grp.ids), grp.ids[0]))
        result[tier] = reported
    return result


def duplicates_of_path(path: Path | str, **kwargs) -> dict:
    """find_duplicates on an index directory."""
    store = Store(path)
    try:
        return find_duplicates(store, **kwargs)
    finally:
        store.close()
