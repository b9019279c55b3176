"""Calibrate the strong/weak match threshold per embedder from measured score distributions.

Reads the per-query scores `benchmarks/resolution.py` saved (UKBench-1000: every image against
the other 999; the copy-detection set: 250 damaged queries against the 1000 originals; never
paris266). For each query: `nonmatch` = cosine of its best image of another group, `match` =
cosine of its best image of its own group. The threshold is the 95th percentile of `nonmatch`
over both sets: about 1 query in 20 whose true match is missing from the index gets a "strong" first
result. Also printed: the share of queries whose best true match reaches it (strong recall).

    python benchmarks/calibrate.py     # prints THRESHOLDS for imagefinder/confidence.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUANTILE = 0.95


def calibrate(result: dict) -> dict:
    scores = result["scores"]
    nonmatch = np.array(scores["ukbench"]["nonmatch"] + scores["copy"]["nonmatch"])
    threshold = float(np.quantile(nonmatch, QUANTILE))
    recall = {name: float(np.mean(np.array(s["match"]) >= threshold)) for name, s in scores.items()}
    return {"threshold": round(threshold, 3), "strong_recall": recall}


def signature(spec: str) -> str:
    """'efficientnet-lite0@gem2,long384' as confidence.signature writes it from a manifest."""
    return spec


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "resolution.json")
    args = p.parse_args()
    out = {}
    for r in json.loads(args.results.read_text()):
        c = calibrate(r)
        out[signature(r["spec"])] = c["threshold"]
        print(f"# {r['spec']}: threshold {c['threshold']:.3f}, strong recall "
              + ", ".join(f"{k} {v:.3f}" for k, v in c["strong_recall"].items()))
    print("THRESHOLDS = " + json.dumps(out, indent=4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
