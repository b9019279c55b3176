"""Calibrate the duplicate finder's thresholds on measured scores, then measure its precision/recall.

Two disjoint labelled sets are built from UKBench (`benchdata.make_duplicate_set`): one from
groups 0-124 to *calibrate*, one from groups 125-249 to *measure*. Each holds originals with an
exact byte copy, a JPEG q=30 re-encode, a 50% resize and an 80% crop (near-duplicates), another
photo of the same object (similar), and unrelated objects.

Calibration: cosine of every labelled pair in the index's space, by kind; the near threshold is
the one that maximises F1 of "near-duplicate pair vs any other pair", the similar threshold the
one that maximises F1 of "same object (incl. duplicates) vs unrelated". The score percentiles
per kind are printed so the margin is visible.

The near tier's default is the pixel check (`duplicates.PixelCheck`: thumbnails aligned by ORB +
RANSAC homography, normalised cross-correlation of the overlap) on candidate pairs above the
similar threshold; its NCC threshold is calibrated the same way (F1 on those candidates).

Measurement: `find_duplicates` on the other set with those thresholds (pixel-checked near tier,
and for comparison a cosine-only near tier); pair-level precision and
recall per tier (a predicted pair = two images in one reported group of that tier or a stricter
one; truth: exact = byte copies, near = same-original family, similar = family + same object),
and the recall per kind of copy.

    python benchmarks/duplicates.py [--model efficientnet-lite0] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from imagefinder.benchdata import make_duplicate_set
from imagefinder.duplicates import PixelCheck, find_duplicates, neighbour_pairs, pair_scores
from imagefinder.evaluate import read_groundtruth
from imagefinder.index import IndexConfig, Store
from imagefinder.pipeline import build_index

REPO = Path(__file__).resolve().parents[1]
UKBENCH = REPO.parent / "shared" / "data" / "ukbench1000"
KINDS = ("exact", "reencode", "resize", "crop", "same_object")


def labelled(out: Path, groups: list[str], seed: int) -> tuple[Path, dict[str, tuple[str, str]]]:
    make_duplicate_set(UKBENCH, out, originals=50, unrelated=75, seed=seed, groups=groups)
    with open(out / "labels.csv", newline="") as f:
        labels = {r["filename"]: (r["original"], r["kind"]) for r in csv.DictReader(f)}
    return out, labels


def pair_truth(labels: dict[str, tuple[str, str]], a: str, b: str) -> str:
    """'exact' | 'near' | 'similar' | 'none' for two labelled files."""
    (oa, ka), (ob, kb) = labels[a], labels[b]
    if not oa or not ob or oa != ob:
        return "none"
    if "same_object" in (ka, kb):
        return "similar"
    if {ka, kb} == {"original", "exact"}:
        return "exact"
    return "near"


def index_set(folder: Path, model: str, work: Path) -> tuple[Store, dict[int, str]]:
    report = build_index([str(folder / "images")], work / folder.name, IndexConfig(model=model))
    store = Store(report.path)
    return store, {i: Path(s).name for s, i in store.ids_by_source().items()}


def best_f1(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Threshold (midpoint between neighbouring scores) maximising F1 of pos vs neg, and that F1."""
    cands = np.unique(np.concatenate([pos, neg]))
    mids = (cands[1:] + cands[:-1]) / 2 if len(cands) > 1 else cands
    best = (float(mids[0]), -1.0)
    for t in mids:
        tp = (pos >= t).sum()
        fp = (neg >= t).sum()
        fn = len(pos) - tp
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best[1]:
            best = (float(t), float(f1))
    return best


