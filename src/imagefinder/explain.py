"""Why this match: the local-feature correspondences that verify a result, as point pairs.

The re-ranker (rerank.py) only needs how many matches survive RANSAC; a person wants to see
them. This module runs the same steps - mutual-nearest-neighbour matches of the same local
features, one RANSAC homography (or fundamental matrix) with the same parameters - and keeps
the inliers' coordinates, mapped into each image's own pixels (the features are extracted on a
copy resized to the extractor's max_side, and a query may be a box of its image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rerank import MIN_INLIERS, LocalFeatures, inlier_mask, mutual_matches

MAX_PAIRS = 400  # enough to draw; beyond this the lines are a blur (the count is still reported)


@dataclass
class Correspondences:
    mutual: int  # mutual-nearest-neighbour descriptor matches before RANSAC
    inliers: int  # of those, consistent with one transform
    pairs: np.ndarray  # (n, 4) float: query x, y, result x, y of inliers (n <= MAX_PAIRS), image pixels

    @property
    def verified(self) -> bool:
        """The re-ranker's verdict: enough inliers for the same object or scene."""
        return self.inliers >= MIN_INLIERS


def to_pixels(points: np.ndarray, features_size: tuple[int, int], frame: tuple[float, float, float, float]) -> np.ndarray:
    """Feature coordinates (of the image as extracted) -> pixels of the frame (x0, y0, x1, y1) they cover."""
    x0, y0, x1, y1 = frame
    scale = np.array([(x1 - x0) / features_size[0], (y1 - y0) / features_size[1]], np.float64)
    return points.astype(np.float64) * scale + np.array([x0, y0])


def correspondences(query: LocalFeatures, result: LocalFeatures, query_frame: tuple[float, float, float, float],
                    result_size: tuple[int, int], geometry: str = "homography") -> Correspondences:
    """Inlier pairs between `query` (features of the region `query_frame` of the query image) and
    `result` (features of a whole indexed image of `result_size` pixels)."""
    ia, ib = mutual_matches(query, result)
    pa, pb = query.keypoints[ia], result.keypoints[ib]
    keep = inlier_mask(pa, pb, geometry)
    qa = to_pixels(pa[keep], query.size, query_frame)
    rb = to_pixels(pb[keep], result.size, (0, 0, *result_size))
    pairs = np.hstack([qa, rb]) if len(qa) else np.zeros((0, 4))
    return Correspondences(mutual=len(ia), inliers=int(keep.sum()), pairs=pairs[:MAX_PAIRS])
