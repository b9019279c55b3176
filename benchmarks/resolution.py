"""Input resolution per backbone: square squash vs aspect ratio kept at several long sides, measured.

For each model spec (backbone @ GeM 2 @ input): UKBench-1000 N-S and mAP (every image queries
the other 999), the hard copy-detection set's mAP (250 damaged queries, `benchdata.make_copydetect`
seed 0, against the same 1000 images: one index serves both), paris266 mAP with every grouped
image querying the rest (as `imagefinder evaluate` does) and the query-box protocol (the 40
`*_qcrop` crops querying the 226 other photos), index images/s over UKBench, and the median wall
latency of one query through `ImageFinder.search` from a file. The score of each query's best
match and best non-match on UKBench and the copy set is kept too: `benchmarks/calibrate.py`
reads them to set the strong/weak match threshold (paris266 is never used for that).

Results are appended to a JSON file as they come (a rerun skips specs already there); timings
depend on the machine's load: compare them as ratios within one run.

    python benchmarks/resolution.py                                  # every spec below
    python benchmarks/resolution.py --only efficientnet-lite2@gem2,long512
    python benchmarks/resolution.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imagefinder.benchdata import make_copydetect
from imagefinder.embed import l2_normalize
from imagefinder.evaluate import (
    SearchOptions,
    _score_in_index,
    _score_split,
    measure_latency,
    rank_metrics,
    read_groundtruth,
)
from imagefinder.finder import ImageFinder
from imagefinder.index import IndexConfig
from imagefinder.pipeline import build_index

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
UKBENCH, PARIS = DATA / "ukbench1000", DATA / "paris266"

SPECS = [f"efficientnet-lite{n}@gem2,{size}" for n, size in [
    (0, "square224"), (0, "long512"), (2, "long512"), (0, "long384"), (2, "long384"), (1, "long512"),
    (1, "long384"), (0, "long320"), (0, "long224"), (2, "square260"), (1, "square240"), (2, "long320"),
    (1, "long320"),
]]


def best_scores(vectors: np.ndarray, db: np.ndarray, query_groups: list, db_groups: list,
                exclude_self: bool) -> dict[str, list[float]]:
    """Per query: cosine of its best same-group db image and of its best other-group (or distractor) one."""
    sims = vectors @ db.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    dbg = np.array([g if g is not None else "" for g in db_groups], dtype=object)
    match, other = [], []
    for row, g in zip(sims, query_groups):
        same = dbg == g
        match.append(float(row[same].max()) if same.any() else float("nan"))
        other.append(float(row[~same].max()))
    return {"match": match, "nonmatch": other}


def paris_metrics(finder: ImageFinder) -> dict:
    """All-query mAP (as `evaluate`) and the 40-crop box protocol, on one index of the 266 photos."""
    truth = read_groundtruth(PARIS)
    paths = [str((PARIS / "images" / n).resolve()) for n in truth.filenames]
    allq, _ = _score_in_index(finder, dict(zip(paths, truth.groups)), SearchOptions())
    by_source = finder.store.ids_by_source()
    ids = np.array([by_source[p] for p in paths])
    vec = l2_normalize(np.asarray(finder.store.embeddings[ids], np.float32))
    crop = np.array(["_qcrop" in n for n in truth.filenames])
    groups = np.array([g or "" for g in truth.groups], dtype=object)
    sims = vec[crop] @ vec[~crop].T
    order = np.argsort(-sims, axis=1)
    dbg = groups[~crop]
    ranked = [[dbg[j] or None for j in row] for row in order]
    box = rank_metrics(ranked, list(groups[crop]), [r[:4] for r in ranked])
    return {"paris_map": allq["map"], "paris_box_map": box["map"], "paris_box_recall@1": box["recall@1"]}


def measure(spec: str, work: Path, copy: Path, precision: str | None = None) -> dict:
    config = IndexConfig(model=spec, precision=precision)
    out: dict = {"spec": spec, "load": os.getloadavg()[0]}
    ukb = read_groundtruth(UKBENCH)
    paths = [str((UKBENCH / "images" / n).resolve()) for n in ukb.filenames]
    index = work / "ukb"
    t0 = time.perf_counter()
    report = build_index(paths, index, config)
    out["images_per_second"] = round(report.indexed / (time.perf_counter() - t0), 2)
    finder = ImageFinder(index)
    out["precision"] = finder.manifest.precision
    group_of = dict(zip(paths, ukb.groups))
    m, files = _score_in_index(finder, group_of, SearchOptions())
    out.update({"ukb_ns": m["ns_score"], "ukb_map": m["map"]})
    copy_truth = read_groundtruth(copy)
    queries = [(str((copy / "images" / n).resolve()), g) for n, g, r in
               zip(copy_truth.filenames, copy_truth.groups, copy_truth.roles or []) if r == "query"]
    db_group = {str((UKBENCH / "images" / n).resolve()): g for n, g in zip(ukb.filenames, ukb.groups)}
    # The copy set's db images are UKBench's own files (hard links), indexed under UKBench paths.
    cm, _ = _score_split(finder, db_group, queries, SearchOptions())
    out["copy_map"] = cm["map"]
    out.update(measure_latency(finder, files[:20], SearchOptions()))
    ids = np.array([finder.store.ids_by_source()[p] for p in paths])
    db = l2_normalize(np.asarray(finder.store.embeddings[ids], np.float32))
    qv = l2_normalize(finder.embedder.embed_images([Image.open(p).convert("RGB") for p, _ in queries]))
    out["scores"] = {"ukbench": best_scores(db, db, list(ukb.groups), list(ukb.groups), True),
                     "copy": best_scores(qv, db, [g for _, g in queries], list(ukb.groups), False)}
    finder.close()
    ptruth = read_groundtruth(PARIS)
    pindex = work / "paris"
    build_index([str((PARIS / "images" / n).resolve()) for n in ptruth.filenames], pindex, config)
    pf = ImageFinder(pindex)
    out.update(paris_metrics(pf))
    pf.close()
    return out


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["spec"].endswith("square224") and "lite0" in r["spec"]), results[0])
    head = ("| model spec | precision | UKBench N-S | UKBench mAP | paris266 mAP | paris266 box mAP | copy hard mAP | "
            "index img/s (x base) | query p50 ms (x base) | load |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        # entries without `precision` were measured before int8 existed: fp32
        lines.append(f"| `{r['spec']}` | {r.get('precision', 'fp32')} | {r['ukb_ns']:.3f} | {r['ukb_map']:.3f} | {r['paris_map']:.3f} | "
                     f"{r['paris_box_map']:.3f} | {r['copy_map']:.3f} | {r['images_per_second']:.1f} "
                     f"({r['images_per_second'] / base['images_per_second']:.2f}) | {r['latency_ms_p50']:.0f} "
                     f"({r['latency_ms_p50'] / base['latency_ms_p50']:.2f}) | {r['load']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="SPEC")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "resolution.json")
    p.add_argument("--table", action="store_true")
    p.add_argument("--precision", choices=("fp32", "int8"), help="of every spec (default: each backbone's default)")
    args = p.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    if not args.table:
        # a spec is measured once per precision asked (entries from before int8 existed: fp32)
        done = {(r["spec"], r.get("asked", "fp32")) for r in results}
        with tempfile.TemporaryDirectory(prefix="if-res-") as tmp:
            copy = make_copydetect(UKBENCH, Path(tmp) / "copy", seed=0)
            for spec in args.only or SPECS:
                if (spec, args.precision or "default") in done:
                    continue
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    r = measure(spec, Path(work), copy, args.precision)
                r["asked"] = args.precision or "default"
                results.append(r)
                args.out.write_text(json.dumps(results, indent=1))
                print({k: v for k, v in r.items() if k != "scores"}, file=sys.stderr, flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
