"""Calibrate the near-duplicate check on one labelled half, then measure it per kind of edit on the other.

The labelled set (`benchdata.make_edit_set`) is built from real landmark photos (paris266): each
original with one copy per kind of edit people make - exact bytes, JPEG q30-50 re-encode, 0.5x
resize, 80-90% crop, 90 degree turn, 2-5 degree straightening, mirror, brightness/contrast, a
white text box over ~8% (watermark), a corner logo - and unrelated photos, many of the same
landmarks (lookalikes: another photo of the Eiffel tower is not a copy). Half 0 calibrates,
half 1 is measured: no photo is in both.

Calibration: the pixel check's score on the candidate pairs the finder would check (each
image's top `neighbours` with cosine >= the candidate threshold, plus turned-copy candidates
where the implementation has them); the NCC threshold is the F1-optimal cut of (original, copy)
pairs vs unrelated pairs, printed with the score percentiles per kind (copy-copy included).

Measurement: `find_duplicates` on the other half with that threshold. A predicted pair = two
images in one exact or near group; truth = both derive from the same original (every pair in
a family, copy-copy included). Pair precision / recall / F1, and recall per kind of edit (the
copy is in its original's group), plus how many of each kind were candidates at all (a copy
the neighbour search never proposes cannot be verified).

    python benchmarks/duplicates.py [--model efficientnet-lite0] [--json out.json]

Run it against another implementation by putting that one first on PYTHONPATH (the README's
"before" column is main's `duplicates.py` run this way, at its calibrated and shipped NCC).
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

from imagefinder import duplicates
from imagefinder.benchdata import EDIT_KINDS, make_edit_set
from imagefinder.duplicates import PixelCheck, find_duplicates, neighbour_pairs
from imagefinder.index import IndexConfig, Store
from imagefinder.pipeline import build_index

REPO = Path(__file__).resolve().parents[1]
PARIS = REPO.parent / "shared" / "data" / "paris266"
Labels = dict[str, tuple[str, str]]  # filename -> (original, kind)


def labelled(out: Path, half: int, originals: int, unrelated: int) -> Labels:
    make_edit_set(PARIS, out, half=half, originals=originals, unrelated=unrelated)
    with open(out / "labels.csv", newline="") as f:
        return {r["filename"]: (r["original"], r["kind"]) for r in csv.DictReader(f)}


def same_original(labels: Labels, a: str, b: str) -> bool:
    return bool(labels[a][0]) and labels[a][0] == labels[b][0]


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
        tp, fp = (pos >= t).sum(), (neg >= t).sum()
        f1 = 2 * tp / max(1, 2 * tp + fp + (len(pos) - tp))
        if f1 > best[1]:
            best = (float(t), float(f1))
    return best


def kind_of(labels: Labels, a: str, b: str) -> str:
    """The edit a pair stands for: the copy's kind for (original, copy), else 'copy-copy' / 'unrelated'."""
    if not same_original(labels, a, b):
        return "unrelated"
    ka, kb = labels[a][1], labels[b][1]
    return kb if ka == "original" else ka if kb == "original" else "copy-copy"


def candidate_threshold() -> float:
    """The cosine above which find_duplicates pixel-checks a pair (its `similar` default)."""
    return duplicates.thresholds_for("efficientnet-lite0")[1]


def candidates(store: Store, neighbours: int) -> list[tuple[int, int]]:
    """The pairs find_duplicates pixel-checks: neighbours above the similar cosine, and turned-copy
    candidates where the implementation has them."""
    a, b, _ = neighbour_pairs(store, candidate_threshold(), neighbours)
    pairs = set(zip(a.tolist(), b.tolist()))
    turned = getattr(duplicates, "turned_pairs", None)
    if turned is not None:
        pairs |= turned(store, sorted(store.ids_by_source().values()))
    return sorted(pairs)


