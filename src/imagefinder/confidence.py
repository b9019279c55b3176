"""Match confidence: is a result the same object or scene ("strong"), or only the nearest there is ("weak")?

The decision reads the cosine between the query's raw features and the result's (what the
index stores per image), whatever the ranking metric, PCA, query expansion or re-ranking,
so one threshold per embedder holds for every way of searching with it. The thresholds are
calibrated by `benchmarks/calibrate.py` on score distributions of non-matching pairs from
UKBench-1000 and the copy-detection set made from it (never the paris266 dev set): for each
query its best-scoring image of another group; the threshold is that score's 95th percentile,
so about 1 query in 20 whose object is not in the index still shows a "strong" first result -
and UKBench's non-matches are hard ones (other objects of the same kind on the same table);
an unrelated query (another kind of picture, noise) scores far below.

Keys are `name@pooling,input` as `signature` writes them from a manifest member. A model with
no calibrated threshold (ensembles, tuned models, other inputs) gets `match: null`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .pooling import Pooling

Match = Literal["strong", "weak"]
STRONG: Match = "strong"
WEAK: Match = "weak"

# benchmarks/calibrate.py over benchmarks/results/resolution.json (see README "Retrieval quality").
THRESHOLDS: dict[str, float] = {
    "efficientnet-lite0@gem2,long224": 0.735,
    "efficientnet-lite0@gem2,long384": 0.774,
    "efficientnet-lite0@gem2,long512": 0.786,
    "efficientnet-lite0@gem2,square224": 0.744,
    "efficientnet-lite2@gem2,long320": 0.765,
    "efficientnet-lite2@gem2,long384": 0.779,
    "efficientnet-lite2@gem2,long512": 0.792,
    "efficientnet-lite2@gem2,square260": 0.771,
    "efficientnet-lite2@gem2,upto384": 0.765,
    "efficientnet-lite2@gem2,upto512": 0.764,
}


def signature(members: Sequence[dict[str, Any]]) -> str | None:
    """'efficientnet-lite0@gem2,long384' for a one-member manifest (None for ensembles)."""
    if len(members) != 1:
        return None
    m = members[0]
    pooling = Pooling.from_dict(m.get("pooling") or {}).token() or "avg"
    pre = m.get("preprocess") or {}
    kind = {"long": "long" if pre.get("enlarge", True) else "upto", "crop": "crop"}.get(pre.get("resize", "squash"),
                                                                                        "square")
    return f"{m['name']}@{pooling},{kind}{pre.get('size', '')}" if pre else f"{m['name']}@{pooling},native"


def threshold_for(members: Sequence[dict[str, Any]]) -> float | None:
    sig = signature(members)
    return THRESHOLDS.get(sig) if sig else None


def match_labels(query: np.ndarray, results: np.ndarray, threshold: float | None) -> list[Match | None]:
    """'strong' / 'weak' per result row from the raw-feature cosine to the query (None: uncalibrated)."""
    if threshold is None:
        return [None] * len(results)
    q = query / max(float(np.linalg.norm(query)), 1e-12)
    r = results / np.maximum(np.linalg.norm(results, axis=1, keepdims=True), 1e-12)
    return [STRONG if s >= threshold else WEAK for s in (r @ q).tolist()]
