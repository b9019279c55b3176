"""int8 vs fp32 retrieval quality for every shipped backbone (at its input size and default pooling).

For each backbone and precision: `imagefinder.evaluate` on UKBench-1000 (N-S, mAP) and on
paris266 (mAP), as `imagefinder evaluate DIR --model B --precision P --json` reports them.
int8 graphs are calibrated on the built-in sample photos (models/quantize.py), never on these
sets. Results are appended to a JSON file as they come (a rerun skips what is there), then
printed as a Markdown table with the int8 - fp32 differences and whether int8 meets the
default bounds (loss <= 0.002 mAP on UKBench and <= 0.005 on paris266).

    python benchmarks/precision.py                              # every shipped backbone
    python benchmarks/precision.py --only efficientnet-lite0    # some of them
    python benchmarks/precision.py --only efficientnet-lite2@gem2,long384   # a model spec (another input)
    python benchmarks/precision.py --table                      # print the saved results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagefinder.evaluate import evaluate
from imagefinder.index import IndexConfig

REPO = Path(__file__).resolve().parents[1]
DATA = {"ukbench": REPO.parent / "shared" / "data" / "ukbench1000", "paris266": REPO.parent / "shared" / "data" / "paris266"}
BACKBONES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50-thin", "dinov2-s"]
BOUNDS = {"ukbench": 0.002, "paris266": 0.005}  # largest mAP loss for which int8 becomes a backbone's default
RESULTS = REPO / "benchmarks" / "results" / "precision.json"


def run(backbones: list[str], results: Path) -> dict:
    done = json.loads(results.read_text()) if results.is_file() else {}
    for backbone in backbones:
        for precision in ("fp32", "int8"):
            for data, path in DATA.items():
                key = f"{backbone}/{precision}/{data}"
                if key in done:
                    continue
                m = evaluate(path, IndexConfig(model=backbone, precision=precision))
                done[key] = {k: m[k] for k in ("map", "ns_score", "images_per_second", "precision")}
                print(key, json.dumps(done[key]), flush=True)
                results.parent.mkdir(parents=True, exist_ok=True)
                results.write_text(json.dumps(done, indent=1, sort_keys=True))
    return done


def _shipped_first(spec: str) -> tuple[int, str]:
    return (BACKBONES.index(spec) if spec in BACKBONES else len(BACKBONES), spec)


def table(done: dict) -> str:
    rows = [("| backbone | UKBench N-S fp32 / int8 | UKBench mAP fp32 / int8 (Δ) | paris266 mAP fp32 / int8 (Δ) "
             "| int8 within bounds |"), "|---|---|---|---|---|"]
    for backbone in sorted({key.rsplit("/", 2)[0] for key in done}, key=_shipped_first):
        got = {(p, d): done.get(f"{backbone}/{p}/{d}") for p in ("fp32", "int8") for d in DATA}
        if any(v is None for v in got.values()):
            continue
        deltas = {d: got["int8", d]["map"] - got["fp32", d]["map"] for d in DATA}
        ok = all(deltas[d] >= -BOUNDS[d] for d in DATA)
        rows.append(
            f"| {backbone} | {got['fp32', 'ukbench']['ns_score']:.3f} / {got['int8', 'ukbench']['ns_score']:.3f} "
            f"| {got['fp32', 'ukbench']['map']:.4f} / {got['int8', 'ukbench']['map']:.4f} ({deltas['ukbench']:+.4f}) "
            f"| {got['fp32', 'paris266']['map']:.4f} / {got['int8', 'paris266']['map']:.4f} "
            f"({deltas['paris266']:+.4f}) | {'yes' if ok else 'no'} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="SPEC",
                        help="backbones or model specs to measure (default: every shipped backbone at its input)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only print the table of saved results")
    args = parser.parse_args()
    done = json.loads(args.results.read_text()) if args.table and args.results.is_file() else {}
    if not args.table:
        done = run(args.only or BACKBONES, args.results)
    print(table(done))


if __name__ == "__main__":
    main()