def calibrate(store: Store, names: dict[int, str], labels: Labels, neighbours: int) -> dict:
    pairs = candidates(store, neighbours)
    check = PixelCheck(store)
    score = np.array([check(x, y) for x, y in pairs])
    kinds = np.array([kind_of(labels, names[x], names[y]) for x, y in pairs])
    # a copy is verified against its group's anchor (the original), so the cut is placed between
    # (original, copy) pairs and unrelated ones; copy-copy pairs are shown, not optimised for
    pos, neg = np.isin(kinds, EDIT_KINDS), kinds == "unrelated"
    t, f1 = best_f1(score[pos], score[neg])
    dist = {}
    for kind in (*EDIT_KINDS, "copy-copy", "unrelated"):
        s = score[kinds == kind]
        if len(s):
            dist[kind] = {"n": len(s), **{f"p{q}": round(float(np.percentile(s, q)), 3) for q in (5, 50, 95)},
                          "min": round(float(s.min()), 3), "max": round(float(s.max()), 3)}
    return {"ncc": round(t, 3), "ncc_f1_on_candidates": round(f1, 4), "candidates": len(score), "distributions": dist}


def measure(store: Store, names: dict[int, str], labels: Labels, ncc: float, neighbours: int) -> dict:
    result = find_duplicates(store, verify=True, ncc=ncc, neighbours=neighbours)
    predicted: set[tuple[int, int]] = set()
    for tier in ("exact", "near"):
        for g in result.get(tier, []):
            predicted |= set(itertools.combinations(sorted(g.ids), 2))
    ids = sorted(names)
    true_pairs = {(x, y) for x, y in itertools.combinations(ids, 2) if same_original(labels, names[x], names[y])}
    tp = len(predicted & true_pairs)
    precision, recall = tp / max(1, len(predicted)), tp / max(1, len(true_pairs))
    proposed = set(candidates(store, neighbours))
    by_name = {n: i for i, n in names.items()}
    per_kind = {}
    for kind in EDIT_KINDS:
        pairs = [tuple(sorted((by_name[f], by_name[o]))) for f, (o, k) in labels.items() if k == kind]
        per_kind[kind] = {"n": len(pairs), "recall": round(sum(p in predicted for p in pairs) / max(1, len(pairs)), 3),
                          "candidates": round(sum(p in proposed for p in pairs) / max(1, len(pairs)), 3)}
    false = sorted(predicted - true_pairs)
    return {"ncc": ncc, "precision": round(precision, 4), "recall": round(recall, 4),
            "f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
            "pairs_predicted": len(predicted), "pairs_true": len(true_pairs),
            "near_groups": len(result.get("near", [])), "per_kind": per_kind,
            "false_pairs": [[names[x], names[y]] for x, y in false[:20]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--originals", type=int, default=40, help="originals per half")
    p.add_argument("--unrelated", type=int, default=45, help="unrelated photos per half")
    p.add_argument("--neighbours", type=int, default=20)
    p.add_argument("--also-ncc", type=float, action="append", default=[],
                   help="also measure at this NCC threshold (e.g. an implementation's shipped one)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "duplicates.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imagefinder-dups-") as tmp:
        work = Path(tmp)
        cal_labels = labelled(work / "calibrate", 0, args.originals, args.unrelated)
        test_labels = labelled(work / "measure", 1, args.originals, args.unrelated)
        store, names = index_set(work / "calibrate", args.model, work / "idx")
        cal = calibrate(store, names, cal_labels, args.neighbours)
        store.close()
        print(json.dumps({"calibration": cal}, indent=1), file=sys.stderr)
        store, names = index_set(work / "measure", args.model, work / "idx")
        held = {str(t): measure(store, names, test_labels, t, args.neighbours) for t in [cal["ncc"], *args.also_ncc]}
        held_dist = calibrate(store, names, test_labels, args.neighbours)["distributions"]
        store.close()
    report = {"model": args.model, "implementation": duplicates.__file__, "calibration": cal,
              "held_out": held, "held_out_distributions": held_dist,
              "set": {"originals_per_half": args.originals, "unrelated_per_half": args.unrelated,
                      "images_per_half": len(test_labels)}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
