"""Every preset (fast, balanced, accurate), measured end to end as a user runs it.

Per preset: UKBench-1000 N-S and mAP and the copy-detection set's mAP (one index serves both,
as in quality.py), paris266 mAP (every grouped image querying the rest, `imagefinder evaluate`)
and the query-box protocol (the 40 `*_qcrop` crops as queries against the other 226 photos:
a `role` column), index images/s over UKBench (local features included where the preset
computes them at index time) and the median latency of one query from a file.

Presets that re-rank: UKBench is scored on the first image of each group (250 queries), as in
quality.py, and the re-ranking runs under the preset's own time budget, so on a loaded machine
it verifies fewer candidates than on a quiet one (its quality there is a lower bound).

    python benchmarks/presets.py [--only fast balanced accurate]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from quality import _group_first  # benchmarks/ is on sys.path when run as a script

from imagefinder.benchdata import make_copydetect
from imagefinder.evaluate import (
    SearchOptions,
    _score_in_index,
    _score_split,
    evaluate,
    measure_latency,
    read_groundtruth,
)
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index
from imagefinder.presets import PRESETS, Preset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
UKBENCH, PARIS = DATA / "ukbench1000", DATA / "paris266"


def paris_box_set(out: Path) -> Path:
    """paris266 with a role column: the 40 query-box crops are queries, the rest the database."""
    (out / "images").mkdir(parents=True)
    truth = read_groundtruth(PARIS)
    with open(out / "groundtruth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "group_id", "role"])
        for name, g in zip(truth.filenames, truth.groups):
            (out / "images" / name).symlink_to(PARIS / "images" / name)
            w.writerow([name, g or "", "query" if "_qcrop" in name else "db"])
    return out


def options(p: Preset) -> SearchOptions:
    return SearchOptions(**p.query_options())


def ukbench_and_copy(p: Preset, work: Path, copy: Path) -> dict:
    truth = read_groundtruth(UKBENCH)
    sources = [str((UKBENCH / "images" / f).resolve()) for f in truth.filenames]
    start = time.perf_counter()
    report = build_index(sources, work / "ukb", IndexConfig.from_preset(p))
    finder = ImageFinder(work / "ukb")
    if p.local_features:
        finder.reranker().precompute(finder.store)
    seconds = time.perf_counter() - start
    opts = options(p)
    only = {s for s, first in zip(sources, _group_first(truth)) if first} if p.rerank else None
    uk, _ = _score_in_index(finder, dict(zip(sources, truth.groups)), opts, only)
    ct = read_groundtruth(copy)
    by_name = dict(zip(truth.filenames, sources))
    db = {by_name[f]: g for f, g, r in zip(ct.filenames, ct.groups, ct.roles or []) if r == "db"}
    queries = [(str((copy / "images" / f).resolve()), g) for f, g, r in zip(ct.filenames, ct.groups, ct.roles or [])
               if r == "query"]
    cd, files = _score_split(finder, db, queries, opts)
    lat = measure_latency(finder, files[:20], opts)
    finder.close()
    return {"ukbench_ns": uk["ns_score"], "ukbench_map": uk["map"], "ukbench_queries": uk["queries"],
            "copy_map": cd["map"], "images_per_second": round(report.indexed / seconds, 2), **lat}


def measure(p: Preset, work: Path, copy: Path, box: Path) -> dict:
    out = {"preset": p.name, "bundle": p.to_dict(), "load_start": os.getloadavg()[0]}
    out.update(ukbench_and_copy(p, work, copy))
    config = IndexConfig.from_preset(p)
    out["paris_map"] = evaluate(PARIS, config, **p.query_options())["map"]
    out["paris_box_map"] = evaluate(box, config, **p.query_options())["map"]
    out["load_end"] = os.getloadavg()[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(PRESETS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "presets.json")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {r["preset"] for r in results}
    with tempfile.TemporaryDirectory(prefix="if-presets-") as tmp:
        copy = make_copydetect(UKBENCH, Path(tmp) / "copy", seed=0)
        box = paris_box_set(Path(tmp) / "parisbox")
        for name in args.only or list(PRESETS):
            if name in done:
                continue
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                r = measure(PRESETS[name], Path(work), copy, box)
            results.append(r)
            args.out.write_text(json.dumps(results, indent=1))
            print(r, file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
