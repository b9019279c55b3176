"""`imagefinder search` and `duplicates`: ask an index, print the answer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import (
    EXIT_EMPTY,
    EXIT_OK,
    Command,
    UsageError,
    check_query_options,
    common,
    metric_option,
    preset_option,
    progress,
    query_options,
)


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", type=Path, metavar="DIR", help="index directory made by `imagefinder index`")
    p.add_argument("query", metavar="QUERY", help="image path or http(s) URL")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    metric_option(p, "cosine similarity (default), euclidean distance on raw features, vote (rank fusion), or "
                     "fusion (weighted rank fusion of ensemble members)")
    preset_option(p, "its query-time parts: query expansion, verification depth and budget; default: the preset "
                     "the index was built with")
    query_options(p)
    p.add_argument("--box", metavar="X0,Y0,X1,Y1",
                   help="search with this region of the query image only (pixels: left, top, right, bottom)")
    p.add_argument("--json", action="store_true",
                   help='print {"query": ..., "results": [{"rank", "id", "source", "score", "match"}, ...]}; '
                        'match: "strong" (same object or scene, calibrated per model) or "weak"')
    common(p)


def cmd_search(args: argparse.Namespace) -> int:
    from ..finder import ImageFinder
    from ..presets import FROM_PRESET
    from ..region import parse_box

    if args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    check_query_options(args)
    box = parse_box(args.box) if args.box is not None else None
    finder = ImageFinder(args.index)
    results = finder.search(args.query, k=args.k, metric=args.metric, qe=args.qe, qe_alpha=args.qe_alpha,
                            rerank=args.rerank, rerank_budget=FROM_PRESET if args.rerank_budget is None else args.rerank_budget, box=box,
                            preset=args.preset)
    if args.json:
        print(json.dumps({"query": args.query, "metric": args.metric, **({"box": list(box)} if box else {}),
                          "results": [r.to_dict() for r in results]}))
    else:
        label = "distance" if args.metric == "euclidean" else "score"
        print(f"{'rank':>4}  {label:>8}  {'match':>6}  {'id':>6}  source")
        for r in results:
            print(f"{r.rank:>4}  {r.score:8.4f}  {r.match or '-':>6}  {r.id:>6}  {r.source}")
        if results and all(r.match == "weak" for r in results):
            print("no close match: every result is only weakly similar (see README 'Retrieval quality')")
    return EXIT_OK if results else EXIT_EMPTY


DUPLICATES = ("Group the images of an index (or of a folder, indexed first into a temporary directory with --model) "
              "in three tiers: exact (same file content), near (resized / re-encoded / cropped copies: pixel check, "
              "or cosine >= --threshold) and similar (same object or scene: cosine >= --similar). Pairs come from "
              "each image's nearest neighbours in the index, never all pairs.")


def _duplicates_options(p: argparse.ArgumentParser) -> None:
    from ..models import DEFAULT_MODEL

    p.add_argument("path", type=Path, metavar="DIR", help="index directory, or a folder of images")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="near-duplicate cosine threshold; giving it turns off the default pixel check "
                        "(aligned thumbnails, NCC >= 0.898) that decides near-duplicates among similar pairs")
    p.add_argument("--similar", type=float, metavar="T", help="similar-image cosine threshold (default: calibrated)")
    p.add_argument("--neighbours", type=int, default=20, metavar="K", help="neighbours checked per image (default 20)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="M", help="model for indexing a folder")
    p.add_argument("--json", action="store_true", help="print one JSON object: thresholds and groups per tier")
    common(p)


def cmd_duplicates(args: argparse.Namespace) -> int:
    import tempfile

    from ..duplicates import TIERS, duplicates_of_path

    with tempfile.TemporaryDirectory(prefix="imagefinder-dups-") as tmp:
        path = args.path
        if not (path / "manifest.json").is_file():
            if not path.is_dir():
                raise UsageError(f"{path}: not an index directory or a folder of images")
            from ..index import IndexConfig
            from ..pipeline import build_index

            path = build_index([str(path)], Path(tmp) / "index", IndexConfig(model=args.model),
                               progress=progress(args)).path
        result = duplicates_of_path(path, near=args.threshold, similar=args.similar, neighbours=args.neighbours)
    if args.json:
        print(json.dumps({**result, **{t: [g.to_dict() for g in result[t]] for t in TIERS}}))
        return EXIT_OK
    th = result["thresholds"]
    print(f"near-duplicates: {th['near_by']}; similar: cosine >= {th['similar']:.3f} ({result['model']})")
    for tier in TIERS:
        groups = result[tier]
        print(f"\n{tier}: {len(groups)} group(s)")
        for g in groups:
            print(f"  [{g.score:.3f}] " + "  ".join(g.sources))  # lowest cosine inside the group
    return EXIT_OK


SEARCH_COMMAND = Command("search", "find the images most similar to a query image", _search_options, cmd_search,
                         description="Rank the indexed images by similarity to QUERY (a file path or http(s) URL).")
DUPLICATES_COMMAND = Command("duplicates", "list exact duplicates, near-duplicates and similar images",
                             _duplicates_options, cmd_duplicates, description=DUPLICATES)