def calibrate(store: Store, names: dict[int, str], labels: dict) -> dict:
    ids = sorted(names)
    pairs = list(itertools.combinations(ids, 2))
    truth = [pair_truth(labels, names[a], names[b]) for a, b in pairs]
    kinds = []
    for (a, b), t in zip(pairs, truth):
        if t in ("near", "exact", "similar"):
            ka, kb = labels[names[a]][1], labels[names[b]][1]
            kinds.append(kb if ka == "original" else ka if kb == "original" else "derived-derived")
        else:
            kinds.append("none")
    scores = pair_scores(store, pairs)
    truth, kinds = np.array(truth), np.array(kinds)
    near_pos = scores[np.isin(truth, ["near", "exact"])]
    near_neg = scores[~np.isin(truth, ["near", "exact"])]
    sim_pos = scores[truth != "none"]
    sim_neg = scores[truth == "none"]
    near_t, near_f1 = best_f1(near_pos, near_neg)
    sim_t, sim_f1 = best_f1(sim_pos, sim_neg)
    dist = {}
    for kind in ("exact", "reencode", "resize", "crop", "derived-derived", "same_object", "none"):
        s = scores[kinds == kind]
        if len(s):
            dist[kind] = {"n": len(s), "min": round(float(s.min()), 4),
                          "p5": round(float(np.percentile(s, 5)), 4), "median": round(float(np.median(s)), 4),
                          "p95": round(float(np.percentile(s, 95)), 4), "max": round(float(s.max()), 4)}
    # the pixel check, on the candidate pairs it would see (neighbours with cosine >= similar)
    a, b, s = neighbour_pairs(store, sim_t, 20)
    check = PixelCheck(store)
    ncc = np.array([check(x, y) for x, y in zip(a.tolist(), b.tolist())])
    t = np.array([pair_truth(labels, names[x], names[y]) for x, y in zip(a.tolist(), b.tolist())])
    ncc_t, ncc_f1 = best_f1(ncc[np.isin(t, ["near", "exact"])], ncc[~np.isin(t, ["near", "exact"])])
    for kind in ("near", "similar", "none"):
        v = ncc[t == kind]
        if len(v):
            dist[f"ncc:{kind}"] = {"n": len(v), "p5": round(float(np.percentile(v, 5)), 4),
                                   "median": round(float(np.median(v)), 4), "p95": round(float(np.percentile(v, 95)), 4)}
    return {"near": round(near_t, 3), "near_f1": round(near_f1, 4), "similar": round(sim_t, 3),
            "similar_f1": round(sim_f1, 4), "ncc": round(ncc_t, 3), "ncc_f1_on_candidates": round(ncc_f1, 4),
            "distributions": dist}


def measure(store: Store, names: dict[int, str], labels: dict, near: float | None, similar: float,
            ncc: float | None = None) -> dict:
    if ncc is None:
        result = find_duplicates(store, near=near, similar=similar, verify=False)
    else:
        result = find_duplicates(store, similar=similar, verify=True, ncc=ncc)
    ids = sorted(names)
    truth = {(a, b): pair_truth(labels, names[a], names[b]) for a, b in itertools.combinations(ids, 2)}
    predicted: dict[str, set] = {}
    acc: set = set()
    for tier in ("exact", "near", "similar"):
        for g in result[tier]:
            acc |= set(itertools.combinations(sorted(g.ids), 2))
        predicted[tier] = set(acc)  # a tier includes what the stricter tiers found
    wanted = {"exact": {"exact"}, "near": {"exact", "near"}, "similar": {"exact", "near", "similar"}}
    out = {}
    for tier in ("exact", "near", "similar"):
        true_pairs = {p for p, t in truth.items() if t in wanted[tier]}
        tp = len(predicted[tier] & true_pairs)
        out[tier] = {"precision": round(tp / max(1, len(predicted[tier])), 4),
                     "recall": round(tp / max(1, len(true_pairs)), 4),
                     "pairs_predicted": len(predicted[tier]), "pairs_true": len(true_pairs),
                     "groups": len(result[tier])}
    # recall per kind of copy: is (original, copy) linked in the near tier (or in similar, for same_object)?
    by_name = {n: i for i, n in names.items()}
    per_kind = {}
    for kind in KINDS:
        files = [f for f, (o, k) in labels.items() if k == kind and f in by_name and o in by_name]
        tier = "similar" if kind == "same_object" else "near"
        hit = sum(tuple(sorted((by_name[f], by_name[labels[f][0]]))) in predicted[tier] for f in files)
        per_kind[kind] = {"tier": tier, "recall": round(hit / max(1, len(files)), 4), "n": len(files)}
    out["per_kind"] = per_kind
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "duplicates.json")
    args = p.parse_args(argv)
    truth = read_groundtruth(UKBENCH)
    groups = sorted({g for g in truth.groups if g is not None}, key=lambda g: (len(g), g))
    with tempfile.TemporaryDirectory(prefix="imagefinder-dups-") as tmp:
        work = Path(tmp)
        cal_dir, cal_labels = labelled(work / "calibrate", groups[:125], seed=0)
        test_dir, test_labels = labelled(work / "measure", groups[125:], seed=1)
        store, names = index_set(cal_dir, args.model, work / "idx")
        cal = calibrate(store, names, cal_labels)
        store.close()
        print(json.dumps({"calibration": cal}, indent=1), file=sys.stderr)
        store, names = index_set(test_dir, args.model, work / "idx")
        held = calibrate(store, names, test_labels)["distributions"]
        res = measure(store, names, test_labels, None, cal["similar"], ncc=cal["ncc"])
        res_cos = measure(store, names, test_labels, cal["near"], cal["similar"])
        store.close()
    report = {"model": args.model, "calibration": cal, "held_out_distributions": held, "held_out": res,
              "held_out_cosine_only": res_cos}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
